//! `newllm golden`: the checks of tests/golden.rs (our f32 pipeline against
//! the original's float64 reference data, tests/golden/README.md) as a command
//! that reports pass/fail per quantity instead of asserting, and runs on any
//! device through `GoldenHooks`. It exists so a machine with only the release binary (the GPU
//! machine has no Rust toolchain) can check GPU-vs-reference parity; the
//! tolerances are the ones tests/golden.rs uses.

use super::golden_hooks::{CpuHooks, GoldenHooks};
use super::metrics::effective_rank;
use super::model::{Model, ParamSet};
use super::phase2::Stream;
use crate::config::{Config, Device, Phase1Init, TrainCache};
use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::path::Path;

/// The golden cases shipped in tests/golden.
pub const CASES: [&str; 4] = [
    "false_k1_seq",
    "true_k1_seq",
    "false_k2_rand_shift",
    "true_k1_rand_shift",
];

/// Quantities computed after one or more Adam steps get 3x the README's
/// recommended f32 tolerance, as the README advises for a float32
/// implementation with another summation order ("loosen the post-step
/// quantities first"). Pre-step quantities keep the recommended values.
/// Measured worst case after the steps: 2x the recommended value (the
/// Phase-1 gradient norm after 4 steps: 6e-6 against 1e-6, hence 1e-5 there).
const POST: f64 = 3.0;

/// One compared quantity: `error` is the relative error (tensors: max|a-g| /
/// max|g|; scalars: |a-g| / |g|), or the absolute difference for exact counts.
#[derive(Clone, Debug)]
pub struct Check {
    pub case: String,
    pub quantity: String,
    pub error: f64,
    pub tolerance: f64,
    pub pass: bool,
}

struct Case {
    bytes: Vec<u8>,
    meta: Value,
}

impl Case {
    fn load(dir: &Path, name: &str) -> Result<Case> {
        let st = dir.join(format!("{name}.safetensors.gz"));
        let js = dir.join(format!("{name}.json"));
        let gz = std::fs::read(&st)
            .with_context(|| format!("golden data missing: cannot read {}", st.display()))?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut bytes)
            .with_context(|| format!("{} is not a gzip file", st.display()))?;
        let text = std::fs::read(&js)
            .with_context(|| format!("golden data missing: cannot read {}", js.display()))?;
        let meta = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not valid JSON", js.display()))?;
        Ok(Case { bytes, meta })
    }
    fn st(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.bytes).context("golden safetensors file is invalid")
    }
    fn raw(&self, name: &str, dtype: Dtype) -> Result<Vec<[u8; 8]>> {
        let st = self.st()?;
        let t = st
            .tensor(name)
            .with_context(|| format!("golden tensor {name} missing"))?;
        if t.dtype() != dtype {
            bail!(
                "golden tensor {name} is {:?}, expected {dtype:?}",
                t.dtype()
            );
        }
        Ok(t.data()
            .chunks_exact(8)
            .map(|b| [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
            .collect())
    }
    fn f64s(&self, name: &str) -> Result<Vec<f64>> {
        Ok(self
            .raw(name, Dtype::F64)?
            .into_iter()
            .map(f64::from_le_bytes)
            .collect())
    }
    fn f32s(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self.f64s(name)?.iter().map(|&v| v as f32).collect())
    }
    fn ids(&self, name: &str) -> Result<Vec<u32>> {
        Ok(self
            .raw(name, Dtype::I64)?
            .into_iter()
            .map(|b| i64::from_le_bytes(b) as u32)
            .collect())
    }
    fn names(&self, prefix: &str) -> Result<Vec<String>> {
        let mut v: Vec<String> = self
            .st()?
            .names()
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect();
        v.sort();
        Ok(v)
    }
    fn value(&self, path: &[&str]) -> &Value {
        let mut v = &self.meta;
        for p in path {
            v = &v[*p];
        }
        v
    }
    fn num(&self, path: &[&str]) -> Result<f64> {
        self.value(path)
            .as_f64()
            .with_context(|| format!("golden metadata has no number at {path:?}"))
    }
    fn config(&self) -> Result<Config> {
        let c = &self.meta["config"];
        let u = |k: &str| {
            c[k].as_u64()
                .map(|v| v as usize)
                .with_context(|| format!("golden config {k} missing"))
        };
        let f = |k: &str| {
            c[k].as_f64()
                .with_context(|| format!("golden config {k} missing"))
        };
        let b = |k: &str| {
            c[k].as_bool()
                .with_context(|| format!("golden config {k} missing"))
        };
        Ok(Config {
            vocab_size: u("vocab_size")?,
            embed_dim: u("embed_dim")?,
            context_dim: u("context_dim")?,
            num_layers: u("num_layers")?,
            num_input_tokens: u("num_input_tokens")?,
            token_input_all_layers: b("token_input_all_layers")?,
            use_weight_tying: b("use_weight_tying")?,
            dist_reg_weight: f("dist_reg_weight")?,
            phase1_min_iterations: u("phase1_min_iterations")?,
            phase1_max_iterations: u("phase1_max_iterations")?,
            phase1_convergence_threshold: f("phase1_convergence_threshold")?,
            phase1_min_converged_ratio: f("phase1_min_converged_ratio")?,
            phase1_context_noise: f("phase1_context_noise")?,
            phase1_learning_rate: f("phase1_learning_rate")?,
            phase1_batch_size: u("phase1_batch_size")?,
            phase1_gradient_clip: f("phase1_gradient_clip")?,
            phase2_learning_rate: f("phase2_learning_rate")?,
            phase2_epochs: u("phase2_epochs")?,
            phase2_patience: u("phase2_patience")?,
            phase2_batch_size: u("phase2_batch_size")?,
            phase2_gradient_clip: f("phase2_gradient_clip")?,
            phase1_init: if c["phase1_init"] == "random" {
                Phase1Init::Random
            } else {
                Phase1Init::Sequential
            },
            train_cache: if c["train_cache"] == "shifted" {
                TrainCache::Shifted
            } else {
                TrainCache::Sequential
            },
            effective_rank_max_rows: 0,
            seed: 42,
            ..Config::default()
        })
    }
}

/// max|a - g| / max|g| (the golden README's metric); infinite on a length mismatch.
fn rel(a: &[f32], g: &[f64]) -> f64 {
    if a.len() != g.len() {
        return f64::INFINITY;
    }
    let scale = g.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let d = a
        .iter()
        .zip(g)
        .fold(0.0f64, |m, (x, y)| m.max((*x as f64 - y).abs()));
    if scale > 0.0 {
        d / scale
    } else {
        d
    }
}

struct Recorder {
    case: String,
    checks: Vec<Check>,
}

impl Recorder {
    fn push(&mut self, quantity: String, error: f64, tolerance: f64, pass: bool) {
        self.checks.push(Check {
            case: self.case.clone(),
            quantity,
            error,
            tolerance,
            pass,
        });
    }
    /// NaN errors fail (the comparison is written so NaN is not < tol).
    fn scalar(&mut self, what: &str, ours: f64, golden: f64, tol: f64) {
        let r = (ours - golden).abs() / golden.abs();
        self.push(what.to_string(), r, tol, r < tol);
    }
    fn tensor(&mut self, what: &str, ours: &[f32], golden: &[f64], tol: f64) {
        let r = rel(ours, golden);
        self.push(what.to_string(), r, tol, r < tol);
    }
    fn exact(&mut self, what: &str, ours: f64, golden: f64) {
        let d = (ours - golden).abs();
        self.push(what.to_string(), d, 0.0, ours == golden);
    }
    /// Every golden tensor under `prefix` against the same-named part of `data`.
    fn params(
        &mut self,
        case: &Case,
        ps: &ParamSet,
        data: &[f32],
        prefix: &str,
        tol: f64,
    ) -> Result<()> {
        let names = case.names(prefix)?;
        if names.is_empty() {
            bail!("golden data has no tensors under {prefix}");
        }
        for full in names {
            let name = full.strip_prefix(prefix).unwrap_or(&full);
            let t = ps
                .find(name)
                .with_context(|| format!("the model has no parameter {name}"))?;
            let ours = data.get(t.offset..t.offset + t.len).unwrap_or(&[]);
            self.tensor(&full, ours, &case.f64s(&full)?, tol);
        }
        Ok(())
    }
}

/// Runs one golden case through the hooks `make_hooks` builds for the
/// case's config and returns every comparison made.
pub fn run_case(
    dir: &Path,
    name: &str,
    make_hooks: &dyn Fn(&Config) -> Result<Box<dyn GoldenHooks>>,
) -> Result<Vec<Check>> {
    let case = Case::load(dir, name)?;
    let cfg = case.config()?;
    let mut eng = make_hooks(&cfg)?;
    let mut rec = Recorder {
        case: name.to_string(),
        checks: Vec::new(),
    };
    let mut model = Model::new(&cfg, None)?;
    for full in case.names("init.")? {
        let short = full.strip_prefix("init.").unwrap_or(&full);
        model.set_param(short, &case.f32s(&full)?)?;
    }
    let counts = model.param_counts();
    for (i, key) in ["context_block", "token_block", "token_output"]
        .iter()
        .enumerate()
    {
        let g = case.num(&["model", "param_counts", key])?;
        rec.exact(&format!("param_count.{key}"), counts[i] as f64, g);
    }
    let train = case.ids("data.train_ids")?;
    let val = case.ids("data.val_ids")?;
    let (n, m, c) = (train.len(), val.len(), cfg.context_dim);
    if n < 33 || m < 9 {
        bail!("golden case {name} is too small ({n} train, {m} val tokens)");
    }

    let mut x8 = vec![0.0; 8 * cfg.token_input_dim()];
    model.token_input(&val, 0, 8, &mut x8);
    rec.tensor(
        "token_input_first8",
        &x8,
        &case.f64s("cache.val.token_input_first8")?,
        3e-7,
    );

    // ---- Phase 1: iteration 1 and the first accumulation (no step)
    let given = if cfg.phase1_init == Phase1Init::Random {
        Some(case.f32s("phase1.contexts_iter1")?)
    } else {
        None
    };
    let first = eng.phase1_first(&model, &train, given.clone())?;
    if given.is_none() {
        rec.tensor(
            "contexts_iter1",
            &first.prev,
            &case.f64s("phase1.contexts_iter1")?,
            6e-5,
        );
    }
    rec.tensor(
        "contexts_iter2_first32",
        &first.out[..32 * c],
        &case.f64s("phase1.contexts_iter2_first32")?,
        6e-6,
    );
    let ps = model.context.params.clone();
    rec.params(&case, &ps, &first.grad, "phase1.first_step_grad.", 2e-4)?;
    let norm = first
        .grad
        .iter()
        .map(|&g| (g as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    rec.scalar(
        "first_step_grad_norm",
        norm,
        case.num(&["phase1", "first_step_grad_norm"])?,
        4e-7,
    );
    let it2 = case.value(&["phase1", "per_iteration"])[1].clone();
    rec.scalar(
        "iter2 cvfp",
        first.stats.cvfp_loss,
        it2["cvfp_loss"].as_f64().unwrap_or(f64::NAN),
        2e-6,
    );
    rec.exact(
        "iter2 converged tokens",
        first.stats.converged_tokens as f64,
        it2["converged_tokens"].as_f64().unwrap_or(f64::NAN),
    );

    // ---- Phase 1, whole run
    let out = eng
        .engine()
        .phase1_run(&mut model, &train, given, None, &mut |_, _| Ok(()))?;
    let golden_iters = case
        .value(&["phase1", "per_iteration"])
        .as_array()
        .cloned()
        .unwrap_or_default();
    rec.exact(
        "phase1 iterations",
        out.log.len() as f64,
        golden_iters.len() as f64,
    );
    let stopped = case.value(&["phase1", "stopped_by_convergence"]).as_bool();
    rec.exact(
        "phase1 converged",
        f64::from(u8::from(out.converged)),
        stopped.map_or(f64::NAN, |b| f64::from(u8::from(b))),
    );
    let w = cfg.dist_reg_weight;
    for (ours, g) in out.log.iter().zip(&golden_iters).skip(1) {
        let it = ours.iteration;
        let post = if it == 2 { 1.0 } else { POST };
        let num = |k: &str| g[k].as_f64().unwrap_or(f64::NAN);
        let (gc, gd, gt) = (num("cvfp_loss"), num("diversity_loss"), num("total_loss"));
        rec.scalar(&format!("iter {it} cvfp"), ours.cvfp_loss, gc, 2e-6 * post);
        rec.scalar(
            &format!("iter {it} div"),
            ours.diversity_loss,
            gd,
            4e-7 * post,
        );
        let comp = (1.0 - w) * gc.abs() + w * gd.abs();
        let r = (ours.total_loss - gt).abs() / comp;
        rec.push(format!("iter {it} total"), r, 4e-7 * post, r < 4e-7 * post);
        let norm_tol = if it == 2 { 1e-6 } else { 1e-5 };
        rec.scalar(
            &format!("iter {it} grad norm"),
            ours.grad_norm_before_clip,
            num("grad_norm_before_clip"),
            norm_tol,
        );
        rec.exact(
            &format!("iter {it} converged tokens"),
            ours.converged_tokens as f64,
            num("converged_tokens"),
        );
    }
    rec.params(
        &case,
        &model.context.params,
        &model.context.params.data,
        "phase1.final.",
        5e-4 * POST,
    )?;
    rec.tensor(
        "contexts_final",
        &out.prev,
        &case.f64s("phase1.contexts_final")?,
        6e-5 * POST,
    );

    // ---- Effective Rank (host; it consumes the engine's contexts)
    let (er_t, sv_t, _) = effective_rank(&out.prev, c, 0, 42)?;
    rec.scalar(
        "train ER",
        er_t,
        case.num(&["metrics", "train_effective_rank"])?,
        2e-6 * POST,
    );
    let svf: Vec<f32> = sv_t.iter().map(|&v| v as f32).collect();
    rec.tensor(
        "train singular values",
        &svf,
        &case.f64s("metrics.train_singular_values")?,
        3e-6 * POST,
    );

    // ---- caches
    let train_src = eng.engine().train_cache(&model, &train, &out.prev)?;
    let val_src = eng.engine().sequential_pass(&model, &val, m - 1)?;
    let (er_v, sv_v, _) = effective_rank(&val_src, c, 0, 42)?;
    rec.scalar(
        "val ER",
        er_v,
        case.num(&["metrics", "val_effective_rank"])?,
        9e-7 * POST,
    );
    let svf: Vec<f32> = sv_v.iter().map(|&v| v as f32).collect();
    rec.tensor(
        "val singular values",
        &svf,
        &case.f64s("metrics.val_singular_values")?,
        3e-6 * POST,
    );
    for (ids, src, tag, tol) in [
        (&train, &train_src, "train", 7e-5 * POST),
        (&val, &val_src, "val", 3e-5 * POST),
    ] {
        let layers = eng.context_layers(&model, ids, src, ids.len() - 1)?;
        for (i, y) in layers.iter().enumerate() {
            let key = format!("cache.{tag}.layer{i}");
            rec.tensor(&key, y, &case.f64s(&key)?, tol);
        }
    }

    // ---- Phase 2: first two batches, then the rest of epoch 1
    let init_token = model.token.params.data.clone();
    let ts = Stream {
        ids: &train,
        src: &train_src,
        bins: &[],
    };
    let vs = Stream {
        ids: &val,
        src: &val_src,
        bins: &[],
    };
    let bs = cfg.phase2_batch_size;
    let positions = ts.positions();
    if positions < 2 * bs {
        bail!("golden case {name}: fewer than two Phase-2 batches");
    }
    let tp = model.token.params.clone();
    eng.phase2_begin(&model)?;
    let b1 = eng.phase2_batch(&mut model, &ts, 0, bs)?;
    let zeros = b1.logits_slice.iter().all(|&x| x == 0.0);
    rec.push(
        "first-batch logits exactly 0".into(),
        f64::from(u8::from(!zeros)),
        0.0,
        zeros,
    );
    rec.scalar(
        "first_batch_loss",
        b1.loss,
        case.num(&["phase2", "first_batch_loss"])?,
        8e-7 * POST,
    );
    rec.params(
        &case,
        &tp,
        &b1.grad,
        "phase2.first_batch_grad.",
        4e-6 * POST,
    )?;
    rec.scalar(
        "first_batch_grad_norm",
        b1.grad_norm,
        case.num(&["phase2", "first_batch_grad_norm"])?,
        9e-6 * POST,
    );
    let b2 = eng.phase2_batch(&mut model, &ts, bs, bs)?;
    rec.tensor(
        "second_batch_logits_slice",
        &b2.logits_slice,
        &case.f64s("phase2.second_batch_logits_slice")?,
        2e-5 * POST,
    );
    rec.scalar(
        "second_batch_loss",
        b2.loss,
        case.num(&["phase2", "second_batch_loss"])?,
        2e-7 * POST,
    );
    rec.params(
        &case,
        &tp,
        &b2.grad,
        "phase2.second_batch_grad.",
        2e-5 * POST,
    )?;
    rec.scalar(
        "second_batch_grad_norm",
        b2.grad_norm,
        case.num(&["phase2", "second_batch_grad_norm"])?,
        2e-5 * POST,
    );
    for start in (2 * bs..positions).step_by(bs) {
        let rows = bs.min(positions - start);
        eng.phase2_batch(&mut model, &ts, start, rows)?;
    }
    rec.params(
        &case,
        &tp,
        &model.token.params.data,
        "phase2.epoch1.",
        3e-4 * POST,
    )?;

    // ---- Phase 2 whole run from the initial TokenBlock
    model.token.params.data.copy_from_slice(&init_token);
    let res = eng
        .engine()
        .phase2_run(&mut model, &ts, &vs, None, &mut |_, _| Ok(()))?;
    let gepochs = case
        .value(&["phase2", "epochs"])
        .as_array()
        .cloned()
        .unwrap_or_default();
    let correct = case
        .value(&["phase2", "val_correct"])
        .as_array()
        .cloned()
        .unwrap_or_default();
    rec.exact(
        "phase2 epochs run",
        res.progress.epochs.len() as f64,
        gepochs.len() as f64,
    );
    for ((e, g), gc) in res.progress.epochs.iter().zip(&gepochs).zip(&correct) {
        let num = |k: &str| g[k].as_f64().unwrap_or(f64::NAN);
        let ep = e.epoch;
        rec.scalar(
            &format!("epoch {ep} train_loss"),
            e.train_loss,
            num("train_loss"),
            4e-7 * POST,
        );
        rec.scalar(
            &format!("epoch {ep} val_loss"),
            e.val_loss,
            num("val_loss"),
            4e-7 * POST,
        );
        rec.scalar(
            &format!("epoch {ep} train_ppl"),
            e.train_ppl,
            num("train_ppl"),
            3e-6 * POST,
        );
        rec.scalar(
            &format!("epoch {ep} val_ppl"),
            e.val_ppl,
            num("val_ppl"),
            3e-6 * POST,
        );
        rec.exact(
            &format!("epoch {ep} val_correct"),
            (e.val_acc * vs.positions() as f64).round(),
            gc.as_f64().unwrap_or(f64::NAN),
        );
    }
    rec.exact(
        "phase2 best epoch",
        res.progress.best_epoch as f64,
        case.num(&["phase2", "best_epoch"])?,
    );
    let es = case.value(&["phase2", "early_stopped"]).as_bool();
    rec.exact(
        "phase2 early stopped",
        f64::from(u8::from(res.progress.early_stopped)),
        es.map_or(f64::NAN, |b| f64::from(u8::from(b))),
    );
    rec.exact(
        "phase2 stop epoch",
        res.progress.stop_epoch() as f64,
        case.num(&["phase2", "epochs_run"])?,
    );
    Ok(rec.checks)
}

/// Every case in `dir` on `device`.
pub fn run_all(dir: &Path, device: Device, cases: &[&str]) -> Result<Vec<Check>> {
    let make = move |cfg: &Config| {
        hooks_for(&Config {
            device,
            ..cfg.clone()
        })
    };
    let mut all = Vec::new();
    for name in cases {
        all.extend(run_case(dir, name, &make)?);
    }
    Ok(all)
}

/// One line per quantity, then a summary line.
pub fn table(checks: &[Check]) -> String {
    let mut s =
        String::from("| case | quantity | error | tolerance | result |\n|---|---|---|---|---|\n");
    for c in checks {
        s += &format!(
            "| {} | {} | {:.3e} | {:.1e} | {} |\n",
            c.case,
            c.quantity,
            c.error,
            c.tolerance,
            if c.pass { "pass" } else { "FAIL" }
        );
    }
    let failed = checks.iter().filter(|c| !c.pass).count();
    s += &format!(
        "\ngolden: {} checks, {} passed, {failed} failed\n",
        checks.len(),
        checks.len() - failed
    );
    s
}

/// The hooks for `cfg.device`, or a clear error when it cannot run here.
pub fn hooks_for(cfg: &Config) -> Result<Box<dyn GoldenHooks>> {
    match cfg.device {
        Device::Cpu => Ok(Box::<CpuHooks>::default()),
        Device::Cuda => cuda_hooks(cfg),
    }
}

#[cfg(feature = "cuda")]
fn cuda_hooks(cfg: &Config) -> Result<Box<dyn GoldenHooks>> {
    Ok(Box::new(super::gpu::golden::GpuHooks::new(cfg)?))
}

#[cfg(not(feature = "cuda"))]
fn cuda_hooks(_cfg: &Config) -> Result<Box<dyn GoldenHooks>> {
    Err(super::engine::no_cuda_feature())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_metric_and_nan_fail() {
        assert_eq!(rel(&[1.0, 2.0], &[1.0, 4.0]), 0.5);
        assert!(rel(&[1.0], &[1.0, 2.0]).is_infinite());
        let mut r = Recorder {
            case: "x".into(),
            checks: vec![],
        };
        r.scalar("nan", f64::NAN, 1.0, 1.0);
        r.exact("count", 3.0, 3.0);
        assert!(!r.checks[0].pass);
        assert!(r.checks[1].pass);
        assert!(table(&r.checks).contains("1 passed, 1 failed"));
    }
}
