//! The numeric primitives every layer is built from: GEMM (through the `gemm`
//! crate, AVX-512 dispatched at run time), LayerNorm, ReLU, softmax
//! cross-entropy, the Phase-1 losses, Adam and global-norm clipping. All
//! matrices are row-major f32; a "leading dimension" (ld) is the row stride,
//! so a column block of a wider matrix is addressed without copying.
//! Each backward here has a finite-difference test at the bottom.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

pub mod bf16;

/// The arithmetic of every GEMM (config `precision`, docs/algorithm.md
/// section 8): f32 throughout, or bf16-rounded GEMM inputs with f32
/// accumulation ([`bf16`]). Everything else (LayerNorm, softmax, losses,
/// gradients' accumulation, Adam and its master weights) stays f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    /// What runs on this CPU, as results record it.
    pub fn describe(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => bf16::kernel().describe(),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// LayerNorm epsilon (PyTorch default, as in the original).
pub const LN_EPS: f32 = 1e-5;

static THREADS: AtomicUsize = AtomicUsize::new(1);
/// GEMM floating-point operations issued so far (2mnk per call), so the
/// benchmark can state each stage's GEMM work over its wall time.
static GEMM_FLOPS: AtomicU64 = AtomicU64::new(0);

pub fn gemm_flops() -> u64 {
    GEMM_FLOPS.load(Ordering::Relaxed)
}

/// Sets the thread count used by GEMM and the row-parallel loops, and sizes
/// rayon's global pool (first call wins for the pool). 0 = all cores.
pub fn set_threads(n: usize) -> usize {
    let n = if n == 0 {
        std::thread::available_parallelism().map_or(1, |p| p.get())
    } else {
        n
    };
    // The pool can only be built once per process; later calls keep it.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    THREADS.store(n, Ordering::Relaxed);
    n
}

pub fn threads() -> usize {
    THREADS.load(Ordering::Relaxed)
}

fn parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    let t = threads();
    // Below ~1 MFLOP the fork/join costs more than it saves.
    if t > 1 && m * n * k >= 1 << 18 {
        gemm::Parallelism::Rayon(t)
    } else {
        gemm::Parallelism::None
    }
}

/// A row-major matrix operand: `rows x cols` starting at `data[0]`, row stride `ld`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
    /// The same matrix in bf16 (same layout), where the caller keeps one:
    /// the bf16 one-row product reads it instead of `data`.
    pub bf16: Option<&'a [u16]>,
}

impl<'a> Mat<'a> {
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            ld: cols,
            bf16: None,
        }
    }
    /// Columns `start..start + cols` of a row-major matrix with row stride `ld`.
    pub fn cols_of(data: &'a [f32], rows: usize, ld: usize, start: usize, cols: usize) -> Self {
        Mat {
            data: &data[start..],
            rows,
            cols,
            ld,
            bf16: None,
        }
    }
    /// Attaches the bf16 copy `half`, indexed like `data` (same origin).
    pub fn with_bf16(self, half: Option<&'a [u16]>) -> Self {
        Mat { bf16: half, ..self }
    }
    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            assert!(self.cols <= self.ld);
            assert!(
                self.data.len() >= (self.rows - 1) * self.ld + self.cols,
                "matrix view out of bounds"
            );
        }
    }
}

/// Which operands are transposed: `C = op(A) op(B)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Trans {
    /// C[m,n] = A[m,k] B[k,n]
    NN,
    /// C[m,n] = A[m,k] B[n,k]^T (a Linear forward: y = x W^T)
    NT,
    /// C[m,n] = A[k,m]^T B[k,n] (a weight gradient: dW = dY^T X)
    TN,
}

/// `C = op(A) op(B)` (or `C += ...` when `accumulate`), C is `m x n` with
/// row stride `ldc`, in the arithmetic `prec` names.
pub fn matmul(
    prec: Precision,
    c: &mut [f32],
    ldc: usize,
    a: Mat,
    b: Mat,
    t: Trans,
    accumulate: bool,
) {
    a.check();
    b.check();
    let (m, k, n) = match t {
        Trans::NN => (a.rows, a.cols, b.cols),
        Trans::NT => (a.rows, a.cols, b.rows),
        Trans::TN => (a.cols, a.rows, b.cols),
    };
    match t {
        Trans::NN => assert_eq!(b.rows, k),
        Trans::NT => assert_eq!(b.cols, k),
        Trans::TN => assert_eq!(b.rows, k),
    }
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        n <= ldc && c.len() >= (m - 1) * ldc + n,
        "matmul output out of bounds"
    );
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                c[r * ldc..r * ldc + n].fill(0.0);
            }
        }
        return;
    }
    GEMM_FLOPS.fetch_add(2 * (m * n * k) as u64, Ordering::Relaxed);
    match prec {
        Precision::F32 => matmul_f32(c, ldc, a, b, t, accumulate, (m, n, k)),
        Precision::Bf16 => matmul_bf16(c, ldc, a, b, t, accumulate, (m, n, k)),
    }
}

/// `matmul` at f32, operands checked and the product's FLOPs counted.
fn matmul_f32(
    c: &mut [f32],
    ldc: usize,
    a: Mat,
    b: Mat,
    t: Trans,
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
) {
    if m == 1 && t == Trans::NT {
        // One row times a row-major weight matrix (the recurrent pass): a
        // streaming dot product per output is bandwidth-bound, and the gemm
        // crate's packing costs more than it saves here.
        gemv_rows(&mut c[..n], a.data, b, accumulate);
        return;
    }
    // (col stride, row stride) of each operand as the gemm crate wants them.
    let (a_cs, a_rs) = match t {
        Trans::NN | Trans::NT => (1, a.ld as isize),
        Trans::TN => (a.ld as isize, 1),
    };
    let (b_cs, b_rs) = match t {
        Trans::NN | Trans::TN => (1, b.ld as isize),
        Trans::NT => (b.ld as isize, 1),
    };
    // SAFETY: every operand's extent was bounds-checked above against its slice.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(m, n, k),
        );
    }
}

/// The operands of `op(A) op(B)` as the bf16 GEMM reads them: A as
/// (row, k) and B as (column, k), whatever the transposition.
pub fn bf16_views(a: Mat, b: Mat, t: Trans) -> (bf16::View, bf16::View) {
    let (a_ls, a_ks) = match t {
        Trans::NN | Trans::NT => (a.ld as isize, 1),
        Trans::TN => (1, a.ld as isize),
    };
    let (b_ls, b_ks) = match t {
        Trans::NN | Trans::TN => (1, b.ld as isize),
        Trans::NT => (b.ld as isize, 1),
    };
    let view = |ptr: *const f32, ls, ks| bf16::View { ptr, ls, ks };
    (
        view(a.data.as_ptr(), a_ls, a_ks),
        view(b.data.as_ptr(), b_ls, b_ks),
    )
}

/// `matmul` at bf16: the one-row product over a bf16 copy where the
/// caller keeps one, else the GEMM of the kernel `bf16::kernel` chose.
fn matmul_bf16(
    c: &mut [f32],
    ldc: usize,
    a: Mat,
    b: Mat,
    t: Trans,
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
) {
    if let (1, Trans::NT, Some(half)) = (m, t, b.bf16) {
        let need = (b.rows - 1) * b.ld + b.cols;
        assert!(half.len() >= need, "bf16 copy smaller than its matrix");
        bf16::gemv_rows(&mut c[..n], a.data, half, b.rows, b.cols, b.ld, accumulate);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if bf16::kernel() == bf16::Kernel::Avx512Bf16 {
        let (av, bv) = bf16_views(a, b, t);
        // Inside a rayon task (the transformer's per-head products) stay on
        // this thread: the packing buffers are per thread.
        let threads = match parallelism(m, n, k) {
            gemm::Parallelism::Rayon(t) if rayon::current_thread_index().is_none() => t,
            _ => 1,
        };
        // SAFETY: the kernel was chosen only where the CPU has AVX512_BF16;
        // both operands and C were bounds-checked by `matmul`.
        unsafe { bf16::gemm(m, n, k, c.as_mut_ptr(), ldc, accumulate, av, bv, threads) }
        return;
    }
    // Emulation: round each operand's rows into dense scratch, then the f32 product.
    let (mut ra, mut rb) = bf16::take_scratch();
    for (mat, dst) in [(a, &mut ra), (b, &mut rb)] {
        dst.resize(mat.rows * mat.cols, 0.0);
        for r in 0..mat.rows {
            let row = &mat.data[r * mat.ld..r * mat.ld + mat.cols];
            bf16::round_into(&mut dst[r * mat.cols..(r + 1) * mat.cols], row);
        }
    }
    let am = Mat::new(&ra, a.rows, a.cols);
    let bm = Mat::new(&rb, b.rows, b.cols);
    matmul_f32(c, ldc, am, bm, t, accumulate, (m, n, k));
    bf16::put_scratch((ra, rb));
}

/// `y[j] (+)= dot(x, B row j)` for every row j of `b` (b.rows x b.cols, row stride b.ld).
fn gemv_rows(y: &mut [f32], x: &[f32], b: Mat, accumulate: bool) {
    use rayon::prelude::*;
    let k = b.cols;
    let x = &x[..k];
    let row = |j: usize| &b.data[j * b.ld..j * b.ld + k];
    let run = |j0: usize, ys: &mut [f32]| {
        for (i, yv) in ys.iter_mut().enumerate() {
            let d = dot(row(j0 + i), x);
            *yv = if accumulate { *yv + d } else { d };
        }
    };
    let t = threads();
    if t > 1 && b.rows * k >= 1 << 16 {
        let chunk = b.rows.div_ceil(4 * t);
        y.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(ci, ys)| run(ci * chunk, ys));
    } else {
        run(0, y);
    }
}

/// Dot product, AVX2+FMA when the CPU has it (checked once at run time).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features were detected just above.
            return unsafe { dot_avx2(a, b) };
        }
    }
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (u, accu) in acc.iter_mut().enumerate() {
            let off = i + 8 * u;
            *accu = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(off)),
                _mm256_loadu_ps(pb.add(off)),
                *accu,
            );
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i)),
            _mm256_loadu_ps(pb.add(i)),
            acc[0],
        );
        i += 8;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0.0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
    let mut total: f32 = lanes.iter().sum();
    while i < n {
        total += a[i] * b[i];
        i += 1;
    }
    total
}

/// Adds `bias` to every row of `y` (rows x n).
pub fn add_bias(y: &mut [f32], bias: &[f32]) {
    for row in y.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// `db += sum over rows of dy`.
pub fn bias_grad(db: &mut [f32], dy: &[f32]) {
    for row in dy.chunks_exact(db.len()) {
        for (g, d) in db.iter_mut().zip(row) {
            *g += d;
        }
    }
}

/// LayerNorm over each row of `y` (rows x n), in place: on entry `y` holds
/// the pre-norm sum z; on exit `y = xhat * g + b`. Also writes `xhat` and
/// `rstd` = 1 / sqrt(var + eps) (biased variance) for the backward.
pub fn layernorm_forward(y: &mut [f32], g: &[f32], b: &[f32], xhat: &mut [f32], rstd: &mut [f32]) {
    let n = g.len();
    for (r, (yr, xr)) in y
        .chunks_exact_mut(n)
        .zip(xhat.chunks_exact_mut(n))
        .enumerate()
    {
        // Row statistics in f64: cheap next to the GEMMs, and it keeps the
        // recurrent passes from accumulating rounding drift.
        let mean = yr.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = yr
            .iter()
            .map(|&v| (v as f64 - mean) * (v as f64 - mean))
            .sum::<f64>()
            / n as f64;
        let s = (1.0 / (var + LN_EPS as f64).sqrt()) as f32;
        let mean = mean as f32;
        rstd[r] = s;
        for i in 0..n {
            let h = (yr[i] - mean) * s;
            xr[i] = h;
            yr[i] = h * g[i] + b[i];
        }
    }
}

/// Backward of `layernorm_forward`: `dz = d LN / dz · dy`, and accumulates
/// `dg += sum dy * xhat`, `db += sum dy`.
pub fn layernorm_backward(
    dy: &[f32],
    xhat: &[f32],
    rstd: &[f32],
    g: &[f32],
    dz: &mut [f32],
    dg: &mut [f32],
    db: &mut [f32],
) {
    let n = g.len();
    for (r, ((dyr, xr), dzr)) in dy
        .chunks_exact(n)
        .zip(xhat.chunks_exact(n))
        .zip(dz.chunks_exact_mut(n))
        .enumerate()
    {
        let mut mean_d = 0.0f32;
        let mut mean_dx = 0.0f32;
        for i in 0..n {
            let d = dyr[i] * g[i];
            mean_d += d;
            mean_dx += d * xr[i];
            dg[i] += dyr[i] * xr[i];
            db[i] += dyr[i];
        }
        mean_d /= n as f32;
        mean_dx /= n as f32;
        let s = rstd[r];
        for i in 0..n {
            dzr[i] = s * (dyr[i] * g[i] - mean_d - xr[i] * mean_dx);
        }
    }
}

/// Defines `fn name(args) -> ret` whose body is compiled three times: for
/// AVX-512, for AVX2+FMA and for the baseline target, picked at run time
/// (std caches the CPU check). The crate is built for baseline x86-64, where
/// the loops below would vectorise to 4 lanes only. Bodies must be plain
/// loops without rayon: closures run elsewhere would lose the features.
macro_rules! multiversion {
    ($(#[$m:meta])* fn $name:ident($($a:ident: $t:ty),*) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        fn $name($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn body($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn v4($($a: $t),*) $(-> $r)? { body($($a),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($a: $t),*) $(-> $r)? { body($($a),*) }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: the features were detected just above.
                    return unsafe { v4($($a),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { v3($($a),*) };
                }
            }
            body($($a),*)
        }
    };
}
// Used here and by the models (the transformer's GELU).
pub(crate) use multiversion;

/// e^x to within ~2 ulp for x in [-87, 88] (clamped outside, so never inf
/// and never 0; NaN stays NaN), in plain arithmetic that vectorises (libm's
/// expf is a call per element). Cephes' expf: x = n ln2 + r, |r| <= ln2/2,
/// e^r by a degree-7 polynomial, 2^n built in the exponent bits. `mul_add`
/// is one instruction in the AVX2/AVX-512 versions and a correctly rounded
/// libm call otherwise, so every version gives the same bits.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 2^23: adding it rounds to an integer, held in the low mantissa bits
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let z = x.mul_add(LOG2E, ROUND);
    let n = z - ROUND;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let p = 1.987_569_1e-4f32;
    let p = p.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 0.5);
    let e = p.mul_add(r * r, r + 1.0);
    // z's bits are those of ROUND plus n; (n + 127) << 23 is 2^n (ROUND's
    // own bits shift out)
    e * f32::from_bits(z.to_bits().wrapping_add(127) << 23)
}

/// Lanes of the row loops: one AVX-512 register of f32.
const LANES: usize = 16;

multiversion! {
    /// One row of `cross_entropy`: (loss, argmax == target).
    fn cross_entropy_row(
        row: &mut [f32],
        target: usize,
        grad: bool,
        inv_rows: f32
    ) -> (f64, bool) {
        let n = row.len();
        let split = n - n % LANES;
        // max: a plain lane-wise max (vmaxps) ...
        let mut lane_max = [f32::NEG_INFINITY; LANES];
        for ch in row[..split].chunks_exact(LANES) {
            for i in 0..LANES {
                lane_max[i] = if ch[i] > lane_max[i] { ch[i] } else { lane_max[i] };
            }
        }
        let max = row[split..]
            .iter()
            .chain(&lane_max)
            .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
        // ... then its first index, a short scan over a row now in cache
        let first_chunk = row[..split]
            .chunks_exact(LANES)
            .position(|ch| ch.iter().fold(false, |hit, &x| hit | (x == max)))
            .map_or(split, |j| j * LANES);
        let best = row[first_chunk..]
            .iter()
            .position(|&x| x == max)
            .map_or(n, |i| first_chunk + i);
        let target_logit = row[target];
        // sum of e^(x - max): f32 lanes, flushed to f64 every 64 steps so
        // no lane adds up more than 64 terms
        let mut sum = 0.0f64;
        for block in row[..split].chunks_mut(64 * LANES) {
            let mut acc = [0.0f32; LANES];
            for ch in block.chunks_exact_mut(LANES) {
                for i in 0..LANES {
                    let e = exp_approx(ch[i] - max);
                    acc[i] += e;
                    if grad {
                        ch[i] = e;
                    }
                }
            }
            sum += acc.iter().map(|&a| a as f64).sum::<f64>();
        }
        for x in row[split..].iter_mut() {
            let e = exp_approx(*x - max);
            sum += e as f64;
            if grad {
                *x = e;
            }
        }
        if grad {
            let scale = (1.0 / sum) as f32 * inv_rows;
            row.iter_mut().for_each(|x| *x *= scale);
            row[target] -= inv_rows;
        }
        (sum.ln() - (target_logit - max) as f64, best == target)
    }
}

thread_local! {
    /// Per-row results of `cross_entropy`, summed in row order afterwards so
    /// the total does not depend on how rayon split the rows. Grows to the
    /// largest batch once, then is reused.
    static ROW_RESULTS: std::cell::RefCell<Vec<(f64, bool)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Mean softmax cross-entropy of `logits` (rows x V) against `targets`.
/// Overwrites `logits` with d(mean loss)/d(logits) when `grad` is set.
/// Returns (sum of per-row losses, number of rows whose argmax == target;
/// ties go to the lowest index, as torch.argmax). Rows run in parallel; the
/// sum is taken in row order, so it is the same however they were split.
pub fn cross_entropy(logits: &mut [f32], targets: &[u32], grad: bool) -> (f64, usize) {
    cross_entropy_rows(logits, targets, grad, |_| ())
}

/// `cross_entropy` without a gradient that also adds each row's loss to
/// `sums[bins[row]]` (an evaluation's per-sample losses; `bins` has one
/// entry per row). The returned total is `cross_entropy`'s, bit for bit.
pub fn cross_entropy_binned(
    logits: &mut [f32],
    targets: &[u32],
    bins: &[u32],
    sums: &mut [f64],
) -> (f64, usize) {
    assert_eq!(bins.len(), targets.len(), "one bin per row");
    cross_entropy_rows(logits, targets, false, |rows| {
        for (&(loss, _), &b) in rows.iter().zip(bins) {
            sums[b as usize] += loss;
        }
    })
}

/// The rows of `cross_entropy` in parallel, then `per_row` over their
/// (loss, hit) results in row order, then the sums in row order.
fn cross_entropy_rows(
    logits: &mut [f32],
    targets: &[u32],
    grad: bool,
    per_row: impl FnOnce(&[(f64, bool)]),
) -> (f64, usize) {
    use rayon::prelude::*;
    let v = logits.len() / targets.len().max(1);
    let inv_rows = 1.0 / targets.len() as f32;
    ROW_RESULTS.with_borrow_mut(|out| {
        out.resize(targets.len(), (0.0, false));
        logits
            .par_chunks_mut(v)
            .zip(targets.par_iter())
            .zip(out.par_iter_mut())
            .for_each(|((row, &t), o)| *o = cross_entropy_row(row, t as usize, grad, inv_rows));
        per_row(out);
        out.iter().fold((0.0, 0), |(l, c), &(loss, hit)| {
            (l + loss, c + usize::from(hit))
        })
    })
}

/// Global L2 norm of the gradient; scales it by min(1, clip / (norm + 1e-6)).
/// Returns the norm before clipping.
pub fn clip_grad_norm(grad: &mut [f32], clip: f64) -> f64 {
    let norm = grad
        .iter()
        .map(|&g| (g as f64) * (g as f64))
        .sum::<f64>()
        .sqrt();
    let coef = clip / (norm + 1e-6);
    if coef < 1.0 {
        let c = coef as f32;
        grad.iter_mut().for_each(|g| *g *= c);
    }
    norm
}

/// Adam with PyTorch's defaults (betas 0.9/0.999, eps 1e-8, no weight decay).
/// Every parameter is stepped every step, also where its gradient is zero.
#[derive(Clone, Debug, PartialEq)]
pub struct Adam {
    pub lr: f64,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub t: u32,
}

/// Adam's decay rates and epsilon: PyTorch's defaults. The GPU's
/// `adam_step` kernel writes the same values as literals (checked by a test).
pub const ADAM_BETA1: f64 = 0.9;
pub const ADAM_BETA2: f64 = 0.999;
pub const ADAM_EPS: f32 = 1e-8;

/// Step size and second-moment bias correction of Adam's step `t` (1-based):
/// (lr / (1 - beta1^t), sqrt(1 - beta2^t)), in f64 then rounded once.
pub fn adam_scales(lr: f64, t: u32) -> (f32, f32) {
    (
        (lr / (1.0 - ADAM_BETA1.powi(t as i32))) as f32,
        (1.0 - ADAM_BETA2.powi(t as i32)).sqrt() as f32,
    )
}

impl Adam {
    pub fn new(len: usize, lr: f64) -> Self {
        Adam {
            lr,
            m: vec![0.0; len],
            v: vec![0.0; len],
            t: 0,
        }
    }

    pub fn step(&mut self, params: &mut [f32], grad: &[f32]) {
        self.t += 1;
        let (step, bc2) = adam_scales(self.lr, self.t);
        let (b1, b2) = (ADAM_BETA1 as f32, ADAM_BETA2 as f32);
        let (c1, c2) = ((1.0 - ADAM_BETA1) as f32, (1.0 - ADAM_BETA2) as f32);
        let chunk = 1 << 16;
        use rayon::prelude::*;
        params
            .par_chunks_mut(chunk)
            .zip(grad.par_chunks(chunk))
            .zip(
                self.m
                    .par_chunks_mut(chunk)
                    .zip(self.v.par_chunks_mut(chunk)),
            )
            .for_each(|((p, g), (m, v))| {
                for i in 0..p.len() {
                    m[i] = b1 * m[i] + c1 * g[i];
                    v[i] = b2 * v[i] + c2 * g[i] * g[i];
                    p[i] -= step * m[i] / (v[i].sqrt() / bc2 + ADAM_EPS);
                }
            });
    }
}

#[cfg(test)]
pub(crate) mod tests;
