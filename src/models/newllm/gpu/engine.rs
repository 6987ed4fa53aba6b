//! `Engine` on the GPU: Phase 1, the recurrent passes / caches and Phase 2
//! with every tensor on the device. Host <-> device traffic is limited to
//! uploading the model and streams at the start of a stage, a few per-row
//! loss figures per batch (for the logs and the divergence checks) and the
//! results the caller asked for.

use super::cache::recurrent_pass;
use super::model::DevModel;
use super::phase1::{GpuPhase1, GpuPhase1Steps};
use super::phase2::{GpuPhase2, GpuPhase2Steps};
use super::runtime::Dev;
use crate::config::{Config, TrainCache};
use crate::models::newllm::engine::Engine;
use crate::models::newllm::model::Model;
use crate::models::newllm::phase1::{self, OnIteration, Phase1Outcome, Phase1Resume};
use crate::models::newllm::phase2::{self, OnEpoch, Phase2Outcome, Phase2Resume, Stream};
use crate::train_loop;
use anyhow::{bail, Result};
use std::time::Instant;

/// The GPU engine: one device, opened once.
pub struct GpuEngine {
    pub(crate) dev: Dev,
    pub(crate) graphs: bool,
}

impl GpuEngine {
    pub fn new(cfg: &Config) -> Result<GpuEngine> {
        let dev = Dev::open(cfg.cuda_allow_tf32)?;
        Ok(GpuEngine {
            dev,
            // NEWLLM_CUDA_GRAPHS=0 runs the recurrent pass with direct launches (for comparison).
            graphs: std::env::var("NEWLLM_CUDA_GRAPHS").map_or(true, |v| v != "0"),
        })
    }

    fn seq(&self, model: &Model, ids: &[u32], count: usize) -> Result<Vec<f32>> {
        if count > ids.len() {
            bail!(
                "sequential pass over {count} tokens of a {}-token stream",
                ids.len()
            );
        }
        let dm = DevModel::upload(&self.dev, model)?;
        let idb = self.dev.upload(&ids[..count])?;
        let outs = self.dev.zeros(count * model.cfg.context_dim)?;
        recurrent_pass(
            &self.dev,
            &dm.ctx,
            dm.ek,
            &dm.tv,
            &idb,
            count,
            &outs,
            self.graphs,
        )?;
        self.dev.read(outs.ptr, count * model.cfg.context_dim)
    }
}

impl Engine for GpuEngine {
    fn describe(&self) -> String {
        format!("cuda ({})", self.dev.name)
    }

    fn phase1_run(
        &mut self,
        model: &mut Model,
        ids: &[u32],
        given_prev: Option<Vec<f32>>,
        resume: Option<Phase1Resume>,
        on_iteration: &mut OnIteration,
    ) -> Result<Phase1Outcome> {
        if resume.is_some() {
            bail!("the GPU engine keeps no Phase-1 state, so it cannot resume one");
        }
        let cfg = model.cfg.clone();
        let dev = &self.dev;
        let t0 = Instant::now();
        let dm = DevModel::upload(dev, model)?;
        let mut p1 = GpuPhase1::new(dev, &dm, model, ids, given_prev, self.graphs)?;
        dev.sync()?;
        let init_seconds = t0.elapsed().as_secs_f64();
        let mut steps = GpuPhase1Steps {
            dev,
            dm: &dm,
            p1: &mut p1,
            cfg: &cfg,
        };
        let (log, converged) = phase1::iterate(
            &cfg,
            ids.len(),
            None,
            init_seconds,
            &mut steps,
            on_iteration,
        )?;
        model.context.params.data = dev.read(dm.ctx.params.ptr, dm.ctx.params.len)?;
        let prev = dev.read(p1.prev.ptr, p1.prev.len)?;
        Ok(Phase1Outcome {
            prev,
            log,
            converged,
        })
    }

    fn sequential_pass(&mut self, model: &Model, ids: &[u32], count: usize) -> Result<Vec<f32>> {
        self.seq(model, ids, count)
    }

    fn train_cache(&mut self, model: &Model, ids: &[u32], prev: &[f32]) -> Result<Vec<f32>> {
        let rows = ids.len().saturating_sub(1);
        match model.cfg.train_cache {
            TrainCache::Sequential => self.seq(model, ids, rows),
            TrainCache::Shifted => Ok(prev[..rows * model.cfg.context_dim].to_vec()),
        }
    }

    fn phase2_run(
        &mut self,
        model: &mut Model,
        train: &Stream,
        val: &Stream,
        resume: Option<Phase2Resume>,
        on_epoch: &mut OnEpoch,
    ) -> Result<Phase2Outcome> {
        if resume.is_some() {
            bail!("the GPU engine keeps no Phase-2 state, so it cannot resume one");
        }
        phase2::check_streams(train, val)?;
        let cfg = model.cfg.clone();
        let dev = &self.dev;
        let mut p2 = GpuPhase2::new(dev, model)?;
        let best = dev.upload(&model.token.params.data)?;
        let mut steps = GpuPhase2Steps {
            dev,
            cfg: &cfg,
            p2: &mut p2,
            train,
            val,
            best: &best,
            on_epoch,
        };
        let progress = train_loop::run_epochs(
            "Phase 2",
            cfg.phase2_epochs,
            cfg.phase2_patience,
            val.positions(),
            &mut steps,
            None,
        )?;
        let plen = p2.tok.params.len;
        model.token.params.data = dev.read(p2.tok.params.ptr, plen)?;
        let best_params = dev.read(best.ptr, plen)?;
        Ok(Phase2Outcome {
            progress,
            best_params,
        })
    }

    fn peak_device_bytes(&self) -> Option<u64> {
        self.dev.sample_memory();
        Some(self.dev.peak_bytes())
    }
}
