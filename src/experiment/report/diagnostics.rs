//! Diagnostics read off each cell's per-epoch curves (early stops, fast
//! fitting, accuracy dips between cells), used by the report's training
//! section and its recommendations.

use crate::cell_result::CellResult;
use crate::experiment::results::SweepResults;

/// Patience firing at or before this epoch counts as "early" (the seed's
/// 500-sample cell stopped at epoch 3).
pub const EARLY_STOP_EPOCH: usize = 3;

/// Val PPL at the stop epoch within this fraction of the best: the stop
/// came while validation was still close to its best.
pub const NEAR_BEST: f64 = 0.05;

/// Train PPL's epoch-1 -> 2 drop factor at least this many times the val
/// drop factor counts as fitting the training data much faster.
pub const FAST_FIT_RATIO: f64 = 1.5;

/// Accuracy drops smaller than this (fraction, 0.1 points) are noise.
pub const ACC_DIP_MIN: f64 = 0.001;

/// Accuracy fell between consecutive cells while Val PPL improved.
#[derive(Clone, Debug, PartialEq)]
pub struct AccuracyDip {
    pub from_samples: usize,
    pub to_samples: usize,
    pub acc_from: f64,
    pub acc_to: f64,
    pub ppl_from: f64,
    pub ppl_to: f64,
}

/// One cell's early-stopping and over-fitting figures.
#[derive(Clone, Debug, PartialEq)]
pub struct CellDiagnosis {
    pub samples: usize,
    pub best_epoch: usize,
    pub stop_epoch: usize,
    pub early_stopped: bool,
    /// Patience fired at epoch <= EARLY_STOP_EPOCH.
    pub stopped_early: bool,
    /// Stopped early while val PPL was still within NEAR_BEST of its best:
    /// more patience might have found a better epoch.
    pub premature_stop: bool,
    /// Val PPL at the stop epoch / best Val PPL - 1.
    pub stop_over_best: Option<f64>,
    /// train_ppl[epoch 1] / train_ppl[epoch 2].
    pub train_drop: Option<f64>,
    /// val_ppl[epoch 1] / val_ppl[epoch 2].
    pub val_drop: Option<f64>,
    /// train_drop >= FAST_FIT_RATIO * val_drop.
    pub fast_fit: bool,
    /// Largest val loss after the best epoch, relative to the best (fraction).
    pub val_loss_rise: Option<f64>,
    /// Train PPL still fell after the best epoch while val got worse.
    pub train_still_falling: bool,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct Diagnostics {
    pub dips: Vec<AccuracyDip>,
    pub cells: Vec<CellDiagnosis>,
}

impl Diagnostics {
    pub fn any_premature_stop(&self) -> bool {
        self.cells.iter().any(|c| c.premature_stop)
    }
}

pub fn diagnose_cell(c: &CellResult) -> CellDiagnosis {
    let epoch = |n: usize| c.epochs.iter().find(|e| e.epoch == n);
    let best = epoch(c.best_epoch);
    let stop = epoch(c.stop_epoch);
    let stop_over_best = match (best, stop) {
        (Some(b), Some(s)) if b.val_ppl > 0.0 => Some(s.val_ppl / b.val_ppl - 1.0),
        _ => None,
    };
    let (train_drop, val_drop) = match (epoch(1), epoch(2)) {
        (Some(e1), Some(e2)) if e2.train_ppl > 0.0 && e2.val_ppl > 0.0 => (
            Some(e1.train_ppl / e2.train_ppl),
            Some(e1.val_ppl / e2.val_ppl),
        ),
        _ => (None, None),
    };
    let fast_fit =
        matches!((train_drop, val_drop), (Some(t), Some(v)) if v > 0.0 && t >= FAST_FIT_RATIO * v);
    let after: Vec<_> = c.epochs.iter().filter(|e| e.epoch > c.best_epoch).collect();
    let val_loss_rise = match best {
        Some(b) if !after.is_empty() && b.val_loss > 0.0 => Some(
            after
                .iter()
                .map(|e| e.val_loss / b.val_loss - 1.0)
                .fold(f64::MIN, f64::max),
        ),
        _ => None,
    };
    let train_still_falling = match (best, after.last()) {
        (Some(b), Some(l)) => l.train_loss < b.train_loss && l.val_loss > b.val_loss,
        _ => false,
    };
    let stopped_early = c.early_stopped && c.stop_epoch <= EARLY_STOP_EPOCH;
    CellDiagnosis {
        samples: c.samples,
        best_epoch: c.best_epoch,
        stop_epoch: c.stop_epoch,
        early_stopped: c.early_stopped,
        stopped_early,
        premature_stop: stopped_early && stop_over_best.is_none_or(|v| v <= NEAR_BEST),
        stop_over_best,
        train_drop,
        val_drop,
        fast_fit,
        val_loss_rise,
        train_still_falling,
    }
}

/// Accuracy dips between consecutive cells and each cell's stopping and
/// over-fitting figures. Cells are taken in the order given (by samples).
pub fn diagnose(results: &SweepResults) -> Diagnostics {
    let dips = results
        .cells
        .windows(2)
        .filter(|w| w[1].val_acc < w[0].val_acc - ACC_DIP_MIN && w[1].val_ppl < w[0].val_ppl)
        .map(|w| AccuracyDip {
            from_samples: w[0].samples,
            to_samples: w[1].samples,
            acc_from: w[0].val_acc,
            acc_to: w[1].val_acc,
            ppl_from: w[0].val_ppl,
            ppl_to: w[1].val_ppl,
        })
        .collect();
    Diagnostics {
        dips,
        cells: results.cells.iter().map(diagnose_cell).collect(),
    }
}
