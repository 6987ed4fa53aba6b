//! `newllm cuda-check`: what the GPU pipeline would load and compile, step
//! by step, so a machine shows its problems before a long run. With
//! `--no-device` it stops before the first call that needs a GPU (the
//! device script's dry run, and this project's CI): the driver if one is
//! installed, cuBLAS and NVRTC found and every symbol resolved, the kernels
//! compiled to a CUBIN and to PTX for `--arch` with ptxas's report.

use super::kernels;
use super::nvrtc::{parse_usage, usage_summary, Target};
use super::runtime::{cuda_version, driver_version, guarded, Dev, Libraries, NO_DRIVER};
use anyhow::{anyhow, bail, Result};
use cudarc::driver::CudaContext;

/// GPU 0's compute capability as an SM number (90 for 9.0): a GPU call.
fn device_arch() -> Result<u32> {
    guarded("reading the GPU's compute capability", || {
        let ctx = CudaContext::new(0).map_err(|e| anyhow!("--device cuda: GPU 0: {e:?}"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| anyhow!("compute capability: {e:?}"))?;
        Ok((major * 10 + minor) as u32)
    })
}

/// Runs the check, giving `say` one line per step as it passes (so a
/// failure shows how far it got); an error stops at the step that failed.
/// `arch`: the SM number to compile for (default: GPU 0's, or 90 without a
/// device).
pub fn run(arch: Option<u32>, device: bool, say: &mut dyn FnMut(String)) -> Result<()> {
    let driver = driver_version()?;
    say(match driver {
        Some(v) => format!("driver: CUDA {}\n", cuda_version(v)),
        None => "driver: none (libcuda.so.1 not found)".to_string(),
    });
    let libs = Libraries::load(driver)?;
    let (nv_major, nv_minor) = libs.nvrtc.version()?;
    say(format!(
        "cuBLAS {}: {} ({} symbols resolved)",
        libs.blas.lib.major,
        libs.blas.lib.path,
        super::blas::SYMBOLS.len()
    ));
    say(format!(
        "NVRTC {nv_major}.{nv_minor}: {} ({} symbols resolved)",
        libs.nvrtc.lib.path,
        super::nvrtc::SYMBOLS.len()
    ));
    let arch = match arch {
        Some(a) => a,
        None if device && driver.is_some() => device_arch()?,
        None => 90,
    };
    let archs = libs.nvrtc.supported_archs()?;
    if !archs.contains(&arch) {
        bail!(
            "NVRTC {nv_major}.{nv_minor} cannot compile for sm_{arch}; it knows sm_{}",
            archs
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", sm_")
        );
    }
    for target in [Target::Cubin(arch), Target::Ptx(arch)] {
        let c = libs.nvrtc.compile(kernels::SOURCE, target)?;
        say(match target {
            Target::Cubin(_) => format!(
                "kernels: {target}, {} bytes ({})",
                c.image.len(),
                usage_summary(&parse_usage(&c.log))
            ),
            Target::Ptx(_) => format!("kernels: {target}, {} bytes", c.image.len()),
        });
    }
    if !device {
        say("stopped before the first GPU call (--no-device)".into());
        return Ok(());
    }
    if driver.is_none() {
        bail!(NO_DRIVER);
    }
    let dev = Dev::open(false)?;
    say(format!("opened {}: {}", dev.name, dev.loaded));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dry run's path on a machine without a GPU: libraries found,
    /// kernels compiled, stopped before the GPU (CI: NEWLLM_REQUIRE_CUDA_LIBS=1
    /// with both majors installed; skipped where no library is found).
    #[test]
    fn no_device_check_reports_each_step() {
        let required = std::env::var("NEWLLM_REQUIRE_CUDA_LIBS").is_ok_and(|v| v == "1");
        let mut lines = Vec::new();
        let r = run(Some(80), false, &mut |l| lines.push(l));
        if let Err(e) = &r {
            assert!(!required, "NEWLLM_REQUIRE_CUDA_LIBS=1: {e}");
            eprintln!("skipped: {e}");
            return;
        }
        assert_eq!(lines.len(), 6, "{lines:?}");
        assert!(lines[0].starts_with("driver: "), "{lines:?}");
        assert!(lines[1].starts_with("cuBLAS 1"), "{lines:?}");
        assert!(lines[2].starts_with("NVRTC 1"), "{lines:?}");
        assert!(
            lines[3].starts_with("kernels: CUBIN sm_80")
                && lines[3].contains("18 kernels")
                && lines[3].ends_with(" 0 bytes spilled)"),
            "{lines:?}"
        );
        assert!(lines[4].starts_with("kernels: PTX compute_80"), "{lines:?}");
        assert_eq!(lines[5], "stopped before the first GPU call (--no-device)");
    }

    #[test]
    fn an_unknown_architecture_names_the_known_ones() {
        let mut lines = Vec::new();
        match run(Some(12), false, &mut |l| lines.push(l)) {
            Err(e) if lines.len() == 3 => {
                let e = e.to_string();
                assert!(e.contains("cannot compile for sm_12; it knows sm_"), "{e}");
                assert!(e.contains("sm_80, sm_86"), "{e}");
            }
            // No libraries here: the error is the library's, before any compile.
            Err(e) => assert!(e.to_string().contains("could not be loaded"), "{e}"),
            Ok(()) => panic!("sm_12 compiled: {lines:?}"),
        }
    }
}
