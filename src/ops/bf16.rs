//! bf16 mixed precision: GEMM inputs rounded to bf16 (round to nearest
//! even), products accumulated and written in f32.
//!
//! Two ways to run it, chosen once at run time ([`kernel`]):
//! - `Avx512Bf16`: our own GEMM around a `vdpbf16ps` microkernel. Operands
//!   are rounded while they are packed (no bf16 copy of any matrix is kept),
//!   the microkernel does 16 lanes x 2 multiply-adds per instruction, twice
//!   an f32 FMA's work where the CPU issues it as fast as an FMA (Zen 4).
//! - `Emulated`: the operands are rounded into f32 scratch and multiplied
//!   by the f32 GEMM (`ops::matmul`). Same numbers up to summation order and
//!   denormal flushing, at f32 speed: a bf16 result means the same thing on
//!   every machine. Chosen where the CPU lacks AVX512_BF16, and where it has
//!   it but `vdpbf16ps` does fewer FLOPs per second than the f32 FMA (the
//!   Xeon measured in BENCHMARKS.md: 0.5x), so bf16 is never slower than
//!   its emulation.
//!
//! The recurrent pass's one-row products read a bf16 copy of the weights
//! ([`gemv_rows`]): half the bytes of f32 on any CPU.
//!
//! Blocking (Goto style): B is packed KC x NC at a time, shared by the
//! threads; each thread packs its own MC x KC block of A and runs MR x NR
//! microkernels over it. Packed layouts hold bf16 pairs (k, k+1) in one u32,
//! which is what `vdpbf16ps` multiplies per lane.

use std::cell::Cell;
use std::sync::OnceLock;

/// Microkernel rows (A broadcasts) and columns (4 vectors of 16 f32).
const MR: usize = 6;
const NR: usize = 64;
/// k per packed block (even), columns per packed B block, most rows per A block.
const KC: usize = 384;
const NC: usize = 1536;
const MC_MAX: usize = 192;

/// bf16 bits of `x`, rounded to nearest even (NaN stays a quiet NaN).
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    // a select, not a branch, so loops over slices vectorise
    if x.is_nan() {
        ((b >> 16) | 0x40) as u16
    } else {
        rounded
    }
}

pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// `x` rounded to the nearest bf16, as an f32.
pub fn round(x: f32) -> f32 {
    from_bf16(to_bf16(x))
}

/// How `precision = "bf16"` runs on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Avx512Bf16,
    Emulated,
}

impl Kernel {
    pub fn describe(self) -> &'static str {
        match self {
            Kernel::Avx512Bf16 => "bf16 (AVX512_BF16 GEMM)",
            Kernel::Emulated => "bf16 emulated (f32 GEMM on bf16-rounded inputs)",
        }
    }
}

/// The kernel this CPU runs: AVX512_BF16 where `vdpbf16ps` does at least
/// `FAST_ENOUGH` times the f32 FMA's FLOPs per second (register loops,
/// measured once per process; the known CPUs sit far from the threshold:
/// ~2x on Zen 4, ~0.5x on the Xeon in BENCHMARKS.md).
pub fn kernel() -> Kernel {
    static K: OnceLock<Kernel> = OnceLock::new();
    *K.get_or_init(|| match register_rates() {
        Some((bf16, f32)) if bf16 >= FAST_ENOUGH * f32 => Kernel::Avx512Bf16,
        _ => Kernel::Emulated,
    })
}

const FAST_ENOUGH: f64 = 1.2;

/// Whether the CPU has the `vdpbf16ps` instruction at all.
pub fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One thread's register-loop FLOPs per second of `vdpbf16ps` and of the
/// 512-bit f32 FMA (each the best of three short runs), where the CPU has
/// AVX512_BF16.
pub fn register_rates() -> Option<(f64, f64)> {
    static R: OnceLock<Option<(f64, f64)>> = OnceLock::new();
    *R.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx512_bf16() {
                let best = |f: &dyn Fn() -> f64| (0..3).map(|_| f()).fold(0.0, f64::max);
                let iters = 400_000;
                // SAFETY: the CPU has AVX512F and AVX512_BF16 (checked above).
                let bf16 = best(&|| unsafe { avx512::rate(iters, true) });
                let f32 = best(&|| unsafe { avx512::rate(iters, false) });
                return Some((bf16, f32));
            }
        }
        None
    })
}

/// Element (line, p) of a matrix at `ptr[line * ls + p * ks]`: A as (row, k),
/// B as (column, k), so one packing routine serves both operands.
#[derive(Clone, Copy)]
pub struct View {
    pub ptr: *const f32,
    pub ls: isize,
    pub ks: isize,
}

// SAFETY: a View is only read, and only inside the extent its creator checked.
unsafe impl Send for View {}
unsafe impl Sync for View {}

impl View {
    /// # Safety
    /// (line, p) must lie inside the matrix the view was made from.
    unsafe fn get(&self, line: usize, p: usize) -> f32 {
        *self
            .ptr
            .offset(line as isize * self.ls + p as isize * self.ks)
    }
}

thread_local! {
    // Taken out for the duration of a call and put back, so a re-entrant call
    // (rayon work stealing) finds an empty buffer instead of a borrow panic.
    static PACK_A: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
    static PACK_B: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
    static ROUNDED_X: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static ROUNDED: Cell<(Vec<f32>, Vec<f32>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

fn take<T: Default>(key: &'static std::thread::LocalKey<Cell<T>>) -> T {
    key.with(|c| c.take())
}

fn put<T>(key: &'static std::thread::LocalKey<Cell<T>>, v: T) {
    key.with(|c| c.set(v));
}

#[cfg(target_arch = "x86_64")]
pub use avx512::gemm;

/// `dst[..src.len()]` = `src` rounded to bf16 (as f32 values).
pub fn round_into(dst: &mut [f32], src: &[f32]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = round(v);
    }
}

/// Per-thread f32 scratch for the emulation's rounded operands, taken for
/// the duration of one product and put back.
pub fn take_scratch() -> (Vec<f32>, Vec<f32>) {
    take(&ROUNDED)
}

pub fn put_scratch(v: (Vec<f32>, Vec<f32>)) {
    put(&ROUNDED, v)
}

/// `y[j] (+)= dot(bf16(x), w16 row j)` for the `rows` rows of a bf16 matrix
/// with row stride `ld`, `k` columns: the recurrent pass's one-row product.
pub fn gemv_rows(
    y: &mut [f32],
    x: &[f32],
    w16: &[u16],
    rows: usize,
    k: usize,
    ld: usize,
    accumulate: bool,
) {
    // x rounded once per call (the weights dominate the bytes).
    let mut xr = take(&ROUNDED_X);
    xr.clear();
    xr.extend(x[..k].iter().map(|&v| round(v)));
    let x = &xr[..];
    let run = |j0: usize, ys: &mut [f32]| {
        for (i, yv) in ys.iter_mut().enumerate() {
            let j = j0 + i;
            let d = dot16(&w16[j * ld..j * ld + k], x);
            *yv = if accumulate { *yv + d } else { d };
        }
    };
    let t = super::threads();
    if t > 1 && rows * k >= 1 << 16 && rayon::current_thread_index().is_none() {
        use rayon::prelude::*;
        let chunk = rows.div_ceil(4 * t);
        y[..rows]
            .par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(ci, ys)| run(ci * chunk, ys));
    } else {
        run(0, &mut y[..rows]);
    }
    put(&ROUNDED_X, xr);
}

/// Dot product of a bf16 row with an f32 vector (widened, f32 FMA).
fn dot16(w: &[u16], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features were detected just above.
            return unsafe { dot16_avx2(w, x) };
        }
    }
    w.iter().zip(x).map(|(&h, &v)| from_bf16(h) * v).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot16_avx2(w: &[u16], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = w.len().min(x.len());
    let (pw, px) = (w.as_ptr(), x.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let widen = |p: *const u16| {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    };
    let mut i = 0;
    while i + 32 <= n {
        for (u, accu) in acc.iter_mut().enumerate() {
            let off = i + 8 * u;
            *accu = _mm256_fmadd_ps(widen(pw.add(off)), _mm256_loadu_ps(px.add(off)), *accu);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(widen(pw.add(i)), _mm256_loadu_ps(px.add(i)), acc[0]);
        i += 8;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0.0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
    let mut total: f32 = lanes.iter().sum();
    while i < n {
        total += from_bf16(w[i]) * x[i];
        i += 1;
    }
    total
}

/// `dst` = bf16 bits of `src`, element by element.
pub fn convert(dst: &mut Vec<u16>, src: &[f32]) {
    dst.clear();
    dst.extend(src.iter().map(|&v| to_bf16(v)));
}

/// Packs lines `l0..l0 + lines` and k range `p0..p0 + kc` of `v` into panels
/// of `width` lines: panel-major, then pair q, then line, one u32 per
/// (k = 2q, 2q + 1) pair, low half = even k; zeros past the edges.
///
/// # Safety
/// The view must cover the given ranges.
unsafe fn pack_scalar(
    dst: &mut [u32],
    v: View,
    l0: usize,
    lines: usize,
    p0: usize,
    kc: usize,
    width: usize,
) {
    let kp = kc.div_ceil(2);
    for (panel, chunk) in dst
        .chunks_mut(kp * width)
        .enumerate()
        .take(lines.div_ceil(width))
    {
        for q in 0..kp {
            for i in 0..width {
                let line = panel * width + i;
                let val = if line < lines {
                    let lo = to_bf16(v.get(l0 + line, p0 + 2 * q)) as u32;
                    let hi = if 2 * q + 1 < kc {
                        to_bf16(v.get(l0 + line, p0 + 2 * q + 1)) as u32
                    } else {
                        0
                    };
                    lo | (hi << 16)
                } else {
                    0
                };
                chunk[q * width + i] = val;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use rayon::prelude::*;
    use std::arch::x86_64::*;

    /// `C (+)= A B` on the AVX512_BF16 kernel (the Goto loops of the
    /// module comment), with A an m x k view (line = row) and B a k x n
    /// view given as (column, k), C row-major with row stride `ldc`, both
    /// inputs rounded to bf16. `ops::matmul` calls it when `kernel()` chose
    /// it; the tests and the bench call it directly.
    ///
    /// # Safety
    /// The CPU must have AVX512_BF16, the views must cover m x k and n x k
    /// elements and `c` must hold (m - 1) * ldc + n floats.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm(
        m: usize,
        n: usize,
        k: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        a: View,
        b: View,
        threads: usize,
    ) {
        // Rows per A block: an even split over the threads, whole microkernels.
        let threads = threads.max(1);
        let blocks = m.div_ceil(MC_MAX).max(threads).div_ceil(threads) * threads;
        let mc = m.div_ceil(blocks).div_ceil(MR) * MR;
        let c_addr = c as usize;
        let mut pb = take(&PACK_B);
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            let panels = nc.div_ceil(NR);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                let kp = kc.div_ceil(2);
                pb.resize(panels * kp * NR, 0);
                let acc = accumulate || pc > 0;
                let pack_b = |(pi, chunk): (usize, &mut [u32])| {
                    let l0 = jc + pi * NR;
                    pack(chunk, b, l0, NR.min(n - l0), pc, kc, NR);
                };
                if threads > 1 {
                    pb.par_chunks_mut(kp * NR).enumerate().for_each(pack_b);
                } else {
                    pb.chunks_mut(kp * NR).enumerate().for_each(pack_b);
                }
                let pb = &pb[..];
                let block = |ic: usize| {
                    let rows = mc.min(m - ic);
                    let mut pa = take(&PACK_A);
                    pa.resize(rows.div_ceil(MR) * kp * MR, 0);
                    pack(&mut pa, a, ic, rows, pc, kc, MR);
                    let c = c_addr as *mut f32;
                    for jp in 0..panels {
                        let j = jc + jp * NR;
                        let cols = NR.min(n - j);
                        let bp = pb.as_ptr().add(jp * kp * NR);
                        for (ip, i) in (0..rows).step_by(MR).enumerate() {
                            let ap = pa.as_ptr().add(ip * kp * MR);
                            let cp = c.add((ic + i) * ldc + j);
                            kernel(kp, ap, bp, cp, ldc, MR.min(rows - i), cols, acc);
                        }
                    }
                    put(&PACK_A, pa);
                };
                let starts: Vec<usize> = (0..m).step_by(mc).collect();
                if threads > 1 {
                    starts.into_par_iter().for_each(block);
                } else {
                    starts.into_iter().for_each(block);
                }
            }
        }
        put(&PACK_B, pb);
    }

    /// Packs like `pack_scalar`, converting 16 or 32 values per instruction
    /// when the view is contiguous along k or along lines.
    unsafe fn pack(
        dst: &mut [u32],
        v: View,
        l0: usize,
        lines: usize,
        p0: usize,
        kc: usize,
        width: usize,
    ) {
        if v.ks == 1 && kc.is_multiple_of(32) {
            pack_k_contiguous(dst, v, l0, lines, p0, kc, width)
        } else if v.ls == 1 && kc.is_multiple_of(2) {
            pack_lines_contiguous(dst, v, l0, lines, p0, kc, width)
        } else {
            pack_scalar(dst, v, l0, lines, p0, kc, width)
        }
    }

    /// Each line holds its k values side by side: 32 floats become 16 pairs.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn pack_k_contiguous(
        dst: &mut [u32],
        v: View,
        l0: usize,
        lines: usize,
        p0: usize,
        kc: usize,
        width: usize,
    ) {
        let kp = kc / 2;
        let padded = lines.div_ceil(width) * width;
        let mut tmp = [0u32; 16];
        for line in 0..padded {
            let base = (line / width) * kp * width + line % width;
            if line >= lines {
                for q in 0..kp {
                    dst[base + q * width] = 0;
                }
                continue;
            }
            let src = v.ptr.offset((l0 + line) as isize * v.ls + p0 as isize);
            for q0 in (0..kp).step_by(16) {
                let lo = _mm512_loadu_ps(src.add(2 * q0));
                let hi = _mm512_loadu_ps(src.add(2 * q0 + 16));
                // The second argument fills the low half: k order is kept.
                let h = _mm512_cvtne2ps_pbh(hi, lo);
                _mm512_storeu_si512(
                    tmp.as_mut_ptr() as *mut _,
                    std::mem::transmute::<__m512bh, __m512i>(h),
                );
                for (t, &val) in tmp.iter().enumerate() {
                    dst[base + (q0 + t) * width] = val;
                }
            }
        }
    }

    /// Lines lie side by side for each k: pair q interleaves rows 2q and 2q+1.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn pack_lines_contiguous(
        dst: &mut [u32],
        v: View,
        l0: usize,
        lines: usize,
        p0: usize,
        kc: usize,
        width: usize,
    ) {
        let kp = kc / 2;
        let panels = lines.div_ceil(width);
        for panel in 0..panels {
            let chunk = &mut dst[panel * kp * width..(panel + 1) * kp * width];
            for q in 0..kp {
                let row0 = v.ptr.offset((p0 + 2 * q) as isize * v.ks);
                let row1 = row0.offset(v.ks);
                for i0 in (0..width).step_by(16) {
                    let line = panel * width + i0;
                    let n = 16.min(width - i0).min(lines.saturating_sub(line));
                    let mask: __mmask16 = ((1u32 << n) - 1) as u16;
                    let out = chunk.as_mut_ptr().add(q * width + i0);
                    let lanes = 16.min(width - i0);
                    let store: __mmask16 = ((1u32 << lanes) - 1) as u16;
                    let x0 = _mm512_maskz_loadu_ps(mask, row0.add(l0 + line));
                    let x1 = _mm512_maskz_loadu_ps(mask, row1.add(l0 + line));
                    let h0 = _mm256_castsi256_ph_bits(_mm512_cvtneps_pbh(x0));
                    let h1 = _mm256_castsi256_ph_bits(_mm512_cvtneps_pbh(x1));
                    let pair = _mm512_or_si512(
                        _mm512_cvtepu16_epi32(h0),
                        _mm512_slli_epi32(_mm512_cvtepu16_epi32(h1), 16),
                    );
                    _mm512_mask_storeu_epi32(out as *mut i32, store, pair);
                }
            }
        }
    }

    fn _mm256_castsi256_ph_bits(h: __m256bh) -> __m256i {
        // SAFETY: both are 256 bits of plain data.
        unsafe { std::mem::transmute::<__m256bh, __m256i>(h) }
    }

    /// C[rows x cols] (+)= A panel (kp pairs x MR) . B panel (kp pairs x NR).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn kernel(
        kp: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 4]; MR];
        for q in 0..kp {
            let bq = b.add(q * NR);
            let bv: [__m512bh; 4] = [
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bq as *const _)),
                std::mem::transmute::<__m512i, __m512bh>(
                    _mm512_loadu_si512(bq.add(16) as *const _),
                ),
                std::mem::transmute::<__m512i, __m512bh>(
                    _mm512_loadu_si512(bq.add(32) as *const _),
                ),
                std::mem::transmute::<__m512i, __m512bh>(
                    _mm512_loadu_si512(bq.add(48) as *const _),
                ),
            ];
            let aq = a.add(q * MR);
            for (i, row) in acc.iter_mut().enumerate() {
                let av =
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*aq.add(i) as i32));
                for (v, accv) in row.iter_mut().enumerate() {
                    *accv = _mm512_dpbf16_ps(*accv, av, bv[v]);
                }
            }
        }
        for (i, row) in acc.iter().enumerate().take(rows) {
            for (v, &val) in row.iter().enumerate() {
                let col = v * 16;
                if col >= cols {
                    break;
                }
                let mask: __mmask16 = ((1u32 << (cols - col).min(16)) - 1) as u16;
                let p = c.add(i * ldc + col);
                let out = if accumulate {
                    _mm512_add_ps(val, _mm512_maskz_loadu_ps(mask, p))
                } else {
                    val
                };
                _mm512_mask_storeu_ps(p, mask, out);
            }
        }
    }

    /// FLOPs per second of a register-only loop of `vdpbf16ps` (64 FLOPs
    /// each) or of the f32 FMA (32 each), 24 independent accumulators.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn rate(iters: usize, bf16: bool) -> f64 {
        let mut acc = [_mm512_setzero_ps(); 24];
        let ones = _mm512_set1_epi32(std::hint::black_box(0x3f80_3f80));
        let h = std::mem::transmute::<__m512i, __m512bh>(ones);
        let x = _mm512_set1_ps(std::hint::black_box(1e-30));
        let t = std::time::Instant::now();
        for _ in 0..iters {
            for accv in acc.iter_mut() {
                *accv = if bf16 {
                    _mm512_dpbf16_ps(*accv, h, h)
                } else {
                    _mm512_fmadd_ps(*accv, x, x)
                };
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let mut s = _mm512_setzero_ps();
        for accv in acc {
            s = _mm512_add_ps(s, accv);
        }
        std::hint::black_box(_mm512_reduce_add_ps(s));
        let per = if bf16 { 64.0 } else { 32.0 };
        (iters * 24) as f64 * per / secs
    }
}

#[cfg(test)]
mod tests;
