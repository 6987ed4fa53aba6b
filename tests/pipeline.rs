//! End-to-end behaviour on tiny data: the leak guarantee, bad input, a
//! diverging run, and the sweep's resume / atomic-write / config-mismatch /
//! `--cell` + `report` contract.

mod common;

use common::{strip_timings, temp_dir};
use newllm::config::{Config, ValMode};
use newllm::data::Split;
use newllm::experiment::cell::run_cell;
use newllm::experiment::grid::report_dir;
use newllm::experiment::sweep::run_sweep;
use newllm::io::write_atomic;
use newllm::models::newllm::cache::{sequential_pass, train_cache};
use newllm::models::newllm::model::Model;
use newllm::models::newllm::phase1;
use newllm::models::newllm::phase2::{self, Stream};
use newllm::models::{check_split, CellPaths, ModelKind};
use std::path::Path;

/// A small text corpus: `n` samples of varied English-like sentences.
fn write_corpus(dir: &Path, n: usize) -> String {
    let words = [
        "the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "ran", "to", "see", "dog",
        "who", "was", "very", "happy",
    ];
    let mut text = String::new();
    for s in 0..n {
        for w in 0..(30 + 7 * (s % 5)) {
            text.push_str(words[(s * 7 + w * 3 + w / 4) % words.len()]);
            text.push(if w % 9 == 8 { '.' } else { ' ' });
        }
        text.push_str("\n<|endofsample|>\n");
    }
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// A config that trains in well under a second per cell.
fn tiny(corpus: String) -> Config {
    Config {
        embed_dim: 8,
        context_dim: 8,
        num_layers: 2,
        phase1_max_iterations: 3,
        phase1_batch_size: 64,
        phase2_batch_size: 32,
        phase2_epochs: 2,
        sample_counts: vec![4, 8],
        corpus,
        threads: 1,
        ..Config::default()
    }
}

/// Trains Phase 1 + Phase 2 (fixed epochs) with the given validation ids and
/// returns everything training produced.
fn train_with_val(val: &[u32]) -> (Vec<f32>, Vec<f32>, Vec<f64>) {
    let cfg = Config {
        vocab_size: 50,
        embed_dim: 6,
        context_dim: 6,
        num_layers: 2,
        phase1_max_iterations: 3,
        phase2_epochs: 2,
        phase2_patience: 0,
        phase2_batch_size: 16,
        ..Config::default()
    };
    let train: Vec<u32> = (0..120).map(|i| (i * 7 % 50) as u32).collect();
    let mut model = Model::new(&cfg, None).unwrap();
    let p1 = phase1::run(&mut model, &train, None, None, &mut |_, _| Ok(())).unwrap();
    let src = train_cache(&model, &train, &p1.prev, cfg.train_cache);
    let val_src = sequential_pass(&model, val, val.len() - 1);
    let ts = Stream {
        ids: &train,
        src: &src,
        bins: &[],
    };
    let vs = Stream {
        ids: val,
        src: &val_src,
        bins: &[],
    };
    let p2 = phase2::run(&mut model, &ts, &vs, None, &mut |_, _| Ok(())).unwrap();
    let train_losses = p2.progress.epochs.iter().map(|e| e.train_loss).collect();
    (
        model.context.params.data.clone(),
        model.token.params.data.clone(),
        train_losses,
    )
}

#[test]
fn no_validation_token_reaches_any_training_step() {
    // Two runs that differ only in their validation tokens must train
    // bit-identical weights with identical training losses.
    let val_a: Vec<u32> = (0..20).map(|i| (i * 3 % 50) as u32).collect();
    let val_b: Vec<u32> = (0..20).map(|i| (i * 11 % 50 + 1) as u32 % 50).collect();
    assert_ne!(val_a, val_b);
    let (ca, ta, la) = train_with_val(&val_a);
    let (cb, tb, lb) = train_with_val(&val_b);
    assert_eq!(ca, cb, "ContextBlock weights depend on validation data");
    assert_eq!(ta, tb, "TokenBlock weights depend on validation data");
    assert_eq!(la, lb);
}

#[test]
fn bad_weights_and_streams_are_clear_errors() {
    let cfg = Config {
        vocab_size: 50,
        embed_dim: 6,
        context_dim: 6,
        num_layers: 2,
        ..Config::default()
    };
    let mut m = Model::new(&cfg, None).unwrap();
    let err = m
        .set_param("context_block.layers.0.fnn.0.weight", &[0.0; 3])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("context_block.layers.0.fnn.0.weight") && err.contains("3 values given"),
        "{err}"
    );
    let mut bad = vec![0.0f32; 6];
    bad[2] = f32::NAN;
    let err = m
        .set_param("embed_norm.weight", &bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not finite") && err.contains("index 2"),
        "{err}"
    );
    let err = m
        .set_param("no.such.param", &[0.0])
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown parameter no.such.param"), "{err}");

    let split = |train: Vec<u32>, val: Vec<u32>| Split {
        samples: 1,
        train,
        val,
        sample_ends: vec![],
        val_sample_ends: vec![],
        source: "test".into(),
    };
    let err = check_split(&cfg, &split(vec![], vec![1, 2]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("training stream has 0 tokens"), "{err}");
    let err = check_split(&cfg, &split(vec![1, 2, 3], vec![1, 99]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("validation token 1 has id 99 >= vocab_size 50"),
        "{err}"
    );
    let k = Config {
        num_input_tokens: 5,
        ..cfg.clone()
    };
    // k is New-LLM's own constraint: its cell refuses before training.
    let paths = CellPaths::new(&std::env::temp_dir(), ModelKind::NewLlm, 1, 0);
    let err = newllm::models::run_cell(
        ModelKind::NewLlm,
        &k,
        0,
        &split(vec![1, 2, 3, 4, 5, 6], vec![1, 2, 3]),
        &paths,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("num_input_tokens = 5 is larger than the validation stream (3 tokens)"),
        "{err}"
    );
}

#[test]
fn a_diverging_run_names_stage_and_iteration_and_keeps_its_log() {
    let dir = temp_dir("diverge");
    let mut cfg = tiny(write_corpus(&dir, 6));
    cfg.phase1_learning_rate = 1e30;
    cfg.phase1_max_iterations = 6;
    let err = format!(
        "{:#}",
        run_cell(ModelKind::NewLlm, &cfg, 4, &dir, &dir.join("cache")).unwrap_err()
    );
    assert!(err.contains("Phase 1 diverged at iteration"), "{err}");
    assert!(err.contains("log so far"), "{err}");
    let log = std::fs::read_to_string(CellPaths::new(&dir, ModelKind::NewLlm, 4, 0).log).unwrap();
    assert!(log.lines().count() >= 2, "log kept: {log}");
    assert!(log.lines().all(|l| l.contains("\"stage\":\"phase1\"")));
}

#[test]
fn sweep_resumes_skips_finished_cells_and_refuses_other_configs() {
    let dir = temp_dir("sweep");
    let cache = dir.join("cache");
    let cfg = tiny(write_corpus(&dir, 10));
    let out = dir.join("out");
    let r = run_sweep(&cfg, &out, &cache, None)
        .unwrap()
        .expect("all cells done");
    assert_eq!(r.cells.len(), 2);
    assert_eq!(r.cells[0].samples, 4);
    assert!(r.cells[0].train_tokens < r.cells[1].train_tokens);
    for f in [
        "results.json",
        "report.md",
        "config.json",
        "cell-4.json",
        "cell-8.json",
        "cell-4.safetensors",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    // no temp files left behind by the atomic writes
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert!(results["cells"][1]["val_ppl"].as_f64().unwrap() > 1.0);
    assert_eq!(results["config"]["embed_dim"], 8);

    // Rerun: the finished cell is skipped (its checkpoint is not recreated),
    // and a state left by a kill between its result and the state's
    // removal is removed.
    std::fs::remove_file(out.join("cell-4.safetensors")).unwrap();
    std::fs::write(out.join("cell-4.state"), "left over").unwrap();
    let before = std::fs::read(out.join("cell-4.json")).unwrap();
    run_sweep(&cfg, &out, &cache, None).unwrap();
    assert!(
        !out.join("cell-4.safetensors").exists(),
        "finished cell was rerun"
    );
    assert!(!out.join("cell-4.state").exists());
    assert!(!out.join("cell-4.claim").exists());
    assert_eq!(before, std::fs::read(out.join("cell-4.json")).unwrap());

    // A different config refuses to mix into the same directory.
    let other = Config {
        dist_reg_weight: 0.5,
        ..cfg.clone()
    };
    let err = run_sweep(&other, &out, &cache, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("different config") && err.contains("dist_reg_weight"),
        "{err}"
    );
}

#[test]
fn separate_cell_runs_are_merged_by_report() {
    let dir = temp_dir("cells");
    let cache = dir.join("cache");
    let cfg = tiny(write_corpus(&dir, 10));
    let out = dir.join("out");
    // cell 1 first, as another machine might
    assert!(run_sweep(&cfg, &out, &cache, Some(1)).unwrap().is_none());
    assert!(out.join("cell-8.json").exists() && !out.join("cell-4.json").exists());
    let partial = report_dir(&out).unwrap().remove(0).1;
    assert_eq!(partial.cells.len(), 1);
    let full = run_sweep(&cfg, &out, &cache, Some(0))
        .unwrap()
        .expect("second cell completes the sweep");
    assert_eq!(
        full.cells.iter().map(|c| c.samples).collect::<Vec<_>>(),
        vec![4, 8]
    );
    let merged = report_dir(&out).unwrap().remove(0).1;
    assert_eq!(merged.cells, full.cells);
    assert!(merged.scaling.is_some());
    let err = run_sweep(&cfg, &out, &cache, Some(7))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--cell 7 is out of range"), "{err}");
}

#[test]
fn same_seed_and_threads_give_identical_results() {
    let dir = temp_dir("repro");
    let cfg = tiny(write_corpus(&dir, 6));
    let a = run_cell(
        ModelKind::NewLlm,
        &cfg,
        4,
        &dir.join("a"),
        &dir.join("cache"),
    )
    .unwrap();
    let b = run_cell(
        ModelKind::NewLlm,
        &cfg,
        4,
        &dir.join("b"),
        &dir.join("cache"),
    )
    .unwrap();
    assert_eq!(
        a.nl().phase1,
        b.nl()
            .phase1
            .iter()
            .zip(&a.nl().phase1)
            .map(|(x, y)| newllm::cell_result::Phase1Iteration {
                seconds: y.seconds,
                ..x.clone()
            })
            .collect::<Vec<_>>()
    );
    let strip = |r: &newllm::cell_result::CellResult| {
        r.epochs
            .iter()
            .map(|e| (e.train_loss, e.val_loss, e.val_acc))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&a), strip(&b));
    assert_eq!(
        std::fs::read(dir.join("a/cell-4.safetensors")).unwrap(),
        std::fs::read(dir.join("b/cell-4.safetensors")).unwrap()
    );
}

#[test]
fn bf16_runs_are_deterministic_close_to_f32_and_recorded() {
    use newllm::ops::Precision;
    let dir = temp_dir("bf16");
    let f32_cfg = Config {
        transformer_dim: 8,
        transformer_heads: 2,
        transformer_block_size: 16,
        ..tiny(write_corpus(&dir, 6))
    };
    let bf16_cfg = Config {
        precision: Precision::Bf16,
        ..f32_cfg.clone()
    };
    for model in [ModelKind::NewLlm, ModelKind::Transformer] {
        let run = |cfg: &Config, sub: &str| {
            run_cell(model, cfg, 4, &dir.join(sub), &dir.join("cache")).unwrap()
        };
        let name = model.name();
        let a = run(&bf16_cfg, &format!("{name}-a"));
        let b = run(&bf16_cfg, &format!("{name}-b"));
        let f = run(&f32_cfg, &format!("{name}-f32"));
        assert_eq!(a.val_loss, b.val_loss, "{name}: bf16 run not reproducible");
        assert_eq!(a.epochs.len(), b.epochs.len());
        for (x, y) in a.epochs.iter().zip(&b.epochs) {
            assert_eq!((x.train_loss, x.val_loss), (y.train_loss, y.val_loss));
        }
        assert_eq!(a.precision_ran, Precision::Bf16.describe());
        assert_eq!(f.precision_ran, "f32");
        assert_eq!(a.config.precision, Precision::Bf16);
        // bf16 rounds: a different run, but the same model to ~1%
        assert_ne!(a.val_loss, f.val_loss, "{name}: bf16 ran as f32");
        let rel = (a.val_loss - f.val_loss).abs() / f.val_loss;
        assert!(
            rel < 0.02,
            "{name}: bf16 val loss {} vs f32 {}",
            a.val_loss,
            f.val_loss
        );
    }
}

#[test]
fn atomic_write_replaces_whole_files() {
    let dir = temp_dir("atomic");
    let p = dir.join("x.json");
    write_atomic(&p, b"first").unwrap();
    write_atomic(&p, b"second").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"second");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}

#[test]
fn a_cell_that_cannot_fit_in_memory_refuses_up_front() {
    let dir = temp_dir("memory");
    // 2^36 rows of 50,257 logits cannot fit anywhere; nothing is allocated for them.
    let cfg = Config {
        phase2_batch_size: 1 << 36,
        ..tiny(write_corpus(&dir, 6))
    };
    let err = run_cell(ModelKind::NewLlm, &cfg, 4, &dir, &dir.join("cache"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("this cell needs about") && err.contains("GiB but only"),
        "{err}"
    );
    assert!(
        !CellPaths::new(&dir, ModelKind::NewLlm, 4, 0).log.exists(),
        "refused before Phase 1 started"
    );
    // A model too wide to build: 50,257 x 2^22 embedding floats (800 GiB).
    // Allocating it first would abort the test process; the refusal comes
    // from the config alone.
    let wide = Config {
        embed_dim: 1 << 22,
        context_dim: 1 << 22,
        ..tiny(write_corpus(&dir, 6))
    };
    let err = run_cell(ModelKind::NewLlm, &wide, 4, &dir, &dir.join("cache"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("this cell needs about"), "{err}");
}

#[test]
fn replicates_and_baselines_are_reproducible_and_distinct() {
    let dir = temp_dir("replicates");
    let cache = dir.join("cache");
    let cfg = Config {
        sample_counts: vec![8],
        baselines: vec![ModelKind::Kn, ModelKind::Transformer],
        replicates: 2,
        ..tiny(write_corpus(&dir, 10))
    };
    let a = run_sweep(&cfg, &dir.join("a"), &cache, None)
        .unwrap()
        .unwrap();
    run_sweep(&cfg, &dir.join("b"), &cache, None)
        .unwrap()
        .unwrap();
    let files = [
        "cell-8.json",
        "cell-8-r1.json",
        "kn-cell-8.json",
        "transformer-cell-8.json",
        "transformer-cell-8-r1.json",
    ];
    let read = |side: &str, f: &str| -> serde_json::Value {
        let mut v = serde_json::from_str(&std::fs::read_to_string(dir.join(side).join(f)).unwrap())
            .unwrap();
        strip_timings(&mut v);
        v
    };
    for f in files {
        assert_eq!(
            read("a", f),
            read("b", f),
            "{f} differs between identical runs"
        );
    }
    for f in ["cell-8-r1.safetensors", "transformer-cell-8-r1.safetensors"] {
        let same = std::fs::read(dir.join("a").join(f)).unwrap()
            == std::fs::read(dir.join("b").join(f)).unwrap();
        assert!(same, "{f} differs between identical runs");
    }
    assert!(
        !dir.join("a/kn-cell-8-r1.json").exists(),
        "the n-gram is deterministic: one run"
    );
    // Replicates use seed, seed + 1 and differ; the split does not.
    let (r0, r1) = (read("a", "cell-8.json"), read("a", "cell-8-r1.json"));
    assert_eq!(
        (r0["config"]["seed"].as_u64(), r1["config"]["seed"].as_u64()),
        (Some(42), Some(43))
    );
    assert_eq!(r0["train_tokens"], r1["train_tokens"]);
    assert_ne!(r0["val_ppl"], r1["val_ppl"]);
    let (t0, t1) = (
        read("a", "transformer-cell-8.json"),
        read("a", "transformer-cell-8-r1.json"),
    );
    assert_ne!(t0["val_ppl"], t1["val_ppl"]);
    // The analysis has one entry per model, each fitted over all its runs.
    let models: Vec<(&str, usize)> = a
        .models
        .iter()
        .map(|m| (m.model.name(), m.replicates))
        .collect();
    assert_eq!(models, vec![("newllm", 2), ("kn", 1), ("transformer", 2)]);
    assert_eq!(a.runs.len(), 5);
    let c = &a.models[0].cells[0];
    let ppl = c.val_ppl.unwrap();
    assert_eq!(ppl.n, 2);
    let want = (r0["val_ppl"].as_f64().unwrap() + r1["val_ppl"].as_f64().unwrap()) / 2.0;
    assert!((ppl.mean - want).abs() < 1e-9 * want);
    assert!(ppl.sd.unwrap() > 0.0);
    let report = std::fs::read_to_string(dir.join("a/report.md")).unwrap();
    assert!(
        report.contains("## Compared with standard models"),
        "{report}"
    );
    assert!(report.contains("Kneser-Ney") && report.contains("Transformer"));
}

/// `tiny` with a held-out validation set of the corpus's last 3 samples.
fn heldout(corpus: String) -> Config {
    Config {
        val_mode: ValMode::Heldout,
        val_samples: 3,
        ..tiny(corpus)
    }
}

/// Every result file of a sweep directory, parsed, by file name.
fn results_in(dir: &Path) -> Vec<(String, serde_json::Value)> {
    let mut out: Vec<(String, serde_json::Value)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("cell-") && n.ends_with(".json"))
        .map(|n| {
            let v = serde_json::from_str(&std::fs::read_to_string(dir.join(&n)).unwrap()).unwrap();
            (n, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// One validation set for every cell, model and replicate: the same ids,
/// the corpus's last samples, never trained on; and changing those samples'
/// text changes no training step of any model (New-LLM, Kneser-Ney,
/// transformer), only the validation figures.
#[test]
fn heldout_validation_is_one_set_that_no_model_trains_on() {
    let dir = temp_dir("heldout");
    let corpus = write_corpus(&dir, 12);
    let cfg = Config {
        replicates: 2,
        ..heldout(corpus.clone())
    };
    let out = dir.join("a");
    run_sweep(&cfg, &out, &dir.join("cache"), None)
        .unwrap()
        .expect("all cells done");
    // the split itself: train = the first N samples, val = the last 3
    let samples = newllm::data::load_samples(&corpus).unwrap();
    let tok = newllm::data::Tokenizer::gpt2().unwrap();
    let ids = |s: &[String]| -> Vec<u32> { s.iter().flat_map(|x| tok.encode(x)).collect() };
    let val = ids(&samples[9..]);
    for n in [4, 8] {
        let split = newllm::data::load_split(
            &corpus,
            n,
            newllm::data::Validation::of(&cfg),
            &dir.join("cache"),
        )
        .unwrap();
        assert_eq!(split.train, ids(&samples[..n]));
        assert_eq!(split.val, val);
        assert_eq!(split.val_sample_ends.len(), 3);
    }
    let runs = results_in(&out);
    // New-LLM and the transformer 2 seeds each, the n-gram 1, per cell
    assert_eq!(runs.len(), 2 * 5);
    let first_set = runs[0].1["val_set"].clone();
    assert!(
        first_set.as_str().unwrap().starts_with("sha256:"),
        "{first_set}"
    );
    for (name, r) in &runs {
        assert_eq!(r["val_set"], first_set, "{name}");
        assert_eq!(r["val_tokens"], val.len(), "{name}");
        let losses: Vec<f64> = serde_json::from_value(r["val_sample_losses"].clone()).unwrap();
        let positions: Vec<usize> =
            serde_json::from_value(r["val_sample_positions"].clone()).unwrap();
        assert_eq!(
            (losses.len(), positions.iter().sum::<usize>()),
            (3, val.len() - 1)
        );
        let mean = losses.iter().sum::<f64>() / (val.len() - 1) as f64;
        let loss = r["val_loss"].as_f64().unwrap();
        assert!(
            (mean - loss).abs() < 1e-6 * loss,
            "{name}: {mean} vs {loss}"
        );
    }

    // The same corpus with other text in the held-out samples only.
    let text = std::fs::read_to_string(&corpus).unwrap();
    let mut parts: Vec<&str> = text.split("<|endofsample|>\n").collect();
    let swapped = "dog who was very happy ran to see the cat on a mat. ".repeat(3) + "\n";
    for p in parts.iter_mut().skip(9).take(3) {
        *p = &swapped;
    }
    let other_dir = dir.join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other_corpus = other_dir.join("corpus.txt");
    std::fs::write(&other_corpus, parts.join("<|endofsample|>\n")).unwrap();
    let other_cfg = Config {
        corpus: other_corpus.to_string_lossy().into_owned(),
        ..cfg.clone()
    };
    let out_b = dir.join("b");
    run_sweep(&other_cfg, &out_b, &dir.join("cache"), None)
        .unwrap()
        .expect("all cells done");
    let other_runs = results_in(&out_b);
    assert_eq!(other_runs.len(), runs.len());
    for ((name, a), (_, b)) in runs.iter().zip(&other_runs) {
        assert_ne!(a["val_set"], b["val_set"], "{name}");
        assert_ne!(a["val_loss"], b["val_loss"], "{name}: validation changed");
        assert_eq!(a["train_tokens"], b["train_tokens"], "{name}");
        let epochs = |r: &serde_json::Value| r["epochs"].as_array().unwrap().len();
        for e in 0..epochs(a).min(epochs(b)) {
            assert_eq!(
                a["epochs"][e]["train_loss"], b["epochs"][e]["train_loss"],
                "{name}"
            );
        }
        // Phase 1 trains on the training stream alone
        if let Some(log) = a["phase1"].as_array() {
            for (x, y) in log.iter().zip(b["phase1"].as_array().unwrap()) {
                assert_eq!(x["total_loss"], y["total_loss"], "{name}");
            }
        }
        assert_eq!(a["train_er"], b["train_er"], "{name}");
    }
}

/// A corpus too small for the largest cell plus the held-out set is refused
/// before anything is written, naming the numbers.
#[test]
fn a_corpus_too_small_for_the_heldout_set_is_refused_up_front() {
    let dir = temp_dir("heldout-small");
    let cfg = Config {
        val_samples: 5,
        sample_counts: vec![4, 8],
        ..heldout(write_corpus(&dir, 12))
    };
    let out = dir.join("out");
    let err = run_sweep(&cfg, &out, &dir.join("cache"), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has 12 samples, too few for 8 training samples plus a held-out validation set of 5 (val_samples)"),
        "{err}"
    );
    assert!(err.contains("lower sample_counts or val_samples"), "{err}");
    assert!(!out.exists(), "nothing is written");
    // exactly enough fits
    let fits = Config {
        val_samples: 4,
        ..cfg
    };
    run_sweep(&fits, &out, &dir.join("cache"), Some(0)).unwrap();
    assert!(out.join("cell-4.json").exists());
}

/// A finished sweep grows: more sample counts or replicates run only the new
/// runs, reuse every finished one, and the report covers all of them.
#[test]
fn a_sweep_grows_by_running_only_the_new_cells_and_seeds() {
    let dir = temp_dir("grow");
    let cache = dir.join("cache");
    let cfg = Config {
        baselines: vec![ModelKind::Kn],
        replicates: 1,
        ..heldout(write_corpus(&dir, 12))
    };
    let out = dir.join("out");
    run_sweep(&cfg, &out, &cache, None).unwrap().expect("done");
    let before: Vec<(String, Vec<u8>)> = [
        "cell-4.json",
        "cell-8.json",
        "kn-cell-4.json",
        "kn-cell-8.json",
    ]
    .iter()
    .map(|f| (f.to_string(), std::fs::read(out.join(f)).unwrap()))
    .collect();
    // a rerun of a finished run would recreate its checkpoint
    std::fs::remove_file(out.join("cell-4.safetensors")).unwrap();
    std::fs::remove_file(out.join("cell-8.safetensors")).unwrap();
    let grown = Config {
        sample_counts: vec![4, 8, 9],
        ..cfg.clone()
    };
    let r = run_sweep(&grown, &out, &cache, None)
        .unwrap()
        .expect("done");
    assert!(!out.join("cell-4.safetensors").exists() && !out.join("cell-8.safetensors").exists());
    assert!(out.join("cell-9.safetensors").exists() && out.join("kn-cell-9.json").exists());
    for (f, bytes) in &before {
        assert_eq!(
            &std::fs::read(out.join(f)).unwrap(),
            bytes,
            "{f} was rewritten"
        );
    }
    assert_eq!(
        r.cells.iter().map(|c| c.samples).collect::<Vec<_>>(),
        vec![4, 8, 9]
    );
    assert_eq!(r.config.sample_counts, vec![4, 8, 9]);
    // more seeds: only the new replicate runs; the report covers every cell
    // the directory holds, even when the command names fewer
    let seeds = Config {
        replicates: 2,
        sample_counts: vec![4],
        ..cfg.clone()
    };
    let r = run_sweep(&seeds, &out, &cache, None).unwrap();
    assert!(r.is_none(), "8 and 9 have no second seed yet");
    assert!(out.join("cell-4-r1.json").exists() && !out.join("cell-8-r1.json").exists());
    assert!(!out.join("cell-4.safetensors").exists());
    let saved: Config =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!((saved.sample_counts, saved.replicates), (vec![4, 8, 9], 2));
    let partial = report_dir(&out).unwrap().remove(0).1;
    assert_eq!(
        partial
            .runs
            .iter()
            .filter(|c| c.model == ModelKind::NewLlm)
            .count(),
        4
    );
    // another setting is still another experiment
    let err = run_sweep(
        &Config {
            val_samples: 2,
            ..grown
        },
        &out,
        &cache,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("val_samples: 3 there, 2 now"), "{err}");
}

/// A two-axis grid: each config a sweep in its own directory, the n-gram
/// trained once for all four, the transformer once per layer count (its
/// size rule reads num_layers), heatmaps, and `--config` for one config.
#[test]
fn a_grid_runs_each_config_and_each_distinct_baseline_once() {
    use newllm::experiment::grid::{run_grid, Grid};
    let dir = temp_dir("grid");
    let cache = dir.join("cache");
    let cfg = Config {
        replicates: 2,
        ..heldout(write_corpus(&dir, 12))
    };
    let grid = Grid::vary(
        &cfg,
        &[
            "num_layers=1,2".into(),
            "phase1_learning_rate=0.002,0.004".into(),
        ],
    )
    .unwrap();
    let out = dir.join("out");
    // one config first, as one Slurm array task would
    assert!(run_grid(&grid, &out, &cache, Some(1), None)
        .unwrap()
        .is_none());
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    assert!(out
        .join("num_layers=1,phase1_learning_rate=0.004/cell-8.json")
        .exists());
    assert!(!out.join("num_layers=1,phase1_learning_rate=0.002").exists());
    assert!(
        names(&out.join("baselines")).is_empty(),
        "config 1 owns no baseline"
    );
    let done = run_grid(&grid, &out, &cache, None, None)
        .unwrap()
        .expect("all done");
    assert_eq!(done.len(), 4);
    let folders = names(&out.join("baselines"));
    assert_eq!(folders.len(), 3, "{folders:?}");
    assert_eq!(folders.iter().filter(|f| f.starts_with("kn-")).count(), 1);
    assert_eq!(
        folders
            .iter()
            .filter(|f| f.starts_with("transformer-"))
            .count(),
        2
    );
    // every config's report lists the shared baselines
    for (_, r) in &done {
        let models: Vec<&str> = r.models.iter().map(|m| m.model.name()).collect();
        assert_eq!(models, vec!["newllm", "kn", "transformer"]);
    }
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    for want in [
        "## Configs side by side",
        "## Val PPL per cell (mean ± sd over seeds)",
        "## Baselines (each distinct configuration trained once)",
        "| Kneser-Ney | all |",
        "![alpha (lower = PPL falls faster with data)](plots/heatmap_alpha.png)",
        "## Best config",
    ] {
        assert!(md.contains(want), "compare.md lacks {want:?}\n{md}");
    }
    for f in [
        "heatmap_alpha.png",
        "heatmap_alpha.svg",
        "heatmap_ppl_8.png",
        "compare_scaling.png",
    ] {
        assert!(out.join("plots").join(f).exists(), "{f}");
    }
    // report merges again from the files alone
    let again = report_dir(&out).unwrap();
    assert_eq!(again.len(), 4);
    let side = report_dir(&out.join("num_layers=2,phase1_learning_rate=0.004")).unwrap();
    assert_eq!(
        side[0].1.models.len(),
        3,
        "a config's report finds the shared baselines"
    );
}
