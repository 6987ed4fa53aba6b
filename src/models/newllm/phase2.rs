//! Phase 2: next-token prediction (ALGORITHM.md section 5). The ContextBlock
//! is frozen; Adam trains the TokenBlock + head over the training positions
//! in stream order; validation after every epoch; early stopping on
//! validation loss with `phase2_patience` (0 = fixed epochs).

use super::cache::recompute_layers;
use super::model::{BlockActs, Model};
use crate::cell_result::Epoch;
use crate::ops::{self, Adam};
use crate::train_loop::{self, EpochSteps};
use anyhow::{bail, Result};

/// One stream with its cache: positions 0..len-2 predict ids[1..].
pub struct Stream<'a> {
    pub ids: &'a [u32],
    /// Cache source (see cache.rs): input(j) = 0 for j = 0, else src[j - 1].
    pub src: &'a [f32],
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
        let norm = ops::clip_grad_norm(&mut self.grad, model.cfg.phase2_gradient_clip);
        self.adam.step(&mut model.token.params.data, &self.grad);
        norm
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
            let norm = self.step(model);
            if !loss.is_finite() || !norm.is_finite() {
                bail!("Phase 2 diverged at epoch {epoch}, batch {}: loss {loss}, gradient norm {norm}; try a lower phase2_learning_rate", bi + 1);
            }
            total += loss * rows as f64;
        }
        bar.finish_and_clear();
        Ok(total / n as f64)
    }

    /// Mean loss and correct count over every position of a stream.
    pub fn evaluate(&mut self, model: &Model, s: &Stream) -> (f64, usize) {
        let (n, v) = (s.positions(), model.cfg.vocab_size);
        let (mut total, mut correct) = (0.0, 0);
        for start in (0..n).step_by(self.cap) {
            let rows = self.cap.min(n - start);
            self.forward(model, s, start, rows);
            let (l, c) = ops::cross_entropy(
                &mut self.logits[..rows * v],
                &s.ids[start + 1..start + 1 + rows],
                false,
            );
            total += l;
            correct += c;
        }
        (total / n as f64, correct)
    }
}

/// What Phase 2 leaves behind.
pub struct Phase2Outcome {
    pub epochs: Vec<Epoch>,
    /// 1-based.
    pub best_epoch: usize,
    pub stop_epoch: usize,
    pub early_stopped: bool,
    /// TokenBlock + head weights of the best epoch.
    pub best_params: Vec<f32>,
}

impl Phase2Outcome {
    pub fn best(&self) -> &Epoch {
        &self.epochs[self.best_epoch - 1]
    }
}

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

struct CpuSteps<'a, 'b> {
    p2: Phase2,
    model: &'a mut Model,
    train: &'a Stream<'b>,
    val: &'a Stream<'b>,
    best_params: Vec<f32>,
}

impl EpochSteps for CpuSteps<'_, '_> {
    fn train_epoch(&mut self, epoch: usize) -> Result<f64> {
        self.p2.train_epoch(self.model, self.train, epoch)
    }
    fn evaluate(&mut self) -> Result<(f64, usize)> {
        Ok(self.p2.evaluate(self.model, self.val))
    }
    fn keep_best(&mut self) -> Result<()> {
        self.best_params
            .copy_from_slice(&self.model.token.params.data);
        Ok(())
    }
}

pub fn run(
    model: &mut Model,
    train: &Stream,
    val: &Stream,
    on_epoch: &mut dyn FnMut(&Epoch),
) -> Result<Phase2Outcome> {
    check_streams(train, val)?;
    let cfg = model.cfg.clone();
    let p2 = Phase2::new(model);
    let best_params = model.token.params.data.clone();
    let mut steps = CpuSteps {
        p2,
        model,
        train,
        val,
        best_params,
    };
    let log = train_loop::run_epochs(
        "Phase 2",
        cfg.phase2_epochs,
        cfg.phase2_patience,
        val.positions(),
        &mut steps,
        on_epoch,
    )?;
    Ok(Phase2Outcome {
        epochs: log.epochs,
        best_epoch: log.best_epoch,
        stop_epoch: log.stop_epoch,
        early_stopped: log.early_stopped,
        best_params: steps.best_params,
    })
}
