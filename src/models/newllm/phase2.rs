//! Phase 2: next-token prediction (docs/algorithm.md section 5). The ContextBlock
//! is frozen; Adam trains the TokenBlock + head over the training positions
//! in stream order; validation after every epoch; early stopping on
//! validation loss with `phase2_patience` (0 = fixed epochs).

use super::cache::recompute_layers;
use super::model::{BlockActs, Model};
use crate::cell_result::Epoch;
use crate::ops::{self, Adam};
use crate::train_loop::{self, EpochProgress, EpochSteps, Evaluation};
use anyhow::{bail, Result};

/// One stream with its cache: positions 0..len-2 predict ids[1..].
pub struct Stream<'a> {
    pub ids: &'a [u32],
    /// Cache source (see cache.rs): input(j) = 0 for j = 0, else src[j - 1].
    pub src: &'a [f32],
    /// Validation: the sample each position's target belongs to
    /// (`Split::val_bins`); empty for training, or to skip per-sample losses.
    pub bins: &'a [u32],
}

impl Stream<'_> {
    pub fn positions(&self) -> usize {
        self.ids.len().saturating_sub(1)
    }
}

/// Buffers for Phase-2 batches, planned up front.
pub struct Phase2 {
    pub grad: Vec<f32>,
    pub adam: Adam,
    pub logits: Vec<f32>,
    ctx_acts: BlockActs,
    tok_acts: BlockActs,
    ctx_in: Vec<f32>,
    x: Vec<f32>,
    cap: usize,
}

impl Phase2 {
    pub fn new(model: &Model) -> Phase2 {
        let cfg = &model.cfg;
        let cap = cfg.phase2_batch_size;
        let p = model.token.params.data.len();
        Phase2 {
            grad: vec![0.0; p],
            adam: Adam::new(p, cfg.phase2_learning_rate),
            logits: vec![0.0; cap * cfg.vocab_size],
            ctx_acts: BlockActs::new(&model.context, cap),
            tok_acts: BlockActs::new(&model.token, cap),
            ctx_in: vec![0.0; cap * cfg.context_dim],
            x: vec![0.0; cap * cfg.token_input_dim()],
            cap,
        }
    }

    /// Logits of positions `start..start + rows` into `self.logits`.
    pub fn forward(&mut self, model: &Model, s: &Stream, start: usize, rows: usize) {
        recompute_layers(
            model,
            s.ids,
            s.src,
            start,
            rows,
            &mut self.ctx_in,
            &mut self.x,
            &mut self.ctx_acts,
        );
        model.token_forward(
            &self.ctx_acts,
            &self.x,
            rows,
            &mut self.tok_acts,
            &mut self.logits,
        );
    }

    /// After `forward`: mean cross-entropy of the batch, its gradient in
    /// `self.grad` (zeroed first), logits replaced by their gradient.
    pub fn backward(&mut self, model: &Model, s: &Stream, start: usize, rows: usize) -> f64 {
        let v = model.cfg.vocab_size;
        let targets = &s.ids[start + 1..start + 1 + rows];
        let (loss, _) = ops::cross_entropy(&mut self.logits[..rows * v], targets, true);
        self.grad.fill(0.0);
        model.token_backward(
            &self.ctx_acts,
            &self.x,
            rows,
            &mut self.tok_acts,
            &self.logits,
            &mut self.grad,
        );
        loss / rows as f64
    }

    /// Clips the gradient and takes one Adam step; returns the norm before clipping.
    pub fn step(&mut self, model: &mut Model) -> f64 {
        let norm = self.clip(model);
        self.adam.step(&mut model.token.params.data, &self.grad);
        norm
    }

    /// Clips the gradient to `phase2_gradient_clip`; returns the norm before.
    fn clip(&mut self, model: &Model) -> f64 {
        ops::clip_grad_norm(&mut self.grad, model.cfg.phase2_gradient_clip)
    }

    /// One epoch over the training positions; returns the token-weighted mean loss.
    pub fn train_epoch(&mut self, model: &mut Model, s: &Stream, epoch: usize) -> Result<f64> {
        let n = s.positions();
        let mut total = 0.0;
        let bar = crate::progress::bar(n as u64, &format!("phase2 epoch {epoch} (positions)"));
        for (bi, start) in (0..n).step_by(self.cap).enumerate() {
            bar.set_position(start as u64);
            let rows = self.cap.min(n - start);
            self.forward(model, s, start, rows);
            let loss = self.backward(model, s, start, rows);
            // Checked before the step, so a diverged batch never reaches the weights.
            let norm = self.clip(model);
            if !loss.is_finite() || !norm.is_finite() {
                bail!("Phase 2 diverged at epoch {epoch}, batch {}: loss {loss}, gradient norm {norm}; try a lower phase2_learning_rate", bi + 1);
            }
            self.adam.step(&mut model.token.params.data, &self.grad);
            total += loss * rows as f64;
        }
        bar.finish_and_clear();
        Ok(total / n as f64)
    }

    /// Mean loss, correct count and per-sample losses (when the stream has
    /// `bins`) over every position of a stream.
    pub fn evaluate(&mut self, model: &Model, s: &Stream) -> Evaluation {
        let (n, v) = (s.positions(), model.cfg.vocab_size);
        let (mut total, mut correct) = (0.0, 0);
        let mut sample_losses = vec![0.0; s.bins.last().map_or(0, |&b| b as usize + 1)];
        for start in (0..n).step_by(self.cap) {
            let rows = self.cap.min(n - start);
            self.forward(model, s, start, rows);
            let logits = &mut self.logits[..rows * v];
            let targets = &s.ids[start + 1..start + 1 + rows];
            let (l, c) = if s.bins.is_empty() {
                ops::cross_entropy(logits, targets, false)
            } else {
                let bins = &s.bins[start..start + rows];
                ops::cross_entropy_binned(logits, targets, bins, &mut sample_losses)
            };
            total += l;
            correct += c;
        }
        Evaluation {
            loss: total / n as f64,
            correct,
            sample_losses,
        }
    }
}

/// What Phase 2 leaves behind.
pub struct Phase2Outcome {
    pub progress: EpochProgress,
    /// TokenBlock + head weights of the best epoch.
    pub best_params: Vec<f32>,
}

impl Phase2Outcome {
    pub fn best(&self) -> &Epoch {
        &self.progress.epochs[self.progress.best_epoch - 1]
    }
}

/// The state of an exact continuation after an epoch (the CPU's; the GPU
/// keeps it on the device and gives none).
pub struct Phase2Snapshot<'a> {
    /// The frozen ContextBlock (part of the cell's state like the rest).
    pub context_params: &'a [f32],
    pub token_params: &'a [f32],
    pub adam: &'a Adam,
    pub best_params: &'a [f32],
}

/// Where a resumed Phase 2 continues (the TokenBlock's weights go into the model).
pub struct Phase2Resume {
    pub progress: EpochProgress,
    pub adam: Adam,
    pub best_params: Vec<f32>,
}

/// Called after every epoch with the progress so far and, where the device
/// gives it, the snapshot.
pub type OnEpoch<'a> = dyn FnMut(&EpochProgress, Option<&Phase2Snapshot>) -> Result<()> + 'a;

/// Refuses streams too short to have a single prediction.
pub fn check_streams(train: &Stream, val: &Stream) -> Result<()> {
    if train.positions() == 0 || val.positions() == 0 {
        bail!(
            "Phase 2 needs at least 2 training and 2 validation tokens (got {} and {})",
            train.ids.len(),
            val.ids.len()
        );
    }
    Ok(())
}

struct CpuSteps<'a, 'b, 'c> {
    p2: Phase2,
    model: &'a mut Model,
    train: &'a Stream<'b>,
    val: &'a Stream<'b>,
    best_params: Vec<f32>,
    on_epoch: &'a mut OnEpoch<'c>,
}

impl EpochSteps for CpuSteps<'_, '_, '_> {
    fn train_epoch(&mut self, epoch: usize) -> Result<f64> {
        self.p2.train_epoch(self.model, self.train, epoch)
    }
    fn evaluate(&mut self) -> Result<Evaluation> {
        Ok(self.p2.evaluate(self.model, self.val))
    }
    fn keep_best(&mut self) -> Result<()> {
        self.best_params
            .copy_from_slice(&self.model.token.params.data);
        Ok(())
    }
    fn end_epoch(&mut self, progress: &EpochProgress) -> Result<()> {
        let snapshot = Phase2Snapshot {
            context_params: &self.model.context.params.data,
            token_params: &self.model.token.params.data,
            adam: &self.p2.adam,
            best_params: &self.best_params,
        };
        (self.on_epoch)(progress, Some(&snapshot))
    }
}

/// Runs Phase 2, or continues a resumed one (whose TokenBlock weights are
/// already in `model`).
pub fn run(
    model: &mut Model,
    train: &Stream,
    val: &Stream,
    resume: Option<Phase2Resume>,
    on_epoch: &mut OnEpoch,
) -> Result<Phase2Outcome> {
    check_streams(train, val)?;
    let cfg = model.cfg.clone();
    let mut p2 = Phase2::new(model);
    let (best_params, progress) = match resume {
        Some(r) => {
            p2.adam = r.adam;
            (r.best_params, Some(r.progress))
        }
        None => (model.token.params.data.clone(), None),
    };
    let mut steps = CpuSteps {
        p2,
        model,
        train,
        val,
        best_params,
        on_epoch,
    };
    let progress = train_loop::run_epochs(
        "Phase 2",
        cfg.phase2_epochs,
        cfg.phase2_patience,
        val.positions(),
        &mut steps,
        progress,
    )?;
    Ok(Phase2Outcome {
        progress,
        best_params: steps.best_params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::models::newllm::cache::sequential_pass;

    fn tiny(clip: f64) -> Config {
        Config {
            vocab_size: 50,
            embed_dim: 8,
            context_dim: 8,
            num_layers: 2,
            phase2_batch_size: 16,
            phase2_gradient_clip: clip,
            threads: 1,
            ..Config::default()
        }
    }

    /// 100 ids (99 positions: 6 batches of 16 and one of 3) and their
    /// sequential cache source.
    fn data(model: &Model) -> (Vec<u32>, Vec<f32>) {
        let ids: Vec<u32> = (0..100).map(|i| ((i * 7 + i / 3) % 50) as u32).collect();
        let src = sequential_pass(model, &ids, ids.len() - 1);
        (ids, src)
    }

    fn l2(v: &[f32]) -> f64 {
        v.iter()
            .map(|&g| (g as f64) * (g as f64))
            .sum::<f64>()
            .sqrt()
    }

    #[test]
    fn step_clips_the_gradient_and_returns_the_norm_before_clipping() {
        let clip = 0.05;
        let mut model = Model::new(&tiny(clip), None).unwrap();
        let (ids, src) = data(&model);
        let s = Stream {
            ids: &ids,
            src: &src,
            bins: &[],
        };
        let mut p2 = Phase2::new(&model);
        // batch 1 has only head gradient (the head starts at zero), batch 2 all
        for start in [0, 16] {
            p2.forward(&model, &s, start, 16);
            p2.backward(&model, &s, start, 16);
            let before = p2.grad.clone();
            let norm = l2(&before);
            assert!(
                norm > 4.0 * clip,
                "the test needs a gradient above the clip"
            );
            let returned = p2.step(&mut model);
            assert_eq!(returned, norm);
            // clip / (norm + 1e-6) leaves the norm a hair under the limit
            let want = clip * norm / (norm + 1e-6);
            assert!((l2(&p2.grad) / want - 1.0).abs() < 1e-6, "{}", l2(&p2.grad));
            assert!(l2(&p2.grad) <= clip);
            let k = (clip / (norm + 1e-6)) as f32;
            for (a, b) in p2.grad.iter().zip(&before) {
                assert_eq!(*a, b * k);
            }
        }
        assert_eq!(p2.adam.t, 2);
    }

    /// One epoch by hand: forward, backward, optional clipping done here, Adam.
    fn epoch_by_hand(cfg: &Config, clip: bool) -> Vec<f32> {
        let mut model = Model::new(cfg, None).unwrap();
        let (ids, src) = data(&model);
        let s = Stream {
            ids: &ids,
            src: &src,
            bins: &[],
        };
        let mut p2 = Phase2::new(&model);
        for start in (0..s.positions()).step_by(16) {
            let rows = 16.min(s.positions() - start);
            p2.forward(&model, &s, start, rows);
            p2.backward(&model, &s, start, rows);
            let norm = l2(&p2.grad);
            if clip {
                let k = cfg.phase2_gradient_clip / (norm + 1e-6);
                if k < 1.0 {
                    p2.grad.iter_mut().for_each(|g| *g *= k as f32);
                }
            }
            p2.adam.step(&mut model.token.params.data, &p2.grad);
        }
        model.token.params.data
    }

    fn epoch_by_train_epoch(cfg: &Config) -> Vec<f32> {
        let mut model = Model::new(cfg, None).unwrap();
        let (ids, src) = data(&model);
        let s = Stream {
            ids: &ids,
            src: &src,
            bins: &[],
        };
        let mut p2 = Phase2::new(&model);
        p2.train_epoch(&mut model, &s, 1).unwrap();
        model.token.params.data
    }

    #[test]
    fn an_epoch_steps_adam_with_clipped_gradients() {
        let small = tiny(0.05);
        let clipped = epoch_by_train_epoch(&small);
        assert_eq!(clipped, epoch_by_hand(&small, true));
        // with the clip out of reach the same epoch is plain Adam ...
        let huge = tiny(1e9);
        let plain = epoch_by_train_epoch(&huge);
        assert_eq!(plain, epoch_by_hand(&huge, false));
        // ... which ends elsewhere: the clip was active
        let diff = clipped
            .iter()
            .zip(&plain)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff > 1e-5, "clipping made no difference: {diff}");
    }

    #[test]
    fn evaluate_is_the_mean_loss_and_correct_count_over_every_position() {
        let model = Model::new(&tiny(1.0), None).unwrap();
        let (ids, src) = data(&model);
        let s = Stream {
            ids: &ids,
            src: &src,
            bins: &[],
        };
        let mut p2 = Phase2::new(&model);
        // the head starts at zero: every logit is 0, loss ln V, argmax id 0
        let e = p2.evaluate(&model, &s);
        let (loss, correct) = (e.loss, e.correct);
        assert!((loss - 50f64.ln()).abs() < 1e-6, "{loss}");
        assert_eq!(correct, ids[1..].iter().filter(|&&t| t == 0).count());
        assert!(correct > 0);
        assert!(e.sample_losses.is_empty(), "no bins, no per-sample losses");
        // with samples: the same figures, and each sample's loss summed
        // over exactly its positions (ln V each)
        let n = s.positions();
        let bins: Vec<u32> = (0..n)
            .map(|p| u32::from(p >= 3) + u32::from(p >= n - 1))
            .collect();
        let binned = Stream { bins: &bins, ..s };
        let b = p2.evaluate(&model, &binned);
        assert_eq!((b.loss.to_bits(), b.correct), (loss.to_bits(), correct));
        let per = |k: f64| k * 50f64.ln();
        assert_eq!(b.sample_losses.len(), 3);
        for (got, want) in b
            .sample_losses
            .iter()
            .zip([per(3.0), per((n - 4) as f64), per(1.0)])
        {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
    }

    #[test]
    fn streams_without_a_prediction_are_refused() {
        let (one, two) = ([3u32], [3u32, 4]);
        let a = Stream {
            ids: &one,
            src: &[],
            bins: &[],
        };
        let b = Stream {
            ids: &two,
            src: &[],
            bins: &[],
        };
        let err = check_streams(&b, &a).unwrap_err().to_string();
        assert!(err.contains("got 2 and 1"), "{err}");
        let err = check_streams(&a, &b).unwrap_err().to_string();
        assert!(err.contains("got 1 and 2"), "{err}");
        assert!(check_streams(&b, &b).is_ok());
    }
}
