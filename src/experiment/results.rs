//! A whole sweep's results: every cell plus the analysis of ALGORITHM.md
//! section 7, written as `results.json` and read back by `report`/`compare`.

use crate::cell_result::CellResult;
use crate::config::Config;
use crate::experiment::stats::{correlation_pair, scaling_fit, CorrelationPair, ScalingFit};
use serde::{Deserialize, Serialize};

/// A whole sweep: the config, every cell (sorted by samples) and the
/// analysis of ALGORITHM.md section 7. Built by `analyse`; written
/// as `results.json` and read back by the report and compare commands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepResults {
    pub config: Config,
    pub cells: Vec<CellResult>,
    /// ln PPL = ln A + alpha ln tokens; None when fewer than 2 usable cells.
    pub scaling: Option<ScalingFit>,
    #[serde(default)]
    pub correlations: Correlations,
}

impl SweepResults {
    pub fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        use anyhow::Context;
        let json = serde_json::to_string_pretty(self).context("serialising sweep results")?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn load(path: &std::path::Path) -> anyhow::Result<SweepResults> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a sweep results file", path.display()))
    }
}

/// The relations the seed document discusses: does ER go with performance?
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Correlations {
    /// Validation ER vs best-epoch validation PPL.
    pub val_er_vs_val_ppl: CorrelationPair,
    /// Validation ER vs best-epoch validation accuracy.
    pub val_er_vs_val_acc: CorrelationPair,
    /// ln(train tokens) vs validation accuracy (the fit covers PPL).
    pub log_tokens_vs_val_acc: CorrelationPair,
}

/// Sorts the cells by sample count and computes the scaling fit (train
/// tokens vs best-epoch Val PPL) and the correlations.
pub fn analyse(config: &Config, cells: &[CellResult]) -> SweepResults {
    let mut cells = cells.to_vec();
    cells.sort_by_key(|c| (c.samples, c.train_tokens));
    // A diverged cell (infinite or NaN PPL) is left out rather than voiding
    // the whole analysis; the report states how many cells each figure used.
    let fit_cells: Vec<&CellResult> = cells
        .iter()
        .filter(|c| c.train_tokens > 0 && c.val_ppl.is_finite() && c.val_ppl > 0.0)
        .collect();
    let tokens: Vec<f64> = fit_cells.iter().map(|c| c.train_tokens as f64).collect();
    let ppl: Vec<f64> = fit_cells.iter().map(|c| c.val_ppl).collect();
    let column = |f: fn(&CellResult) -> f64| cells.iter().map(f).collect::<Vec<f64>>();
    let log_tokens = column(|c| (c.train_tokens as f64).max(1.0).ln());
    let (er, acc, all_ppl) = (
        column(|c| c.nl().val_er),
        column(|c| c.val_acc),
        column(|c| c.val_ppl),
    );
    let correlations = Correlations {
        val_er_vs_val_ppl: finite_pair(&er, &all_ppl),
        val_er_vs_val_acc: finite_pair(&er, &acc),
        log_tokens_vs_val_acc: finite_pair(&log_tokens, &acc),
    };
    SweepResults {
        config: config.clone(),
        scaling: scaling_fit(&tokens, &ppl),
        correlations,
        cells,
    }
}

/// Correlations over the positions where both values are finite.
fn finite_pair(x: &[f64], y: &[f64]) -> CorrelationPair {
    let (fx, fy): (Vec<f64>, Vec<f64>) = x
        .iter()
        .zip(y)
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .map(|(a, b)| (*a, *b))
        .unzip();
    correlation_pair(&fx, &fy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analyse_skips_diverged_cells() {
        let cells: Vec<CellResult> = [
            (500, 529173, f64::INFINITY),
            (50, 56602, 1503.3),
            (200, 216119, 757.7),
            (100, 110516, 1036.3),
        ]
        .iter()
        .map(|&(samples, train_tokens, val_ppl)| CellResult {
            samples,
            train_tokens,
            val_ppl,
            newllm: Some(crate::cell_result::NewLlmResult {
                val_er: 0.08 + samples as f64 * 1e-5,
                ..Default::default()
            }),
            val_acc: 0.1,
            ..CellResult::default()
        })
        .collect();
        let r = analyse(&Config::default(), &cells);
        let order: Vec<usize> = r.cells.iter().map(|c| c.samples).collect();
        assert_eq!(order, vec![50, 100, 200, 500]);
        let fit = r.scaling.clone().unwrap();
        assert_eq!(fit.n, 3);
        assert!(fit.alpha < -0.4 && fit.alpha > -0.6, "{}", fit.alpha);
        assert_eq!(r.correlations.val_er_vs_val_ppl.pearson.unwrap().n, 3);
        // Constant accuracy: no correlation rather than NaN.
        assert_eq!(r.correlations.val_er_vs_val_acc.pearson, None);
        assert!(!serde_json::to_string(&r.scaling).unwrap().contains("NaN"));
    }
}
