//! The CUDA runtime side: loading the driver, cuBLAS and NVRTC at run time,
//! one device with one created stream, raw-pointer buffers, kernel launches,
//! GEMM calls and CUDA-graph capture. Everything else in gpu/ builds on it.

use super::gemm;
use super::kernels;
use crate::ops::Trans;
use anyhow::{anyhow, bail, Context, Result};
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{
    result as drv, sys as drv_sys, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr,
    DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

pub const NO_DRIVER: &str =
    "--device cuda: no CUDA driver could be loaded (libcuda.so.1 not found); \
install the NVIDIA driver or use --set device=cpu";

/// Checks that the three run-time libraries can be loaded, before any
/// cudarc call that would panic on a missing library.
pub fn check_libraries() -> Result<()> {
    // SAFETY: these only try to dlopen the candidate library names.
    if !unsafe { drv_sys::is_culib_present() } {
        bail!(NO_DRIVER);
    }
    if !unsafe { blas_sys::is_culib_present() } {
        bail!(
            "--device cuda: the cuBLAS library could not be loaded (libcublas.so.12 not found); \
             install the CUDA runtime libraries (CUDA toolkit, or pip nvidia-cublas-cu12) and add \
             their directory to LD_LIBRARY_PATH, or use --set device=cpu"
        );
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        bail!(
            "--device cuda: the NVRTC library could not be loaded (libnvrtc.so.12 not found); \
             install the CUDA runtime libraries (CUDA toolkit, or pip nvidia-cuda-nvrtc-cu12) and \
             add their directory to LD_LIBRARY_PATH, or use --set device=cpu"
        );
    }
    Ok(())
}

/// Runs `f`, turning a panic inside cudarc (e.g. a missing symbol in an old
/// driver) into an error.
pub fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            bail!("--device cuda: {what} failed inside the CUDA libraries: {msg}")
        }
    }
}

/// A device allocation addressed by its raw pointer (see the module comment).
pub struct Buf<T> {
    _mem: CudaSlice<T>,
    pub ptr: u64,
    pub len: usize,
}

impl<T> Buf<T> {
    /// Device address of element `off`.
    pub fn at(&self, off: usize) -> u64 {
        self.ptr + (off * std::mem::size_of::<T>()) as u64
    }
}

/// A kernel argument.
#[derive(Clone, Copy)]
pub enum Arg {
    /// A device pointer (0 = NULL).
    P(u64),
    I(i32),
    L(i64),
    U(u64),
    F(f32),
    D(f64),
}

pub fn dims(n: usize) -> u32 {
    n.div_ceil(kernels::ROW_THREADS as usize) as u32
}

/// One GPU: context, stream, cuBLAS handle and the compiled kernels.
pub struct Dev {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    blas: CudaBlas,
    funcs: HashMap<&'static str, CudaFunction>,
    pub name: String,
    peak: Cell<u64>,
}

impl Dev {
    /// Opens GPU 0: checks the libraries, creates the context, compiles the kernels.
    pub fn open(allow_tf32: bool) -> Result<Dev> {
        check_libraries()?;
        guarded("opening the GPU", || Self::open_inner(allow_tf32))
    }

    pub(crate) fn open_inner(allow_tf32: bool) -> Result<Dev> {
        let count = CudaContext::device_count().map_err(|e| {
            anyhow!(
                "--device cuda: the CUDA driver could not be initialised ({e:?}); is a GPU \
                     visible to this process? Use --set device=cpu otherwise"
            )
        })?;
        if count < 1 {
            bail!("--device cuda: the CUDA driver is loaded but sees no GPU; use --set device=cpu");
        }
        let ctx = CudaContext::new(0)
            .map_err(|e| anyhow!("--device cuda: cannot create a context on GPU 0: {e:?}"))?;
        // One stream, stream-ordered raw pointers: no per-buffer events needed.
        // SAFETY: nothing here uses a second stream.
        unsafe { ctx.disable_event_tracking() };
        // A created stream: the legacy NULL stream cannot be captured into a graph.
        let stream = ctx
            .new_stream()
            .map_err(|e| anyhow!("--device cuda: cannot create a stream: {e:?}"))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| anyhow!("cuBLAS: {e:?}"))?;
        let mode = if allow_tf32 {
            blas_sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH
        } else {
            blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH
        };
        // SAFETY: the handle is live for `blas`'s lifetime.
        unsafe { blas_sys::cublasSetMathMode(*blas.handle(), mode) }
            .result()
            .map_err(|e| anyhow!("cuBLAS math mode: {e:?}"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| anyhow!("compute capability: {e:?}"))?;
        // PTX for the device's virtual architecture; the driver JITs it once.
        let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
        let opts = cudarc::nvrtc::CompileOptions {
            fmad: Some(false),
            arch: Some(arch),
            ..Default::default()
        };
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(kernels::SOURCE, opts)
            .map_err(|e| anyhow!("NVRTC could not compile the kernels: {e:?}"))?;
        let module = ctx
            .load_module(ptx)
            .map_err(|e| anyhow!("loading the kernel module: {e:?}"))?;
        let mut funcs = HashMap::new();
        for name in kernels::ENTRY_POINTS {
            let f = module
                .load_function(name)
                .map_err(|e| anyhow!("kernel {name}: {e:?}"))?;
            funcs.insert(name, f);
        }
        let name = ctx.name().unwrap_or_else(|_| "GPU 0".into());
        let dev = Dev {
            ctx,
            stream,
            blas,
            funcs,
            name,
            peak: Cell::new(0),
        };
        dev.sample_memory();
        Ok(dev)
    }

    /// Records device memory in use (total - free) if it is a new peak.
    pub fn sample_memory(&self) {
        if let Ok((free, total)) = self.ctx.mem_get_info() {
            let used = total.saturating_sub(free) as u64;
            if used > self.peak.get() {
                self.peak.set(used);
            }
        }
    }

    /// Peak device memory in use seen by `sample_memory` (whole device).
    pub fn peak_bytes(&self) -> u64 {
        self.peak.get()
    }

    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<Buf<T>> {
        // a zero-length allocation is not valid on every driver
        let mem = self
            .stream
            .alloc_zeros::<T>(len.max(1))
            .map_err(|e| anyhow!("GPU allocation of {len} elements failed: {e:?}"))?;
        let (ptr, guard) = mem.device_ptr(&self.stream);
        drop(guard);
        self.sample_memory();
        Ok(Buf {
            _mem: mem,
            ptr,
            len,
        })
    }

    pub fn upload<T: DeviceRepr + ValidAsZeroBits>(&self, data: &[T]) -> Result<Buf<T>> {
        let b = self.zeros::<T>(data.len())?;
        self.write(&b, 0, data)?;
        Ok(b)
    }

    /// Copies `data` into `buf` starting at element `off`.
    pub fn write<T: DeviceRepr>(&self, buf: &Buf<T>, off: usize, data: &[T]) -> Result<()> {
        if off + data.len() > buf.len {
            bail!("GPU write out of bounds");
        }
        if data.is_empty() {
            return Ok(());
        }
        // SAFETY: bounds checked above; the host slice outlives the call and
        // the copy is synchronised before returning.
        unsafe { drv::memcpy_htod_async(buf.at(off), data, self.stream.cu_stream()) }
            .map_err(|e| anyhow!("host-to-device copy: {e:?}"))?;
        self.sync()
    }

    /// Reads `len` elements at device address `ptr`.
    pub fn read<T: DeviceRepr + Default + Clone>(&self, ptr: u64, len: usize) -> Result<Vec<T>> {
        let mut v = vec![T::default(); len];
        if len > 0 {
            // SAFETY: callers pass addresses inside live buffers; synchronised below.
            unsafe { drv::memcpy_dtoh_async(&mut v, ptr, self.stream.cu_stream()) }
                .map_err(|e| anyhow!("device-to-host copy: {e:?}"))?;
        }
        self.sync()?;
        Ok(v)
    }

    pub fn copy_f32(&self, dst: u64, src: u64, count: usize) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        // SAFETY: callers pass addresses inside live buffers.
        unsafe { drv::memcpy_dtod_async(dst, src, count * 4, self.stream.cu_stream()) }
            .map_err(|e| anyhow!("device copy: {e:?}"))
    }

    pub fn zero_bytes(&self, dst: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: callers pass addresses inside live buffers.
        unsafe { drv::memset_d8_async(dst, 0, bytes, self.stream.cu_stream()) }
            .map_err(|e| anyhow!("device memset: {e:?}"))
    }

    pub fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| anyhow!("GPU error: {e:?}"))
    }

    /// Launches kernel `name` on the stream.
    pub fn launch(
        &self,
        name: &str,
        grid: (u32, u32),
        block: (u32, u32),
        args: &[Arg],
    ) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 {
            return Ok(());
        }
        let f = self
            .funcs
            .get(name)
            .with_context(|| format!("kernel {name} was not loaded"))?;
        let mut b = self.stream.launch_builder(f);
        for a in args {
            match a {
                Arg::P(v) | Arg::U(v) => b.arg(v),
                Arg::I(v) => b.arg(v),
                Arg::L(v) => b.arg(v),
                Arg::F(v) => b.arg(v),
                Arg::D(v) => b.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: (grid.0, grid.1, 1),
            block_dim: (block.0, block.1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: each kernel's argument list is written next to its launch
        // and matches the kernel signature in kernels.rs.
        unsafe { b.launch(cfg) }.map_err(|e| anyhow!("kernel {name}: {e:?}"))?;
        Ok(())
    }

    /// Elementwise launch over `n` items, ROW_THREADS per block.
    pub(crate) fn launch_n(&self, name: &str, n: usize, args: &[Arg]) -> Result<()> {
        self.launch(name, (dims(n), 1), (kernels::ROW_THREADS, 1), args)
    }

    /// One block per row.
    pub(crate) fn launch_rows(&self, name: &str, rows: usize, args: &[Arg]) -> Result<()> {
        self.launch(name, (rows as u32, 1), (kernels::ROW_THREADS, 1), args)
    }

    /// Row-major `C (m x n, ldc) (+)= op(A) op(B)`, as `ops::matmul`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        c: u64,
        ldc: usize,
        a: u64,
        lda: usize,
        b: u64,
        ldb: usize,
        t: Trans,
        (m, n, k): (usize, usize, usize),
        accumulate: bool,
    ) -> Result<()> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        let g = gemm::colmajor(t, m, n, k, lda, ldb, ldc);
        let op = |o: gemm::Op| match o {
            gemm::Op::N => blas_sys::cublasOperation_t::CUBLAS_OP_N,
            gemm::Op::T => blas_sys::cublasOperation_t::CUBLAS_OP_T,
        };
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
        // SAFETY: the operands are live device buffers sized by the callers,
        // which mirror ops::matmul's bounds-checked calls.
        unsafe {
            blas::sgemm(
                *self.blas.handle(),
                op(g.op_first),
                op(g.op_second),
                g.m as i32,
                g.n as i32,
                g.k as i32,
                &alpha,
                b as *const f32,
                g.ld_first as i32,
                a as *const f32,
                g.ld_second as i32,
                &beta,
                c as *mut f32,
                g.ldc as i32,
            )
        }
        .map_err(|e| anyhow!("cuBLAS sgemm {t:?} {m}x{n}x{k}: {e:?}"))
    }

    /// `sum[i] (+)= ...` column reductions (see the kernel).
    pub(crate) fn col_reduce(
        &self,
        rows: usize,
        n: usize,
        a: u64,
        b: u64,
        sum_ab: u64,
        sum_a: u64,
    ) -> Result<()> {
        self.launch(
            "col_reduce",
            (n.div_ceil(32) as u32, 1),
            (32, 32),
            &[
                Arg::I(rows as i32),
                Arg::I(n as i32),
                Arg::P(a),
                Arg::P(b),
                Arg::P(sum_ab),
                Arg::P(sum_a),
            ],
        )
    }
}

/// Captures the launches `f` makes on the stream into an instantiated graph.
pub fn capture(dev: &Dev, f: impl FnOnce() -> Result<()>) -> Result<cudarc::driver::CudaGraph> {
    dev.stream
        .begin_capture(drv_sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(|e| anyhow!("begin capture: {e:?}"))?;
    let launched = f();
    // End the capture whatever happened, so the stream is usable again.
    let graph = dev
        .stream
        .end_capture(drv_sys::CUgraphInstantiate_flags(0))
        .map_err(|e| anyhow!("end capture: {e:?}"))?;
    launched?;
    graph.context("the captured graph is empty")
}
