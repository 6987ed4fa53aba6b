//! The transformer's own primitives, each with its backward: token+position
//! embedding ("encoder" in llm.c), GELU (tanh approximation, as GPT-2), and
//! causal multi-head scaled-dot-product attention. Linear, LayerNorm and the
//! softmax cross-entropy come from `crate::ops`. Row-major f32 as there; buffers may be longer than the
//! batch, only their prefix is used.

use crate::ops::{self, exp_approx, multiversion, Mat, Precision, Trans};
use rayon::prelude::*;

/// `x[w, s] = wte[inputs[w, s]] + wpe[s]` for `rows` positions of windows of
/// length `t` (the position restarts at 0 in every window). Ids must be < V.
pub fn encoder_forward(
    x: &mut [f32],
    wte: &[f32],
    wpe: &[f32],
    inputs: &[u32],
    t: usize,
    c: usize,
) {
    for (r, (row, &id)) in x.chunks_exact_mut(c).zip(inputs).enumerate() {
        let tok = &wte[id as usize * c..(id as usize + 1) * c];
        let pos = &wpe[(r % t) * c..(r % t + 1) * c];
        for i in 0..c {
            row[i] = tok[i] + pos[i];
        }
    }
}

/// Backward of `encoder_forward`: accumulates `dx` rows into the rows of
/// `dwte` and `dwpe` they were read from.
pub fn encoder_backward(
    dwte: &mut [f32],
    dwpe: &mut [f32],
    dx: &[f32],
    inputs: &[u32],
    t: usize,
    c: usize,
) {
    for (r, (row, &id)) in dx.chunks_exact(c).zip(inputs).enumerate() {
        let tok = &mut dwte[id as usize * c..(id as usize + 1) * c];
        for i in 0..c {
            tok[i] += row[i];
        }
        let pos = &mut dwpe[(r % t) * c..(r % t + 1) * c];
        for i in 0..c {
            pos[i] += row[i];
        }
    }
}

/// sqrt(2 / pi), GELU's tanh-approximation constant.
const GELU_SCALE: f32 = 0.797_884_6;
const GELU_CUBE: f32 = 0.044_715;
/// Elements per rayon task in the elementwise loops.
const CHUNK: usize = 1 << 14;

/// tanh(u) = 1 - 2 / (e^{2u} + 1); saturates to +-1 through the clamped exp.
#[inline(always)]
fn tanh_approx(u: f32) -> f32 {
    1.0 - 2.0 / (exp_approx(2.0 * u) + 1.0)
}

multiversion! {
    fn gelu_forward_chunk(out: &mut [f32], x: &[f32]) {
        for (o, &x) in out.iter_mut().zip(x) {
            let u = GELU_SCALE * (x + GELU_CUBE * x * x * x);
            *o = 0.5 * x * (1.0 + tanh_approx(u));
        }
    }
}

multiversion! {
    fn gelu_backward_chunk(d: &mut [f32], x: &[f32]) {
        for (d, &x) in d.iter_mut().zip(x) {
            let th = tanh_approx(GELU_SCALE * (x + GELU_CUBE * x * x * x));
            let du = GELU_SCALE * (1.0 + 3.0 * GELU_CUBE * x * x);
            *d *= 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du;
        }
    }
}

/// `out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))` elementwise.
pub fn gelu_forward(out: &mut [f32], x: &[f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| gelu_forward_chunk(o, x));
}

/// Backward of `gelu_forward`, in place: `d` holds dL/dout on entry and
/// dL/dx on exit; `x` is the forward input.
pub fn gelu_backward(d: &mut [f32], x: &[f32]) {
    d.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(d, x)| gelu_backward_chunk(d, x));
}

/// Shape of one attention call: `windows` sequences of `t` positions,
/// model width `c` split into `n_head` heads of `c / n_head`.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub windows: usize,
    pub t: usize,
    pub n_head: usize,
    pub c: usize,
}

impl AttnShape {
    fn hs(&self) -> usize {
        self.c / self.n_head
    }
}

/// In place over a `t x t` score matrix: `p[i, j] = softmax_j(scale s[i, j])`
/// over j <= i, and 0 for j > i (the causal mask).
fn causal_softmax(s: &mut [f32], t: usize, scale: f32) {
    for (i, row) in s.chunks_exact_mut(t).enumerate() {
        let (seen, future) = row.split_at_mut(i + 1);
        let max = seen.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * scale;
        let mut sum = 0.0f32;
        for v in seen.iter_mut() {
            *v = (*v * scale - max).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        seen.iter_mut().for_each(|v| *v *= inv);
        future.fill(0.0);
    }
}

/// Causal self-attention of every window and head. `qkv`: [windows t, 3c]
/// (q | k | v, each head a column block of `hs`); `y`: [windows t, c], head h
/// in columns h hs..; `att`: [windows, n_head, t, t] softmax probabilities,
/// kept for the backward. Scores are computed for the full t x t block (the
/// masked half is wasted, but one GEMM beats t small ones at these sizes).
/// Windows run in parallel; each head's products are single-threaded GEMMs.
pub fn attention_forward(
    prec: Precision,
    y: &mut [f32],
    att: &mut [f32],
    qkv: &[f32],
    s: AttnShape,
) {
    let AttnShape {
        windows,
        t,
        n_head,
        c,
    } = s;
    let hs = s.hs();
    let scale = 1.0 / (hs as f32).sqrt();
    y[..windows * t * c]
        .par_chunks_mut(t * c)
        .zip(att[..windows * n_head * t * t].par_chunks_mut(n_head * t * t))
        .zip(qkv[..windows * t * 3 * c].par_chunks(t * 3 * c))
        .for_each(|((y, att), qkv)| {
            for (h, p) in att.chunks_exact_mut(t * t).enumerate() {
                let q = Mat::cols_of(qkv, t, 3 * c, h * hs, hs);
                let k = Mat::cols_of(qkv, t, 3 * c, c + h * hs, hs);
                let v = Mat::cols_of(qkv, t, 3 * c, 2 * c + h * hs, hs);
                ops::matmul(prec, p, t, q, k, Trans::NT, false);
                causal_softmax(p, t, scale);
                ops::matmul(
                    prec,
                    &mut y[h * hs..],
                    c,
                    Mat::new(p, t, t),
                    v,
                    Trans::NN,
                    false,
                );
            }
        });
}

/// Backward of `attention_forward`: writes `dqkv` [windows t, 3c] from `dy`
/// [windows t, c]. `datt` is scratch of at least windows t t floats.
pub fn attention_backward(
    prec: Precision,
    dqkv: &mut [f32],
    datt: &mut [f32],
    dy: &[f32],
    att: &[f32],
    qkv: &[f32],
    s: AttnShape,
) {
    let AttnShape {
        windows,
        t,
        n_head,
        c,
    } = s;
    let hs = s.hs();
    let scale = 1.0 / (hs as f32).sqrt();
    dqkv[..windows * t * 3 * c]
        .par_chunks_mut(t * 3 * c)
        .zip(datt[..windows * t * t].par_chunks_mut(t * t))
        .zip(dy[..windows * t * c].par_chunks(t * c))
        .zip(att[..windows * n_head * t * t].par_chunks(n_head * t * t))
        .zip(qkv[..windows * t * 3 * c].par_chunks(t * 3 * c))
        .for_each(|((((dqkv, ds), dy), att), qkv)| {
            for (h, p) in att.chunks_exact(t * t).enumerate() {
                let q = Mat::cols_of(qkv, t, 3 * c, h * hs, hs);
                let k = Mat::cols_of(qkv, t, 3 * c, c + h * hs, hs);
                let v = Mat::cols_of(qkv, t, 3 * c, 2 * c + h * hs, hs);
                let dyh = Mat::cols_of(dy, t, c, h * hs, hs);
                let pm = Mat::new(p, t, t);
                // dP = dY V^T, dV = P^T dY
                ops::matmul(prec, ds, t, dyh, v, Trans::NT, false);
                ops::matmul(
                    prec,
                    &mut dqkv[2 * c + h * hs..],
                    3 * c,
                    pm,
                    dyh,
                    Trans::TN,
                    false,
                );
                // softmax backward: dS = scale P (dP - rowsum(P dP)); masked
                // entries have P = 0, so they get no gradient.
                for (prow, drow) in p.chunks_exact(t).zip(ds.chunks_exact_mut(t)) {
                    let dot: f32 = prow.iter().zip(drow.iter()).map(|(a, b)| a * b).sum();
                    for (d, &pv) in drow.iter_mut().zip(prow) {
                        *d = scale * pv * (*d - dot);
                    }
                }
                // dQ = dS K, dK = dS^T Q
                let dsm = Mat::new(ds, t, t);
                ops::matmul(prec, &mut dqkv[h * hs..], 3 * c, dsm, k, Trans::NN, false);
                ops::matmul(
                    prec,
                    &mut dqkv[c + h * hs..],
                    3 * c,
                    dsm,
                    q,
                    Trans::TN,
                    false,
                );
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::{assert_grad_close, fill, numeric_grad};

    fn weighted_sum(y: &[f32], w: &[f32]) -> f64 {
        y.iter().zip(w).map(|(a, b)| *a as f64 * *b as f64).sum()
    }

    #[test]
    fn gelu_values_and_backward_match_finite_differences() {
        let mut out = [0.0f32; 3];
        gelu_forward(&mut out, &[0.0, 1.0, -1.0]);
        // GPT-2's tanh GELU (torch gelu approximate="tanh") at 0, 1, -1
        for (got, want) in out.iter().zip([0.0, 0.841_192, -0.158_808]) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        let n = 50;
        let mut x = vec![0.0; n];
        let mut w = vec![0.0; n];
        fill(&mut x, 11);
        fill(&mut w, 12);
        x.iter_mut().for_each(|v| *v *= 4.0); // spread over [-4, 4)
        let mut d = w.clone();
        gelu_backward(&mut d, &x);
        let num = numeric_grad(&mut x.clone(), |x| {
            let mut y = vec![0.0; x.len()];
            gelu_forward(&mut y, x);
            weighted_sum(&y, &w)
        });
        assert_grad_close(&d, &num, 1e-3, "gelu dx");
    }

    fn attention_case(n_head: usize, c: usize) {
        let s = AttnShape {
            windows: 2,
            t: 5,
            n_head,
            c,
        };
        let rows = s.windows * s.t;
        let mut qkv = vec![0.0; rows * 3 * c];
        let mut w = vec![0.0; rows * c];
        fill(&mut qkv, 21 + c as u64);
        fill(&mut w, 22 + c as u64);
        qkv.iter_mut().for_each(|v| *v *= 2.0); // peaked, non-uniform attention
        let att_len = s.windows * n_head * s.t * s.t;
        let run = |qkv: &[f32]| {
            let (mut y, mut att) = (vec![0.0; rows * c], vec![0.0; att_len]);
            attention_forward(Precision::F32, &mut y, &mut att, qkv, s);
            (y, att)
        };
        let (y, att) = run(&qkv);
        // probabilities: rows sum to 1, nothing above the diagonal
        for (r, row) in att.chunks_exact(s.t).enumerate() {
            let i = r % s.t;
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            assert!(row[i + 1..].iter().all(|&p| p == 0.0));
            assert!(row[..=i].iter().all(|&p| p > 0.0));
        }
        // position 0 attends only to itself: y row 0 = its own v
        for h in 0..n_head {
            let hs = c / n_head;
            let v0 = &qkv[2 * c + h * hs..2 * c + (h + 1) * hs];
            assert!(y[h * hs..(h + 1) * hs]
                .iter()
                .zip(v0)
                .all(|(a, b)| (a - b).abs() < 1e-6));
        }
        let mut dqkv = vec![0.0; rows * 3 * c];
        let mut datt = vec![0.0; s.windows * s.t * s.t];
        attention_backward(Precision::F32, &mut dqkv, &mut datt, &w, &att, &qkv, s);
        let num = numeric_grad(&mut qkv.clone(), |q| weighted_sum(&run(q).0, &w));
        for (part, name) in ["q", "k", "v"].iter().enumerate() {
            let pick = |v: &[f32]| -> Vec<usize> {
                (0..v.len()).filter(|i| i % (3 * c) / c == part).collect()
            };
            let idx = pick(&dqkv);
            let a: Vec<f32> = idx.iter().map(|&i| dqkv[i]).collect();
            let n: Vec<Option<f64>> = idx.iter().map(|&i| num[i]).collect();
            assert_grad_close(&a, &n, 1e-2, &format!("attention d{name} (heads {n_head})"));
            assert!(a.iter().any(|g| g.abs() > 1e-3), "d{name} is all ~0");
        }
    }

    #[test]
    fn attention_single_head_backward_matches_finite_differences() {
        attention_case(1, 4);
    }

    #[test]
    fn attention_multi_head_backward_matches_finite_differences() {
        attention_case(2, 8);
    }

    #[test]
    fn attention_is_causal_and_windows_are_independent() {
        let (c, n_head) = (8, 2);
        let s = AttnShape {
            windows: 2,
            t: 5,
            n_head,
            c,
        };
        let rows = s.windows * s.t;
        let mut qkv = vec![0.0; rows * 3 * c];
        fill(&mut qkv, 31);
        let run = |qkv: &[f32]| {
            let (mut y, mut att) = (vec![0.0; rows * c], vec![0.0; rows * n_head * s.t]);
            attention_forward(Precision::F32, &mut y, &mut att, qkv, s);
            y
        };
        let y0 = run(&qkv);
        for p in 0..s.t {
            // change q, k and v of window 0 at positions > p, and all of window 1
            let mut changed = qkv.clone();
            let mut noise = vec![0.0; changed.len()];
            fill(&mut noise, 40 + p as u64);
            for r in 0..rows {
                if r > p {
                    for i in 0..3 * c {
                        changed[r * 3 * c + i] += noise[r * 3 * c + i];
                    }
                }
            }
            let y1 = run(&changed);
            assert_eq!(
                y0[..(p + 1) * c],
                y1[..(p + 1) * c],
                "position <= {p} saw the future"
            );
            if p + 1 < s.t {
                assert_ne!(y0[(p + 1) * c..(p + 2) * c], y1[(p + 1) * c..(p + 2) * c]);
            }
        }
    }

    #[test]
    fn encoder_backward_matches_finite_differences() {
        let (v, t, c) = (6, 4, 3);
        let inputs = [2u32, 5, 2, 0, 1, 1, 4, 2]; // two windows of 4, repeated ids
        let mut wte = vec![0.0; v * c];
        let mut wpe = vec![0.0; t * c];
        let mut w = vec![0.0; inputs.len() * c];
        fill(&mut wte, 51);
        fill(&mut wpe, 52);
        fill(&mut w, 53);
        let loss = |wte: &[f32], wpe: &[f32]| {
            let mut x = vec![0.0; inputs.len() * c];
            encoder_forward(&mut x, wte, wpe, &inputs, t, c);
            weighted_sum(&x, &w)
        };
        let (mut dwte, mut dwpe) = (vec![0.0; v * c], vec![0.0; t * c]);
        encoder_backward(&mut dwte, &mut dwpe, &w, &inputs, t, c);
        let wpe2 = wpe.clone();
        assert_grad_close(
            &dwte,
            &numeric_grad(&mut wte.clone(), |e| loss(e, &wpe2)),
            1e-3,
            "dwte",
        );
        assert_grad_close(
            &dwpe,
            &numeric_grad(&mut wpe.clone(), |p| loss(&wte, p)),
            1e-3,
            "dwpe",
        );
        // position s of both windows adds into wpe row s; unused id 3 gets nothing
        assert_eq!(dwpe[0], w[0] + w[4 * c]);
        assert!(dwte[3 * c..4 * c].iter().all(|&g| g == 0.0));
    }
}
