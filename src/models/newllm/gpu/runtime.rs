//! The CUDA runtime side: loading the driver, cuBLAS and NVRTC at run time,
//! one device with one created stream, raw-pointer buffers, kernel launches,
//! GEMM calls and CUDA-graph capture. Everything else in gpu/ builds on it.

use super::blas::{self, Blas};
use super::gemm;
use super::kernels;
use super::libs;
use super::nvrtc::{self, Target};
use crate::ops::Trans;
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{
    result as drv, sys as drv_sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream,
    DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

pub const NO_DRIVER: &str =
    "--device cuda: no CUDA driver could be loaded (libcuda.so.1 not found); \
install the NVIDIA driver or use --set device=cpu";

/// cuBLAS and NVRTC, loaded once per process.
pub struct Libraries {
    pub blas: blas::Api,
    pub nvrtc: nvrtc::Api,
    /// The driver's CUDA version, e.g. 13000 (None where no driver loads:
    /// `newllm cuda-check --no-device`).
    pub driver: Option<i32>,
}

impl Libraries {
    /// cuBLAS and NVRTC of a major the driver runs (all of libs::MAJORS
    /// when the driver is unknown).
    pub fn load(driver: Option<i32>) -> Result<Libraries> {
        let majors = libs::majors_for_driver(driver);
        if let (Some(d), true) = (driver, majors.is_empty()) {
            bail!(
                "--device cuda: the NVIDIA driver supports CUDA {}, older than CUDA 12, the \
                 oldest this binary runs on; update the driver or use --set device=cpu",
                cuda_version(d)
            );
        }
        Ok(Libraries {
            blas: blas::Api::load(&majors)?,
            nvrtc: nvrtc::Api::load(&majors)?,
            driver,
        })
    }
}

/// The driver's CUDA version (e.g. 13000), or None where no driver loads.
pub fn driver_version() -> Result<Option<i32>> {
    // SAFETY: only tries to dlopen the driver.
    if !unsafe { drv_sys::is_culib_present() } {
        return Ok(None);
    }
    let mut v = 0;
    // SAFETY: writes one int; needs no cuInit.
    let got = guarded("reading the driver version", || {
        Ok(unsafe { drv_sys::cuDriverGetVersion(&mut v) })
    })?;
    got.result()
        .map_err(|e| anyhow!("--device cuda: the driver's version could not be read: {e:?}"))?;
    Ok(Some(v))
}

/// The process's libraries, loaded on first use, before any cudarc call
/// that would panic on a missing library.
pub fn libraries() -> Result<&'static Libraries> {
    static LIBS: OnceLock<Libraries> = OnceLock::new();
    if let Some(l) = LIBS.get() {
        return Ok(l);
    }
    let Some(driver) = driver_version()? else {
        bail!(NO_DRIVER);
    };
    let l = Libraries::load(Some(driver))?;
    Ok(LIBS.get_or_init(|| l))
}

/// "13.0" from a CUDA version number such as 13000.
pub fn cuda_version(v: i32) -> String {
    format!("{}.{}", v / 1000, v % 1000 / 10)
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
    blas: Blas,
    funcs: HashMap<&'static str, CudaFunction>,
    pub name: String,
    /// What was loaded: driver, cuBLAS and NVRTC (versions, files) and the
    /// kernels' image kind, printed at open and recorded by the bench.
    pub loaded: String,
    peak: Cell<u64>,
}

/// Compiles the kernels for SM `sm` and loads them: a CUBIN where this
/// NVRTC knows the architecture and the driver loads it, else PTX for the
/// newest architecture NVRTC knows up to `sm` (see nvrtc.rs). Returns the
/// module and what was loaded.
fn load_kernels(
    ctx: &Arc<CudaContext>,
    libs: &Libraries,
    sm: u32,
) -> Result<(Arc<CudaModule>, String)> {
    let nv = &libs.nvrtc;
    let (maj, min) = nv.version()?;
    let archs = nv.supported_archs()?;
    let cubin = if archs.contains(&sm) {
        nv.compile(kernels::SOURCE, Target::Cubin(sm))
            .and_then(|c| {
                let m = ctx
                    .load_module(Ptx::from_binary(c.image.clone()))
                    .map_err(|e| anyhow!("the driver refused the CUBIN: {e:?}"))?;
                Ok((m, c))
            })
            .map_err(|e| e.to_string())
    } else {
        Err(format!("NVRTC {maj}.{min} cannot compile for sm_{sm}"))
    };
    let why = match cubin {
        Ok((m, c)) => {
            let usage = nvrtc::usage_summary(&nvrtc::parse_usage(&c.log));
            return Ok((m, format!("{} ({usage})", c.target)));
        }
        Err(why) => why,
    };
    let Some(&ptx_sm) = archs.iter().rfind(|&&a| a <= sm) else {
        bail!(
            "--device cuda: NVRTC {maj}.{min} ({}) supports no architecture up to this GPU's \
             sm_{sm}; use an older NVRTC or --set device=cpu",
            nv.lib.path
        );
    };
    eprintln!("note: no CUBIN ({why}); loading PTX for compute_{ptx_sm} instead");
    let c = nv.compile(kernels::SOURCE, Target::Ptx(ptx_sm))?;
    let text = String::from_utf8(c.image).context("NVRTC wrote PTX that is not UTF-8")?;
    let m = ctx.load_module(Ptx::from_src(text)).map_err(|e| {
        anyhow!(
            "--device cuda: the driver (CUDA {}) could not load the PTX of NVRTC {maj}.{min} \
             ({e:?}); a driver refuses PTX newer than itself, so use an NVRTC no newer than the \
             driver (set {} to its folder) or update the driver. The CUBIN had failed first: {why}",
            libs.driver.map_or("unknown".into(), cuda_version),
            libs::PATH_VAR
        )
    })?;
    Ok((m, Target::Ptx(ptx_sm).to_string()))
}

impl Dev {
    /// Opens GPU 0: loads the libraries, creates the context, compiles the kernels.
    pub fn open(allow_tf32: bool) -> Result<Dev> {
        let libs = libraries()?;
        guarded("opening the GPU", || Self::open_inner(libs, allow_tf32))
    }

    pub(crate) fn open_inner(libs: &'static Libraries, allow_tf32: bool) -> Result<Dev> {
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
        ctx.bind_to_thread()
            .map_err(|e| anyhow!("--device cuda: cannot make the context current: {e:?}"))?;
        let blas = Blas::new(&libs.blas, stream.clone(), allow_tf32)?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| anyhow!("compute capability: {e:?}"))?;
        let sm = (major * 10 + minor) as u32;
        let (module, kernels_loaded) = load_kernels(&ctx, libs, sm)?;
        let mut funcs = HashMap::new();
        for name in kernels::ENTRY_POINTS {
            let f = module
                .load_function(name)
                .map_err(|e| anyhow!("kernel {name}: {e:?}"))?;
            funcs.insert(name, f);
        }
        let name = ctx.name().unwrap_or_else(|_| "GPU 0".into());
        let (nv_major, nv_minor) = libs.nvrtc.version()?;
        let loaded = format!(
            "driver CUDA {}; cuBLAS {}.{}.{} ({}); NVRTC {nv_major}.{nv_minor} ({}); kernels {kernels_loaded}",
            libs.driver.map_or("unknown".into(), cuda_version),
            blas.version / 10000,
            blas.version / 100 % 100,
            blas.version % 100,
            libs.blas.lib.path,
            libs.nvrtc.lib.path,
        );
        eprintln!("gpu: {name} (sm_{sm}): {loaded}");
        let dev = Dev {
            ctx,
            stream,
            blas,
            funcs,
            name,
            loaded,
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
        if block.0 * block.1 > kernels::launch_bound(name) {
            bail!(
                "kernel {name}: a block of {} threads is over its __launch_bounds__ of {}",
                block.0 * block.1,
                kernels::launch_bound(name)
            );
        }
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
            gemm::Op::N => blas::OP_N,
            gemm::Op::T => blas::OP_T,
        };
        let i = |v: usize| v as i32;
        // SAFETY: the operands are live device buffers sized by the callers,
        // which mirror ops::matmul's bounds-checked calls.
        unsafe {
            self.blas.sgemm(
                (op(g.op_first), op(g.op_second)),
                (i(g.m), i(g.n), i(g.k)),
                1.0,
                (b, i(g.ld_first)),
                (a, i(g.ld_second)),
                if accumulate { 1.0 } else { 0.0 },
                (c, i(g.ldc)),
            )
        }
        .map_err(|e| anyhow!("{e} ({t:?} {m}x{n}x{k})"))
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
