//! Golden tests: our f32 implementation against the original PyTorch
//! implementation's float64 reference numbers (../shared/golden/README.md),
//! within the float32 tolerances recommended there.

use newllm::cache::{context_inputs, sequential_pass, train_cache};
use newllm::config::{Config, Phase1Init, TrainCache};
use newllm::metrics::effective_rank;
use newllm::model::{BlockActs, Model};
use newllm::phase1::{self, Phase1};
use newllm::phase2::{self, Phase2, Stream};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::path::PathBuf;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/golden")
}

struct Case {
    bytes: Vec<u8>,
    meta: Value,
}

impl Case {
    fn load(name: &str) -> Case {
        let dir = golden_dir();
        let bytes = std::fs::read(dir.join(format!("{name}.safetensors")))
            .unwrap_or_else(|e| panic!("golden data missing at {}: {e}", dir.display()));
        let meta =
            serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap())
                .unwrap();
        Case { bytes, meta }
    }
    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }
    fn f64s(&self, name: &str) -> Vec<f64> {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("missing {name}"));
        assert_eq!(t.dtype(), Dtype::F64);
        t.data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
    fn f32s(&self, name: &str) -> Vec<f32> {
        self.f64s(name).iter().map(|&v| v as f32).collect()
    }
    fn ids(&self, name: &str) -> Vec<u32> {
        let st = self.st();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::I64);
        t.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
            .collect()
    }
    fn names(&self, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .st()
            .names()
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect();
        v.sort();
        v
    }
    fn num(&self, path: &[&str]) -> f64 {
        let mut v = &self.meta;
        for p in path {
            v = &v[*p];
        }
        v.as_f64()
            .unwrap_or_else(|| panic!("no number at {path:?}"))
    }
    fn config(&self) -> Config {
        let c = &self.meta["config"];
        let u = |k: &str| c[k].as_u64().unwrap() as usize;
        let f = |k: &str| c[k].as_f64().unwrap();
        Config {
            vocab_size: u("vocab_size"),
            embed_dim: u("embed_dim"),
            context_dim: u("context_dim"),
            num_layers: u("num_layers"),
            num_input_tokens: u("num_input_tokens"),
            token_input_all_layers: c["token_input_all_layers"].as_bool().unwrap(),
            use_weight_tying: c["use_weight_tying"].as_bool().unwrap(),
            dist_reg_weight: f("dist_reg_weight"),
            phase1_min_iterations: u("phase1_min_iterations"),
            phase1_max_iterations: u("phase1_max_iterations"),
            phase1_convergence_threshold: f("phase1_convergence_threshold"),
            phase1_min_converged_ratio: f("phase1_min_converged_ratio"),
            phase1_context_noise: f("phase1_context_noise"),
            phase1_learning_rate: f("phase1_learning_rate"),
            phase1_batch_size: u("phase1_batch_size"),
            phase1_gradient_clip: f("phase1_gradient_clip"),
            phase2_learning_rate: f("phase2_learning_rate"),
            phase2_epochs: u("phase2_epochs"),
            phase2_patience: u("phase2_patience"),
            phase2_batch_size: u("phase2_batch_size"),
            phase2_gradient_clip: f("phase2_gradient_clip"),
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
        }
    }
}

/// max|a - g| / max|g| (the README's metric).
fn rel(a: &[f32], g: &[f64]) -> f64 {
    assert_eq!(a.len(), g.len(), "length mismatch");
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

fn scalar(a: f64, g: f64, tol: f64, what: &str) {
    let r = (a - g).abs() / g.abs();
    assert!(r < tol, "{what}: ours {a} golden {g} rel {r:e} > {tol:e}");
}

fn tensor(a: &[f32], g: &[f64], tol: f64, what: &str) {
    let r = rel(a, g);
    assert!(r < tol, "{what}: rel {r:e} > {tol:e}");
}

/// Parameters of `ps` named `prefix + name` in the golden file.
fn check_params(case: &Case, ps: &newllm::model::ParamSet, data: &[f32], prefix: &str, tol: f64) {
    let names = case.names(prefix);
    assert!(!names.is_empty(), "no tensors under {prefix}");
    for full in names {
        let name = full.strip_prefix(prefix).unwrap();
        let t = ps
            .find(name)
            .unwrap_or_else(|| panic!("we have no parameter {name}"));
        tensor(
            &data[t.offset..t.offset + t.len],
            &case.f64s(&full),
            tol,
            &full,
        );
    }
}

/// Quantities computed after one or more Adam steps get 3x the README's
/// recommended f32 tolerance, as the README advises for a float32
/// implementation with another summation order ("loosen the post-step
/// quantities first"). Pre-step quantities keep the recommended values.
const POST: f64 = 3.0;

fn run_case(name: &str) {
    let case = Case::load(name);
    let cfg = case.config();
    let mut model = Model::new(&cfg, None).unwrap();
    for full in case.names("init.") {
        model
            .set_param(full.strip_prefix("init.").unwrap(), &case.f32s(&full))
            .unwrap();
    }
    let pc = &case.meta["model"]["param_counts"];
    let counts = model.param_counts();
    assert_eq!(counts[0] as u64, pc["context_block"].as_u64().unwrap());
    assert_eq!(counts[1] as u64, pc["token_block"].as_u64().unwrap());
    assert_eq!(counts[2] as u64, pc["token_output"].as_u64().unwrap());
    let train = case.ids("data.train_ids");
    let val = case.ids("data.val_ids");
    let (n, m, c) = (train.len(), val.len(), cfg.context_dim);

    // token inputs: embedding, embed_norm, k-concatenation
    let mut x8 = vec![0.0; 8 * cfg.token_input_dim()];
    model.token_input(&val, 0, 8, &mut x8);
    tensor(
        &x8,
        &case.f64s("cache.val.token_input_first8"),
        3e-7,
        "token_input_first8",
    );

    // ---- Phase 1, iteration 1 and the first training iteration (no step)
    let given = (cfg.phase1_init == Phase1Init::Random).then(|| case.f32s("phase1.contexts_iter1"));
    let mut p1 = Phase1::new(&model, &train, given.clone());
    if given.is_none() {
        tensor(
            &p1.prev,
            &case.f64s("phase1.contexts_iter1"),
            6e-5,
            "contexts_iter1",
        );
    }
    let st = p1.accumulate(&model, &train);
    tensor(
        &p1.out[..32 * c],
        &case.f64s("phase1.contexts_iter2_first32"),
        6e-6,
        "contexts_iter2_first32",
    );
    let ps = model.context.params.clone();
    check_params(&case, &ps, &p1.grad, "phase1.first_step_grad.", 2e-4);
    let norm = p1
        .grad
        .iter()
        .map(|&g| (g as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    scalar(
        norm,
        case.num(&["phase1", "first_step_grad_norm"]),
        4e-7,
        "first_step_grad_norm",
    );
    let it2 = &case.meta["phase1"]["per_iteration"][1];
    scalar(
        st.cvfp_loss,
        it2["cvfp_loss"].as_f64().unwrap(),
        2e-6,
        "iter2 cvfp",
    );
    assert_eq!(
        st.converged_tokens as u64,
        it2["converged_tokens"].as_u64().unwrap()
    );

    // ---- Phase 1, whole run
    let out = phase1::run(&mut model, &train, given, &mut |_| {}).unwrap();
    let golden_iters = case.meta["phase1"]["per_iteration"].as_array().unwrap();
    assert_eq!(out.log.len(), golden_iters.len(), "Phase-1 iteration count");
    assert_eq!(
        out.converged,
        case.meta["phase1"]["stopped_by_convergence"]
            .as_bool()
            .unwrap()
    );
    let w = cfg.dist_reg_weight;
    for (ours, g) in out.log.iter().zip(golden_iters).skip(1) {
        let it = ours.iteration;
        let post = if it == 2 { 1.0 } else { POST };
        let (gc, gd, gt) = (
            g["cvfp_loss"].as_f64().unwrap(),
            g["diversity_loss"].as_f64().unwrap(),
            g["total_loss"].as_f64().unwrap(),
        );
        scalar(ours.cvfp_loss, gc, 2e-6 * post, &format!("iter {it} cvfp"));
        scalar(
            ours.diversity_loss,
            gd,
            4e-7 * post,
            &format!("iter {it} div"),
        );
        let comp = (1.0 - w) * gc.abs() + w * gd.abs();
        assert!(
            (ours.total_loss - gt).abs() / comp < 4e-7 * post,
            "iter {it} total {} vs {gt}",
            ours.total_loss
        );
        // The gradient norm after Adam steps is the most sensitive figure
        // (Adam's ~lr*sign(g) moves turn f32 noise in tiny gradient
        // components into parameter differences): ours lands at <= 6e-6.
        let norm_tol = if it == 2 { 1e-6 } else { 1e-5 };
        scalar(
            ours.grad_norm_before_clip,
            g["grad_norm_before_clip"].as_f64().unwrap(),
            norm_tol,
            &format!("iter {it} grad norm"),
        );
        assert_eq!(
            ours.converged_tokens as u64,
            g["converged_tokens"].as_u64().unwrap(),
            "iter {it} converged tokens"
        );
        assert_eq!(
            ours.convergence_rate,
            ours.converged_tokens as f64 / n as f64
        );
    }
    check_params(
        &case,
        &model.context.params,
        &model.context.params.data,
        "phase1.final.",
        5e-4 * POST,
    );
    tensor(
        &out.prev,
        &case.f64s("phase1.contexts_final"),
        6e-5 * POST,
        "contexts_final",
    );

    // ---- Effective Rank
    let (er_t, sv_t, rows_t) = effective_rank(&out.prev, c, 0, 42).unwrap();
    assert_eq!(rows_t, n);
    scalar(
        er_t,
        case.num(&["metrics", "train_effective_rank"]),
        2e-6 * POST,
        "train ER",
    );
    let svf: Vec<f32> = sv_t.iter().map(|&v| v as f32).collect();
    tensor(
        &svf,
        &case.f64s("metrics.train_singular_values"),
        3e-6 * POST,
        "train singular values",
    );

    // ---- caches: recompute every layer from the stored sources
    let train_src = train_cache(&model, &train, &out.prev, cfg.train_cache);
    let val_src = sequential_pass(&model, &val, m - 1);
    let (er_v, sv_v, rows_v) = effective_rank(&val_src, c, 0, 42).unwrap();
    assert_eq!(rows_v, m - 1);
    scalar(
        er_v,
        case.num(&["metrics", "val_effective_rank"]),
        9e-7 * POST,
        "val ER",
    );
    let svf: Vec<f32> = sv_v.iter().map(|&v| v as f32).collect();
    tensor(
        &svf,
        &case.f64s("metrics.val_singular_values"),
        3e-6 * POST,
        "val singular values",
    );
    for (ids, src, tag, tol) in [
        (&train, &train_src, "train", 7e-5 * POST),
        (&val, &val_src, "val", 3e-5 * POST),
    ] {
        let rows = ids.len() - 1;
        let mut acts = BlockActs::new(&model.context, rows);
        let mut ctx = vec![0.0; rows * c];
        let mut x = vec![0.0; rows * cfg.token_input_dim()];
        context_inputs(src, c, 0, rows, &mut ctx);
        model.token_input(ids, 0, rows, &mut x);
        model.context_forward(&ctx, &x, rows, &mut acts);
        for (i, la) in acts.layers.iter().enumerate() {
            tensor(
                &la.y,
                &case.f64s(&format!("cache.{tag}.layer{i}")),
                tol,
                &format!("cache.{tag}.layer{i}"),
            );
        }
    }

    // ---- Phase 2: first two batches, then the rest of epoch 1
    let v = cfg.vocab_size;
    let init_token = model.token.params.data.clone();
    let ts = Stream {
        ids: &train,
        src: &train_src,
    };
    let vs = Stream {
        ids: &val,
        src: &val_src,
    };
    let bs = cfg.phase2_batch_size;
    let mut p2 = Phase2::new(&model);
    let slice = |p2: &Phase2| -> Vec<f32> {
        (0..4)
            .flat_map(|r| p2.logits[r * v..r * v + 50].to_vec())
            .collect()
    };
    p2.forward(&model, &ts, 0, bs);
    assert!(
        slice(&p2).iter().all(|&x| x == 0.0),
        "first-batch logits must be exactly 0"
    );
    let loss1 = p2.backward(&model, &ts, 0, bs);
    scalar(
        loss1,
        case.num(&["phase2", "first_batch_loss"]),
        8e-7 * POST,
        "first_batch_loss",
    );
    let tp = model.token.params.clone();
    check_params(
        &case,
        &tp,
        &p2.grad,
        "phase2.first_batch_grad.",
        4e-6 * POST,
    );
    let norm1 = p2.step(&mut model);
    scalar(
        norm1,
        case.num(&["phase2", "first_batch_grad_norm"]),
        9e-6 * POST,
        "first_batch_grad_norm",
    );
    p2.forward(&model, &ts, bs, bs);
    tensor(
        &slice(&p2),
        &case.f64s("phase2.second_batch_logits_slice"),
        2e-5 * POST,
        "second_batch_logits_slice",
    );
    let loss2 = p2.backward(&model, &ts, bs, bs);
    scalar(
        loss2,
        case.num(&["phase2", "second_batch_loss"]),
        2e-7 * POST,
        "second_batch_loss",
    );
    check_params(
        &case,
        &tp,
        &p2.grad,
        "phase2.second_batch_grad.",
        2e-5 * POST,
    );
    let norm2 = p2.step(&mut model);
    scalar(
        norm2,
        case.num(&["phase2", "second_batch_grad_norm"]),
        2e-5 * POST,
        "second_batch_grad_norm",
    );
    let positions = ts.positions();
    for start in (2 * bs..positions).step_by(bs) {
        let rows = bs.min(positions - start);
        p2.forward(&model, &ts, start, rows);
        p2.backward(&model, &ts, start, rows);
        p2.step(&mut model);
    }
    check_params(
        &case,
        &tp,
        &model.token.params.data,
        "phase2.epoch1.",
        3e-4 * POST,
    );

    // ---- Phase 2 whole run from the initial TokenBlock
    model.token.params.data.copy_from_slice(&init_token);
    let res = phase2::run(&mut model, &ts, &vs, &mut |_| {}).unwrap();
    let gepochs = case.meta["phase2"]["epochs"].as_array().unwrap();
    assert_eq!(res.epochs.len(), gepochs.len(), "epochs run");
    let correct = case.meta["phase2"]["val_correct"].as_array().unwrap();
    for ((e, g), gc) in res.epochs.iter().zip(gepochs).zip(correct) {
        scalar(
            e.train_loss,
            g["train_loss"].as_f64().unwrap(),
            4e-7 * POST,
            &format!("epoch {} train_loss", e.epoch),
        );
        scalar(
            e.val_loss,
            g["val_loss"].as_f64().unwrap(),
            4e-7 * POST,
            &format!("epoch {} val_loss", e.epoch),
        );
        scalar(
            e.train_ppl,
            g["train_ppl"].as_f64().unwrap(),
            3e-6 * POST,
            "train_ppl",
        );
        scalar(
            e.val_ppl,
            g["val_ppl"].as_f64().unwrap(),
            3e-6 * POST,
            "val_ppl",
        );
        assert_eq!(
            (e.val_acc * vs.positions() as f64).round() as u64,
            gc.as_u64().unwrap(),
            "epoch {} val_correct",
            e.epoch
        );
    }
    assert_eq!(
        res.best_epoch as u64,
        case.meta["phase2"]["best_epoch"].as_u64().unwrap()
    );
    assert_eq!(
        res.early_stopped,
        case.meta["phase2"]["early_stopped"].as_bool().unwrap()
    );
    assert_eq!(
        res.stop_epoch as u64,
        case.meta["phase2"]["epochs_run"].as_u64().unwrap()
    );
}

#[test]
fn golden_false_k1_seq() {
    run_case("false_k1_seq");
}

#[test]
fn golden_true_k1_seq() {
    run_case("true_k1_seq");
}

#[test]
fn golden_false_k2_rand_shift() {
    run_case("false_k2_rand_shift");
}

#[test]
fn golden_true_k1_rand_shift() {
    run_case("true_k1_rand_shift");
}
