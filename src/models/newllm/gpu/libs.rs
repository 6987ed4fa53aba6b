//! Finding cuBLAS and NVRTC at run time, of CUDA 13 or CUDA 12.
//!
//! cudarc's loader tries only the names of the major version it was built
//! for (a CUDA 12 build never tries `libcublas.so.13`), so these two
//! libraries are opened here: by their versioned name through the loader's
//! own path first (LD_LIBRARY_PATH, ld.so.cache), then by full path in the
//! folders a CUDA toolkit or pip's `nvidia-*` wheels install into. Both are
//! built with RPATH `$ORIGIN`, so cuBLAS finds its cuBLASLt and NVRTC its
//! builtins beside them. The driver (`libcuda.so.1` for every version)
//! stays with cudarc.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// The message for a non-zero status `s` of cuBLAS or NVRTC, from the
/// library's own status-string function.
pub fn status_message(
    s: std::ffi::c_int,
    string: unsafe extern "C" fn(std::ffi::c_int) -> *const std::ffi::c_char,
) -> String {
    // SAFETY: both libraries return a static string (or NULL) for any value.
    let p = unsafe { string(s) };
    if p.is_null() {
        format!("status {s}")
    } else {
        // SAFETY: a NUL-terminated static string.
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .into_owned()
    }
}

/// The major versions this binary can use, newest first.
pub const MAJORS: [u32; 2] = [13, 12];

/// A colon-separated list of folders searched before all others.
pub const PATH_VAR: &str = "NEWLLM_CUDA_LIB_PATH";

/// The two libraries opened here.
#[derive(Clone, Copy, Debug)]
pub enum Which {
    Cublas,
    Nvrtc,
}

impl Which {
    fn stem(self) -> &'static str {
        match self {
            Which::Cublas => "cublas",
            Which::Nvrtc => "nvrtc",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Which::Cublas => "cuBLAS",
            Which::Nvrtc => "NVRTC",
        }
    }

    /// The pip packages that ship it, for the error message.
    fn wheels(self) -> &'static str {
        match self {
            Which::Cublas => "nvidia-cublas (CUDA 13) or nvidia-cublas-cu12",
            Which::Nvrtc => "nvidia-cuda-nvrtc (CUDA 13) or nvidia-cuda-nvrtc-cu12",
        }
    }

    /// Libraries it opens by name at run time, as file-name prefixes: they
    /// are opened first from the same folder, so the later open by name
    /// finds them loaded (NVRTC 13.0's wheel has no RPATH to find its
    /// builtins by; cuBLAS's cuBLASLt is a link-time need, found through
    /// RUNPATH, but loaded the same way for symmetry).
    fn companion(self, major: u32) -> String {
        match self {
            Which::Cublas => format!("libcublasLt.so.{major}"),
            Which::Nvrtc => format!("libnvrtc-builtins.so.{major}."),
        }
    }

    /// The library's versioned file name, e.g. `libcublas.so.13`.
    pub fn file_name(self, major: u32) -> String {
        format!("lib{}.so.{major}", self.stem())
    }
}

/// An opened library: where it came from and its major version.
pub struct Lib {
    pub lib: libloading::Library,
    /// The companions opened before it (see `Which::companion`), kept open.
    _companions: Vec<libloading::Library>,
    pub path: String,
    pub major: u32,
}

impl Lib {
    /// Resolves `name` as a function pointer of type `F`; the error names
    /// the symbol and the library file.
    ///
    /// # Safety
    /// `F` must be the symbol's C signature.
    pub unsafe fn func<F: Copy>(&self, name: &str) -> Result<F> {
        // SAFETY: the caller gives the signature; the pointer is only used
        // while `self.lib` is loaded (the APIs keep their `Lib`).
        match unsafe { self.lib.get::<F>(name.as_bytes()) } {
            Ok(s) => Ok(*s),
            Err(e) => bail!(
                "--device cuda: {} has no symbol {name} ({e}); this binary needs CUDA 12 or 13 \
                 libraries",
                self.path
            ),
        }
    }
}

/// The major versions to try for a driver of CUDA version `driver`
/// (e.g. 13000; None when unknown): a library newer than the driver cannot
/// run on it, so only majors up to the driver's, newest first.
pub fn majors_for_driver(driver: Option<i32>) -> Vec<u32> {
    MAJORS
        .iter()
        .copied()
        .filter(|&m| driver.is_none_or(|d| (m as i32) * 1000 <= d))
        .collect()
}

/// Subfolders of `dir` whose names start with `prefix`, newest name first
/// (so /usr/local/cuda-13.0 before /usr/local/cuda-12.8).
fn children(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    v.sort();
    v.reverse();
    v
}

/// Folders searched by full path, after `NEWLLM_CUDA_LIB_PATH` and the
/// loader's own path, in this order: the CUDA toolkit's (`$CUDA_HOME`,
/// `$CUDA_PATH`, /usr/local/cuda*), then pip's nvidia wheels in the active
/// virtual environment or conda prefix, the user's and the system's
/// site-packages. Only folders that exist are listed.
pub fn search_dirs() -> Vec<PathBuf> {
    dirs_from(&|k| std::env::var_os(k))
}

/// `search_dirs` with the environment given (tests pass their own).
fn dirs_from(var: &dyn Fn(&str) -> Option<std::ffi::OsString>) -> Vec<PathBuf> {
    let env = |k: &str| var(k).map(PathBuf::from);
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(p) = var(PATH_VAR) {
        dirs.extend(std::env::split_paths(&p));
    }
    for root in [env("CUDA_HOME"), env("CUDA_PATH")].into_iter().flatten() {
        dirs.push(root.join("lib64"));
        dirs.push(root.join("lib"));
    }
    for root in children(Path::new("/usr/local"), "cuda") {
        dirs.push(root.join("lib64"));
        dirs.push(root.join("targets/x86_64-linux/lib"));
    }
    let mut sites: Vec<PathBuf> = Vec::new();
    let home_local = env("HOME").map(|h| h.join(".local"));
    for prefix in [env("VIRTUAL_ENV"), env("CONDA_PREFIX"), home_local]
        .into_iter()
        .flatten()
    {
        for py in children(&prefix.join("lib"), "python3") {
            sites.push(py.join("site-packages"));
        }
    }
    for py in children(Path::new("/usr/local/lib"), "python3") {
        sites.push(py.join("site-packages"));
        sites.push(py.join("dist-packages"));
    }
    sites.push(PathBuf::from("/usr/lib/python3/dist-packages"));
    for site in sites {
        // CUDA 13 wheels install into nvidia/cu13/lib, CUDA 12 ones into
        // nvidia/<package>/lib.
        for pkg in ["cu13", "cublas", "cuda_nvrtc"] {
            dirs.push(site.join("nvidia").join(pkg).join("lib"));
        }
    }
    if let Some(c) = env("CONDA_PREFIX") {
        dirs.push(c.join("lib"));
    }
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| d.is_dir() && seen.insert(d.clone()));
    dirs
}

/// Opens one file with RTLD_NOW: every symbol it imports (cuBLAS's from
/// cuBLASLt) is resolved here, so a mismatched pair fails at load with the
/// symbol's name, not at the first GEMM.
fn open_now(path: &str) -> Result<libloading::Library, libloading::Error> {
    let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL;
    // SAFETY: loading runs the library's initialisers; these are NVIDIA's
    // own libraries, meant to be dlopen'ed.
    unsafe { libloading::os::unix::Library::open(Some(path), flags) }.map(Into::into)
}

/// Opens the files in `dir` whose names start with `prefix` (not the
/// `.alt.` variants); the error names the file that failed.
fn companions_in(dir: &Path, prefix: &str) -> Result<Vec<libloading::Library>, String> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| {
            let p = p.to_string_lossy();
            open_now(&p).map_err(|e| format!("{p}: {e}"))
        })
        .collect()
}

/// Opens `which` of the first major in `majors` that loads: from each folder
/// of `search_dirs()` and by name through the loader's path. The error names
/// every name and folder tried, and why a file that exists did not load.
pub fn open(which: Which, majors: &[u32]) -> Result<Lib> {
    let dirs = search_dirs();
    let user_dirs = std::env::var_os(PATH_VAR)
        .map(|p| std::env::split_paths(&p).count())
        .unwrap_or(0);
    let mut failures: Vec<String> = Vec::new();
    for &major in majors {
        let name = which.file_name(major);
        // NEWLLM_CUDA_LIB_PATH first, then the loader's path, then the rest.
        let in_dir = |d: &PathBuf| d.join(&name).to_string_lossy().into_owned();
        let user = dirs.iter().take(user_dirs.min(dirs.len())).map(in_dir);
        let rest = dirs.iter().skip(user_dirs.min(dirs.len())).map(in_dir);
        let candidates: Vec<String> = user
            .chain(std::iter::once(name.clone()))
            .chain(rest)
            .collect();
        for c in candidates {
            if c.contains('/') && !Path::new(&c).exists() {
                continue;
            }
            let companions = match Path::new(&c).parent() {
                Some(dir) if c.contains('/') => companions_in(dir, &which.companion(major)),
                _ => Ok(Vec::new()),
            };
            let companions = match companions {
                Ok(v) => v,
                Err(e) => {
                    failures.push(e);
                    continue;
                }
            };
            match open_now(&c) {
                Ok(lib) => {
                    return Ok(Lib {
                        lib,
                        _companions: companions,
                        path: c,
                        major,
                    })
                }
                // A bare name that is not on the loader's path is expected.
                Err(_) if !c.contains('/') => {}
                Err(e) => failures.push(format!("{c}: {e}")),
            }
        }
    }
    let names: Vec<String> = majors.iter().map(|&m| which.file_name(m)).collect();
    let searched = if dirs.is_empty() {
        "no CUDA toolkit or pip nvidia folder exists here".to_string()
    } else {
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ld = std::env::var("LD_LIBRARY_PATH").unwrap_or_else(|_| "unset".into());
    let why = if failures.is_empty() {
        String::new()
    } else {
        format!("; found but not loadable: {}", failures.join("; "))
    };
    bail!(
        "--device cuda: the {} library could not be loaded (looked for {} through the \
         loader's path, LD_LIBRARY_PATH={ld}, and in: {searched}){why}. Install the CUDA \
         toolkit or pip's {} and set {PATH_VAR} (or LD_LIBRARY_PATH) to the folder that holds \
         it, or use --set device=cpu",
        which.title(),
        names.join(" or "),
        which.wheels(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majors_never_exceed_the_driver() {
        assert_eq!(majors_for_driver(None), vec![13, 12]);
        assert_eq!(majors_for_driver(Some(13000)), vec![13, 12]);
        assert_eq!(majors_for_driver(Some(12080)), vec![12]);
        assert!(majors_for_driver(Some(11080)).is_empty());
    }

    #[test]
    fn a_missing_library_names_what_was_searched() {
        // A major no CUDA release has: nothing can load, whatever is installed.
        let err = open(Which::Cublas, &[99]).err().map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(
            err.starts_with("--device cuda: the cuBLAS library could not be loaded"),
            "{err}"
        );
        assert!(err.contains("looked for libcublas.so.99"), "{err}");
        assert!(err.contains("LD_LIBRARY_PATH="), "{err}");
        assert!(err.contains(PATH_VAR), "{err}");
        assert!(err.contains("nvidia-cublas-cu12"), "{err}");
    }

    #[test]
    fn pip_and_toolkit_folders_are_found() {
        let tmp = std::env::temp_dir().join(format!("newllm-libs-{}", std::process::id()));
        let venv = tmp.join("venv");
        let site = venv.join("lib/python3.12/site-packages/nvidia");
        for d in ["cu13/lib", "cublas/lib", "other/lib"] {
            std::fs::create_dir_all(site.join(d)).unwrap();
        }
        let dirs = dirs_from(&|k| (k == "VIRTUAL_ENV").then(|| venv.clone().into()));
        std::fs::remove_dir_all(&tmp).unwrap();
        let cu13 = dirs.iter().position(|d| d == &site.join("cu13/lib"));
        let cu12 = dirs.iter().position(|d| d == &site.join("cublas/lib"));
        assert!(cu13.is_some() && cu12.is_some(), "{dirs:?}");
        assert!(cu13 < cu12, "CUDA 13 wheels first: {dirs:?}");
        assert!(!dirs.contains(&site.join("other/lib")), "{dirs:?}");
    }
}
