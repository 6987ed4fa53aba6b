//! The epoch loop every model's training shares: train an epoch, validate,
//! keep the best weights, early-stop on validation loss with a patience,
//! and refuse to go on after a divergence. New-LLM's Phase 2 and the
//! baselines run through it, so they obey one protocol.

use crate::cell_result::Epoch;
use anyhow::{bail, Result};
use std::time::Instant;

/// The model- and device-specific work of one epoch, so every model (and
/// New-LLM's CPU and GPU engines) shares the loop and the stopping rule.
pub trait EpochSteps {
    /// One epoch over the training positions; the token-weighted mean loss.
    fn train_epoch(&mut self, epoch: usize) -> Result<f64>;
    /// Mean validation loss and the number of correct argmax predictions.
    fn evaluate(&mut self) -> Result<(f64, usize)>;
    /// Keeps the current weights as the best so far.
    fn keep_best(&mut self) -> Result<()>;
}

/// The epochs as run, with the early-stopping decisions.
pub struct EpochLog {
    pub epochs: Vec<Epoch>,
    pub best_epoch: usize,
    pub stop_epoch: usize,
    pub early_stopped: bool,
}

/// Trains epoch after epoch, validating after each; best = strictly lower
/// validation loss; stops after `patience` epochs without improvement
/// (0 = never) or after `max_epochs`. `stage` names the run in errors.
pub fn run_epochs(
    stage: &str,
    max_epochs: usize,
    patience: usize,
    val_positions: usize,
    steps: &mut dyn EpochSteps,
    on_epoch: &mut dyn FnMut(&Epoch),
) -> Result<EpochLog> {
    let mut epochs: Vec<Epoch> = Vec::new();
    let (mut best_epoch, mut best_loss, mut since_best) = (0, f64::INFINITY, 0);
    let mut early_stopped = false;
    for epoch in 1..=max_epochs {
        let t0 = Instant::now();
        let train_loss = steps.train_epoch(epoch)?;
        let (val_loss, correct) = steps.evaluate()?;
        if !val_loss.is_finite() {
            bail!("{stage} diverged at epoch {epoch}: validation loss {val_loss}");
        }
        let e = Epoch {
            epoch,
            train_loss,
            train_ppl: train_loss.exp(),
            val_loss,
            val_ppl: val_loss.exp(),
            val_acc: correct as f64 / val_positions as f64,
            seconds: t0.elapsed().as_secs_f64(),
        };
        on_epoch(&e);
        epochs.push(e);
        if val_loss < best_loss {
            best_loss = val_loss;
            best_epoch = epoch;
            since_best = 0;
            steps.keep_best()?;
        } else {
            since_best += 1;
            if patience > 0 && since_best >= patience {
                early_stopped = true;
                break;
            }
        }
    }
    let stop_epoch = epochs.len();
    Ok(EpochLog {
        epochs,
        best_epoch,
        stop_epoch,
        early_stopped,
    })
}
