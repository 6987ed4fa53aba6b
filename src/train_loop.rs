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
    /// One pass over the validation positions.
    fn evaluate(&mut self) -> Result<Evaluation>;
    /// Keeps the current weights as the best so far.
    fn keep_best(&mut self) -> Result<()>;
    /// After each epoch and its decisions: the log, progress output and the
    /// cell's resumable state.
    fn end_epoch(&mut self, progress: &EpochProgress) -> Result<()>;
}

/// What a validation pass measures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evaluation {
    /// Mean loss over the validation positions.
    pub loss: f64,
    /// Positions whose argmax is the target.
    pub correct: usize,
    /// Summed loss of the positions of each validation sample (empty when
    /// the stream has no sample boundaries), for the report's interval over
    /// validation samples.
    pub sample_losses: Vec<f64>,
}

/// The epochs so far with the early-stopping decisions: what the log shows
/// and what a resumed loop continues from.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochProgress {
    pub epochs: Vec<Epoch>,
    /// 1-based; 0 before the first epoch.
    pub best_epoch: usize,
    /// Epochs since the best one.
    pub since_best: usize,
    pub early_stopped: bool,
    /// The best epoch's per-sample validation losses (`Evaluation`).
    #[serde(default)]
    pub best_sample_losses: Vec<f64>,
}

impl EpochProgress {
    pub fn stop_epoch(&self) -> usize {
        self.epochs.len()
    }
}

/// Trains epoch after epoch, validating after each; best = strictly lower
/// validation loss; stops after `patience` epochs without improvement
/// (0 = never) or after `max_epochs`. Starts fresh or continues `resumed`.
/// `stage` names the run in errors.
pub fn run_epochs(
    stage: &str,
    max_epochs: usize,
    patience: usize,
    val_positions: usize,
    steps: &mut dyn EpochSteps,
    resumed: Option<EpochProgress>,
) -> Result<EpochProgress> {
    let mut p = resumed.unwrap_or_default();
    let mut best_loss = match p.best_epoch {
        0 => f64::INFINITY,
        b => p.epochs[b - 1].val_loss,
    };
    while !p.early_stopped && p.epochs.len() < max_epochs {
        let epoch = p.epochs.len() + 1;
        let t0 = Instant::now();
        let train_loss = steps.train_epoch(epoch)?;
        let eval = steps.evaluate()?;
        let val_loss = eval.loss;
        if !val_loss.is_finite() {
            bail!("{stage} diverged at epoch {epoch}: validation loss {val_loss}");
        }
        p.epochs.push(Epoch {
            epoch,
            train_loss,
            train_ppl: train_loss.exp(),
            val_loss,
            val_ppl: val_loss.exp(),
            val_acc: eval.correct as f64 / val_positions as f64,
            seconds: t0.elapsed().as_secs_f64(),
        });
        if val_loss < best_loss {
            best_loss = val_loss;
            p.best_epoch = epoch;
            p.since_best = 0;
            p.best_sample_losses = eval.sample_losses;
            steps.keep_best()?;
        } else {
            p.since_best += 1;
            p.early_stopped = patience > 0 && p.since_best >= patience;
        }
        steps.end_epoch(&p)?;
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scripted epochs: validation loss `val[e - 1]` after epoch e; records
    /// which epochs were trained and after which ones `keep_best` ran.
    struct Script {
        val: Vec<f64>,
        trained: Vec<usize>,
        kept: Vec<usize>,
        ended: Vec<EpochProgress>,
    }

    impl Script {
        fn new(val: &[f64]) -> Script {
            Script {
                val: val.to_vec(),
                trained: Vec::new(),
                kept: Vec::new(),
                ended: Vec::new(),
            }
        }
    }

    impl EpochSteps for Script {
        fn train_epoch(&mut self, epoch: usize) -> Result<f64> {
            self.trained.push(epoch);
            Ok(0.5 * epoch as f64)
        }
        fn evaluate(&mut self) -> Result<Evaluation> {
            let e = *self.trained.last().unwrap();
            Ok(Evaluation {
                loss: self.val[e - 1],
                correct: e,
                sample_losses: vec![self.val[e - 1], e as f64],
            })
        }
        fn keep_best(&mut self) -> Result<()> {
            self.kept.push(*self.trained.last().unwrap());
            Ok(())
        }
        fn end_epoch(&mut self, progress: &EpochProgress) -> Result<()> {
            self.ended.push(progress.clone());
            Ok(())
        }
    }

    fn run(val: &[f64], max_epochs: usize, patience: usize) -> (Script, EpochProgress) {
        let mut s = Script::new(val);
        let log = run_epochs("Stage X", max_epochs, patience, 10, &mut s, None).unwrap();
        let seen: Vec<usize> = s.ended.iter().map(|p| p.stop_epoch()).collect();
        assert_eq!(seen, s.trained, "end_epoch sees every epoch run, in order");
        assert_eq!(s.ended.last(), Some(&log));
        // resumed from any epoch's progress, the loop ends where it did
        for p in &s.ended {
            let mut again = Script::new(val);
            let resumed = run_epochs(
                "Stage X",
                max_epochs,
                patience,
                10,
                &mut again,
                Some(p.clone()),
            );
            let want: Vec<usize> = s.trained[p.stop_epoch()..].to_vec();
            assert_eq!(again.trained, want);
            let r = resumed.unwrap();
            assert_eq!(
                (r.best_epoch, r.since_best, r.early_stopped),
                (log.best_epoch, log.since_best, log.early_stopped)
            );
            assert_eq!(r.stop_epoch(), log.stop_epoch());
        }
        (s, log)
    }

    #[test]
    fn patience_one_stops_right_after_the_first_epoch_without_improvement() {
        let (s, log) = run(&[3.0, 2.0, 2.5, 1.0, 0.5], 5, 1);
        assert_eq!(s.trained, vec![1, 2, 3]);
        assert_eq!(s.kept, vec![1, 2]);
        assert_eq!(log.best_epoch, 2);
        assert_eq!(log.stop_epoch(), 3);
        assert!(log.early_stopped);
        assert_eq!(log.epochs.len(), 3);
        // the best epoch's per-sample losses, not the last one's
        assert_eq!(log.best_sample_losses, vec![2.0, 2.0]);
    }

    #[test]
    fn patience_two_tolerates_one_bad_epoch_and_an_improvement_resets_the_count() {
        // 3 does not improve (1 of 2), 4 improves (count reset), 5 and 6 do not.
        let (s, log) = run(&[3.0, 2.0, 2.5, 1.0, 1.5, 1.6, 0.1], 7, 2);
        assert_eq!(s.trained, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(s.kept, vec![1, 2, 4]);
        assert_eq!(log.best_epoch, 4);
        assert_eq!(log.stop_epoch(), 6);
        assert!(log.early_stopped);
    }

    #[test]
    fn patience_zero_runs_every_epoch() {
        let (s, log) = run(&[1.0, 2.0, 3.0, 4.0], 4, 0);
        assert_eq!(s.trained, vec![1, 2, 3, 4]);
        assert_eq!(s.kept, vec![1]);
        assert_eq!(log.best_epoch, 1);
        assert_eq!(log.stop_epoch(), 4);
        assert!(!log.early_stopped);
    }

    #[test]
    fn running_out_of_epochs_is_not_an_early_stop() {
        let (s, log) = run(&[3.0, 2.0, 1.0], 3, 1);
        assert_eq!(s.kept, vec![1, 2, 3]);
        assert_eq!((log.best_epoch, log.stop_epoch()), (3, 3));
        assert!(!log.early_stopped);
    }

    #[test]
    fn an_equal_validation_loss_is_not_an_improvement() {
        let (s, log) = run(&[2.0, 2.0, 1.0], 3, 1);
        assert_eq!(s.trained, vec![1, 2]);
        assert_eq!(s.kept, vec![1]);
        assert_eq!(log.best_epoch, 1);
        assert_eq!(log.stop_epoch(), 2);
        assert!(log.early_stopped);
    }

    #[test]
    fn epoch_records_hold_perplexities_and_accuracy() {
        let (_, log) = run(&[3.0, 2.0], 2, 1);
        let e = &log.epochs[1];
        assert_eq!(e.epoch, 2);
        assert_eq!(e.train_loss, 1.0);
        assert_eq!(e.train_ppl, 1.0f64.exp());
        assert_eq!(e.val_loss, 2.0);
        assert_eq!(e.val_ppl, 2.0f64.exp());
        // 2 correct of 10 validation positions
        assert!((e.val_acc - 0.2).abs() < 1e-15);
    }

    #[test]
    fn a_non_finite_validation_loss_is_an_error_naming_stage_and_epoch() {
        for bad in [f64::NAN, f64::INFINITY] {
            let mut s = Script::new(&[3.0, 2.0, bad, 1.0]);
            let err = run_epochs("Stage X", 4, 0, 10, &mut s, None)
                .expect_err("divergence must be an error")
                .to_string();
            assert!(err.starts_with("Stage X diverged at epoch 3"), "{err}");
            assert_eq!(s.trained, vec![1, 2, 3], "nothing runs after it");
            assert_eq!(s.kept, vec![1, 2], "the diverged weights are not kept");
        }
    }
}
