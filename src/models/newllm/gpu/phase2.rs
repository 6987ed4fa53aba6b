//! Phase 2 on the device, mirroring `models/newllm/phase2.rs`: the buffers,
//! forward / backward / step per batch, epochs and evaluation, and the
//! steps the shared epoch loop drives.

use super::cache::{gather_src, gather_tokens};
use super::model::{
    context_forward, token_backward, token_forward, BlockBufs, DevModel, GpuBlock, TokenParts,
};
use super::ops::{clip_grad_norm, GpuAdam};
use super::runtime::{Arg, Buf, Dev};
use crate::config::Config;
use crate::models::newllm::model::Model;
use crate::models::newllm::phase2::{OnEpoch, Stream};
use crate::train_loop::{EpochProgress, EpochSteps, Evaluation};
use anyhow::{bail, Context, Result};

/// A stream (ids + cache source) on the device, remembered by host address
/// so consecutive batches of one stream upload it once.
pub(crate) struct DevStream {
    pub(crate) key: (usize, usize, usize),
    pub(crate) ids: Buf<u32>,
    pub(crate) src: Buf<f32>,
}

impl DevStream {
    fn key(s: &Stream) -> (usize, usize, usize) {
        (
            s.ids.as_ptr() as usize,
            s.ids.len(),
            s.src.as_ptr() as usize,
        )
    }
    fn upload(dev: &Dev, s: &Stream) -> Result<DevStream> {
        Ok(DevStream {
            key: Self::key(s),
            ids: dev.upload(s.ids)?,
            src: dev.upload(s.src)?,
        })
    }
}

/// Phase 2 on the device (phase2::Phase2).
pub(crate) struct GpuPhase2 {
    pub(crate) dm: DevModel,
    pub tok: GpuBlock,
    pub(crate) parts: TokenParts,
    pub grad: Buf<f32>,
    pub(crate) adam: GpuAdam,
    pub(crate) logits: Buf<f32>,
    pub(crate) ctx_acts: BlockBufs,
    pub(crate) tok_acts: BlockBufs,
    pub(crate) ctx_in: Buf<f32>,
    pub(crate) x: Buf<f32>,
    pub(crate) loss: Buf<f64>,
    pub(crate) correct: Buf<i32>,
    pub(crate) partial: Buf<f64>,
    pub(crate) cap: usize,
    /// The train and validation streams, uploaded once per Phase-2 run.
    pub(crate) streams: Vec<DevStream>,
    pub(crate) cur: usize,
}

impl GpuPhase2 {
    pub(crate) fn new(dev: &Dev, model: &Model) -> Result<GpuPhase2> {
        let cfg = &model.cfg;
        let cap = cfg.phase2_batch_size;
        let ps = &model.token.params;
        let head_w = ps
            .find("token_output.weight")
            .context("no head weight")?
            .offset;
        let head_b = ps.find("token_output.bias").context("no head bias")?.offset;
        let dm = DevModel::upload(dev, model)?;
        let tok = GpuBlock::upload(dev, &model.token)?;
        let p = ps.data.len();
        Ok(GpuPhase2 {
            ctx_acts: BlockBufs::new(dev, &dm.ctx.layers, cap)?,
            tok_acts: BlockBufs::new(dev, &tok.layers, cap)?,
            dm,
            tok,
            parts: TokenParts {
                head_w,
                head_b,
                vocab: cfg.vocab_size,
                embed: cfg.embed_dim,
            },
            grad: dev.zeros(p)?,
            adam: GpuAdam::new(dev, p, cfg.phase2_learning_rate)?,
            logits: dev.zeros(cap * cfg.vocab_size)?,
            ctx_in: dev.zeros(cap * cfg.context_dim)?,
            x: dev.zeros(cap * cfg.token_input_dim())?,
            loss: dev.zeros(cap)?,
            correct: dev.zeros(cap)?,
            partial: dev.zeros(super::kernels::SUMSQ_BLOCKS as usize)?,
            cap,
            streams: Vec::new(),
            cur: 0,
        })
    }

    /// Makes `s` the current stream, uploading it the first time it is seen
    /// (at most two are kept: train and validation). Streams are recognised
    /// by their host slices, which callers keep alive and unchanged for the
    /// life of this Phase-2 state.
    pub(crate) fn use_stream(&mut self, dev: &Dev, s: &Stream) -> Result<()> {
        let key = DevStream::key(s);
        match self.streams.iter().position(|d| d.key == key) {
            Some(i) => self.cur = i,
            None => {
                if self.streams.len() == 2 {
                    self.streams.remove(0); // free before the next upload
                }
                self.streams.push(DevStream::upload(dev, s)?);
                self.cur = self.streams.len() - 1;
            }
        }
        Ok(())
    }

    fn stream_bufs(&self) -> Result<&DevStream> {
        self.streams
            .get(self.cur)
            .context("no stream on the device")
    }

    /// Phase2::forward: logits of positions start..start+rows.
    pub(crate) fn forward(
        &mut self,
        dev: &Dev,
        cfg: &Config,
        start: usize,
        rows: usize,
    ) -> Result<()> {
        if rows > self.cap {
            bail!(
                "batch of {rows} rows exceeds phase2_batch_size {}",
                self.cap
            );
        }
        let ds = self.stream_bufs()?;
        gather_src(dev, cfg.context_dim, start, rows, &ds.src, self.ctx_in.ptr)?;
        gather_tokens(
            dev,
            self.dm.ek,
            &ds.ids,
            start,
            rows,
            &self.dm.tv,
            self.x.ptr,
        )?;
        context_forward(
            dev,
            &self.dm.ctx,
            self.ctx_in.ptr,
            self.x.ptr,
            rows,
            &self.ctx_acts,
        )?;
        token_forward(
            dev,
            &self.tok,
            &self.parts,
            &self.ctx_acts,
            self.x.ptr,
            rows,
            &self.tok_acts,
            self.logits.ptr,
        )
    }

    /// Cross-entropy of the logits against ids[start+1..]: (sum of row
    /// losses, correct); each row's loss is also added to
    /// `sample_losses[bins[row]]` when `bins` (one per row) is not empty.
    fn xent(
        &self,
        dev: &Dev,
        start: usize,
        rows: usize,
        grad: bool,
        bins: &[u32],
        sample_losses: &mut [f64],
    ) -> Result<(f64, usize)> {
        let ds = self.stream_bufs()?;
        dev.launch_rows(
            "softmax_xent",
            rows,
            &[
                Arg::I(rows as i32),
                Arg::I(self.parts.vocab as i32),
                Arg::P(self.logits.ptr),
                Arg::P(ds.ids.at(start + 1)),
                Arg::F(1.0 / rows as f32),
                Arg::I(i32::from(grad)),
                Arg::P(self.loss.ptr),
                Arg::P(self.correct.ptr),
            ],
        )?;
        let row_losses = dev.read::<f64>(self.loss.ptr, rows)?;
        for (&l, &b) in row_losses.iter().zip(bins) {
            sample_losses[b as usize] += l;
        }
        let loss: f64 = row_losses.iter().sum();
        let correct: i64 = dev
            .read::<i32>(self.correct.ptr, rows)?
            .iter()
            .map(|&v| v as i64)
            .sum();
        Ok((loss, correct as usize))
    }

    /// Phase2::backward: mean loss; gradient (zeroed first) in `grad`.
    pub(crate) fn backward(&mut self, dev: &Dev, start: usize, rows: usize) -> Result<f64> {
        let (loss, _) = self.xent(dev, start, rows, true, &[], &mut [])?;
        dev.zero_bytes(self.grad.ptr, self.grad.len * 4)?;
        token_backward(
            dev,
            &self.tok,
            &self.parts,
            &self.grad,
            &self.ctx_acts,
            self.x.ptr,
            rows,
            &self.tok_acts,
            self.logits.ptr,
        )?;
        Ok(loss / rows as f64)
    }

    /// Phase2::step: clip + Adam; the norm before clipping.
    pub(crate) fn step(&mut self, dev: &Dev, clip: f64) -> Result<f64> {
        let norm = clip_grad_norm(dev, &self.grad, &self.partial, clip)?;
        self.adam.step(dev, &self.tok.params, &self.grad)?;
        Ok(norm)
    }

    fn train_epoch(&mut self, dev: &Dev, cfg: &Config, s: &Stream, epoch: usize) -> Result<f64> {
        self.use_stream(dev, s)?;
        let n = s.positions();
        let mut total = 0.0;
        for (bi, start) in (0..n).step_by(self.cap).enumerate() {
            let rows = self.cap.min(n - start);
            self.forward(dev, cfg, start, rows)?;
            let loss = self.backward(dev, start, rows)?;
            let norm = self.step(dev, cfg.phase2_gradient_clip)?;
            if !loss.is_finite() || !norm.is_finite() {
                bail!("Phase 2 diverged at epoch {epoch}, batch {}: loss {loss}, gradient norm {norm}; try a lower phase2_learning_rate", bi + 1);
            }
            total += loss * rows as f64;
        }
        Ok(total / n as f64)
    }

    fn evaluate(&mut self, dev: &Dev, cfg: &Config, s: &Stream) -> Result<Evaluation> {
        self.use_stream(dev, s)?;
        let n = s.positions();
        let (mut total, mut correct) = (0.0, 0);
        let mut sample_losses = vec![0.0; s.bins.last().map_or(0, |&b| b as usize + 1)];
        for start in (0..n).step_by(self.cap) {
            let rows = self.cap.min(n - start);
            self.forward(dev, cfg, start, rows)?;
            let bins = s.bins.get(start..start + rows).unwrap_or(&[]);
            let (l, c) = self.xent(dev, start, rows, false, bins, &mut sample_losses)?;
            total += l;
            correct += c;
        }
        Ok(Evaluation {
            loss: total / n as f64,
            correct,
            sample_losses,
        })
    }
}

/// Phase-2 epochs on the device, for the shared loop in phase2.rs.
pub(crate) struct GpuPhase2Steps<'a, 'b, 'c> {
    pub(crate) dev: &'a Dev,
    pub(crate) cfg: &'a Config,
    pub(crate) p2: &'a mut GpuPhase2,
    pub(crate) train: &'a Stream<'b>,
    pub(crate) val: &'a Stream<'b>,
    pub(crate) best: &'a Buf<f32>,
    pub(crate) on_epoch: &'a mut OnEpoch<'c>,
}

impl EpochSteps for GpuPhase2Steps<'_, '_, '_> {
    fn train_epoch(&mut self, epoch: usize) -> Result<f64> {
        self.p2.train_epoch(self.dev, self.cfg, self.train, epoch)
    }
    fn evaluate(&mut self) -> Result<Evaluation> {
        self.p2.evaluate(self.dev, self.cfg, self.val)
    }
    fn keep_best(&mut self) -> Result<()> {
        self.dev.copy_f32(
            self.best.ptr,
            self.p2.tok.params.ptr,
            self.p2.tok.params.len,
        )
    }
    /// No snapshot (the weights stay on the device); the log and progress only.
    fn end_epoch(&mut self, progress: &EpochProgress) -> Result<()> {
        (self.on_epoch)(progress, None)
    }
}
