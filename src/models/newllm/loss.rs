//! New-LLM's Phase-1 loss (docs/algorithm.md section 3): the fixed-point
//! term cvfp, the diversity term div, their weighting by `dist_reg_weight`,
//! the per-row convergence rule, and the gradient. Shared by the CPU's and
//! the GPU's Phase 1, so both weigh the two terms identically.

/// The Phase-1 losses and gradient coefficients of a batch from its sums:
/// `sq` = sum (out - prev)^2, `frob_sq` = sum (out - mean_rows(out))^2 over a
/// rows x c batch. Returns (cvfp, div, a, b) with cvfp = sq / (rows c),
/// div = -||out - mean||_F / rows, and dout = a (out - prev) - b (out - mean)
/// for the loss `scale * ((1 - w) cvfp + w div)`. Shared by the CPU and the
/// GPU, so both weigh the two terms identically.
pub fn phase1_loss_terms(
    sq: f64,
    frob_sq: f64,
    rows: usize,
    c: usize,
    w: f64,
    scale: f64,
) -> (f64, f64, f32, f32) {
    let frob = frob_sq.sqrt();
    let cvfp = sq / (rows * c) as f64;
    let div = -frob / rows as f64;
    // d cvfp/d out = 2 (out - prev) / (rows c); d div/d out = -(out - mean) / (||.|| rows)
    // (the mean's own dependence cancels because centred columns sum to zero).
    let a = (scale * (1.0 - w) * 2.0 / (rows * c) as f64) as f32;
    let b = if frob > 0.0 {
        (scale * w / (frob * rows as f64)) as f32
    } else {
        0.0
    };
    (cvfp, div, a, b)
}

/// The Phase-1 loss: (1 - w) cvfp + w div.
pub fn phase1_total_loss(cvfp: f64, div: f64, w: f64) -> f64 {
    (1.0 - w) * cvfp + w * div
}

/// Whether a row has converged: its mean squared change is strictly below
/// the threshold (docs/algorithm.md section 3).
pub fn row_converged(row_sq: f64, c: usize, threshold: f64) -> bool {
    row_sq / (c as f64) < threshold
}

/// Phase-1 losses of one batch (docs/algorithm.md section 3) and their gradient.
/// `out`, `prev`: rows x c. Returns (cvfp, div, converged rows) where
/// cvfp = mean((out - prev)^2), div = -||out - mean_rows(out)||_F / rows.
/// Writes `dout = scale * ((1 - w) dcvfp + w ddiv)` when `dout` is given.
/// `col_mean` is caller scratch of c values (nothing is allocated here).
#[allow(clippy::too_many_arguments)]
pub fn phase1_losses(
    out: &[f32],
    prev: &[f32],
    c: usize,
    w: f64,
    threshold: f64,
    scale: f64,
    col_mean: &mut [f64],
    dout: Option<&mut [f32]>,
) -> (f64, f64, usize) {
    let rows = out.len() / c;
    let col_mean = &mut col_mean[..c];
    col_mean.fill(0.0);
    let mut sq = 0.0f64;
    let mut converged = 0;
    for (o, p) in out.chunks_exact(c).zip(prev.chunks_exact(c)) {
        let mut row_sq = 0.0f64;
        for i in 0..c {
            let d = (o[i] - p[i]) as f64;
            row_sq += d * d;
            col_mean[i] += o[i] as f64;
        }
        if row_converged(row_sq, c, threshold) {
            converged += 1;
        }
        sq += row_sq;
    }
    for m in col_mean.iter_mut() {
        *m /= rows as f64;
    }
    let mut frob_sq = 0.0f64;
    for o in out.chunks_exact(c) {
        for i in 0..c {
            let d = o[i] as f64 - col_mean[i];
            frob_sq += d * d;
        }
    }
    let (cvfp, div, a, b) = phase1_loss_terms(sq, frob_sq, rows, c, w, scale);
    if let Some(dout) = dout {
        for ((d, o), p) in dout
            .chunks_exact_mut(c)
            .zip(out.chunks_exact(c))
            .zip(prev.chunks_exact(c))
        {
            for i in 0..c {
                d[i] = a * (o[i] - p[i]) - b * (o[i] - col_mean[i] as f32);
            }
        }
    }
    (cvfp, div, converged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::{assert_grad_close, fill, numeric_grad};

    #[test]
    fn phase1_losses_gradient_matches_finite_differences() {
        let (rows, n) = (5, 6);
        let mut out = vec![0.0; rows * n];
        let mut prev = vec![0.0; rows * n];
        fill(&mut out, 8);
        fill(&mut prev, 9);
        let (w, scale) = (0.8, 0.5);
        let mut d = vec![0.0; rows * n];
        let mut col_mean = vec![0.0; n];
        phase1_losses(&out, &prev, n, w, 0.03, scale, &mut col_mean, Some(&mut d));
        let num = numeric_grad(&mut out.clone(), |o| {
            let (c, dv, _) = phase1_losses(o, &prev, n, w, 0.03, scale, &mut col_mean, None);
            scale * ((1.0 - w) * c + w * dv)
        });
        assert_grad_close(&d, &num, 1e-2, "dout");
    }

    #[test]
    fn a_row_converges_only_strictly_below_the_threshold() {
        // mean squared change exactly at the threshold: not converged
        assert!(!row_converged(1.0, 4, 0.25));
        assert!(row_converged(1.0 - 1e-12, 4, 0.25));
        assert!(!row_converged(1.0 + 1e-12, 4, 0.25));
        // the default 0.03 (not a binary fraction): 0.12 / 4 is exactly 0.03
        assert_eq!(0.12 / 4.0, 0.03);
        assert!(!row_converged(0.12, 4, 0.03));
        assert!(row_converged(0.1199999, 4, 0.03));
    }

    #[test]
    fn phase1_losses_count_rows_at_the_threshold_as_not_converged() {
        let c = 4;
        let prev = vec![0.0f32; 4 * c];
        #[rustfmt::skip]
        let out = vec![
            0.5, 0.5, 0.5, 0.5,    // mean square 0.25: exactly at the threshold
            0.5, 0.5, 0.5, 0.25,   // below
            0.5, -0.5, 0.5, -0.5,  // exactly at the threshold again
            0.75, 0.5, 0.5, 0.5,   // above
        ];
        let mut col_mean = vec![0.0; c];
        let (cvfp, _, conv) = phase1_losses(&out, &prev, c, 0.8, 0.25, 1.0, &mut col_mean, None);
        assert_eq!(conv, 1);
        assert!((cvfp - (1.0 + 0.8125 + 1.0 + 1.3125) / 16.0).abs() < 1e-15);
        // a hair above the threshold admits both boundary rows
        let (_, _, conv) =
            phase1_losses(&out, &prev, c, 0.8, 0.25 + 1e-9, 1.0, &mut col_mean, None);
        assert_eq!(conv, 3);
    }
}
