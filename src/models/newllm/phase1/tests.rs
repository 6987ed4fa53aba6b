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
    fn report(&mut self, log: &[Phase1Iteration], on_iteration: &mut OnIteration) -> Result<()> {
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
    model.context_forward(None, &p1.ctx_in, &x, n, &mut acts);
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

/// A run resumed from the snapshot after iteration k (as a cell's state
/// holds it) ends exactly where the uninterrupted run ends: weights,
/// contexts, Adam, the noise stream and the log (timings aside).
#[test]
fn a_run_resumed_from_any_iteration_ends_like_the_uninterrupted_one() {
    let cfg = Config {
        phase1_max_iterations: 5,
        phase1_context_noise: 0.1,
        ..tiny()
    };
    let ids = stream(200);
    let mut snapshots = Vec::new();
    let mut model = Model::new(&cfg, None).unwrap();
    let full = run(&mut model, &ids, None, None, &mut |log, s| {
        let s = s.expect("the CPU gives a snapshot");
        snapshots.push((
            log.to_vec(),
            s.context_params.to_vec(),
            s.adam.clone(),
            s.prev.to_vec(),
            s.noise.clone(),
        ));
        Ok(())
    })
    .unwrap();
    assert_eq!(
        snapshots.len(),
        5,
        "one report per iteration, the init included"
    );
    let untimed = |log: &[Phase1Iteration]| -> Vec<Phase1Iteration> {
        log.iter()
            .map(|it| Phase1Iteration {
                seconds: 0.0,
                ..it.clone()
            })
            .collect()
    };
    for (log, params, adam, prev, noise) in snapshots {
        let k = log.len();
        let mut m = Model::new(&cfg, None).unwrap();
        m.context.params.data = params;
        let resume = Phase1Resume {
            log,
            adam,
            prev,
            noise,
        };
        let mut seen = Vec::new();
        let out = run(&mut m, &ids, None, Some(resume), &mut |log, _| {
            seen.push(log.len());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, (k + 1..=5).collect::<Vec<_>>(), "from iteration {k}");
        assert_eq!(m.context.params.data, model.context.params.data, "from {k}");
        assert_eq!(out.prev, full.prev, "from iteration {k}");
        assert_eq!(untimed(&out.log), untimed(&full.log), "from iteration {k}");
        assert_eq!(out.converged, full.converged);
    }
}

#[test]
fn a_resumed_log_that_already_ended_runs_nothing() {
    let cfg = loop_cfg(2, 6, 0.95);
    let entry = |iteration, rate| Phase1Iteration {
        iteration,
        convergence_rate: rate,
        ..Default::default()
    };
    // converged at iteration 3
    let done = vec![entry(1, 0.0), entry(2, 0.5), entry(3, 0.96)];
    assert_eq!(finished(&cfg, &done), Some(true));
    // at the maximum without converging
    let out: Vec<_> = (1..=6).map(|t| entry(t, 0.1)).collect();
    assert_eq!(finished(&cfg, &out), Some(false));
    // not yet: iteration 1 never counts as converged
    assert_eq!(finished(&cfg, &[entry(1, 1.0)]), None);
    for (log, want) in [(done, true), (out, false)] {
        let mut s = Script::new(&[0]);
        let (back, converged) =
            iterate(&cfg, 10, Some(log.clone()), 0.0, &mut s, &mut |_, _| Ok(())).unwrap();
        assert!(s.calls.is_empty(), "no step after a finished log");
        assert_eq!((back, converged), (log, want));
    }
}
