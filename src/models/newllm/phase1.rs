//! Phase 1: fixed-point context learning (docs/algorithm.md section 3). Trains
//! the ContextBlock only; one iteration = one Adam step over the whole
//! training stream, gradients accumulated over `phase1_batch_size` batches.

use super::cache::sequential_pass;
use super::loss;
use super::model::{BlockActs, Model};
use crate::cell_result::Phase1Iteration;
use crate::config::{Config, Phase1Init};
use crate::ops::{self, Adam};
use crate::rng::Rng;
use anyhow::{bail, Result};
use std::time::Instant;

/// Seed salts, so the random init and the context noise draw independent
/// streams from one `seed` (the GPU uses the same ones).
pub const RANDOM_INIT_SALT: u64 = 0x5EED_0001;
pub const NOISE_SALT: u64 = 0x5EED_0002;

/// Losses and convergence of one iteration, before its Adam step.
#[derive(Clone, Debug, Default)]
pub struct IterationStats {
    pub total_loss: f64,
    pub cvfp_loss: f64,
    pub diversity_loss: f64,
    pub converged_tokens: usize,
}

/// Buffers for one Phase-1 run, planned up front (nothing allocates per iteration).
pub struct Phase1 {
    pub prev: Vec<f32>,
    pub out: Vec<f32>,
    pub grad: Vec<f32>,
    pub adam: Adam,
    acts: BlockActs,
    ctx_in: Vec<f32>,
    x: Vec<f32>,
    dout: Vec<f32>,
    col_mean: Vec<f64>,
    noise: Rng,
}

impl Phase1 {
    /// Iteration 1: builds `prev` per `phase1_init` (or takes it as given).
    pub fn new(model: &Model, ids: &[u32], given_prev: Option<Vec<f32>>) -> Phase1 {
        let cfg = &model.cfg;
        let (n, c) = (ids.len(), cfg.context_dim);
        let prev = given_prev.unwrap_or_else(|| match cfg.phase1_init {
            Phase1Init::Sequential => sequential_pass(model, ids, n),
            Phase1Init::Random => {
                let mut p = vec![0.0; n * c];
                Rng::new(cfg.seed ^ RANDOM_INIT_SALT).fill_normal(&mut p, 0.01);
                p
            }
        });
        let cap = cfg.phase1_batch_size.min(n);
        Phase1 {
            prev,
            out: vec![0.0; n * c],
            grad: vec![0.0; model.context.params.data.len()],
            adam: Adam::new(model.context.params.data.len(), cfg.phase1_learning_rate),
            acts: BlockActs::new(&model.context, cap),
            ctx_in: vec![0.0; cap * c],
            x: vec![0.0; cap * cfg.token_input_dim()],
            dout: vec![0.0; cap * c],
            col_mean: vec![0.0; c],
            noise: Rng::new(cfg.seed ^ NOISE_SALT),
        }
    }

    /// Forward + backward over the whole stream with the current weights:
    /// fills `out` and the accumulated gradient `grad`, no optimizer step.
    pub fn accumulate(&mut self, model: &Model, ids: &[u32]) -> IterationStats {
        let cfg = &model.cfg;
        let (n, c) = (ids.len(), cfg.context_dim);
        let cap = self.acts.cap;
        let num_batches = n.div_ceil(cap);
        let w = cfg.dist_reg_weight;
        self.grad.fill(0.0);
        let mut st = IterationStats::default();
        let bar = crate::progress::bar(num_batches as u64, "phase1 iteration (batches)");
        for bi in 0..num_batches {
            bar.set_position(bi as u64);
            let s = bi * cap;
            let rows = cap.min(n - s);
            // input context of row j = prev[j - 1], wrapping to prev[n - 1] for j = 0
            for r in 0..rows {
                let j = (s + r + n - 1) % n;
                self.ctx_in[r * c..(r + 1) * c].copy_from_slice(&self.prev[j * c..(j + 1) * c]);
            }
            if cfg.phase1_context_noise > 0.0 {
                for v in &mut self.ctx_in[..rows * c] {
                    *v += (self.noise.normal() * cfg.phase1_context_noise) as f32;
                }
            }
            model.token_input(ids, s, rows, &mut self.x);
            model.context_forward(None, &self.ctx_in, &self.x, rows, &mut self.acts);
            let out = &self.acts.last()[..rows * c];
            let prev = &self.prev[s * c..(s + rows) * c];
            let (cvfp, div, conv) = loss::phase1_losses(
                out,
                prev,
                c,
                w,
                cfg.phase1_convergence_threshold,
                1.0 / num_batches as f64,
                &mut self.col_mean,
                Some(&mut self.dout[..rows * c]),
            );
            self.out[s * c..(s + rows) * c].copy_from_slice(out);
            let frac = rows as f64 / n as f64;
            st.cvfp_loss += cvfp * frac;
            st.diversity_loss += div * frac;
            st.total_loss += loss::phase1_total_loss(cvfp, div, w) * frac;
            st.converged_tokens += conv;
            model.context_backward(
                &self.ctx_in,
                &self.x,
                rows,
                &mut self.acts,
                &mut self.dout,
                &mut self.grad,
            );
        }
        bar.finish_and_clear();
        st
    }
}

/// What Phase 1 leaves behind.
pub struct Phase1Outcome {
    /// Final contexts (n x C): the train contexts for Effective Rank.
    pub prev: Vec<f32>,
    pub log: Vec<Phase1Iteration>,
    pub converged: bool,
}

/// The state of an exact continuation at the end of an iteration (the
/// CPU's; the GPU keeps it on the device and gives none).
pub struct Phase1Snapshot<'a> {
    pub context_params: &'a [f32],
    pub adam: &'a Adam,
    pub prev: &'a [f32],
    pub noise: &'a Rng,
}

/// Where a resumed Phase 1 continues: the log so far and the snapshot's
/// contents (the ContextBlock's weights go into the model).
pub struct Phase1Resume {
    pub log: Vec<Phase1Iteration>,
    pub adam: Adam,
    pub prev: Vec<f32>,
    pub noise: Rng,
}

/// Called after every iteration (iteration 1 = the init) with the log so
/// far and, where the device gives it, the snapshot: for the on-disk log,
/// progress output and the cell's resumable state.
pub type OnIteration<'a> =
    dyn FnMut(&[Phase1Iteration], Option<&Phase1Snapshot>) -> Result<()> + 'a;

/// The device-specific work of one Phase-1 iteration, so the CPU and the
/// GPU share the loop, the log and the stopping rule in `iterate`.
pub trait Phase1Steps {
    /// Forward + backward over the whole stream with the current weights.
    fn accumulate(&mut self) -> Result<IterationStats>;
    /// Clips the accumulated gradient; returns its norm before clipping.
    fn clip(&mut self, max_norm: f64) -> Result<f64>;
    /// One Adam step, then prev = out (the pre-step outputs).
    fn step_and_advance(&mut self) -> Result<()>;
    /// Hands the log so far (and the snapshot, if any) to `on_iteration`.
    fn report(&mut self, log: &[Phase1Iteration], on_iteration: &mut OnIteration) -> Result<()>;
}

/// Whether a log already ends Phase 1: Some(converged) if it does.
pub fn finished(cfg: &Config, log: &[Phase1Iteration]) -> Option<bool> {
    let last = log.last()?;
    let t = last.iteration;
    if t >= 2
        && t >= cfg.phase1_min_iterations
        && last.convergence_rate >= cfg.phase1_min_converged_ratio
    {
        Some(true)
    } else if t >= cfg.phase1_max_iterations {
        Some(false)
    } else {
        None
    }
}

/// Iterations 2..: accumulate, clip, step, log, stop on convergence or at
/// `phase1_max_iterations`. Starts with iteration 1 (the init, which took
/// `init_seconds`) or continues a resumed log. Returns the log (iteration
/// 1 first) and whether the convergence rule stopped it.
pub fn iterate(
    cfg: &Config,
    n: usize,
    resumed: Option<Vec<Phase1Iteration>>,
    init_seconds: f64,
    steps: &mut dyn Phase1Steps,
    on_iteration: &mut OnIteration,
) -> Result<(Vec<Phase1Iteration>, bool)> {
    let mut log = match resumed {
        Some(log) => log,
        None => {
            let first = Phase1Iteration {
                iteration: 1,
                seconds: init_seconds,
                ..Default::default()
            };
            steps.report(std::slice::from_ref(&first), on_iteration)?;
            vec![first]
        }
    };
    if let Some(converged) = finished(cfg, &log) {
        return Ok((log, converged));
    }
    for t in log.len() + 1..=cfg.phase1_max_iterations {
        let t0 = Instant::now();
        let st = steps.accumulate()?;
        let norm = steps.clip(cfg.phase1_gradient_clip)?;
        if !st.total_loss.is_finite() || !norm.is_finite() {
            bail!(
                "Phase 1 diverged at iteration {t}: loss {} (cvfp {}, div {}), gradient norm {norm}; \
                 try a lower phase1_learning_rate or dist_reg_weight",
                st.total_loss,
                st.cvfp_loss,
                st.diversity_loss
            );
        }
        steps.step_and_advance()?;
        let rate = st.converged_tokens as f64 / n as f64;
        log.push(Phase1Iteration {
            iteration: t,
            total_loss: st.total_loss,
            cvfp_loss: st.cvfp_loss,
            diversity_loss: st.diversity_loss,
            convergence_rate: rate,
            converged_tokens: st.converged_tokens,
            grad_norm_before_clip: norm,
            seconds: t0.elapsed().as_secs_f64(),
        });
        steps.report(&log, on_iteration)?;
        if let Some(converged) = finished(cfg, &log) {
            return Ok((log, converged));
        }
    }
    Ok((log, false))
}

struct CpuSteps<'a> {
    p1: &'a mut Phase1,
    model: &'a mut Model,
    ids: &'a [u32],
}

impl Phase1Steps for CpuSteps<'_> {
    fn accumulate(&mut self) -> Result<IterationStats> {
        Ok(self.p1.accumulate(self.model, self.ids))
    }
    fn clip(&mut self, max_norm: f64) -> Result<f64> {
        Ok(ops::clip_grad_norm(&mut self.p1.grad, max_norm))
    }
    fn step_and_advance(&mut self) -> Result<()> {
        self.p1
            .adam
            .step(&mut self.model.context.params.data, &self.p1.grad);
        std::mem::swap(&mut self.p1.prev, &mut self.p1.out);
        Ok(())
    }
    fn report(&mut self, log: &[Phase1Iteration], on_iteration: &mut OnIteration) -> Result<()> {
        let snapshot = Phase1Snapshot {
            context_params: &self.model.context.params.data,
            adam: &self.p1.adam,
            prev: &self.p1.prev,
            noise: &self.p1.noise,
        };
        on_iteration(log, Some(&snapshot))
    }
}

/// Runs Phase 1 on the training ids, or continues a resumed one (whose
/// ContextBlock weights are already in `model`). `given_prev` replaces
/// iteration 1's matrix (tests feed the original's random draw).
pub fn run(
    model: &mut Model,
    ids: &[u32],
    given_prev: Option<Vec<f32>>,
    resume: Option<Phase1Resume>,
    on_iteration: &mut OnIteration,
) -> Result<Phase1Outcome> {
    let cfg = model.cfg.clone();
    let want = ids.len() * cfg.context_dim;
    let t0 = Instant::now();
    let (given, resumed) = match resume {
        Some(r) => (Some(r.prev), Some((r.log, r.adam, r.noise))),
        None => (given_prev, None),
    };
    if let Some(p) = &given {
        if p.len() != want {
            bail!(
                "given Phase-1 contexts have {} values, expected {} x {}",
                p.len(),
                ids.len(),
                cfg.context_dim
            );
        }
    }
    let mut p1 = Phase1::new(model, ids, given);
    let log = resumed.map(|(log, adam, noise)| {
        p1.adam = adam;
        p1.noise = noise;
        log
    });
    let init_seconds = t0.elapsed().as_secs_f64();
    let mut steps = CpuSteps {
        p1: &mut p1,
        model,
        ids,
    };
    let (log, converged) = iterate(&cfg, ids.len(), log, init_seconds, &mut steps, on_iteration)?;
    Ok(Phase1Outcome {
        prev: p1.prev,
        log,
        converged,
    })
}

#[cfg(test)]
mod tests;
