//! One cell of the experiment: data -> Phase 1 -> caches -> Effective Rank
//! -> Phase 2 -> checkpoint, with per-stage timing, an on-disk log written
//! as it goes, and a memory estimate checked before anything large is made.

use crate::config::Config;
use crate::data::{load_pretrained_embeddings, load_split, Split};
use crate::engine::Engine;
use crate::metrics::effective_rank;
use crate::model::Model;
use crate::phase1::Phase1;
use crate::phase2::{Phase2, Stream};
use crate::results::{CellResult, StageSeconds};
use anyhow::{bail, Context, Result};
use safetensors::tensor::TensorView;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Predicted peak resident bytes of a cell with `n` train and `m` val tokens.
/// Phase 1 holds prev + out (n x C each); Phase 2 holds the two cache sources
/// (C per token) and the head's logits; the model and optimiser state stay.
pub fn predict_peak_bytes(model: &Model, n: usize, m: usize) -> u64 {
    let cfg = &model.cfg;
    let (v, e, c) = (
        cfg.vocab_size as u64,
        cfg.embed_dim as u64,
        cfg.context_dim as u64,
    );
    let model_bytes = 4
        * (2 * v * e
            + model.context.params.data.len() as u64
            + model.token.params.data.len() as u64);
    let baseline = 128 << 20; // binary, tokenizer tables, corpus text, allocator slack
    let ids = 4 * (n + m) as u64;
    let phase1 = Phase1::bytes(model, n);
    // caches + prev (kept until the train cache is built)
    let caches = 4 * c * (n as u64 + m as u64 + n as u64);
    let phase2 = Phase2::bytes(model) + 4 * c * (n + m) as u64;
    baseline + model_bytes + ids + phase1.max(caches).max(phase2)
}

/// MemAvailable from /proc/meminfo, if readable.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak resident set size of this process so far (VmHWM), if readable.
pub fn peak_rss() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

/// Where a cell writes: `DIR/cell-<samples>.{log.jsonl,safetensors,json}`.
pub struct CellPaths {
    pub log: PathBuf,
    pub checkpoint: PathBuf,
    pub result: PathBuf,
}

impl CellPaths {
    pub fn new(dir: &Path, samples: usize) -> CellPaths {
        CellPaths {
            log: dir.join(format!("cell-{samples}.log.jsonl")),
            checkpoint: dir.join(format!("cell-{samples}.safetensors")),
            result: dir.join(format!("cell-{samples}.json")),
        }
    }
}

/// Checks a split against the config before training on it.
pub fn check_split(cfg: &Config, split: &Split) -> Result<()> {
    for (name, ids) in [("training", &split.train), ("validation", &split.val)] {
        if ids.len() < 2 {
            bail!(
                "the {name} stream has {} tokens; at least 2 are needed (use more samples)",
                ids.len()
            );
        }
        if let Some((i, &id)) = ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= cfg.vocab_size)
        {
            bail!("{name} token {i} has id {id} >= vocab_size {} (the tokenizer and vocab_size disagree)", cfg.vocab_size);
        }
    }
    if cfg.num_input_tokens > split.val.len() {
        bail!(
            "num_input_tokens = {} is larger than the validation stream ({} tokens); use more samples or a smaller k",
            cfg.num_input_tokens,
            split.val.len()
        );
    }
    Ok(())
}

/// Appends one JSON line to the cell log and flushes it, so a crash keeps it.
fn log_line(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot write log {}", path.display()))?;
    writeln!(f, "{value}")?;
    Ok(())
}

/// Writes `bytes` to `path` atomically (temp file + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// Saves every model parameter (state_dict names) as safetensors, atomically.
pub fn save_checkpoint(model: &Model, path: &Path) -> Result<()> {
    let params = model.named_params();
    let views: Vec<(String, TensorView)> = params
        .iter()
        .map(|(name, shape, data)| {
            let bytes: &[u8] = bytemuck_f32(data);
            (
                name.clone(),
                TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .expect("shape matches data"),
            )
        })
        .collect();
    let mut meta = std::collections::HashMap::new();
    meta.insert("config".to_string(), serde_json::to_string(&model.cfg)?);
    let bytes = safetensors::serialize(views, &Some(meta))?;
    write_atomic(path, &bytes)
}

fn bytemuck_f32(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any bit pattern is a valid u8; safetensors is little-endian like x86.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// Loads a checkpoint written by `save_checkpoint`: its config and weights.
pub fn load_checkpoint(path: &Path) -> Result<Model> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let cfg_text = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("config"))
        .with_context(|| format!("{} has no newllm config in its metadata", path.display()))?;
    let cfg: Config = serde_json::from_str(cfg_text)
        .with_context(|| format!("{}: config metadata is invalid", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let mut model = Model::new(
        &Config {
            pretrained_embeddings: String::new(),
            ..cfg.clone()
        },
        None,
    )?;
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            bail!(
                "{}: tensor {name} is {:?}, expected F32",
                path.display(),
                view.dtype()
            );
        }
        let vals: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        model
            .set_param(&name, &vals)
            .with_context(|| format!("checkpoint {}", path.display()))?;
    }
    model.cfg = cfg;
    Ok(model)
}

/// Runs one cell on the first `samples` samples of the configured corpus.
/// Prints progress lines; writes the log, checkpoint and result under `dir`.
pub fn run_cell(cfg: &Config, samples: usize, dir: &Path, cache_dir: &Path) -> Result<CellResult> {
    let t_all = Instant::now();
    let threads = crate::ops::set_threads(cfg.threads);
    // Fails here, before any data is read, when the device cannot run.
    let mut engine = crate::engine::for_config(cfg)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let paths = CellPaths::new(dir, samples);
    let _ = std::fs::remove_file(&paths.log);
    let mut secs = StageSeconds::default();

    let t = Instant::now();
    let split = load_split(&cfg.corpus, samples, cfg.val_fraction, cache_dir)?;
    check_split(cfg, &split)?;
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
    if let Some(avail) = available_memory() {
        if predicted > avail {
            bail!(
                "this cell needs about {} but only {} is available; use fewer samples, a smaller \
                 phase1_batch_size / phase2_batch_size, or a machine with more memory",
                gib(predicted),
                gib(avail)
            );
        }
    }
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
        samples,
        train_tokens: n,
        val_tokens: m,
        train_er: train_er / c as f64,
        val_er: val_er / c as f64,
        train_er_abs: train_er,
        val_er_abs: val_er,
        val_ppl: best.val_ppl,
        val_loss: best.val_loss,
        val_acc: best.val_acc,
        best_epoch: p2.best_epoch,
        stop_epoch: p2.stop_epoch,
        early_stopped: p2.early_stopped,
        phase1_iterations: p1.log.len(),
        phase1_converged: p1.converged,
        phase1_final_convergence_rate: last.convergence_rate,
        phase1: p1.log,
        epochs: p2.epochs,
        seconds: secs,
        threads,
        predicted_peak_bytes: predicted,
        measured_peak_bytes: peak_rss().unwrap_or(0),
        config: cfg.clone(),
    };
    write_atomic(
        &paths.result,
        serde_json::to_string_pretty(&result)?.as_bytes(),
    )?;
    Ok(result)
}

/// One line per cell, like the seed's summary table.
pub fn summary_line(r: &CellResult) -> String {
    format!(
        "samples {} | tokens {} | Val PPL {:.1} | Val Acc {:.1}% | Train ER {:.1}% | Val ER {:.1}% | best epoch {}/{} | {:.1}s",
        r.samples,
        r.train_tokens,
        r.val_ppl,
        100.0 * r.val_acc,
        100.0 * r.train_er,
        100.0 * r.val_er,
        r.best_epoch,
        r.stop_epoch,
        r.seconds.total
    )
}
