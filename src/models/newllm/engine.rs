//! The device boundary: every production stage of a cell that runs on an
//! accelerator when `device = "cuda"` goes through `Engine`, so the cell
//! runner drives the CPU and the GPU through the same calls (the golden
//! checks look inside the stages through their own hooks, `golden.rs`).
//! Everything crossing it is host data (ids, contexts, parameters), so the
//! CPU implementation is a thin wrapper over the existing functions and the
//! CPU path keeps its exact behaviour.

use super::cache::{sequential_pass, train_cache};
use super::model::Model;
use super::phase1::{self, OnIteration, Phase1Outcome, Phase1Resume};
use super::phase2::{self, OnEpoch, Phase2Outcome, Phase2Resume, Stream};
use crate::config::{Config, Device};
use anyhow::Result;

/// A device that runs the training stages. Methods take and return host
/// data; a GPU implementation uploads/downloads at these boundaries only.
pub trait Engine {
    /// "cpu" or the GPU's name, for logs.
    fn describe(&self) -> String;
    /// Phase 1 (docs/algorithm.md section 3), fresh or resumed; updates the
    /// ContextBlock in `model`.
    fn phase1_run(
        &mut self,
        model: &mut Model,
        ids: &[u32],
        given_prev: Option<Vec<f32>>,
        resume: Option<Phase1Resume>,
        on_iteration: &mut OnIteration,
    ) -> Result<Phase1Outcome>;
    /// The true recurrent pass over `ids[0..count]` (cache.rs).
    fn sequential_pass(&mut self, model: &Model, ids: &[u32], count: usize) -> Result<Vec<f32>>;
    /// The Phase-2 training cache source (cache.rs).
    fn train_cache(&mut self, model: &Model, ids: &[u32], prev: &[f32]) -> Result<Vec<f32>>;
    /// Phase 2 (docs/algorithm.md section 5), fresh or resumed; leaves the last
    /// epoch's weights in `model`.
    fn phase2_run(
        &mut self,
        model: &mut Model,
        train: &Stream,
        val: &Stream,
        resume: Option<Phase2Resume>,
        on_epoch: &mut OnEpoch,
    ) -> Result<Phase2Outcome>;
    /// Peak device memory in bytes so far, where the device tracks it.
    fn peak_device_bytes(&self) -> Option<u64> {
        None
    }
}

/// The CPU: the functions in phase1.rs, cache.rs and phase2.rs as they are.
#[derive(Default)]
pub struct CpuEngine;

impl Engine for CpuEngine {
    fn describe(&self) -> String {
        "cpu".into()
    }

    fn phase1_run(
        &mut self,
        model: &mut Model,
        ids: &[u32],
        given_prev: Option<Vec<f32>>,
        resume: Option<Phase1Resume>,
        on_iteration: &mut OnIteration,
    ) -> Result<Phase1Outcome> {
        phase1::run(model, ids, given_prev, resume, on_iteration)
    }

    fn sequential_pass(&mut self, model: &Model, ids: &[u32], count: usize) -> Result<Vec<f32>> {
        Ok(sequential_pass(model, ids, count))
    }

    fn train_cache(&mut self, model: &Model, ids: &[u32], prev: &[f32]) -> Result<Vec<f32>> {
        Ok(train_cache(model, ids, prev, model.cfg.train_cache))
    }

    fn phase2_run(
        &mut self,
        model: &mut Model,
        train: &Stream,
        val: &Stream,
        resume: Option<Phase2Resume>,
        on_epoch: &mut OnEpoch,
    ) -> Result<Phase2Outcome> {
        phase2::run(model, train, val, resume, on_epoch)
    }
}

/// The engine `cfg.device` names, or a clear error when it cannot run here.
pub fn for_config(cfg: &Config) -> Result<Box<dyn Engine>> {
    match cfg.device {
        Device::Cpu => Ok(Box::new(CpuEngine)),
        Device::Cuda => cuda_engine(cfg),
    }
}

#[cfg(feature = "cuda")]
fn cuda_engine(cfg: &Config) -> Result<Box<dyn Engine>> {
    Ok(Box::new(super::gpu::GpuEngine::new(cfg)?))
}

#[cfg(not(feature = "cuda"))]
fn cuda_engine(_cfg: &Config) -> Result<Box<dyn Engine>> {
    Err(no_cuda_feature())
}

/// The error for device = "cuda" in a build without the GPU pipeline.
#[cfg(not(feature = "cuda"))]
pub fn no_cuda_feature() -> anyhow::Error {
    anyhow::anyhow!(
        "device = \"cuda\" needs a build with the GPU pipeline: rebuild with \
         `cargo build --release --features cuda`, or use --set device=cpu"
    )
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
            device: crate::config::Device::Cuda,
            ..Config::default()
        };
        let err = for_config(&cfg).err().unwrap().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
