//! The device boundary: every stage of a cell that runs on an accelerator
//! when `device = "cuda"` goes through `Engine`, so `run_cell`, the bench
//! and the golden checks drive the CPU and the GPU through the same calls.
//! Everything crossing it is host data (ids, contexts, parameters), so the
//! CPU implementation is a thin wrapper over the existing functions and the
//! CPU path keeps its exact behaviour.

use crate::cache::{context_inputs, sequential_pass, train_cache};
use crate::config::Config;
use crate::model::{BlockActs, Model};
use crate::phase1::{self, IterationStats, Phase1, Phase1Outcome};
use crate::phase2::{self, Phase2, Phase2Outcome, Stream};
use crate::results::{Epoch, Phase1Iteration};
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

/// A device that runs the training stages. Methods take and return host
/// data; a GPU implementation uploads/downloads at these boundaries only.
pub trait Engine {
    /// "cpu" or the GPU's name, for logs.
    fn describe(&self) -> String;
    /// Phase 1 (ALGORITHM.md section 3); updates the ContextBlock in `model`.
    fn phase1_run(
        &mut self,
        model: &mut Model,
        ids: &[u32],
        given_prev: Option<Vec<f32>>,
        on_iteration: &mut dyn FnMut(&Phase1Iteration),
    ) -> Result<Phase1Outcome>;
    /// Iteration 1 and the accumulation of iteration 2 (no step).
    fn phase1_first(
        &mut self,
        model: &Model,
        ids: &[u32],
        given_prev: Option<Vec<f32>>,
    ) -> Result<FirstIteration>;
    /// The true recurrent pass over `ids[0..count]` (cache.rs).
    fn sequential_pass(&mut self, model: &Model, ids: &[u32], count: usize) -> Result<Vec<f32>>;
    /// The Phase-2 training cache source (cache.rs).
    fn train_cache(&mut self, model: &Model, ids: &[u32], prev: &[f32]) -> Result<Vec<f32>>;
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
    /// Phase 2 (ALGORITHM.md section 5); leaves the last epoch's weights in `model`.
    fn phase2_run(
        &mut self,
        model: &mut Model,
        train: &Stream,
        val: &Stream,
        on_epoch: &mut dyn FnMut(&Epoch),
    ) -> Result<Phase2Outcome>;
    /// Peak device memory in bytes so far, where the device tracks it.
    fn peak_device_bytes(&self) -> Option<u64> {
        None
    }
}

/// The CPU: the functions in phase1.rs, cache.rs and phase2.rs as they are.
#[derive(Default)]
pub struct CpuEngine {
    p2: Option<Phase2>,
}

impl Engine for CpuEngine {
    fn describe(&self) -> String {
        "cpu".into()
    }

    fn phase1_run(
        &mut self,
        model: &mut Model,
        ids: &[u32],
        given_prev: Option<Vec<f32>>,
        on_iteration: &mut dyn FnMut(&Phase1Iteration),
    ) -> Result<Phase1Outcome> {
        phase1::run(model, ids, given_prev, on_iteration)
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

    fn sequential_pass(&mut self, model: &Model, ids: &[u32], count: usize) -> Result<Vec<f32>> {
        Ok(sequential_pass(model, ids, count))
    }

    fn train_cache(&mut self, model: &Model, ids: &[u32], prev: &[f32]) -> Result<Vec<f32>> {
        Ok(train_cache(model, ids, prev, model.cfg.train_cache))
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
        model.context_forward(&ctx, &x, rows, &mut acts);
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

    fn phase2_run(
        &mut self,
        model: &mut Model,
        train: &Stream,
        val: &Stream,
        on_epoch: &mut dyn FnMut(&Epoch),
    ) -> Result<Phase2Outcome> {
        phase2::run(model, train, val, on_epoch)
    }
}

/// The engine `cfg.device` names, or a clear error when it cannot run here.
pub fn for_config(cfg: &Config) -> Result<Box<dyn Engine>> {
    match cfg.device.as_str() {
        "cpu" => Ok(Box::new(CpuEngine::default())),
        "cuda" => cuda_engine(cfg),
        other => bail!("config field device must be \"cpu\" or \"cuda\", got {other:?}"),
    }
}

#[cfg(feature = "cuda")]
fn cuda_engine(cfg: &Config) -> Result<Box<dyn Engine>> {
    Ok(Box::new(crate::gpu::GpuEngine::new(cfg)?))
}

#[cfg(not(feature = "cuda"))]
fn cuda_engine(_cfg: &Config) -> Result<Box<dyn Engine>> {
    Err(no_cuda_feature())
}

#[cfg(not(feature = "cuda"))]
fn no_cuda_feature() -> anyhow::Error {
    anyhow::anyhow!(
        "device = \"cuda\" needs a build with the GPU pipeline: rebuild with \
         `cargo build --release --features cuda`, or use --set device=cpu"
    )
}

/// `newllm bench` on the GPU (gpu/bench.rs), or the rebuild hint.
#[cfg(feature = "cuda")]
pub fn bench_cuda(
    base: &Config,
    phase2_batch: usize,
    seq_tokens: usize,
) -> Result<crate::bench::BenchReport> {
    crate::gpu::bench::run(base, phase2_batch, seq_tokens)
}

#[cfg(not(feature = "cuda"))]
pub fn bench_cuda(
    _base: &Config,
    _phase2_batch: usize,
    _seq_tokens: usize,
) -> Result<crate::bench::BenchReport> {
    Err(no_cuda_feature())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_engine_is_chosen_for_cpu() {
        let e = for_config(&Config::default()).unwrap();
        assert_eq!(e.describe(), "cpu");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_rebuild() {
        let cfg = Config {
            device: "cuda".into(),
            ..Config::default()
        };
        let err = for_config(&cfg).err().unwrap().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
