//! NVRTC, bound by hand like cuBLAS (blas.rs): compiling the kernels to a
//! CUBIN for the device's own architecture, or to PTX, with ptxas's
//! resource report read back from the log.
//!
//! Why CUBIN first: NVRTC writes PTX of its own ISA version (8.8 for 12.9,
//! 9.0 for 13.0) and a driver older than that NVRTC refuses it, while a
//! CUBIN is machine code the driver only loads.

use super::libs::{self, Lib, Which};
use anyhow::{bail, Result};
use std::ffi::{c_char, c_int, c_void, CString};

type Program = *mut c_void;
type Status = c_int;

/// Every NVRTC symbol the binary uses (the CI test resolves each against
/// both majors).
pub const SYMBOLS: [&str; 13] = [
    "nvrtcVersion",
    "nvrtcGetNumSupportedArchs",
    "nvrtcGetSupportedArchs",
    "nvrtcCreateProgram",
    "nvrtcCompileProgram",
    "nvrtcGetProgramLogSize",
    "nvrtcGetProgramLog",
    "nvrtcGetCUBINSize",
    "nvrtcGetCUBIN",
    "nvrtcGetPTXSize",
    "nvrtcGetPTX",
    "nvrtcDestroyProgram",
    "nvrtcGetErrorString",
];

type SizeFn = unsafe extern "C" fn(Program, *mut usize) -> Status;
type BytesFn = unsafe extern "C" fn(Program, *mut c_char) -> Status;
type CreateFn = unsafe extern "C" fn(
    *mut Program,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> Status;

/// The loaded library and its entry points.
pub struct Api {
    pub lib: Lib,
    version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> Status,
    num_archs: unsafe extern "C" fn(*mut c_int) -> Status,
    archs: unsafe extern "C" fn(*mut c_int) -> Status,
    create: CreateFn,
    compile: unsafe extern "C" fn(Program, c_int, *const *const c_char) -> Status,
    log_size: SizeFn,
    log: BytesFn,
    cubin_size: SizeFn,
    cubin: BytesFn,
    ptx_size: SizeFn,
    ptx: BytesFn,
    destroy: unsafe extern "C" fn(*mut Program) -> Status,
    error_string: unsafe extern "C" fn(Status) -> *const c_char,
}

/// What to compile to, by SM number (90 = sm_90 / compute_90).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    Cubin(u32),
    Ptx(u32),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Cubin(sm) => write!(f, "CUBIN sm_{sm}"),
            Target::Ptx(sm) => write!(f, "PTX compute_{sm}"),
        }
    }
}

/// A compiled module: the image the driver loads and NVRTC's log.
pub struct Compiled {
    pub target: Target,
    /// The CUBIN (an ELF file), or the PTX text without its final NUL.
    pub image: Vec<u8>,
    pub log: String,
}

/// One kernel's resources, as ptxas reported them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KernelUsage {
    pub name: String,
    pub registers: u32,
    pub stack_bytes: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
}

/// The first unsigned number after `key` in `line` (e.g. "Used 22 registers").
fn number_before(line: &str, key: &str) -> Option<u32> {
    let head = &line[..line.find(key)?];
    head.split(|c: char| !c.is_ascii_digit())
        .rfind(|s| !s.is_empty())?
        .parse()
        .ok()
}

/// Reads ptxas's `-v` report (entry functions only) from an NVRTC log.
pub fn parse_usage(log: &str) -> Vec<KernelUsage> {
    let quoted = |line: &str, key: &str| -> Option<String> {
        let rest = &line[line.find(key)? + key.len()..];
        Some(rest.split('\'').next()?.to_string())
    };
    let mut out: Vec<KernelUsage> = Vec::new();
    // The function the next "stack frame" line belongs to.
    let mut props_of: Option<String> = None;
    for line in log.lines() {
        if let Some(name) = quoted(line, "Compiling entry function '") {
            out.push(KernelUsage {
                name,
                ..Default::default()
            });
        } else if let Some(i) = line.find("Function properties for ") {
            props_of = Some(
                line[i + "Function properties for ".len()..]
                    .trim()
                    .to_string(),
            );
        } else if line.contains("bytes stack frame") {
            let target = out
                .iter_mut()
                .rev()
                .find(|k| Some(&k.name) == props_of.as_ref());
            if let Some(k) = target {
                k.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
                k.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
                k.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
            }
        } else if line.contains("Used ") && line.contains(" registers") {
            if let (Some(k), Some(r)) = (out.last_mut(), number_before(line, " registers")) {
                k.registers = r;
            }
        }
    }
    out
}

/// One line for a log: "18 kernels, at most 37 registers, 0 bytes spilled".
pub fn usage_summary(usage: &[KernelUsage]) -> String {
    let regs = usage.iter().map(|k| k.registers).max().unwrap_or(0);
    let spilled: u32 = usage.iter().map(|k| k.spill_stores + k.spill_loads).sum();
    format!(
        "{} kernels, at most {regs} registers, {spilled} bytes spilled",
        usage.len()
    )
}

impl Api {
    /// Opens NVRTC of the first of `majors` found and resolves `SYMBOLS`.
    pub fn load(majors: &[u32]) -> Result<Api> {
        let lib = libs::open(Which::Nvrtc, majors)?;
        // SAFETY: each type is the symbol's signature in nvrtc.h (12.x, 13.x).
        unsafe {
            Ok(Api {
                version: lib.func(SYMBOLS[0])?,
                num_archs: lib.func(SYMBOLS[1])?,
                archs: lib.func(SYMBOLS[2])?,
                create: lib.func(SYMBOLS[3])?,
                compile: lib.func(SYMBOLS[4])?,
                log_size: lib.func(SYMBOLS[5])?,
                log: lib.func(SYMBOLS[6])?,
                cubin_size: lib.func(SYMBOLS[7])?,
                cubin: lib.func(SYMBOLS[8])?,
                ptx_size: lib.func(SYMBOLS[9])?,
                ptx: lib.func(SYMBOLS[10])?,
                destroy: lib.func(SYMBOLS[11])?,
                error_string: lib.func(SYMBOLS[12])?,
                lib,
            })
        }
    }

    fn check(&self, what: &str, s: Status) -> Result<()> {
        if s == 0 {
            return Ok(());
        }
        bail!(
            "NVRTC {what}: {}",
            libs::status_message(s, self.error_string)
        )
    }

    /// NVRTC's own version, e.g. (13, 0).
    pub fn version(&self) -> Result<(i32, i32)> {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: writes two ints.
        self.check("version", unsafe { (self.version)(&mut major, &mut minor) })?;
        Ok((major, minor))
    }

    /// The SM numbers this NVRTC can compile for, ascending.
    pub fn supported_archs(&self) -> Result<Vec<u32>> {
        let mut n: c_int = 0;
        // SAFETY: writes one int, then n ints.
        self.check("arch count", unsafe { (self.num_archs)(&mut n) })?;
        let mut v = vec![0 as c_int; n.max(0) as usize];
        self.check("archs", unsafe { (self.archs)(v.as_mut_ptr()) })?;
        let mut v: Vec<u32> = v.into_iter().map(|a| a as u32).collect();
        v.sort_unstable();
        Ok(v)
    }

    /// Reads one of the program's outputs through its size/bytes pair.
    fn output(&self, prog: Program, what: &str, size: SizeFn, bytes: BytesFn) -> Result<Vec<u8>> {
        let mut n = 0usize;
        // SAFETY: a live program; the buffer holds the size NVRTC reported.
        self.check(what, unsafe { size(prog, &mut n) })?;
        let mut buf = vec![0u8; n];
        if n > 0 {
            self.check(what, unsafe {
                bytes(prog, buf.as_mut_ptr() as *mut c_char)
            })?;
        }
        Ok(buf)
    }

    /// Compiles `source` for `target` with the options every build uses:
    /// no FMA contraction (elementwise arithmetic rounds like the CPU) and,
    /// for a CUBIN, ptxas's resource report in the log.
    pub fn compile(&self, source: &str, target: Target) -> Result<Compiled> {
        let mut opts = vec!["--fmad=false".to_string()];
        match target {
            Target::Cubin(sm) => {
                opts.push(format!("--gpu-architecture=sm_{sm}"));
                opts.push("--ptxas-options=-v".to_string());
            }
            Target::Ptx(sm) => opts.push(format!("--gpu-architecture=compute_{sm}")),
        }
        let c_opts: Vec<CString> = opts
            .iter()
            .map(|o| CString::new(o.as_str()))
            .collect::<Result<_, _>>()?;
        let c_ptrs: Vec<*const c_char> = c_opts.iter().map(|o| o.as_ptr()).collect();
        let src = CString::new(source)?;
        let name = CString::new("newllm_kernels.cu")?;
        let mut prog: Program = std::ptr::null_mut();
        // SAFETY: the strings outlive the calls; no headers.
        self.check("create program", unsafe {
            (self.create)(
                &mut prog,
                src.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        })?;
        let status = unsafe { (self.compile)(prog, c_ptrs.len() as c_int, c_ptrs.as_ptr()) };
        let log = self.output(prog, "log", self.log_size, self.log);
        let image = match target {
            Target::Cubin(_) => self.output(prog, "CUBIN", self.cubin_size, self.cubin),
            Target::Ptx(_) => self.output(prog, "PTX", self.ptx_size, self.ptx),
        };
        // SAFETY: destroys the program created above, once.
        let destroyed = self.check("destroy program", unsafe { (self.destroy)(&mut prog) });
        let log = String::from_utf8_lossy(&log?)
            .trim_end_matches('\0')
            .to_string();
        if status != 0 {
            let e = self.check("compile", status).err().map(|e| e.to_string());
            bail!(
                "{} for {target} failed: {}\n{log}",
                self.lib.path,
                e.unwrap_or_default()
            );
        }
        destroyed?;
        let mut image = image?;
        if let Target::Ptx(_) = target {
            while image.last() == Some(&0) {
                image.pop();
            }
        }
        Ok(Compiled { target, image, log })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ptxas's report as NVRTC 13.5 writes it (-v, sm_90), with a device
    /// function's properties between two entries' and a made-up spill.
    const LOG: &str = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'col_reduce' for 'sm_90'\n\
ptxas info    : Function properties for col_reduce\n\
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 32 registers, used 1 barriers, 8448 bytes smem\n\
ptxas info    : Compiling entry function 'ln_bwd' for 'sm_90'\n\
ptxas info    : Function properties for _Z9block_sumIdET_S0_PS0_\n\
ptxas         .     8 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Function properties for ln_bwd\n\
ptxas         .     16 bytes stack frame, 12 bytes spill stores, 4 bytes spill loads\n\
ptxas info    : Used 255 registers, used 1 barriers\n\
ptxas info    : Compile time = 2.766 ms\n";

    #[test]
    fn ptxas_report_is_read_per_entry_function() {
        let u = parse_usage(LOG);
        assert_eq!(
            u,
            vec![
                KernelUsage {
                    name: "col_reduce".into(),
                    registers: 32,
                    stack_bytes: 0,
                    spill_stores: 0,
                    spill_loads: 0
                },
                KernelUsage {
                    name: "ln_bwd".into(),
                    registers: 255,
                    stack_bytes: 16,
                    spill_stores: 12,
                    spill_loads: 4
                },
            ]
        );
    }

    #[test]
    fn targets_name_their_architecture() {
        assert_eq!(Target::Cubin(90).to_string(), "CUBIN sm_90");
        assert_eq!(Target::Ptx(80).to_string(), "PTX compute_80");
    }
}
