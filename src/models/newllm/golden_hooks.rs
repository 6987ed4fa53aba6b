//! What the golden checks look at inside the stages, beyond the production
//! `Engine`: iteration 1 of Phase 1 before its step, every ContextBlock
//! layer of a cache, and Phase-2 batches driven one at a time. The CPU's
//! hooks are here; the GPU's are in `gpu/golden.rs`.

use super::cache::context_inputs;
use super::engine::{CpuEngine, Engine};
use super::model::{BlockActs, Model};
use super::phase1::{IterationStats, Phase1};
use super::phase2::{Phase2, Stream};
use anyhow::{bail, Result};

/// One Phase-2 batch as the golden checks see it.
#[derive(Clone, Debug, Default)]
pub struct BatchOutcome {
    /// The first `min(rows, 4)` rows x 50 columns of the logits.
    pub logits_slice: Vec<f32>,
    /// Mean cross-entropy of the batch.
    pub loss: f64,
    /// The batch gradient (layout of `model.token.params.data`), before clipping.
    pub grad: Vec<f32>,
    /// Gradient norm before clipping (the step was taken).
    pub grad_norm: f64,
}

/// The first Phase-1 iteration without its step, as the golden checks see it.
#[derive(Clone, Debug, Default)]
pub struct FirstIteration {
    /// Iteration 1's contexts (n x C).
    pub prev: Vec<f32>,
    /// Iteration 2's outputs (n x C).
    pub out: Vec<f32>,
    /// Accumulated gradient (layout of `model.context.params.data`).
    pub grad: Vec<f32>,
    pub stats: IterationStats,
}

/// A device as the golden checks drive it: the production `Engine`, plus
/// the intermediate quantities the reference data records.
pub trait GoldenHooks {
    fn engine(&mut self) -> &mut dyn Engine;
    /// Iteration 1 and the accumulation of iteration 2 (no step).
    fn phase1_first(
        &mut self,
        model: &Model,
        ids: &[u32],
        given_prev: Option<Vec<f32>>,
    ) -> Result<FirstIteration>;
    /// Every ContextBlock layer output for positions 0..rows of a cached stream.
    fn context_layers(
        &mut self,
        model: &Model,
        ids: &[u32],
        src: &[f32],
        rows: usize,
    ) -> Result<Vec<Vec<f32>>>;
    /// Starts a Phase-2 run by hand (fresh Adam state) for `phase2_batch`.
    fn phase2_begin(&mut self, model: &Model) -> Result<()>;
    /// One Phase-2 training step on positions `start..start + rows`; the
    /// updated weights are in `model` afterwards.
    fn phase2_batch(
        &mut self,
        model: &mut Model,
        s: &Stream,
        start: usize,
        rows: usize,
    ) -> Result<BatchOutcome>;
}

/// The CPU's hooks: the Phase-1 and Phase-2 buffers driven step by step.
#[derive(Default)]
pub struct CpuHooks {
    engine: CpuEngine,
    p2: Option<Phase2>,
}

impl GoldenHooks for CpuHooks {
    fn engine(&mut self) -> &mut dyn Engine {
        &mut self.engine
    }

    fn phase1_first(
        &mut self,
        model: &Model,
        ids: &[u32],
        given_prev: Option<Vec<f32>>,
    ) -> Result<FirstIteration> {
        let mut p1 = Phase1::new(model, ids, given_prev);
        let prev = p1.prev.clone();
        let stats = p1.accumulate(model, ids);
        Ok(FirstIteration {
            prev,
            out: p1.out,
            grad: p1.grad,
            stats,
        })
    }

    fn context_layers(
        &mut self,
        model: &Model,
        ids: &[u32],
        src: &[f32],
        rows: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let cfg = &model.cfg;
        let mut acts = BlockActs::new(&model.context, rows);
        let mut ctx = vec![0.0; rows * cfg.context_dim];
        let mut x = vec![0.0; rows * cfg.token_input_dim()];
        context_inputs(src, cfg.context_dim, 0, rows, &mut ctx);
        model.token_input(ids, 0, rows, &mut x);
        model.context_forward(None, &ctx, &x, rows, &mut acts);
        Ok(acts.layers.into_iter().map(|l| l.y).collect())
    }

    fn phase2_begin(&mut self, model: &Model) -> Result<()> {
        self.p2 = Some(Phase2::new(model));
        Ok(())
    }

    fn phase2_batch(
        &mut self,
        model: &mut Model,
        s: &Stream,
        start: usize,
        rows: usize,
    ) -> Result<BatchOutcome> {
        let Some(p2) = self.p2.as_mut() else {
            bail!("phase2_batch called before phase2_begin");
        };
        let v = model.cfg.vocab_size;
        p2.forward(model, s, start, rows);
        let cols = v.min(50);
        let logits_slice = (0..rows.min(4))
            .flat_map(|r| p2.logits[r * v..r * v + cols].to_vec())
            .collect();
        let loss = p2.backward(model, s, start, rows);
        let grad = p2.grad.clone();
        let grad_norm = p2.step(model);
        Ok(BatchOutcome {
            logits_slice,
            loss,
            grad,
            grad_norm,
        })
    }
}
