//! Phase 1 on the device, mirroring `models/newllm/phase1.rs`: the buffers,
//! one iteration's accumulation, and the steps the shared loop drives.

use super::cache::{gather_tokens, recurrent_pass};
use super::model::{context_backward, context_forward, BlockBufs, DevModel};
use super::ops::{clip_grad_norm, GpuAdam};
use super::runtime::{Arg, Buf, Dev};
use crate::cell_result::Phase1Iteration;
use crate::config::{Config, Phase1Init};
use crate::models::newllm::loss;
use crate::models::newllm::model::Model;
use crate::models::newllm::phase1::{
    IterationStats, OnIteration, Phase1Steps, NOISE_SALT, RANDOM_INIT_SALT,
};
use crate::rng::Rng;
use anyhow::{bail, Result};

/// Phase 1 on the device (phase1::Phase1).
pub(crate) struct GpuPhase1 {
    pub prev: Buf<f32>,
    pub out: Buf<f32>,
    pub grad: Buf<f32>,
    pub(crate) adam: GpuAdam,
    pub(crate) acts: BlockBufs,
    pub(crate) ctx_in: Buf<f32>,
    pub(crate) x: Buf<f32>,
    pub(crate) dout: Buf<f32>,
    pub(crate) colsum: Buf<f64>,
    pub(crate) row_sq: Buf<f64>,
    pub(crate) row_fr: Buf<f64>,
    pub(crate) conv: Buf<i32>,
    pub(crate) partial: Buf<f64>,
    pub(crate) ids: Buf<u32>,
    /// Noise draws so far (the counter of the device's noise stream).
    pub(crate) noise_used: u64,
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
                    Rng::new(cfg.seed ^ RANDOM_INIT_SALT).fill_normal(&mut p, 0.01);
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
                    Arg::U(cfg.seed ^ NOISE_SALT),
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
            let (cvfp, div, a, b) = loss::phase1_loss_terms(sq, fr, rows, c, w, scale);
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
            st.total_loss += loss::phase1_total_loss(cvfp, div, w) * frac;
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

/// Phase-1 iteration steps on the device, for the shared loop in phase1.rs.
pub(crate) struct GpuPhase1Steps<'a> {
    pub(crate) dev: &'a Dev,
    pub(crate) dm: &'a DevModel,
    pub(crate) p1: &'a mut GpuPhase1,
    pub(crate) cfg: &'a Config,
}

impl Phase1Steps for GpuPhase1Steps<'_> {
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
    /// No snapshot: downloading the contexts every iteration would cost
    /// more than the resume is worth here; the cell resumes from the caches.
    fn report(&mut self, log: &[Phase1Iteration], on_iteration: &mut OnIteration) -> Result<()> {
        on_iteration(log, None)
    }
}

#[cfg(test)]
mod tests {
    use crate::models::newllm::loss;
    use crate::ops;

    /// The Phase-1 kernels' arithmetic (p1_row_stats, col_sum_f64, p1_grad),
    /// transcribed to Rust, with `batch_losses` gives loss::phase1_losses.
    #[test]
    fn phase1_kernel_arithmetic_matches_ops() {
        let (rows, n, w, thr, scale) = (7, 5, 0.8, 0.3, 0.25);
        let mut out = vec![0.0f32; rows * n];
        let mut prev = vec![0.0f32; rows * n];
        ops::tests::fill(&mut out, 21);
        ops::tests::fill(&mut prev, 22);
        let mut want = vec![0.0f32; rows * n];
        let mut col_mean = vec![0.0; n];
        let (cvfp, div, conv) = loss::phase1_losses(
            &out,
            &prev,
            n,
            w,
            thr,
            scale,
            &mut col_mean,
            Some(&mut want),
        );
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
        let (c2, d2, a, b) = loss::phase1_loss_terms(sq, fr, rows, n, w, scale);
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
