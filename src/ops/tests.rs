//! Tests of the numeric kernels (finite differences for every backward),
//! and the helpers other modules' gradient tests use.

use super::*;

/// Deterministic pseudo-random fill in [-1, 1) for tests.
pub fn fill(v: &mut [f32], seed: u64) {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for x in v.iter_mut() {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *x = ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
    }
}

fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    c
}

fn transpose(a: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut t = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = a[i * c + j];
        }
    }
    t
}

#[test]
fn matmul_all_transposes_and_column_blocks() {
    let (m, k, n) = (37, 53, 29);
    let mut a = vec![0.0; m * k];
    let mut b = vec![0.0; k * n];
    fill(&mut a, 1);
    fill(&mut b, 2);
    let want = naive(&a, &b, m, k, n);
    let close = |c: &[f32]| c.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-4);
    let mut c = vec![0.0; m * n];
    matmul(
        Precision::F32,
        &mut c,
        n,
        Mat::new(&a, m, k),
        Mat::new(&b, k, n),
        Trans::NN,
        false,
    );
    assert!(close(&c));
    let bt = transpose(&b, k, n);
    matmul(
        Precision::F32,
        &mut c,
        n,
        Mat::new(&a, m, k),
        Mat::new(&bt, n, k),
        Trans::NT,
        false,
    );
    assert!(close(&c));
    let at = transpose(&a, m, k);
    matmul(
        Precision::F32,
        &mut c,
        n,
        Mat::new(&at, k, m),
        Mat::new(&b, k, n),
        Trans::TN,
        false,
    );
    assert!(close(&c));
    // accumulate doubles it
    matmul(
        Precision::F32,
        &mut c,
        n,
        Mat::new(&at, k, m),
        Mat::new(&b, k, n),
        Trans::TN,
        true,
    );
    assert!(c.iter().zip(&want).all(|(x, y)| (x - 2.0 * y).abs() < 2e-4));
    // one row (the recurrent pass's gemv path), B a column block of a wider matrix
    let mut wide_b = vec![0.0; n * (k + 3)];
    for j in 0..n {
        wide_b[j * (k + 3) + 3..j * (k + 3) + 3 + k].copy_from_slice(&bt[j * k..(j + 1) * k]);
    }
    let mut c1 = vec![1.0; n];
    matmul(
        Precision::F32,
        &mut c1,
        n,
        Mat::new(&a[..k], 1, k),
        Mat::cols_of(&wide_b, n, k + 3, 3, k),
        Trans::NT,
        true,
    );
    assert!(c1
        .iter()
        .zip(&want[..n])
        .all(|(x, y)| (x - 1.0 - y).abs() < 1e-4));
    // A as a column block [.., k] of a wider [m, k + 7] matrix
    let mut wide = vec![0.0; m * (k + 7)];
    for i in 0..m {
        wide[i * (k + 7) + 7..i * (k + 7) + 7 + k].copy_from_slice(&a[i * k..(i + 1) * k]);
    }
    matmul(
        Precision::F32,
        &mut c,
        n,
        Mat::cols_of(&wide, m, k + 7, 7, k),
        Mat::new(&b, k, n),
        Trans::NN,
        false,
    );
    assert!(close(&c));
}

/// Central difference of a scalar function of `x` at every coordinate;
/// None where the one-sided slopes disagree (a ReLU kink within the step),
/// since the derivative is not defined there.
pub fn numeric_grad(x: &mut [f32], mut f: impl FnMut(&[f32]) -> f64) -> Vec<Option<f64>> {
    let h = 2e-3f32;
    let f0 = f(x);
    (0..x.len())
        .map(|i| {
            let old = x[i];
            x[i] = old + h;
            let fp = f(x);
            x[i] = old - h;
            let fm = f(x);
            x[i] = old;
            let (right, left) = ((fp - f0) / h as f64, (f0 - fm) / h as f64);
            let smooth = (right - left).abs() <= 0.05 * right.abs().max(left.abs()).max(0.1);
            smooth.then_some((fp - fm) / (2.0 * h as f64))
        })
        .collect()
}

pub fn assert_grad_close(analytic: &[f32], numeric: &[Option<f64>], tol: f64, what: &str) {
    let scale = numeric
        .iter()
        .flatten()
        .fold(1e-3f64, |m, x| m.max(x.abs()));
    let kinks = numeric.iter().filter(|n| n.is_none()).count();
    assert!(
        kinks * 10 <= numeric.len(),
        "{what}: {kinks} of {} coordinates at kinks",
        numeric.len()
    );
    for (i, (a, n)) in analytic.iter().zip(numeric).enumerate() {
        if let Some(n) = n {
            assert!(
                ((*a as f64) - n).abs() / scale < tol,
                "{what}[{i}]: analytic {a} numeric {n}"
            );
        }
    }
}

#[test]
fn exp_approx_is_within_two_ulp() {
    let mut worst = 0.0f64;
    for i in 0..=200_000 {
        let x = -87.0 + 175.0 * i as f32 / 200_000.0;
        let want = (x as f64).exp();
        worst = worst.max(((exp_approx(x) as f64) - want).abs() / want);
    }
    assert!(worst < 2.5e-7, "max relative error {worst}");
    assert_eq!(exp_approx(0.0), 1.0);
    assert!(exp_approx(f32::NAN).is_nan());
    assert!(exp_approx(-1e4) > 0.0 && exp_approx(1e4).is_finite());
}

/// Reference: softmax cross-entropy in f64 with libm's exp.
fn cross_entropy_f64(logits: &[f32], targets: &[u32]) -> (f64, Vec<f64>) {
    let v = logits.len() / targets.len();
    let mut grad = vec![0.0; logits.len()];
    let mut total = 0.0;
    for (r, &t) in targets.iter().enumerate() {
        let row = &logits[r * v..(r + 1) * v];
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
        let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
        total += sum.ln() - (row[t as usize] as f64 - max);
        for (i, &x) in row.iter().enumerate() {
            let p = (x as f64 - max).exp() / sum;
            grad[r * v + i] = (p - f64::from(i == t as usize)) / targets.len() as f64;
        }
    }
    (total, grad)
}

#[test]
fn cross_entropy_matches_an_f64_reference() {
    // V = 37 exercises the non-multiple-of-16 tail; row 3 has its max
    // twice (tie -> lowest index), row 4 has its max in the tail
    let (rows, v) = (5, 37);
    let mut logits = vec![0.0; rows * v];
    fill(&mut logits, 61);
    logits.iter_mut().for_each(|x| *x *= 8.0);
    logits[3 * v + 5] = 20.0;
    logits[3 * v + 30] = 20.0;
    logits[4 * v + 35] = 20.0;
    let targets = [3u32, 0, 36, 5, 35];
    let mut mine = logits.clone();
    let (l1, c1) = cross_entropy(&mut mine, &targets, true);
    let (l2, g2) = cross_entropy_f64(&logits, &targets);
    assert!((l1 - l2).abs() < 1e-6 * l2, "{l1} vs {l2}");
    assert_eq!(c1, 2); // rows 3 and 4
    assert!(
        mine.iter()
            .zip(&g2)
            .all(|(a, b)| (*a as f64 - b).abs() < 1e-7),
        "gradients differ"
    );
    let (l3, c3) = cross_entropy(&mut logits.clone(), &targets, false);
    assert_eq!((l3, c3), (l1, c1));
    // all-zero logits: ln V per row, argmax ties -> index 0
    let (l0, c0) = cross_entropy(&mut vec![0.0; rows * v], &targets, false);
    assert!((l0 - rows as f64 * (v as f64).ln()).abs() < 1e-6);
    assert_eq!(c0, 1);
    // a long row (more than one 64 x 16 summation block)
    let mut long = vec![0.0; 2 * 5000];
    fill(&mut long, 62);
    let (a, b) = (
        cross_entropy(&mut long.clone(), &[17, 4999], true).0,
        cross_entropy_f64(&long, &[17, 4999]).0,
    );
    assert!((a - b).abs() < 1e-6 * b, "{a} vs {b}");
}

#[test]
fn layernorm_backward_matches_finite_differences() {
    let (rows, n) = (3, 7);
    let mut z = vec![0.0; rows * n];
    let mut g = vec![0.0; n];
    let mut b = vec![0.0; n];
    let mut w = vec![0.0; rows * n]; // loss = sum(w * y)
    fill(&mut z, 3);
    fill(&mut g, 4);
    fill(&mut b, 5);
    fill(&mut w, 6);
    let loss = |z: &[f32], g: &[f32], b: &[f32]| {
        let (mut xh, mut rs, mut y) = (vec![0.0; rows * n], vec![0.0; rows], z.to_vec());
        layernorm_forward(&mut y, g, b, &mut xh, &mut rs);
        y.iter().zip(&w).map(|(a, b)| (a * b) as f64).sum::<f64>()
    };
    let (mut xh, mut rs, mut y) = (vec![0.0; rows * n], vec![0.0; rows], z.clone());
    layernorm_forward(&mut y, &g, &b, &mut xh, &mut rs);
    let (mut dz, mut dg, mut db) = (vec![0.0; rows * n], vec![0.0; n], vec![0.0; n]);
    layernorm_backward(&w, &xh, &rs, &g, &mut dz, &mut dg, &mut db);
    let (g2, b2) = (g.clone(), b.clone());
    assert_grad_close(
        &dz,
        &numeric_grad(&mut z.clone(), |z| loss(z, &g2, &b2)),
        1e-2,
        "dz",
    );
    let z2 = z.clone();
    assert_grad_close(
        &dg,
        &numeric_grad(&mut g.clone(), |g| loss(&z2, g, &b2)),
        1e-2,
        "dg",
    );
    assert_grad_close(
        &db,
        &numeric_grad(&mut b.clone(), |b| loss(&z2, &g2, b)),
        1e-2,
        "db",
    );
}

#[test]
fn cross_entropy_gradient_and_accuracy() {
    let (rows, v) = (4, 9);
    let mut logits = vec![0.0; rows * v];
    fill(&mut logits, 7);
    let targets = [3u32, 0, 8, 5];
    let mut g = logits.clone();
    let (loss, _) = cross_entropy(&mut g, &targets, true);
    let num = numeric_grad(&mut logits.clone(), |l| {
        let mut l = l.to_vec();
        cross_entropy(&mut l, &targets, false).0 / rows as f64
    });
    assert_grad_close(&g, &num, 1e-3, "dlogits");
    // all-zero logits: loss ln V per row, argmax ties -> index 0
    let mut z = vec![0.0; rows * v];
    let (l0, correct) = cross_entropy(&mut z, &targets, false);
    assert!((l0 - rows as f64 * (v as f64).ln()).abs() < 1e-9);
    assert_eq!(correct, 1);
    assert!(loss > 0.0);
}

#[test]
fn clip_and_adam_follow_torch_formulas() {
    let mut g = vec![3.0f32, 4.0];
    let norm = clip_grad_norm(&mut g, 1.0);
    assert!((norm - 5.0).abs() < 1e-12);
    assert!((g[0] - 0.6 / (1.0 + 1e-6 / 5.0) as f32).abs() < 1e-6);
    let mut p = vec![1.0f32, -1.0];
    let mut adam = Adam::new(2, 0.001);
    adam.step(&mut p, &[0.5, 0.0]);
    // First step moves by lr * sign(g); zero gradient does not move.
    assert!((p[0] - (1.0 - 0.001)).abs() < 1e-6, "{}", p[0]);
    assert_eq!(p[1], -1.0);
    assert_eq!(adam.t, 1);
}

/// The f32 factors Adam's loop uses are exactly the literals it used before
/// the constants were named (bit-identical steps).
#[test]
fn adam_constants_round_to_the_pytorch_factors() {
    assert_eq!((ADAM_BETA1 as f32).to_bits(), 0.9f32.to_bits());
    assert_eq!(((1.0 - ADAM_BETA1) as f32).to_bits(), 0.1f32.to_bits());
    assert_eq!((ADAM_BETA2 as f32).to_bits(), 0.999f32.to_bits());
    assert_eq!(((1.0 - ADAM_BETA2) as f32).to_bits(), 0.001f32.to_bits());
    assert_eq!(ADAM_EPS, 1e-8);
    let (step, bc2) = adam_scales(0.001, 1);
    assert_eq!(step, (0.001 / (1.0 - 0.9f64)) as f32);
    assert_eq!(bc2, (1.0f64 - 0.999).sqrt() as f32);
}
