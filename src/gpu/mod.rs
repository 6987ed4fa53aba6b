//! The GPU pipeline (`--features cuda`, `device = "cuda"`): the model's flat
//! ParamSets live in device buffers; GEMMs go to cuBLAS (row-major through
//! the transpose trick in gemm.rs, TF32 off unless `cuda_allow_tf32`);
//! everything else is CUDA C in kernels.rs, compiled by NVRTC at start-up.
//! The driver, cuBLAS and NVRTC are loaded at run time (cudarc's dynamic
//! loading), so building needs no CUDA toolkit and a machine without a
//! driver gets an error, not a crash.
//!
//! Device memory is addressed by raw pointers (`Buf::ptr`) on one stream:
//! every operation is stream-ordered, so cudarc's per-buffer event tracking
//! is switched off and sub-ranges (a layer's weights inside a ParamSet, a
//! column block of W) are plain pointer offsets, as in the CPU code.
//!
//! The module mirrors model.rs / phase1.rs / phase2.rs / cache.rs function
//! for function; the comments there explain the algorithm.

pub mod bench;
mod engine;
pub mod gemm;
pub mod kernels;

pub use engine::GpuEngine;

use crate::model::{Block, Layer};
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
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
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

fn dims(n: usize) -> u32 {
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

    fn open_inner(allow_tf32: bool) -> Result<Dev> {
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
    fn launch_n(&self, name: &str, n: usize, args: &[Arg]) -> Result<()> {
        self.launch(name, (dims(n), 1), (kernels::ROW_THREADS, 1), args)
    }

    /// One block per row.
    fn launch_rows(&self, name: &str, rows: usize, args: &[Arg]) -> Result<()> {
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
    fn col_reduce(
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

/// A block's parameters on the device, with its layer table.
pub struct GpuBlock {
    pub params: Buf<f32>,
    pub layers: Vec<Layer>,
}

impl GpuBlock {
    pub fn upload(dev: &Dev, block: &Block) -> Result<GpuBlock> {
        Ok(GpuBlock {
            params: dev.upload(&block.params.data)?,
            layers: block.layers.clone(),
        })
    }
    fn p(&self, off: usize) -> u64 {
        self.params.at(off)
    }
}

fn res_in(l: &Layer) -> usize {
    if l.residual_is_a {
        l.in_a
    } else {
        l.in_b
    }
}

/// What a layer keeps for its backward (model::LayerActs on the device).
pub struct LayerBufs {
    pub h: Buf<f32>,
    pub xhat: Buf<f32>,
    pub rstd: Buf<f32>,
    pub y: Buf<f32>,
}

/// model::BlockActs on the device.
pub struct BlockBufs {
    pub cap: usize,
    pub layers: Vec<LayerBufs>,
    d_a: Buf<f32>,
    d_b: Buf<f32>,
    dz: Buf<f32>,
}

impl BlockBufs {
    pub fn new(dev: &Dev, layers: &[Layer], cap: usize) -> Result<BlockBufs> {
        let widest = layers
            .iter()
            .flat_map(|l| [l.out, l.in_a, l.in_b])
            .max()
            .unwrap_or(0);
        let mut ls = Vec::new();
        for l in layers {
            ls.push(LayerBufs {
                h: dev.zeros(cap * l.out)?,
                xhat: dev.zeros(cap * l.out)?,
                rstd: dev.zeros(cap)?,
                y: dev.zeros(cap * l.out)?,
            });
        }
        Ok(BlockBufs {
            cap,
            layers: ls,
            d_a: dev.zeros(cap * widest)?,
            d_b: dev.zeros(cap * widest)?,
            dz: dev.zeros(cap * widest)?,
        })
    }
    pub fn last(&self) -> u64 {
        self.layers[self.layers.len() - 1].y.ptr
    }
}

/// model::layer_forward: GEMMs on cuBLAS, then the fused epilogue.
fn layer_forward(
    dev: &Dev,
    blk: &GpuBlock,
    l: &Layer,
    a: u64,
    b: u64,
    rows: usize,
    acts: &LayerBufs,
) -> Result<()> {
    let (out, it, r) = (l.out, l.in_a + l.in_b, res_in(l));
    dev.gemm(
        acts.h.ptr,
        out,
        a,
        l.in_a,
        blk.p(l.w),
        it,
        Trans::NT,
        (rows, out, l.in_a),
        false,
    )?;
    if l.in_b > 0 {
        dev.gemm(
            acts.h.ptr,
            out,
            b,
            l.in_b,
            blk.p(l.w + l.in_a),
            it,
            Trans::NT,
            (rows, out, l.in_b),
            true,
        )?;
    }
    let res = if l.residual_is_a { a } else { b };
    let pbias = match l.proj {
        Some((pw, pb)) => {
            dev.gemm(
                acts.y.ptr,
                out,
                res,
                r,
                blk.p(pw),
                r,
                Trans::NT,
                (rows, out, r),
                false,
            )?;
            blk.p(pb)
        }
        None => 0,
    };
    ln_fused(dev, blk, l, rows, acts, res, pbias)
}

fn ln_fused(
    dev: &Dev,
    blk: &GpuBlock,
    l: &Layer,
    rows: usize,
    acts: &LayerBufs,
    res: u64,
    pbias: u64,
) -> Result<()> {
    dev.launch_rows(
        "ln_fwd_fused",
        rows,
        &[
            Arg::I(rows as i32),
            Arg::I(l.out as i32),
            Arg::P(acts.h.ptr),
            Arg::P(blk.p(l.b)),
            Arg::P(res),
            Arg::P(pbias),
            Arg::I(i32::from(l.proj.is_some())),
            Arg::P(blk.p(l.ln_g)),
            Arg::P(blk.p(l.ln_b)),
            Arg::P(acts.xhat.ptr),
            Arg::P(acts.rstd.ptr),
            Arg::P(acts.y.ptr),
        ],
    )
}

/// model::layer_backward. `dy` is consumed (becomes dh); `dz` is scratch.
#[allow(clippy::too_many_arguments)]
fn layer_backward(
    dev: &Dev,
    blk: &GpuBlock,
    grad: &Buf<f32>,
    l: &Layer,
    (a, b): (u64, u64),
    rows: usize,
    acts: &LayerBufs,
    dy: u64,
    dz: u64,
    dres: Option<u64>,
) -> Result<()> {
    let (out, it, r) = (l.out, l.in_a + l.in_b, res_in(l));
    // dg, db from dy before ln_bwd overwrites it
    dev.col_reduce(
        rows,
        out,
        dy,
        acts.xhat.ptr,
        grad.at(l.ln_g),
        grad.at(l.ln_b),
    )?;
    dev.launch_rows(
        "ln_bwd",
        rows,
        &[
            Arg::I(rows as i32),
            Arg::I(out as i32),
            Arg::P(dy),
            Arg::P(acts.xhat.ptr),
            Arg::P(acts.rstd.ptr),
            Arg::P(blk.p(l.ln_g)),
            Arg::P(acts.h.ptr),
            Arg::P(dz),
        ],
    )?;
    let dh = dy;
    dev.col_reduce(rows, out, dh, 0, 0, grad.at(l.b))?;
    dev.gemm(
        grad.at(l.w),
        it,
        dh,
        out,
        a,
        l.in_a,
        Trans::TN,
        (out, l.in_a, rows),
        true,
    )?;
    if l.in_b > 0 {
        dev.gemm(
            grad.at(l.w + l.in_a),
            it,
            dh,
            out,
            b,
            l.in_b,
            Trans::TN,
            (out, l.in_b, rows),
            true,
        )?;
    }
    let res = if l.residual_is_a { a } else { b };
    if let Some((pw, pb)) = l.proj {
        dev.gemm(
            grad.at(pw),
            r,
            dz,
            out,
            res,
            r,
            Trans::TN,
            (out, r, rows),
            true,
        )?;
        dev.col_reduce(rows, out, dz, 0, 0, grad.at(pb))?;
    }
    if let Some(dres) = dres {
        match l.proj {
            Some((pw, _)) => dev.gemm(
                dres,
                r,
                dz,
                out,
                blk.p(pw),
                r,
                Trans::NN,
                (rows, r, out),
                false,
            )?,
            None => dev.copy_f32(dres, dz, rows * r)?,
        }
        let start = if l.residual_is_a { 0 } else { l.in_a };
        dev.gemm(
            dres,
            r,
            dh,
            out,
            blk.p(l.w + start),
            it,
            Trans::NN,
            (rows, r, out),
            true,
        )?;
    }
    Ok(())
}

/// Model::context_forward.
pub fn context_forward(
    dev: &Dev,
    blk: &GpuBlock,
    c: u64,
    x: u64,
    rows: usize,
    acts: &BlockBufs,
) -> Result<()> {
    for (i, l) in blk.layers.iter().enumerate() {
        let a = if i == 0 { c } else { acts.layers[i - 1].y.ptr };
        let b = if l.in_b > 0 { x } else { 0 };
        layer_forward(dev, blk, l, a, b, rows, &acts.layers[i])?;
    }
    Ok(())
}

/// Model::context_backward from `dout` (consumed).
pub fn context_backward(
    dev: &Dev,
    blk: &GpuBlock,
    grad: &Buf<f32>,
    (c, x): (u64, u64),
    rows: usize,
    acts: &BlockBufs,
    dout: u64,
) -> Result<()> {
    let n = blk.layers.len();
    // dL/d(layer output) starts as `dout`, then ping-pongs between d_a and
    // d_b on the way down (the k-th layer from the top writes d_a when k is even).
    let bufs = [acts.d_a.ptr, acts.d_b.ptr];
    for (k, i) in (0..n).rev().enumerate() {
        let l = &blk.layers[i];
        let a = if i == 0 { c } else { acts.layers[i - 1].y.ptr };
        let b = if l.in_b > 0 { x } else { 0 };
        let dy = if k == 0 { dout } else { bufs[(k - 1) % 2] };
        layer_backward(
            dev,
            blk,
            grad,
            l,
            (a, b),
            rows,
            &acts.layers[i],
            dy,
            acts.dz.ptr,
            (i > 0).then_some(bufs[k % 2]),
        )?;
    }
    Ok(())
}

/// The TokenBlock + head on the device (offsets of the head in its ParamSet).
pub struct TokenParts {
    pub head_w: usize,
    pub head_b: usize,
    pub vocab: usize,
    pub embed: usize,
}

/// Model::token_forward; logits (rows x V) into `logits`.
#[allow(clippy::too_many_arguments)]
pub fn token_forward(
    dev: &Dev,
    blk: &GpuBlock,
    parts: &TokenParts,
    ctx: &BlockBufs,
    x: u64,
    rows: usize,
    acts: &BlockBufs,
    logits: u64,
) -> Result<()> {
    for (i, l) in blk.layers.iter().enumerate() {
        let b = if i == 0 { x } else { acts.layers[i - 1].y.ptr };
        layer_forward(dev, blk, l, ctx.layers[i].y.ptr, b, rows, &acts.layers[i])?;
    }
    let (v, e) = (parts.vocab, parts.embed);
    dev.gemm(
        logits,
        v,
        acts.last(),
        e,
        blk.p(parts.head_w),
        e,
        Trans::NT,
        (rows, v, e),
        false,
    )?;
    dev.launch_n(
        "add_bias",
        rows * v,
        &[
            Arg::I(rows as i32),
            Arg::I(v as i32),
            Arg::P(logits),
            Arg::P(blk.p(parts.head_b)),
        ],
    )
}

/// Model::token_backward from `dlogits` (rows x V).
#[allow(clippy::too_many_arguments)]
pub fn token_backward(
    dev: &Dev,
    blk: &GpuBlock,
    parts: &TokenParts,
    grad: &Buf<f32>,
    ctx: &BlockBufs,
    x: u64,
    rows: usize,
    acts: &BlockBufs,
    dlogits: u64,
) -> Result<()> {
    let (v, e) = (parts.vocab, parts.embed);
    let n = blk.layers.len();
    dev.gemm(
        grad.at(parts.head_w),
        e,
        dlogits,
        v,
        acts.last(),
        e,
        Trans::TN,
        (v, e, rows),
        true,
    )?;
    dev.col_reduce(rows, v, dlogits, 0, 0, grad.at(parts.head_b))?;
    dev.gemm(
        acts.d_a.ptr,
        e,
        dlogits,
        v,
        blk.p(parts.head_w),
        e,
        Trans::NN,
        (rows, e, v),
        false,
    )?;
    let (mut dy, mut spare) = (acts.d_a.ptr, acts.d_b.ptr);
    for i in (0..n).rev() {
        let l = &blk.layers[i];
        let b = if i == 0 { x } else { acts.layers[i - 1].y.ptr };
        let dres = (i > 0).then_some(spare);
        layer_backward(
            dev,
            blk,
            grad,
            l,
            (ctx.layers[i].y.ptr, b),
            rows,
            &acts.layers[i],
            dy,
            acts.dz.ptr,
            dres,
        )?;
        std::mem::swap(&mut dy, &mut spare);
    }
    Ok(())
}

/// Global gradient norm (f64) and the clip scaling (ops::clip_grad_norm).
pub fn clip_grad_norm(dev: &Dev, grad: &Buf<f32>, partial: &Buf<f64>, clip: f64) -> Result<f64> {
    dev.launch(
        "sumsq_partial",
        (kernels::SUMSQ_BLOCKS, 1),
        (kernels::ROW_THREADS, 1),
        &[
            Arg::L(grad.len as i64),
            Arg::P(grad.ptr),
            Arg::P(partial.ptr),
        ],
    )?;
    let parts: Vec<f64> = dev.read(partial.ptr, kernels::SUMSQ_BLOCKS as usize)?;
    let norm = parts.iter().sum::<f64>().sqrt();
    let coef = clip / (norm + 1e-6);
    if coef < 1.0 {
        dev.launch_n(
            "scale_f32",
            grad.len,
            &[
                Arg::L(grad.len as i64),
                Arg::P(grad.ptr),
                Arg::F(coef as f32),
            ],
        )?;
    }
    Ok(norm)
}

/// ops::Adam on the device.
pub struct GpuAdam {
    pub lr: f64,
    pub m: Buf<f32>,
    pub v: Buf<f32>,
    pub t: u32,
}

impl GpuAdam {
    pub fn new(dev: &Dev, len: usize, lr: f64) -> Result<GpuAdam> {
        Ok(GpuAdam {
            lr,
            m: dev.zeros(len)?,
            v: dev.zeros(len)?,
            t: 0,
        })
    }

    pub fn step(&mut self, dev: &Dev, params: &Buf<f32>, grad: &Buf<f32>) -> Result<()> {
        const B1: f64 = 0.9;
        const B2: f64 = 0.999;
        self.t += 1;
        let step = (self.lr / (1.0 - B1.powi(self.t as i32))) as f32;
        let bc2 = (1.0 - B2.powi(self.t as i32)).sqrt() as f32;
        dev.launch_n(
            "adam_step",
            params.len,
            &[
                Arg::L(params.len as i64),
                Arg::P(params.ptr),
                Arg::P(grad.ptr),
                Arg::P(self.m.ptr),
                Arg::P(self.v.ptr),
                Arg::F(step),
                Arg::F(bc2),
            ],
        )
    }
}

/// Token inputs of positions start..start+rows (Model::token_input).
pub fn gather_tokens(
    dev: &Dev,
    (e, k): (usize, usize),
    ids: &Buf<u32>,
    start: usize,
    rows: usize,
    tv: &Buf<f32>,
    x: u64,
) -> Result<()> {
    dev.launch_n(
        "gather_tokens",
        rows * k * e,
        &[
            Arg::I(rows as i32),
            Arg::I(e as i32),
            Arg::I(k as i32),
            Arg::P(ids.ptr),
            Arg::L(start as i64),
            Arg::P(tv.ptr),
            Arg::P(x),
        ],
    )
}

/// Cache input contexts (cache::context_inputs).
pub fn gather_src(
    dev: &Dev,
    c: usize,
    start: usize,
    rows: usize,
    src: &Buf<f32>,
    ctx: u64,
) -> Result<()> {
    dev.launch_n(
        "gather_src",
        rows * c,
        &[
            Arg::I(rows as i32),
            Arg::I(c as i32),
            Arg::L(start as i64),
            Arg::P(src.ptr),
            Arg::P(ctx),
        ],
    )
}

/// Tokens per captured CUDA graph in the recurrent pass.
pub const GRAPH_CHUNK: usize = 64;

/// The true recurrent pass (cache::sequential_pass) over `ids[0..count]`,
/// final-layer outputs into `outs` (count x C).
///
/// Why this is not launch-bound: one token step is 2 + 2L small kernels
/// (token gather; per layer a warp-per-row GEMV over W [c ; x] (and the
/// residual projection), then the fused bias/ReLU/residual/LayerNorm; the
/// store). The position is read from a device counter, so a CUDA graph of
/// GRAPH_CHUNK consecutive steps is captured once and replayed count /
/// GRAPH_CHUNK times: the host submits one graph launch per 64 tokens and
/// the GPU runs the kernels back to back (~1-2 us each). Each step streams
/// the ContextBlock's weights once (61.6 MB for the 6 x 768 seed model in
/// false mode, ~13 us at H200 bandwidth), so the pass should run at roughly
/// 25-40k tokens/s. The remainder (and any failed capture) runs as direct
/// launches of the same kernels.
#[allow(clippy::too_many_arguments)]
pub fn recurrent_pass(
    dev: &Dev,
    blk: &GpuBlock,
    (e, k): (usize, usize),
    tv: &Buf<f32>,
    ids: &Buf<u32>,
    count: usize,
    outs: &Buf<f32>,
    use_graph: bool,
) -> Result<()> {
    if count == 0 {
        return Ok(());
    }
    let c = blk.layers.last().map_or(0, |l| l.out);
    let acts = BlockBufs::new(dev, &blk.layers, 1)?;
    let x = dev.zeros::<f32>(k * e)?;
    let step = dev.zeros::<i64>(1)?;
    let one = |t_off: usize, advance: usize| -> Result<()> {
        dev.launch(
            "gather_tokens_step",
            (dims(k * e).min(64), 1),
            (kernels::ROW_THREADS, 1),
            &[
                Arg::I(e as i32),
                Arg::I(k as i32),
                Arg::P(ids.ptr),
                Arg::P(step.ptr),
                Arg::I(t_off as i32),
                Arg::P(tv.ptr),
                Arg::P(x.ptr),
            ],
        )?;
        let n = blk.layers.len();
        for (i, l) in blk.layers.iter().enumerate() {
            // layer 0 reads the previous token's final output (zero at the start)
            let a = if i == 0 {
                acts.layers[n - 1].y.ptr
            } else {
                acts.layers[i - 1].y.ptr
            };
            let b = if l.in_b > 0 { x.ptr } else { 0 };
            let la = &acts.layers[i];
            let res = if l.residual_is_a { a } else { b };
            let (pw, pb) = match l.proj {
                Some((pw, pb)) => (blk.p(pw), blk.p(pb)),
                None => (0, 0),
            };
            let warps = if l.proj.is_some() { 2 * l.out } else { l.out };
            // 16-byte loads when every row start and vector allows them
            let it = l.in_a + l.in_b;
            let aligned = [blk.p(l.w), a, b, pw, res, blk.p(l.w + l.in_a)]
                .iter()
                .all(|&p| p % 16 == 0)
                && [it, l.in_a, l.in_b, res_in(l)].iter().all(|&d| d % 4 == 0);
            let kernel = if aligned { "gemv_rows4" } else { "gemv_rows" };
            dev.launch_n(
                kernel,
                warps * 32,
                &[
                    Arg::I(l.out as i32),
                    Arg::I(l.in_a as i32),
                    Arg::I(l.in_b as i32),
                    Arg::P(blk.p(l.w)),
                    Arg::P(a),
                    Arg::P(b),
                    Arg::P(la.h.ptr),
                    Arg::P(pw),
                    Arg::I(res_in(l) as i32),
                    Arg::P(res),
                    Arg::P(la.y.ptr),
                ],
            )?;
            ln_fused(dev, blk, l, 1, la, res, pb)?;
        }
        dev.launch(
            "store_step",
            (1, 1),
            (kernels::ROW_THREADS, 1),
            &[
                Arg::I(c as i32),
                Arg::P(acts.last()),
                Arg::P(outs.ptr),
                Arg::P(step.ptr),
                Arg::I(t_off as i32),
                Arg::I(advance as i32),
            ],
        )
    };
    let chunks = count / GRAPH_CHUNK;
    let mut done = 0;
    if use_graph && chunks > 0 {
        match capture(dev, || {
            for t in 0..GRAPH_CHUNK {
                one(t, if t == GRAPH_CHUNK - 1 { GRAPH_CHUNK } else { 0 })?;
            }
            Ok(())
        }) {
            Ok(graph) => {
                for _ in 0..chunks {
                    graph
                        .launch()
                        .map_err(|e| anyhow!("CUDA graph launch: {e:?}"))?;
                }
                done = chunks * GRAPH_CHUNK;
                // let the replays finish before the graph is destroyed
                dev.sync()?;
            }
            Err(e) => eprintln!(
                "  recurrent pass: CUDA graph capture failed ({e:#}); launching kernels directly"
            ),
        }
    }
    while done < count {
        // the counter sits at `done`; advance it one token at a time
        one(0, 1)?;
        done += 1;
    }
    dev.sync()
}

/// Captures the launches `f` makes on the stream into an instantiated graph.
fn capture(dev: &Dev, f: impl FnOnce() -> Result<()>) -> Result<cudarc::driver::CudaGraph> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// On a machine without a driver (this project's CI), `device = "cuda"`
    /// must be a clear error from the engine, the cell runner and the bench.
    #[test]
    fn missing_driver_is_a_clear_error_not_a_panic() {
        // SAFETY: only tries to dlopen the driver.
        if unsafe { drv_sys::is_culib_present() } {
            eprintln!("skipped: a CUDA driver is present on this machine");
            return;
        }
        let cfg = Config {
            device: "cuda".into(),
            ..Config::default()
        };
        let err = crate::engine::for_config(&cfg).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some(NO_DRIVER));
        let dir = std::env::temp_dir().join(format!("newllm-nodriver-{}", std::process::id()));
        let err = crate::cell::run_cell(&cfg, 1, &dir, &dir)
            .err()
            .map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some(NO_DRIVER));
        assert!(!dir.exists(), "nothing is written before the device check");
        let err = crate::bench::run(&cfg, 8, 2).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some(NO_DRIVER));
    }
}
