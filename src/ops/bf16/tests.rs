use super::*;
use crate::ops::{matmul, Mat, Precision, Trans};
use crate::rng::Rng;

#[test]
fn rounding_is_to_nearest_even() {
    assert_eq!(to_bf16(1.0), 0x3f80);
    assert_eq!(to_bf16(-2.0), 0xc000);
    // 1 + 2^-8 lies halfway between 1 (even) and 1 + 2^-7: down to 1.
    assert_eq!(to_bf16(1.0 + 2f32.powi(-8)), 0x3f80);
    // 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up.
    assert_eq!(to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
    // just past halfway rounds up
    assert_eq!(to_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20)), 0x3f81);
    assert_eq!(to_bf16(f32::INFINITY), 0x7f80);
    assert_eq!(to_bf16(f32::MAX), 0x7f80, "overflow rounds to infinity");
    assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    assert_eq!(round(0.1), 0.100097656);
}

/// (m, k, n) shapes covering partial microkernels, an odd k, k past one
/// packed block (KC) and n past one B block (NC).
const SHAPES: [(usize, usize, usize); 6] = [
    (1, 5, 3),
    (13, 37, 70),
    (6, 64, 64),
    (50, 400, 33),
    (7, 130, 1600),
    (200, 96, 129),
];

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0.0; len];
    Rng::new(seed).fill_normal(&mut v, 1.0);
    v
}

/// Random A (m x k values) and B (k x n values), stored as `t` reads them.
fn case(m: usize, k: usize, n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    (random(m * k, seed), random(k * n, seed + 1))
}

fn a_at(a: &[f32], t: Trans, m: usize, k: usize, i: usize, p: usize) -> f32 {
    match t {
        Trans::TN => a[p * m + i],
        _ => a[i * k + p],
    }
}

fn b_at(b: &[f32], t: Trans, k: usize, n: usize, p: usize, j: usize) -> f32 {
    match t {
        Trans::NT => b[j * k + p],
        _ => b[p * n + j],
    }
}

fn mats<'a>(
    a: &'a [f32],
    b: &'a [f32],
    t: Trans,
    m: usize,
    k: usize,
    n: usize,
) -> (Mat<'a>, Mat<'a>) {
    let am = match t {
        Trans::TN => Mat::new(a, k, m),
        _ => Mat::new(a, m, k),
    };
    let bm = match t {
        Trans::NT => Mat::new(b, n, k),
        _ => Mat::new(b, k, n),
    };
    (am, bm)
}

/// f64 reference of C = op(A) op(B) over elements mapped by `f`, and sum |a b|.
#[allow(clippy::too_many_arguments)]
fn reference(
    a: &[f32],
    b: &[f32],
    t: Trans,
    m: usize,
    k: usize,
    n: usize,
    f: fn(f32) -> f32,
) -> (Vec<f64>, Vec<f64>) {
    let (mut c, mut mag) = (vec![0.0; m * n], vec![0.0; m * n]);
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                let x = f(a_at(a, t, m, k, i, p)) as f64 * f(b_at(b, t, k, n, p, j)) as f64;
                c[i * n + j] += x;
                mag[i * n + j] += x.abs();
            }
        }
    }
    (c, mag)
}

#[allow(clippy::too_many_arguments)]
fn run(
    prec: Precision,
    a: &[f32],
    b: &[f32],
    t: Trans,
    m: usize,
    k: usize,
    n: usize,
    start: f32,
    accumulate: bool,
) -> Vec<f32> {
    let (am, bm) = mats(a, b, t, m, k, n);
    let mut c = vec![start; m * n];
    matmul(prec, &mut c, n, am, bm, t, accumulate);
    c
}

#[test]
fn bf16_gemm_matches_f64_on_rounded_inputs() {
    // The products of bf16 values are exact in f64, so the only error is f32
    // accumulation: at most ~k ulps of sum |a b| (bound with margin 2).
    for t in [Trans::NN, Trans::NT, Trans::TN] {
        for (s, &(m, k, n)) in SHAPES.iter().enumerate() {
            let (a, b) = case(m, k, n, 10 + s as u64);
            let (want, mag) = reference(&a, &b, t, m, k, n, round);
            for (accumulate, start) in [(false, 7.0), (true, 0.5)] {
                let got = run(Precision::Bf16, &a, &b, t, m, k, n, start, accumulate);
                for i in 0..m * n {
                    let base = if accumulate { start as f64 } else { 0.0 };
                    let tol =
                        2.0 * (k + 1) as f64 * f32::EPSILON as f64 * (mag[i] + base.abs()) + 1e-30;
                    let err = (got[i] as f64 - (want[i] + base)).abs();
                    assert!(
                        err <= tol,
                        "{t:?} {m}x{k}x{n} acc={accumulate} [{i}]: {err} > {tol}"
                    );
                }
            }
        }
    }
}

#[test]
fn bf16_gemm_is_within_bf16_error_of_f32() {
    // Each input rounds by at most 2^-9 relative (8-bit mantissa), so each
    // product by at most 2^-8 (+ 2^-18); the f32 sums add ~k ulps each.
    for t in [Trans::NN, Trans::NT, Trans::TN] {
        for (s, &(m, k, n)) in SHAPES.iter().enumerate() {
            let (a, b) = case(m, k, n, 30 + s as u64);
            let (_, mag) = reference(&a, &b, t, m, k, n, |x| x);
            let f = run(Precision::F32, &a, &b, t, m, k, n, 0.0, false);
            let h = run(Precision::Bf16, &a, &b, t, m, k, n, 0.0, false);
            let mut worst = 0.0f64;
            for i in 0..m * n {
                let tol = (2f64.powi(-8) + 2f64.powi(-18) + 4.0 * k as f64 * f32::EPSILON as f64)
                    * mag[i];
                let err = (f[i] as f64 - h[i] as f64).abs();
                assert!(err <= tol, "{t:?} {m}x{k}x{n} [{i}]: {err} > {tol}");
                worst = worst.max(err / mag[i]);
            }
            // and bf16 really rounds: the results are not f32's
            if k >= 37 {
                assert!(worst > 1e-5, "{t:?} {m}x{k}x{n}: bf16 identical to f32");
            }
        }
    }
}

/// The AVX512_BF16 kernel itself (whichever kernel `matmul` chose here).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn run_avx512(
    a: &[f32],
    b: &[f32],
    t: Trans,
    m: usize,
    k: usize,
    n: usize,
    start: f32,
    accumulate: bool,
    threads: usize,
) -> Vec<f32> {
    let (am, bm) = mats(a, b, t, m, k, n);
    let (av, bv) = crate::ops::bf16_views(am, bm, t);
    let mut c = vec![start; m * n];
    // SAFETY: the caller checked the CPU; the views and C cover the shapes.
    unsafe { gemm(m, n, k, c.as_mut_ptr(), n, accumulate, av, bv, threads) };
    c
}

#[cfg(target_arch = "x86_64")]
#[test]
fn avx512_kernel_matches_f64_and_the_emulation() {
    // The kernel's products are exact, its sums f32: within ~k ulps of the
    // f64 reference on rounded inputs and of the emulation (which differs
    // only in summation order), on one thread and on two.
    if !has_avx512_bf16() {
        eprintln!("skipped: no AVX512_BF16 on this CPU (the emulation is the only path)");
        return;
    }
    crate::ops::set_threads(2);
    for t in [Trans::NN, Trans::NT, Trans::TN] {
        for (s, &(m, k, n)) in SHAPES.iter().enumerate() {
            let (a, b) = case(m, k, n, 50 + s as u64);
            let (want, mag) = reference(&a, &b, t, m, k, n, round);
            let emu = run(Precision::Bf16, &a, &b, t, m, k, n, 0.0, false);
            for threads in [1, 2] {
                for (accumulate, start) in [(false, 3.0), (true, -0.25)] {
                    let got = run_avx512(&a, &b, t, m, k, n, start, accumulate, threads);
                    for i in 0..m * n {
                        let base = if accumulate { start as f64 } else { 0.0 };
                        let tol =
                            2.0 * (k + 1) as f64 * f32::EPSILON as f64 * (mag[i] + base.abs());
                        let err = (got[i] as f64 - (want[i] + base)).abs();
                        assert!(
                            err <= tol,
                            "{t:?} {m}x{k}x{n} t={threads} acc={accumulate} [{i}]: {err} > {tol}"
                        );
                    }
                }
                let got = run_avx512(&a, &b, t, m, k, n, 0.0, false, threads);
                for i in 0..m * n {
                    let tol = 4.0 * (k + 1) as f64 * f32::EPSILON as f64 * mag[i];
                    let err = (got[i] as f64 - emu[i] as f64).abs();
                    assert!(err <= tol, "{t:?} {m}x{k}x{n} vs emulation [{i}]");
                }
            }
        }
    }
}

#[test]
fn one_row_product_reads_the_bf16_copy() {
    let (rows, k) = (37, 300);
    let w = random(rows * k, 71);
    let x = random(k, 72);
    let mut w16 = Vec::new();
    convert(&mut w16, &w);
    let mut y = vec![1.0f32; rows];
    let wm = Mat::new(&w, rows, k).with_bf16(Some(&w16));
    matmul(
        Precision::Bf16,
        &mut y,
        rows,
        Mat::new(&x, 1, k),
        wm,
        Trans::NT,
        true,
    );
    for j in 0..rows {
        let (mut want, mut mag) = (1.0f64, 1.0f64);
        for p in 0..k {
            let v = round(w[j * k + p]) as f64 * round(x[p]) as f64;
            want += v;
            mag += v.abs();
        }
        let tol = 2.0 * k as f64 * f32::EPSILON as f64 * mag;
        assert!((y[j] as f64 - want).abs() <= tol, "row {j}");
    }
    // the copy is what is read: a different copy gives a different answer
    let zeros = vec![0u16; rows * k];
    let mut z = vec![0.0f32; rows];
    let zm = Mat::new(&w, rows, k).with_bf16(Some(&zeros));
    matmul(
        Precision::Bf16,
        &mut z,
        rows,
        Mat::new(&x, 1, k),
        zm,
        Trans::NT,
        false,
    );
    assert!(z.iter().all(|&v| v == 0.0));
}

#[test]
fn bf16_gemm_is_deterministic() {
    let (m, k, n) = (300, 200, 150);
    let (a, b) = case(m, k, n, 90);
    let first = run(Precision::Bf16, &a, &b, Trans::NN, m, k, n, 0.0, false);
    for _ in 0..3 {
        assert_eq!(
            run(Precision::Bf16, &a, &b, Trans::NN, m, k, n, 0.0, false),
            first
        );
    }
}
