//! What one cell records: a `CellResult` with every figure the seed document
//! reports and the full config. Written by each model's cell runner; read by
//! the experiment code (sweep, statistics, report).

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
