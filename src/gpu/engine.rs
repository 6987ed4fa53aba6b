//! `Engine` on the GPU: Phase 1, the recurrent passes / caches and Phase 2
//! with every tensor on the device. Host <-> device traffic is limited to
//! uploading the model and streams at the start of a stage, a few per-row
//! loss figures per batch (for the logs and the divergence checks) and the
//! results the caller asked for.

use super::{
    clip_grad_norm, context_backward, context_forward, gather_src, gather_tokens, recurrent_pass,
    token_backward, token_forward, Arg, BlockBufs, Buf, Dev, GpuAdam, GpuBlock, TokenParts,
};
use crate::config::{Config, Phase1Init, TrainCache};
use crate::engine::{BatchOutcome, Engine, FirstIteration};
use crate::model::Model;
use crate::phase1::{self, IterationStats, Phase1Outcome};
use crate::phase2::{self, Phase2Outcome, Stream};
use crate::results::{Epoch, Phase1Iteration};
use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use std::time::Instant;

/// The model parts a stage needs on the device.
pub(crate) struct DevModel {
    pub ctx: GpuBlock,
    pub tv: Buf<f32>,
    pub ek: (usize, usize),
}

impl DevModel {
    pub(crate) fn upload(dev: &Dev, model: &Model) -> Result<DevModel> {
        Ok(DevModel {
            ctx: GpuBlock::upload(dev, &model.context)?,
            tv: dev.upload(&model.token_vectors)?,
            ek: (model.cfg.embed_dim, model.cfg.num_input_tokens),
        })
    }
}

/// Phase 1 on the device (phase1::Phase1).
pub(crate) struct GpuPhase1 {
    pub prev: Buf<f32>,
    pub out: Buf<f32>,
    pub grad: Buf<f32>,
    adam: GpuAdam,
    acts: BlockBufs,
    ctx_in: Buf<f32>,
    x: Buf<f32>,
    dout: Buf<f32>,
    colsum: Buf<f64>,
    row_sq: Buf<f64>,
    row_fr: Buf<f64>,
    conv: Buf<i32>,
    partial: Buf<f64>,
    ids: Buf<u32>,
    /// Noise draws so far (the counter of the device's noise stream).
    noise_used: u64,
}

impl GpuPhase1 {
    pub(crate) fn new(
        dev: &Dev,
        dm: &DevModel,
        model: &Model,
        ids: &[u32],
        given: Option<Vec<f32>>,
        graphs: bool,
    ) -> Result<GpuPhase1> {
        let cfg = &model.cfg;
        let (n, c) = (ids.len(), cfg.context_dim);
        let idb = dev.upload(ids)?;
        let prev = match given {
            Some(p) => {
                if p.len() != n * c {
                    bail!(
                        "given Phase-1 contexts have {} values, expected {n} x {c}",
                        p.len()
                    );
                }
                dev.upload(&p)?
            }
            None => match cfg.phase1_init {
                Phase1Init::Sequential => {
                    let outs = dev.zeros(n * c)?;
                    recurrent_pass(dev, &dm.ctx, dm.ek, &dm.tv, &idb, n, &outs, graphs)?;
                    outs
                }
                Phase1Init::Random => {
                    // the same draw as the CPU (host RNG), so both devices start alike
                    let mut p = vec![0.0; n * c];
                    Rng::new(cfg.seed ^ 0x5EED_0001).fill_normal(&mut p, 0.01);
                    dev.upload(&p)?
                }
            },
        };
        let cap = cfg.phase1_batch_size.min(n);
        let plen = model.context.params.data.len();
        Ok(GpuPhase1 {
            prev,
            out: dev.zeros(n * c)?,
            grad: dev.zeros(plen)?,
            adam: GpuAdam::new(dev, plen, cfg.phase1_learning_rate)?,
            acts: BlockBufs::new(dev, &dm.ctx.layers, cap)?,
            ctx_in: dev.zeros(cap * c)?,
            x: dev.zeros(cap * cfg.token_input_dim())?,
            dout: dev.zeros(cap * c)?,
            colsum: dev.zeros(c)?,
            row_sq: dev.zeros(cap)?,
            row_fr: dev.zeros(cap)?,
            conv: dev.zeros(cap)?,
            partial: dev.zeros(super::kernels::SUMSQ_BLOCKS as usize)?,
            ids: idb,
            noise_used: 0,
        })
    }

    /// Phase1::accumulate: forward + backward over the stream, gradient in `grad`.
    pub(crate) fn accumulate(
        &mut self,
        dev: &Dev,
        dm: &DevModel,
        cfg: &Config,
    ) -> Result<IterationStats> {
        let (n, c) = (self.ids.len, cfg.context_dim);
        let cap = self.acts.cap;
        let num_batches = n.div_ceil(cap);
        let w = cfg.dist_reg_weight;
        dev.zero_bytes(self.grad.ptr, self.grad.len * 4)?;
        let mut st = IterationStats::default();
        for bi in 0..num_batches {
            let s = bi * cap;
            let rows = cap.min(n - s);
            // Noise: the device's own counter-based stream (the CPU's Rng
            // sequence would cost a host draw per element); same distribution.
            dev.launch_n(
                "gather_prev_wrap",
                rows * c,
                &[
                    Arg::I(rows as i32),
                    Arg::I(c as i32),
                    Arg::L(n as i64),
                    Arg::L(s as i64),
                    Arg::P(self.prev.ptr),
                    Arg::P(self.ctx_in.ptr),
                    Arg::F(cfg.phase1_context_noise as f32),
                    Arg::U(cfg.seed ^ 0x5EED_0002),
                    Arg::U(self.noise_used),
                ],
            )?;
            if cfg.phase1_context_noise > 0.0 {
                self.noise_used += (rows * c) as u64;
            }
            gather_tokens(dev, dm.ek, &self.ids, s, rows, &dm.tv, self.x.ptr)?;
            context_forward(dev, &dm.ctx, self.ctx_in.ptr, self.x.ptr, rows, &self.acts)?;
            let out = self.acts.last();
            let prev_b = self.prev.at(s * c);
            dev.launch(
                "col_sum_f64",
                (c.div_ceil(32) as u32, 1),
                (32, 32),
                &[
                    Arg::I(rows as i32),
                    Arg::I(c as i32),
                    Arg::P(out),
                    Arg::P(self.colsum.ptr),
                ],
            )?;
            dev.launch_rows(
                "p1_row_stats",
                rows,
                &[
                    Arg::I(rows as i32),
                    Arg::I(c as i32),
                    Arg::P(out),
                    Arg::P(prev_b),
                    Arg::P(self.colsum.ptr),
                    Arg::D(cfg.phase1_convergence_threshold),
                    Arg::P(self.row_sq.ptr),
                    Arg::P(self.row_fr.ptr),
                    Arg::P(self.conv.ptr),
                ],
            )?;
            let sq: f64 = dev.read::<f64>(self.row_sq.ptr, rows)?.iter().sum();
            let fr: f64 = dev.read::<f64>(self.row_fr.ptr, rows)?.iter().sum();
            let conv: i64 = dev
                .read::<i32>(self.conv.ptr, rows)?
                .iter()
                .map(|&v| v as i64)
                .sum();
            let scale = 1.0 / num_batches as f64;
            let (cvfp, div, a, b) = batch_losses(sq, fr, rows, c, w, scale);
            dev.launch_n(
                "p1_grad",
                rows * c,
                &[
                    Arg::I(rows as i32),
                    Arg::I(c as i32),
                    Arg::P(out),
                    Arg::P(prev_b),
                    Arg::P(self.colsum.ptr),
                    Arg::F(a),
                    Arg::F(b),
                    Arg::P(self.dout.ptr),
                ],
            )?;
            dev.copy_f32(self.out.at(s * c), out, rows * c)?;
            let frac = rows as f64 / n as f64;
            st.cvfp_loss += cvfp * frac;
            st.diversity_loss += div * frac;
            st.total_loss += ((1.0 - w) * cvfp + w * div) * frac;
            st.converged_tokens += conv as usize;
            context_backward(
                dev,
                &dm.ctx,
                &self.grad,
                (self.ctx_in.ptr, self.x.ptr),
                rows,
                &self.acts,
                self.dout.ptr,
            )?;
        }
        dev.sync()?;
        Ok(st)
    }
}

/// ops::phase1_losses from the per-row sums of `p1_row_stats`:
/// (cvfp, div, a, b) with dout = a (out - prev) - b (out - mean).
fn batch_losses(
    sq: f64,
    fr: f64,
    rows: usize,
    c: usize,
    w: f64,
    scale: f64,
) -> (f64, f64, f32, f32) {
    let frob = fr.sqrt();
    let cvfp = sq / (rows * c) as f64;
    let div = -frob / rows as f64;
    let a = (scale * (1.0 - w) * 2.0 / (rows * c) as f64) as f32;
    let b = if frob > 0.0 {
        (scale * w / (frob * rows as f64)) as f32
    } else {
        0.0
    };
    (cvfp, div, a, b)
}

/// A stream (ids + cache source) on the device, remembered by host address
/// so consecutive batches of one stream upload it once.
struct DevStream {
    key: (usize, usize, usize),
    ids: Buf<u32>,
    src: Buf<f32>,
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
    dm: DevModel,
    pub tok: GpuBlock,
    parts: TokenParts,
    pub grad: Buf<f32>,
    adam: GpuAdam,
    logits: Buf<f32>,
    ctx_acts: BlockBufs,
    tok_acts: BlockBufs,
    ctx_in: Buf<f32>,
    x: Buf<f32>,
    loss: Buf<f64>,
    correct: Buf<i32>,
    partial: Buf<f64>,
    cap: usize,
    /// The train and validation streams, uploaded once per Phase-2 run.
    streams: Vec<DevStream>,
    cur: usize,
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

    /// Cross-entropy of the logits against ids[start+1..]: (sum of row losses, correct).
    fn xent(&self, dev: &Dev, start: usize, rows: usize, grad: bool) -> Result<(f64, usize)> {
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
        let loss: f64 = dev.read::<f64>(self.loss.ptr, rows)?.iter().sum();
        let correct: i64 = dev
            .read::<i32>(self.correct.ptr, rows)?
            .iter()
            .map(|&v| v as i64)
            .sum();
        Ok((loss, correct as usize))
    }

    /// Phase2::backward: mean loss; gradient (zeroed first) in `grad`.
    pub(crate) fn backward(&mut self, dev: &Dev, start: usize, rows: usize) -> Result<f64> {
        let (loss, _) = self.xent(dev, start, rows, true)?;
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

    fn evaluate(&mut self, dev: &Dev, cfg: &Config, s: &Stream) -> Result<(f64, usize)> {
        self.use_stream(dev, s)?;
        let n = s.positions();
        let (mut total, mut correct) = (0.0, 0);
        for start in (0..n).step_by(self.cap) {
            let rows = self.cap.min(n - start);
            self.forward(dev, cfg, start, rows)?;
            let (l, c) = self.xent(dev, start, rows, false)?;
            total += l;
            correct += c;
        }
        Ok((total / n as f64, correct))
    }
}

/// The GPU engine: one device, opened once.
pub struct GpuEngine {
    pub(crate) dev: Dev,
    p2: Option<GpuPhase2>,
    graphs: bool,
}

impl GpuEngine {
    pub fn new(cfg: &Config) -> Result<GpuEngine> {
        let dev = Dev::open(cfg.cuda_allow_tf32)?;
        Ok(GpuEngine {
            dev,
            p2: None,
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

/// Phase-1 iteration steps on the device, for the shared loop in phase1.rs.
struct GpuPhase1Steps<'a> {
    dev: &'a Dev,
    dm: &'a DevModel,
    p1: &'a mut GpuPhase1,
    cfg: &'a Config,
}

impl phase1::Phase1Steps for GpuPhase1Steps<'_> {
    fn accumulate(&mut self) -> Result<IterationStats> {
        self.p1.accumulate(self.dev, self.dm, self.cfg)
    }
    fn clip(&mut self, max_norm: f64) -> Result<f64> {
        clip_grad_norm(self.dev, &self.p1.grad, &self.p1.partial, max_norm)
    }
    fn step_and_advance(&mut self) -> Result<()> {
        self.p1
            .adam
            .step(self.dev, &self.dm.ctx.params, &self.p1.grad)?;
        std::mem::swap(&mut self.p1.prev, &mut self.p1.out);
        self.dev.sync()
    }
}

/// Phase-2 epochs on the device, for the shared loop in phase2.rs.
struct GpuPhase2Steps<'a, 'b> {
    dev: &'a Dev,
    cfg: &'a Config,
    p2: &'a mut GpuPhase2,
    train: &'a Stream<'b>,
    val: &'a Stream<'b>,
    best: &'a Buf<f32>,
}

impl phase2::Phase2Steps for GpuPhase2Steps<'_, '_> {
    fn train_epoch(&mut self, epoch: usize) -> Result<f64> {
        self.p2.train_epoch(self.dev, self.cfg, self.train, epoch)
    }
    fn evaluate(&mut self) -> Result<(f64, usize)> {
        self.p2.evaluate(self.dev, self.cfg, self.val)
    }
    fn keep_best(&mut self) -> Result<()> {
        self.dev.copy_f32(
            self.best.ptr,
            self.p2.tok.params.ptr,
            self.p2.tok.params.len,
        )
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
        on_iteration: &mut dyn FnMut(&Phase1Iteration),
    ) -> Result<Phase1Outcome> {
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
        let (log, converged) =
            phase1::iterate(&cfg, ids.len(), init_seconds, &mut steps, on_iteration)?;
        model.context.params.data = dev.read(dm.ctx.params.ptr, dm.ctx.params.len)?;
        let prev = dev.read(p1.prev.ptr, p1.prev.len)?;
        Ok(Phase1Outcome {
            prev,
            log,
            converged,
        })
    }

    fn phase1_first(
        &mut self,
        model: &Model,
        ids: &[u32],
        given_prev: Option<Vec<f32>>,
    ) -> Result<FirstIteration> {
        let dev = &self.dev;
        let dm = DevModel::upload(dev, model)?;
        let mut p1 = GpuPhase1::new(dev, &dm, model, ids, given_prev, self.graphs)?;
        let prev = dev.read(p1.prev.ptr, p1.prev.len)?;
        let stats = p1.accumulate(dev, &dm, &model.cfg)?;
        Ok(FirstIteration {
            prev,
            out: dev.read(p1.out.ptr, p1.out.len)?,
            grad: dev.read(p1.grad.ptr, p1.grad.len)?,
            stats,
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

    fn context_layers(
        &mut self,
        model: &Model,
        ids: &[u32],
        src: &[f32],
        rows: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let dev = &self.dev;
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
        self.p2 = Some(GpuPhase2::new(&self.dev, model)?);
        Ok(())
    }

    fn phase2_batch(
        &mut self,
        model: &mut Model,
        s: &Stream,
        start: usize,
        rows: usize,
    ) -> Result<BatchOutcome> {
        let dev = &self.dev;
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

    fn phase2_run(
        &mut self,
        model: &mut Model,
        train: &Stream,
        val: &Stream,
        on_epoch: &mut dyn FnMut(&Epoch),
    ) -> Result<Phase2Outcome> {
        phase2::check_streams(train, val)?;
        let cfg = model.cfg.clone();
        let dev = &self.dev;
        self.p2 = None;
        let mut p2 = GpuPhase2::new(dev, model)?;
        let best = dev.upload(&model.token.params.data)?;
        let mut steps = GpuPhase2Steps {
            dev,
            cfg: &cfg,
            p2: &mut p2,
            train,
            val,
            best: &best,
        };
        let log = phase2::epochs(&cfg, val.positions(), &mut steps, on_epoch)?;
        let plen = p2.tok.params.len;
        model.token.params.data = dev.read(p2.tok.params.ptr, plen)?;
        let best_params = dev.read(best.ptr, plen)?;
        Ok(Phase2Outcome {
            epochs: log.epochs,
            best_epoch: log.best_epoch,
            stop_epoch: log.stop_epoch,
            early_stopped: log.early_stopped,
            best_params,
        })
    }

    fn peak_device_bytes(&self) -> Option<u64> {
        self.dev.sample_memory();
        Some(self.dev.peak_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops;

    /// The Phase-1 kernels' arithmetic (p1_row_stats, col_sum_f64, p1_grad),
    /// transcribed to Rust, with `batch_losses` gives ops::phase1_losses.
    #[test]
    fn phase1_kernel_arithmetic_matches_ops() {
        let (rows, n, w, thr, scale) = (7, 5, 0.8, 0.3, 0.25);
        let mut out = vec![0.0f32; rows * n];
        let mut prev = vec![0.0f32; rows * n];
        ops::tests::fill(&mut out, 21);
        ops::tests::fill(&mut prev, 22);
        let mut want = vec![0.0f32; rows * n];
        let (cvfp, div, conv) = ops::phase1_losses(&out, &prev, n, w, thr, scale, Some(&mut want));
        let colsum: Vec<f64> = (0..n)
            .map(|i| (0..rows).map(|r| out[r * n + i] as f64).sum())
            .collect();
        let (mut sq, mut fr, mut cv) = (0.0, 0.0, 0);
        for r in 0..rows {
            let (mut rs, mut rf) = (0.0f64, 0.0f64);
            for i in 0..n {
                let d = (out[r * n + i] - prev[r * n + i]) as f64;
                rs += d * d;
                let m = out[r * n + i] as f64 - colsum[i] / rows as f64;
                rf += m * m;
            }
            sq += rs;
            fr += rf;
            cv += usize::from(rs / (n as f64) < thr);
        }
        let (c2, d2, a, b) = batch_losses(sq, fr, rows, n, w, scale);
        assert!((c2 - cvfp).abs() < 1e-12 && (d2 - div).abs() < 1e-12 && cv == conv);
        for idx in 0..rows * n {
            let m = (colsum[idx % n] / rows as f64) as f32;
            let g = a * (out[idx] - prev[idx]) - b * (out[idx] - m);
            assert!(
                (g - want[idx]).abs() <= 1e-7 * want[idx].abs().max(1e-3),
                "{idx}"
            );
        }
    }
}
