//! One New-LLM cell on a given train/validation split: Phase 1 -> caches ->
//! Effective Rank -> Phase 2 -> checkpoint, with per-stage timing, an
//! on-disk log written as it goes, and a memory estimate checked before
//! anything large is made.

use super::checkpoint::save_checkpoint;
use super::engine::{self, Engine};
use super::memory::predict_peak_bytes;
use super::metrics::effective_rank;
use super::model::Model;
use super::phase2::Stream;
use crate::cell_result::{CellResult, NewLlmResult, Timings};
use crate::config::Config;
use crate::data::{load_pretrained_embeddings, Split};
use crate::io::log_line;
use crate::memory::{gib, peak_rss, refuse_if_too_big};
use crate::models::CellPaths;
use anyhow::{bail, Result};
use std::path::Path;
use std::time::Instant;

/// Wall-clock seconds of each stage of a New-LLM cell.
#[derive(Default)]
struct StageSeconds {
    data: f64,
    phase1: f64,
    train_cache: f64,
    val_cache: f64,
    effective_rank: f64,
    phase2: f64,
    total: f64,
}

impl StageSeconds {
    /// In the order the stages run, as the result files have always listed them.
    fn timings(&self) -> Timings {
        Timings(
            [
                ("data", self.data),
                ("phase1", self.phase1),
                ("train_cache", self.train_cache),
                ("val_cache", self.val_cache),
                ("effective_rank", self.effective_rank),
                ("phase2", self.phase2),
                ("total", self.total),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        )
    }
}

/// Trains and evaluates New-LLM on one split. Prints progress lines; writes
/// the log and checkpoint to `paths` (the caller writes the result).
pub fn run(cfg: &Config, samples: usize, split: &Split, paths: &CellPaths) -> Result<CellResult> {
    let t_all = Instant::now();
    let threads = crate::ops::threads();
    let mut engine = engine::for_config(cfg)?;
    if cfg.num_input_tokens > split.val.len() {
        bail!(
            "num_input_tokens = {} is larger than the validation stream ({} tokens); use more samples or a smaller k",
            cfg.num_input_tokens,
            split.val.len()
        );
    }
    let _ = std::fs::remove_file(&paths.log);
    let mut secs = StageSeconds::default();

    let t = Instant::now();
    let embedding = if cfg.pretrained_embeddings.is_empty() {
        None
    } else {
        Some(load_pretrained_embeddings(
            Path::new(&cfg.pretrained_embeddings),
            cfg.vocab_size,
            cfg.embed_dim,
        )?)
    };
    secs.data = t.elapsed().as_secs_f64();
    let (n, m) = (split.train.len(), split.val.len());

    let mut model = Model::new(cfg, embedding)?;
    let predicted = predict_peak_bytes(&model, n, m);
    eprintln!(
        "cell {samples} samples: {n} train / {m} val tokens, {} threads, predicted peak memory {}",
        threads,
        gib(predicted)
    );
    refuse_if_too_big(
        predicted,
        "use fewer samples, a smaller phase1_batch_size / phase2_batch_size, or a machine with more memory",
    )?;
    let log = paths.log.clone();

    // ---- Phase 1
    let t = Instant::now();
    let p1 = Engine::phase1_run(&mut *engine, &mut model, &split.train, None, &mut |it| {
        eprintln!(
            "  phase1 iter {:>2}: loss {:+.5} cvfp {:.5} div {:+.5} conv {:.1}% ({:.1}s)",
            it.iteration,
            it.total_loss,
            it.cvfp_loss,
            it.diversity_loss,
            100.0 * it.convergence_rate,
            it.seconds
        );
        let _ = log_line(
            &log,
            &serde_json::json!({"stage": "phase1", "iteration": it}),
        );
    })
    .map_err(|e| e.context(format!("log so far: {}", paths.log.display())))?;
    secs.phase1 = t.elapsed().as_secs_f64();

    // ---- Effective Rank of the train contexts, then the caches
    let c = cfg.context_dim;
    let t = Instant::now();
    let (train_er, _, _) = effective_rank(&p1.prev, c, cfg.effective_rank_max_rows, cfg.seed)?;
    secs.effective_rank = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let train_src = engine.train_cache(&model, &split.train, &p1.prev)?;
    drop(p1.prev);
    secs.train_cache = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let val_src = engine.sequential_pass(&model, &split.val, m - 1)?;
    secs.val_cache = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (val_er, _, _) = effective_rank(&val_src, c, cfg.effective_rank_max_rows, cfg.seed)?;
    secs.effective_rank += t.elapsed().as_secs_f64();
    eprintln!(
        "  effective rank: train {:.1}% val {:.1}% (caches {:.1}s + {:.1}s)",
        100.0 * train_er / c as f64,
        100.0 * val_er / c as f64,
        secs.train_cache,
        secs.val_cache
    );

    // ---- Phase 2
    let t = Instant::now();
    let ts = Stream {
        ids: &split.train,
        src: &train_src,
    };
    let vs = Stream {
        ids: &split.val,
        src: &val_src,
    };
    let p2 = Engine::phase2_run(&mut *engine, &mut model, &ts, &vs, &mut |e| {
        eprintln!(
            "  phase2 epoch {:>2}: train ppl {:.1} val ppl {:.1} val acc {:.1}% ({:.1}s)",
            e.epoch,
            e.train_ppl,
            e.val_ppl,
            100.0 * e.val_acc,
            e.seconds
        );
        let _ = log_line(&log, &serde_json::json!({"stage": "phase2", "epoch": e}));
    })
    .map_err(|e| e.context(format!("log so far: {}", paths.log.display())))?;
    secs.phase2 = t.elapsed().as_secs_f64();
    if let Some(peak) = engine.peak_device_bytes() {
        eprintln!(
            "  {}: stages data {:.1}s phase1 {:.1}s train_cache {:.1}s val_cache {:.1}s phase2 {:.1}s | {:.0} train tokens/s in the train cache | peak device memory {}",
            engine.describe(),
            secs.data,
            secs.phase1,
            secs.train_cache,
            secs.val_cache,
            secs.phase2,
            (n - 1) as f64 / secs.train_cache.max(1e-9),
            gib(peak)
        );
    }
    model.token.params.data.copy_from_slice(&p2.best_params);
    save_checkpoint(&model, &paths.checkpoint)?;
    secs.total = t_all.elapsed().as_secs_f64();

    let best = p2.best().clone();
    let last = p1.log.last().cloned().unwrap_or_default();
    let result = CellResult {
        model: "newllm".into(),
        replicate: 0,
        ran_on: engine.describe(),
        samples,
        train_tokens: n,
        val_tokens: m,
        val_ppl: best.val_ppl,
        val_loss: best.val_loss,
        val_acc: best.val_acc,
        best_epoch: p2.best_epoch,
        stop_epoch: p2.stop_epoch,
        early_stopped: p2.early_stopped,
        epochs: p2.epochs,
        seconds: secs.timings(),
        threads,
        predicted_peak_bytes: predicted,
        measured_peak_bytes: peak_rss().unwrap_or(0),
        config: cfg.clone(),
        newllm: Some(NewLlmResult {
            train_er: train_er / c as f64,
            val_er: val_er / c as f64,
            train_er_abs: train_er,
            val_er_abs: val_er,
            phase1_iterations: p1.log.len(),
            phase1_converged: p1.converged,
            phase1_final_convergence_rate: last.convergence_rate,
            phase1: p1.log,
        }),
    };
    Ok(result)
}
