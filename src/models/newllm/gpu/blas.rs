//! cuBLAS, bound by hand: the seven functions this binary calls, resolved
//! from the library `libs::open` found (CUDA 12 and 13 export them with the
//! same C signatures), and one handle whose drop survives a broken context.

use super::libs::{self, Lib, Which};
use anyhow::{bail, Result};
use cudarc::driver::CudaStream;
use std::ffi::{c_char, c_int, c_void};
use std::sync::Arc;

type Handle = *mut c_void;
type Status = c_int;

/// Every cuBLAS symbol the binary uses (the CI test resolves each against
/// both majors).
pub const SYMBOLS: [&str; 7] = [
    "cublasCreate_v2",
    "cublasDestroy_v2",
    "cublasSetStream_v2",
    "cublasSetMathMode",
    "cublasSgemm_v2",
    "cublasGetVersion_v2",
    "cublasGetStatusString",
];

/// `cublasOperation_t`.
pub const OP_N: c_int = 0;
pub const OP_T: c_int = 1;
/// `cublasMath_t`: CUBLAS_DEFAULT_MATH and CUBLAS_TF32_TENSOR_OP_MATH.
const DEFAULT_MATH: c_int = 0;
const TF32_TENSOR_OP_MATH: c_int = 3;

type SgemmFn = unsafe extern "C" fn(
    Handle,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    *const f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    *const f32,
    *mut f32,
    c_int,
) -> Status;

/// The loaded library and its entry points.
pub struct Api {
    pub lib: Lib,
    create: unsafe extern "C" fn(*mut Handle) -> Status,
    destroy: unsafe extern "C" fn(Handle) -> Status,
    set_stream: unsafe extern "C" fn(Handle, *mut c_void) -> Status,
    set_math_mode: unsafe extern "C" fn(Handle, c_int) -> Status,
    sgemm: SgemmFn,
    get_version: unsafe extern "C" fn(Handle, *mut c_int) -> Status,
    status_string: unsafe extern "C" fn(Status) -> *const c_char,
}

impl Api {
    /// Opens cuBLAS of the first of `majors` found and resolves `SYMBOLS`.
    pub fn load(majors: &[u32]) -> Result<Api> {
        let lib = libs::open(Which::Cublas, majors)?;
        // SAFETY: each type is the symbol's signature in cublas_api.h (12.x, 13.x).
        unsafe {
            Ok(Api {
                create: lib.func(SYMBOLS[0])?,
                destroy: lib.func(SYMBOLS[1])?,
                set_stream: lib.func(SYMBOLS[2])?,
                set_math_mode: lib.func(SYMBOLS[3])?,
                sgemm: lib.func(SYMBOLS[4])?,
                get_version: lib.func(SYMBOLS[5])?,
                status_string: lib.func(SYMBOLS[6])?,
                lib,
            })
        }
    }

    fn check(&self, what: &str, s: Status) -> Result<()> {
        if s == 0 {
            return Ok(());
        }
        bail!(
            "cuBLAS {what}: {}",
            libs::status_message(s, self.status_string)
        )
    }
}

/// One cuBLAS handle bound to the stream.
pub struct Blas {
    api: &'static Api,
    handle: Handle,
    stream: Arc<CudaStream>,
    /// cuBLAS's own version, e.g. 130100.
    pub version: i32,
}

impl Blas {
    /// A handle on `stream` (its context must be current on this thread).
    pub fn new(api: &'static Api, stream: Arc<CudaStream>, allow_tf32: bool) -> Result<Blas> {
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: writes one handle.
        api.check("create", unsafe { (api.create)(&mut handle) })?;
        let mut blas = Blas {
            api,
            handle,
            stream,
            version: 0,
        };
        let mode = if allow_tf32 {
            TF32_TENSOR_OP_MATH
        } else {
            DEFAULT_MATH
        };
        // SAFETY: a live handle and a live stream (held by `blas`).
        unsafe {
            api.check(
                "set stream",
                (api.set_stream)(handle, blas.stream.cu_stream() as *mut c_void),
            )?;
            api.check("math mode", (api.set_math_mode)(handle, mode))?;
            api.check("version", (api.get_version)(handle, &mut blas.version))?;
        }
        Ok(blas)
    }

    /// Column-major `C = alpha op(A) op(B) + beta C` (cublasSgemm).
    ///
    /// # Safety
    /// The pointers are device addresses of buffers large enough for the
    /// shapes and leading dimensions given.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn sgemm(
        &self,
        (op_a, op_b): (c_int, c_int),
        (m, n, k): (c_int, c_int, c_int),
        alpha: f32,
        (a, lda): (u64, c_int),
        (b, ldb): (u64, c_int),
        beta: f32,
        (c, ldc): (u64, c_int),
    ) -> Result<()> {
        // SAFETY: the caller's contract; alpha and beta live on this stack
        // frame (host pointer mode) until the call returns.
        let s = unsafe {
            (self.api.sgemm)(
                self.handle,
                op_a,
                op_b,
                m,
                n,
                k,
                &alpha,
                a as *const f32,
                lda,
                b as *const f32,
                ldb,
                &beta,
                c as *mut f32,
                ldc,
            )
        };
        self.api.check("sgemm", s)
    }
}

impl Drop for Blas {
    /// After a sticky GPU fault the context is broken and destroying the
    /// handle fails; the handle is then left for the process exit to reclaim
    /// (cudarc's CudaBlas unwraps here, turning the fault's clear error into
    /// a panic).
    fn drop(&mut self) {
        if let Err(e) = self.stream.synchronize() {
            eprintln!("note: the GPU context is broken ({e:?}); the cuBLAS handle is left open");
            return;
        }
        // SAFETY: the handle is live and no work is queued on it.
        let s = unsafe { (self.api.destroy)(self.handle) };
        if let Err(e) = self.api.check("destroy", s) {
            eprintln!("note: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resolves every symbol in SYMBOLS, and (RTLD_NOW) everything cuBLAS
    /// imports from its cuBLASLt, in cuBLAS 12 and 13: dlopen and dlsym need
    /// no GPU. CI installs both from PyPI and sets NEWLLM_REQUIRE_CUDA_LIBS=1,
    /// which makes a missing library a failure; elsewhere it is skipped.
    #[test]
    fn every_symbol_resolves_in_cublas_12_and_13() {
        let required = std::env::var("NEWLLM_REQUIRE_CUDA_LIBS").is_ok_and(|v| v == "1");
        for major in [12, 13] {
            match Api::load(&[major]) {
                Ok(api) => {
                    assert_eq!(api.lib.major, major);
                    assert!(api.lib.path.ends_with(&format!("libcublas.so.{major}")));
                    eprintln!(
                        "cuBLAS {major}: {} symbols from {}",
                        SYMBOLS.len(),
                        api.lib.path
                    );
                }
                Err(e) if !required => eprintln!("skipped cuBLAS {major}: {e}"),
                Err(e) => panic!("NEWLLM_REQUIRE_CUDA_LIBS=1: {e}"),
            }
        }
    }
}
