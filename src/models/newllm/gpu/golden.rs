//! The golden checks' hooks on the device (`models/newllm/golden.rs`): the
//! intermediate quantities the reference data records, read back from the
//! device buffers.

use super::cache::{gather_src, gather_tokens};
use super::engine::GpuEngine;
use super::model::{context_forward, BlockBufs, DevModel};
use super::phase1::GpuPhase1;
use super::phase2::GpuPhase2;
use crate::config::Config;
use crate::models::newllm::engine::Engine;
use crate::models::newllm::golden_hooks::{BatchOutcome, FirstIteration, GoldenHooks};
use crate::models::newllm::model::Model;
use crate::models::newllm::phase2::Stream;
use anyhow::{bail, Result};

/// The GPU engine plus a hand-driven Phase 2.
pub struct GpuHooks {
    engine: GpuEngine,
    p2: Option<GpuPhase2>,
}

impl GpuHooks {
    pub fn new(cfg: &Config) -> Result<GpuHooks> {
        Ok(GpuHooks {
            engine: GpuEngine::new(cfg)?,
            p2: None,
        })
    }
}

impl GoldenHooks for GpuHooks {
    fn engine(&mut self) -> &mut dyn Engine {
        &mut self.engine
    }

    fn phase1_first(
        &mut self,
        model: &Model,
        ids: &[u32],
        given_prev: Option<Vec<f32>>,
    ) -> Result<FirstIteration> {
        let dev = &self.engine.dev;
        let dm = DevModel::upload(dev, model)?;
        let mut p1 = GpuPhase1::new(dev, &dm, model, ids, given_prev, self.engine.graphs)?;
        let prev = dev.read(p1.prev.ptr, p1.prev.len)?;
        let stats = p1.accumulate(dev, &dm, &model.cfg)?;
        Ok(FirstIteration {
            prev,
            out: dev.read(p1.out.ptr, p1.out.len)?,
            grad: dev.read(p1.grad.ptr, p1.grad.len)?,
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
        let dev = &self.engine.dev;
        let cfg = &model.cfg;
        let dm = DevModel::upload(dev, model)?;
        let idb = dev.upload(ids)?;
        let srcb = dev.upload(src)?;
        let acts = BlockBufs::new(dev, &dm.ctx.layers, rows)?;
        let ctx = dev.zeros::<f32>(rows * cfg.context_dim)?;
        let x = dev.zeros::<f32>(rows * cfg.token_input_dim())?;
        gather_src(dev, cfg.context_dim, 0, rows, &srcb, ctx.ptr)?;
        gather_tokens(dev, dm.ek, &idb, 0, rows, &dm.tv, x.ptr)?;
        context_forward(dev, &dm.ctx, ctx.ptr, x.ptr, rows, &acts)?;
        dm.ctx
            .layers
            .iter()
            .zip(&acts.layers)
            .map(|(l, a)| dev.read(a.y.ptr, rows * l.out))
            .collect()
    }

    fn phase2_begin(&mut self, model: &Model) -> Result<()> {
        self.p2 = None;
        self.p2 = Some(GpuPhase2::new(&self.engine.dev, model)?);
        Ok(())
    }

    fn phase2_batch(
        &mut self,
        model: &mut Model,
        s: &Stream,
        start: usize,
        rows: usize,
    ) -> Result<BatchOutcome> {
        let dev = &self.engine.dev;
        let Some(p2) = self.p2.as_mut() else {
            bail!("phase2_batch called before phase2_begin");
        };
        let cfg = model.cfg.clone();
        let v = cfg.vocab_size;
        p2.use_stream(dev, s)?;
        p2.forward(dev, &cfg, start, rows)?;
        let cols = v.min(50);
        let mut logits_slice = Vec::new();
        for r in 0..rows.min(4) {
            logits_slice.extend(dev.read::<f32>(p2.logits.at(r * v), cols)?);
        }
        let loss = p2.backward(dev, start, rows)?;
        let grad = dev.read(p2.grad.ptr, p2.grad.len)?;
        let grad_norm = p2.step(dev, cfg.phase2_gradient_clip)?;
        model.token.params.data = dev.read(p2.tok.params.ptr, p2.tok.params.len)?;
        Ok(BatchOutcome {
            logits_slice,
            loss,
            grad,
            grad_norm,
        })
    }
}
