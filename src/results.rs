//! What a run records: one `CellResult` per cell (Phase 1 -> caches -> ER ->
//! Phase 2), with every figure the seed document reports and the full config.
//! Written by `newllm train` and by each sweep cell; read by `report`.

use crate::config::Config;
use serde::{Deserialize, Serialize};

/// One Phase-1 iteration (iteration 1 is the init and has no losses).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Phase1Iteration {
    pub iteration: usize,
    pub total_loss: f64,
    pub cvfp_loss: f64,
    pub diversity_loss: f64,
    pub convergence_rate: f64,
    pub converged_tokens: usize,
    pub grad_norm_before_clip: f64,
    pub seconds: f64,
}

/// One Phase-2 epoch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Epoch {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_ppl: f64,
    pub val_loss: f64,
    pub val_ppl: f64,
    /// Fraction of validation positions whose argmax is the next token.
    pub val_acc: f64,
    pub seconds: f64,
}

/// Wall-clock seconds per stage of one cell.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StageSeconds {
    pub data: f64,
    pub phase1: f64,
    pub train_cache: f64,
    pub val_cache: f64,
    pub effective_rank: f64,
    pub phase2: f64,
    pub total: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    /// Samples (conversations) in this cell.
    pub samples: usize,
    pub train_tokens: usize,
    pub val_tokens: usize,
    /// Effective Rank as a fraction of context_dim (train = final Phase-1 prev).
    pub train_er: f64,
    /// Effective Rank as a fraction of context_dim (validation sequential pass).
    pub val_er: f64,
    pub train_er_abs: f64,
    pub val_er_abs: f64,
    /// Best epoch's validation figures (what the seed reports).
    pub val_ppl: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    /// 1-based.
    pub best_epoch: usize,
    /// Last epoch run, 1-based.
    pub stop_epoch: usize,
    pub early_stopped: bool,
    pub phase1_iterations: usize,
    pub phase1_converged: bool,
    pub phase1_final_convergence_rate: f64,
    pub phase1: Vec<Phase1Iteration>,
    pub epochs: Vec<Epoch>,
    pub seconds: StageSeconds,
    /// Threads the run used (results are reproducible for equal threads).
    pub threads: usize,
    /// Peak resident memory predicted before the run, bytes.
    pub predicted_peak_bytes: u64,
    /// Peak resident memory of the process measured after the cell (VmHWM), bytes.
    #[serde(default)]
    pub measured_peak_bytes: u64,
    pub config: Config,
}

/// A whole sweep: the config, every cell (sorted by samples) and the
/// analysis of ALGORITHM.md section 7. Built by `stats::analyse`; written
/// as `results.json` and read back by the report and compare commands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepResults {
    pub config: Config,
    pub cells: Vec<CellResult>,
    /// ln PPL = ln A + alpha ln tokens; None when fewer than 2 usable cells.
    pub scaling: Option<crate::stats::ScalingFit>,
    #[serde(default)]
    pub correlations: crate::stats::Correlations,
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
