//! Phase 1: fixed-point context learning (ALGORITHM.md section 3). Trains
//! the ContextBlock only; one iteration = one Adam step over the whole
//! training stream, gradients accumulated over `phase1_batch_size` batches.

use super::cache::sequential_pass;
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
            model.context_forward(&self.ctx_in, &self.x, rows, &mut self.acts);
            let out = &self.acts.last()[..rows * c];
            let prev = &self.prev[s * c..(s + rows) * c];
            let (cvfp, div, conv) = ops::phase1_losses(
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
            st.total_loss += ops::phase1_total_loss(cvfp, div, w) * frac;
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
mod tests {
    use super::*;
    use crate::models::newllm::model::BlockActs;

    #[derive(Debug, PartialEq)]
    enum Call {
        Accumulate,
        Clip(f64),
        Step,
    }

    /// Scripted Phase-1 work: the k-th `accumulate` reports `converged[k]`
    /// converged tokens (the last entry repeats) and `loss[k]` as its loss.
    struct Script {
        converged: Vec<usize>,
        loss: Vec<f64>,
        norm: f64,
        calls: Vec<Call>,
    }

    impl Script {
        fn new(converged: &[usize]) -> Script {
            Script {
                converged: converged.to_vec(),
                loss: vec![-0.5],
                norm: 2.5,
                calls: Vec::new(),
            }
        }
        fn pick<T: Copy>(v: &[T], k: usize) -> T {
            v[k.min(v.len() - 1)]
        }
        fn count(&self, c: &Call) -> usize {
            self.calls.iter().filter(|x| *x == c).count()
        }
    }

    impl Phase1Steps for Script {
        fn accumulate(&mut self) -> Result<IterationStats> {
            let k = self.count(&Call::Accumulate);
            self.calls.push(Call::Accumulate);
            Ok(IterationStats {
                total_loss: Script::pick(&self.loss, k),
                converged_tokens: Script::pick(&self.converged, k),
                ..Default::default()
            })
        }
        fn clip(&mut self, max_norm: f64) -> Result<f64> {
            self.calls.push(Call::Clip(max_norm));
            self.norm += 1.0;
            Ok(self.norm)
        }
        fn step_and_advance(&mut self) -> Result<()> {
            self.calls.push(Call::Step);
            Ok(())
        }
        fn report(
            &mut self,
            log: &[Phase1Iteration],
            on_iteration: &mut OnIteration,
        ) -> Result<()> {
            on_iteration(log, None)
        }
    }

    fn loop_cfg(min: usize, max: usize, ratio: f64) -> Config {
        Config {
            phase1_min_iterations: min,
            phase1_max_iterations: max,
            phase1_min_converged_ratio: ratio,
            phase1_gradient_clip: 0.37,
            ..Config::default()
        }
    }

    /// Runs `iterate` on `n` tokens and checks what every run must hold.
    fn iterate_script(cfg: &Config, n: usize, s: &mut Script) -> (Vec<Phase1Iteration>, bool) {
        let mut seen = Vec::new();
        let (log, converged) = iterate(cfg, n, None, 0.25, s, &mut |log, snapshot| {
            assert!(snapshot.is_none());
            seen.push(log.last().unwrap().clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, log, "on_iteration sees every entry");
        let numbers: Vec<usize> = log.iter().map(|it| it.iteration).collect();
        assert_eq!(numbers, (1..=log.len()).collect::<Vec<_>>());
        assert_eq!(log[0].seconds, 0.25, "iteration 1 is the init");
        (log, converged)
    }

    #[test]
    fn iterate_clips_with_the_configured_limit_before_every_step() {
        let cfg = loop_cfg(5, 4, 0.95);
        let mut s = Script::new(&[0]);
        let (log, converged) = iterate_script(&cfg, 10, &mut s);
        assert!(!converged);
        // three iterations, each: accumulate, clip to 0.37, then step
        let want: Vec<Call> = (0..3)
            .flat_map(|_| [Call::Accumulate, Call::Clip(0.37), Call::Step])
            .collect();
        assert_eq!(s.calls, want);
        // the logged norm is what clip returned (the norm before clipping)
        let norms: Vec<f64> = log[1..].iter().map(|it| it.grad_norm_before_clip).collect();
        assert_eq!(norms, vec![3.5, 4.5, 5.5]);
    }

    #[test]
    fn iterate_does_not_stop_before_the_minimum_iterations() {
        // every token converged from the first training iteration on
        let cfg = loop_cfg(4, 10, 0.95);
        let mut s = Script::new(&[10]);
        let (log, converged) = iterate_script(&cfg, 10, &mut s);
        assert!(converged);
        assert_eq!(log.len(), 4, "stops exactly at phase1_min_iterations");
        assert_eq!(s.count(&Call::Step), 3);
        assert_eq!(log[3].convergence_rate, 1.0);
        assert_eq!(log[3].converged_tokens, 10);
    }

    #[test]
    fn iterate_stops_at_the_maximum_when_never_converged() {
        let cfg = loop_cfg(2, 6, 0.95);
        let mut s = Script::new(&[9]);
        let (log, converged) = iterate_script(&cfg, 10, &mut s);
        assert!(!converged);
        assert_eq!(log.len(), 6);
        assert_eq!(s.count(&Call::Step), 5);
        assert_eq!(log[5].convergence_rate, 0.9);
    }

    #[test]
    fn iterate_stops_once_the_rate_reaches_the_ratio_inclusive() {
        // 95 of 100 is exactly 0.95: converged at iteration 4 (after 93 and 94)
        let cfg = loop_cfg(2, 8, 0.95);
        let mut s = Script::new(&[93, 94, 95, 10]);
        let (log, converged) = iterate_script(&cfg, 100, &mut s);
        assert!(converged);
        assert_eq!(log.len(), 4);
        assert_eq!(log[3].convergence_rate, 0.95);
        // a binary fraction as the ratio: 6 of 8 = 0.75
        let cfg = loop_cfg(2, 8, 0.75);
        let mut s = Script::new(&[5, 6]);
        let (log, converged) = iterate_script(&cfg, 8, &mut s);
        assert!(converged);
        assert_eq!(log.len(), 3);
    }

    #[test]
    fn iterate_refuses_a_non_finite_loss_or_norm_before_stepping() {
        let cfg = loop_cfg(5, 8, 0.95);
        let mut s = Script::new(&[0]);
        s.loss = vec![-0.5, f64::NAN];
        let err = iterate(&cfg, 10, None, 0.0, &mut s, &mut |_, _| Ok(()))
            .expect_err("a NaN loss is an error")
            .to_string();
        assert!(err.contains("Phase 1 diverged at iteration 3"), "{err}");
        assert_eq!(
            s.count(&Call::Step),
            1,
            "no step with the diverged gradient"
        );
        let mut s = Script::new(&[0]);
        s.norm = f64::INFINITY;
        let err = iterate(&cfg, 10, None, 0.0, &mut s, &mut |_, _| Ok(()))
            .expect_err("an infinite norm is an error")
            .to_string();
        assert!(err.contains("Phase 1 diverged at iteration 2"), "{err}");
        assert_eq!(s.count(&Call::Step), 0);
    }

    /// A small model for the real-model tests: 2 layers, 8 wide; 200 tokens
    /// make three full batches of 64 and one of 8.
    fn tiny() -> Config {
        Config {
            vocab_size: 50,
            embed_dim: 8,
            context_dim: 8,
            num_layers: 2,
            phase1_batch_size: 64,
            phase1_min_iterations: 100,
            phase1_max_iterations: 3,
            threads: 1,
            ..Config::default()
        }
    }

    fn stream(n: usize) -> Vec<u32> {
        (0..n).map(|i| ((i * 7 + i / 3) % 50) as u32).collect()
    }

    fn l2(v: &[f32]) -> f64 {
        v.iter()
            .map(|&g| (g as f64) * (g as f64))
            .sum::<f64>()
            .sqrt()
    }

    #[test]
    fn cpu_clip_scales_the_accumulated_gradient_to_the_limit() {
        let cfg = tiny();
        let ids = stream(200);
        let mut model = Model::new(&cfg, None).unwrap();
        let mut p1 = Phase1::new(&model, &ids, None);
        let mut steps = CpuSteps {
            p1: &mut p1,
            model: &mut model,
            ids: &ids,
        };
        steps.accumulate().unwrap();
        let before = steps.p1.grad.clone();
        let clip = 1e-3;
        let norm = steps.clip(clip).unwrap();
        assert_eq!(norm, l2(&before));
        assert!(
            norm > 100.0 * clip,
            "the test needs a gradient above the clip"
        );
        // clip / (norm + 1e-6) leaves the norm a hair under the limit
        let want = clip * norm / (norm + 1e-6);
        assert!((l2(&steps.p1.grad) / want - 1.0).abs() < 1e-6);
        let k = (clip / (norm + 1e-6)) as f32;
        for (a, b) in steps.p1.grad.iter().zip(&before) {
            assert_eq!(*a, b * k);
        }
    }

    #[test]
    fn phase1_run_steps_adam_with_the_clipped_gradient() {
        let cfg = Config {
            phase1_gradient_clip: 1e-3,
            phase1_context_noise: 0.0,
            ..tiny()
        };
        let ids = stream(200);
        let mut model = Model::new(&cfg, None).unwrap();
        let out = run(&mut model, &ids, None, None, &mut |_, _| Ok(())).unwrap();
        assert_eq!(out.log.len(), 3);
        // Two Adam steps by hand, on the gradient clipped (or not) by the test.
        let replay = |clip: bool| {
            let mut m = Model::new(&cfg, None).unwrap();
            let mut p1 = Phase1::new(&m, &ids, None);
            for _ in 0..2 {
                p1.accumulate(&m, &ids);
                let norm = l2(&p1.grad);
                assert!(norm > 100.0 * cfg.phase1_gradient_clip);
                if clip {
                    let k = (cfg.phase1_gradient_clip / (norm + 1e-6)) as f32;
                    p1.grad.iter_mut().for_each(|g| *g *= k);
                }
                p1.adam.step(&mut m.context.params.data, &p1.grad);
                std::mem::swap(&mut p1.prev, &mut p1.out);
            }
            (m.context.params.data, p1.prev)
        };
        let (clipped, prev) = replay(true);
        assert_eq!(model.context.params.data, clipped);
        assert_eq!(out.prev, prev);
        // Adam's second step sees the two gradients' relative scale, so an
        // unclipped run ends elsewhere.
        let (unclipped, _) = replay(false);
        let diff = clipped
            .iter()
            .zip(&unclipped)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff > 1e-5, "clipping made no difference: {diff}");
    }

    #[test]
    fn context_noise_has_the_configured_standard_deviation() {
        let s = 0.37;
        let (n, c) = (600, 8);
        let cfg = Config {
            phase1_context_noise: s,
            phase1_batch_size: n,
            ..tiny()
        };
        let ids = stream(n);
        let model = Model::new(&cfg, None).unwrap();
        let mut p1 = Phase1::new(&model, &ids, None);
        let prev = p1.prev.clone();
        p1.accumulate(&model, &ids);
        // one batch: ctx_in holds every row's noisy input context
        let mut noise = Vec::with_capacity(n * c);
        for j in 0..n {
            let src = (j + n - 1) % n;
            for i in 0..c {
                noise.push(p1.ctx_in[j * c + i] as f64 - prev[src * c + i] as f64);
            }
        }
        let count = noise.len() as f64;
        let mean = noise.iter().sum::<f64>() / count;
        let std = (noise.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / count).sqrt();
        // standard errors: s / sqrt(4800) for the mean, about 1% for the std
        assert!(mean.abs() < 4.0 * s / count.sqrt(), "noise mean {mean}");
        assert!((std / s - 1.0).abs() < 0.04, "noise std {std}, wanted {s}");
        // the forward saw the noisy contexts: out = ContextBlock(ctx_in, x)
        let mut x = vec![0.0; n * cfg.token_input_dim()];
        model.token_input(&ids, 0, n, &mut x);
        let mut acts = BlockActs::new(&model.context, n);
        model.context_forward(&p1.ctx_in, &x, n, &mut acts);
        assert_eq!(&acts.last()[..n * c], &p1.out[..]);
        // a second pass draws fresh noise
        let first = p1.ctx_in.clone();
        p1.accumulate(&model, &ids);
        assert_ne!(first, p1.ctx_in);
    }

    #[test]
    fn without_noise_the_input_contexts_are_prev_shifted_with_wrap_around() {
        let n = 200;
        let cfg = Config {
            phase1_context_noise: 0.0,
            phase1_batch_size: n,
            ..tiny()
        };
        let ids = stream(n);
        let model = Model::new(&cfg, None).unwrap();
        let mut p1 = Phase1::new(&model, &ids, None);
        p1.accumulate(&model, &ids);
        let c = cfg.context_dim;
        assert_eq!(&p1.ctx_in[..c], &p1.prev[(n - 1) * c..]);
        assert_eq!(&p1.ctx_in[c..n * c], &p1.prev[..(n - 1) * c]);
    }
}
