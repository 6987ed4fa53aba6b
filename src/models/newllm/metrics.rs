//! Metrics (docs/algorithm.md section 6): Effective Rank from singular values.
//! Perplexity (exp of the mean loss), accuracy and the convergence rate are
//! computed where they arise (train_loop, ops::cross_entropy,
//! loss::phase1_losses).

use crate::rng::Rng;
use anyhow::{anyhow, Result};

/// Effective Rank of the rows x cols matrix `x` (no centring):
/// p = s / sum(s), ER = exp(-sum p ln(p + 1e-10)). When `max_rows` > 0 and
/// the matrix has more rows, a seeded random subset of `max_rows` rows is used.
/// Returns (ER, singular values in descending order, rows used).
pub fn effective_rank(
    x: &[f32],
    cols: usize,
    max_rows: usize,
    seed: u64,
) -> Result<(f64, Vec<f64>, usize)> {
    let rows = x.len() / cols;
    let chosen: Vec<usize> = if max_rows > 0 && rows > max_rows {
        Rng::new(seed ^ 0xE1F0).sample_indices(rows, max_rows)
    } else {
        (0..rows).collect()
    };
    let m = faer::Mat::<f64>::from_fn(chosen.len(), cols, |i, j| x[chosen[i] * cols + j] as f64);
    let mut s = m
        .singular_values()
        .map_err(|e| anyhow!("SVD for Effective Rank failed: {e:?}"))?;
    s.sort_by(|a, b| b.total_cmp(a));
    Ok((effective_rank_of(&s), s, chosen.len()))
}

/// ER from singular values.
pub fn effective_rank_of(s: &[f64]) -> f64 {
    let total: f64 = s.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    let h: f64 = s
        .iter()
        .map(|v| v / total)
        .map(|p| -p * (p + 1e-10).ln())
        .sum();
    h.exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_rank_known_values() {
        // identity-like: 4 equal singular values -> ER 4
        let mut x = vec![0.0f32; 4 * 4];
        for i in 0..4 {
            x[i * 4 + i] = 2.0;
        }
        let (er, s, rows) = effective_rank(&x, 4, 0, 1).unwrap();
        assert!((er - 4.0).abs() < 1e-6, "{er}");
        assert_eq!(rows, 4);
        assert!(s.iter().all(|v| (v - 2.0).abs() < 1e-9));
        // rank one -> ER 1
        let y: Vec<f32> = (0..12).map(|i| (i / 3 + 1) as f32).collect();
        let (er1, _, _) = effective_rank(&y, 3, 0, 1).unwrap();
        assert!((er1 - 1.0).abs() < 1e-6, "{er1}");
        // subsampling keeps max_rows rows
        let z: Vec<f32> = (0..300).map(|i| ((i * 37) % 11) as f32).collect();
        assert_eq!(effective_rank(&z, 3, 50, 7).unwrap().2, 50);
    }

    /// ER of singular values (3, 1): p = (0.75, 0.25), so the plain formula
    /// gives exp(-(0.75 ln 0.75 + 0.25 ln 0.25)) = 1.75477 while the squared
    /// values (9, 1) would give 1.38415; the 1e-10 inside the log is included.
    const ER_3_1: f64 = 1.754_765_350_252_370_1;

    #[test]
    fn effective_rank_uses_plain_not_squared_singular_values() {
        assert!((effective_rank_of(&[3.0, 1.0]) - ER_3_1).abs() < 1e-12);
        assert!((effective_rank_of(&[9.0, 1.0]) - 1.384_145_488_184_856_7).abs() < 1e-12);
        // diag(3, 1) with its rows permuted and a zero row: singular values 3, 1
        let x = [0.0f32, 1.0, 3.0, 0.0, 0.0, 0.0];
        let (er, s, rows) = effective_rank(&x, 2, 0, 1).unwrap();
        assert_eq!(rows, 3);
        assert!(
            (s[0] - 3.0).abs() < 1e-12 && (s[1] - 1.0).abs() < 1e-12,
            "{s:?}"
        );
        assert!((er - ER_3_1).abs() < 1e-9, "{er}");
    }

    #[test]
    fn effective_rank_does_not_centre_the_rows() {
        // Identical rows: rank one as given (ER 1); centred they would be all
        // zero (ER 0).
        let x: Vec<f32> = [3.0f32, 4.0].repeat(5);
        let (er, s, _) = effective_rank(&x, 2, 0, 1).unwrap();
        assert!((s[0] - 5.0 * 5f64.sqrt()).abs() < 1e-9, "{s:?}");
        assert!((er - 1.0).abs() < 1e-6, "{er}");
    }

    #[test]
    fn effective_rank_subsampling_is_seeded() {
        let z: Vec<f32> = (0..300).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
        let a = effective_rank(&z, 3, 40, 7).unwrap();
        let b = effective_rank(&z, 3, 40, 7).unwrap();
        assert_eq!(a.0, b.0);
        assert_eq!(a.2, 40);
        // no subsampling when the matrix is not larger than max_rows
        assert_eq!(effective_rank(&z, 3, 100, 7).unwrap().2, 100);
        assert_eq!(effective_rank(&z, 3, 0, 7).unwrap().2, 100);
    }
}
