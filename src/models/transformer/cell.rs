//! One transformer cell, trained with New-LLM's Phase-2 protocol so the two
//! differ only in the model: Adam at `phase2_learning_rate`, global-norm
//! clipping at `phase2_gradient_clip`, `phase2_batch_size` positions per
//! step in stream order, up to `phase2_epochs` epochs, early stopping on
//! validation loss with `phase2_patience` (the shared `train_loop`), and
//! the best epoch's figures and weights kept. Training and validation run
//! in contiguous windows of `transformer_block_size` tokens.

use super::model::{Transformer, TransformerDims};
use super::train::{batches, Batch, Trainer};
use crate::cell_result::{Epoch, Timings};
use crate::config::Config;
use crate::data::Split;
use crate::io::{log_line, rewrite_log, save_safetensors};
use crate::memory::{gib, refuse_if_disk_too_small, refuse_if_too_big};
use crate::models::newllm::model::block_param_counts;
use crate::models::{CellPaths, ModelRun, Scored};
use crate::state::{self, Fingerprint, Saver};
use crate::train_loop::{self, EpochProgress, EpochSteps, Evaluation};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// The transformer's shape for `cfg`. Width 0 applies the size rule: the
/// multiple of `transformer_heads` whose non-embedding parameters come
/// closest to New-LLM's ContextBlock + TokenBlock (without its head).
pub fn dims_for(cfg: &Config) -> TransformerDims {
    let n_layer = if cfg.transformer_layers == 0 {
        cfg.num_layers
    } else {
        cfg.transformer_layers
    };
    let base = TransformerDims {
        vocab_size: cfg.vocab_size,
        n_layer,
        n_head: cfg.transformer_heads,
        d_model: cfg.transformer_dim,
        block_size: cfg.transformer_block_size,
    };
    if cfg.transformer_dim > 0 {
        return base;
    }
    let (ctx, tok) = block_param_counts(cfg);
    let target = (ctx + tok) as f64;
    let h = cfg.transformer_heads;
    let size = |d: usize| TransformerDims { d_model: d, ..base }.param_count_non_embedding() as f64;
    // Non-embedding size grows with d, so walk up to the first width past the target.
    let mut d = h;
    while size(d + h) <= target {
        d += h;
    }
    let d = if (size(d + h) - target).abs() < (target - size(d)).abs() {
        d + h
    } else {
        d
    };
    TransformerDims { d_model: d, ..base }
}

/// What a transformer cell depends on: the data, the shape as resolved
/// (the size rule reads New-LLM's settings), the seed and New-LLM's
/// Phase-2 protocol it trains with.
pub fn identity(cfg: &Config) -> serde_json::Value {
    let d = dims_for(cfg);
    let mut id = crate::models::data_identity(cfg);
    for (k, v) in [
        ("n_layer", d.n_layer.into()),
        ("n_head", d.n_head.into()),
        ("d_model", d.d_model.into()),
        ("block_size", d.block_size.into()),
        ("seed", cfg.seed.into()),
        ("phase2_learning_rate", cfg.phase2_learning_rate.into()),
        ("phase2_batch_size", cfg.phase2_batch_size.into()),
        ("phase2_epochs", cfg.phase2_epochs.into()),
        ("phase2_patience", cfg.phase2_patience.into()),
        ("phase2_gradient_clip", cfg.phase2_gradient_clip.into()),
        ("precision", cfg.precision.to_string().into()),
    ] {
        id[k] = v;
    }
    id
}

/// Windows per step so a step holds `phase2_batch_size` positions (at least one window).
fn windows_per_batch(cfg: &Config) -> usize {
    (cfg.phase2_batch_size / cfg.transformer_block_size).max(1)
}

/// Predicted peak bytes: model, gradient, Adam, activations, a copy of the
/// best weights, plus the process baseline.
pub fn predict_peak_bytes(cfg: &Config) -> u64 {
    let dims = dims_for(cfg);
    let rows = windows_per_batch(cfg) * cfg.transformer_block_size;
    (128 << 20) + Trainer::bytes(&dims, rows) + 4 * dims.param_count_total() as u64
}

struct Steps<'a> {
    model: Transformer,
    trainer: Trainer,
    train: Vec<Batch<'a>>,
    val: Vec<Batch<'a>>,
    /// The validation sample of each validation position (`Split::val_bins`).
    val_bins: Vec<u32>,
    best: Vec<f32>,
    /// None in tests that train without a cell around them.
    cell: Option<CellIo>,
}

/// Where an epoch's end goes: the log, and the state with its meta.
struct CellIo {
    log: std::path::PathBuf,
    saver: Saver,
    /// The seconds of earlier runs, and when this process started the cell
    /// and its epochs.
    base: Meta,
    started: Instant,
    training: Instant,
}

impl CellIo {
    /// The meta after `progress`, with the seconds summed over runs.
    fn meta(&self, progress: &EpochProgress, adam_t: u32) -> Meta {
        Meta {
            progress: progress.clone(),
            adam_t,
            train_seconds: self.base.train_seconds + self.training.elapsed().as_secs_f64(),
            state_write_seconds: self.base.state_write_seconds + self.saver.seconds,
            total_seconds: self.base.total_seconds + self.started.elapsed().as_secs_f64(),
        }
    }
}

/// An epoch's line in the cell's log.
fn log_entry(e: &Epoch) -> serde_json::Value {
    serde_json::json!({"stage": "transformer", "epoch": e})
}

/// The meta of a transformer state (state.rs); its arrays are `params`,
/// `adam_m`, `adam_v` and `best`.
#[derive(Clone, Default, Serialize, Deserialize)]
struct Meta {
    progress: EpochProgress,
    adam_t: u32,
    train_seconds: f64,
    state_write_seconds: f64,
    total_seconds: f64,
}

impl EpochSteps for Steps<'_> {
    fn train_epoch(&mut self, epoch: usize) -> Result<f64> {
        let (mut total, mut positions) = (0.0, 0usize);
        let bar = crate::progress::bar(
            self.train.len() as u64,
            &format!("transformer epoch {epoch} (batches)"),
        );
        for (i, b) in self.train.iter().enumerate() {
            bar.set_position(i as u64);
            let (loss, _) = self
                .trainer
                .train_step(&mut self.model, b.inputs, b.targets, b.windows, b.t)
                .with_context(|| format!("transformer epoch {epoch}, batch {}", i + 1))?;
            total += loss * (b.windows * b.t) as f64;
            positions += b.windows * b.t;
        }
        bar.finish_and_clear();
        Ok(total / positions as f64)
    }

    fn evaluate(&mut self) -> Result<Evaluation> {
        let (mut total, mut correct, mut positions) = (0.0, 0, 0usize);
        let mut sample_losses = vec![0.0; self.val_bins.last().map_or(0, |&b| b as usize + 1)];
        for &b in &self.val {
            // Batches cover the stream's positions in order.
            let rows = b.windows * b.t;
            let bins = self
                .val_bins
                .get(positions..positions + rows)
                .unwrap_or(&[]);
            let (l, c) = self
                .trainer
                .evaluate(&self.model, b, bins, &mut sample_losses)?;
            total += l;
            correct += c;
            positions += rows;
        }
        Ok(Evaluation {
            loss: total / positions as f64,
            correct,
            sample_losses,
        })
    }

    fn keep_best(&mut self) -> Result<()> {
        self.best.copy_from_slice(&self.model.params);
        Ok(())
    }

    fn end_epoch(&mut self, progress: &EpochProgress) -> Result<()> {
        let Some(io) = &mut self.cell else {
            return Ok(());
        };
        let e = progress.epochs.last().expect("an epoch was run");
        eprintln!(
            "  transformer epoch {:>2}: train ppl {:.1} val ppl {:.1} val acc {:.1}% ({:.1}s)",
            e.epoch,
            e.train_ppl,
            e.val_ppl,
            100.0 * e.val_acc,
            e.seconds
        );
        log_line(&io.log, &log_entry(e))?;
        let meta = io.meta(progress, self.trainer.adam.t);
        io.saver.safe_point(
            &format!("transformer-{}", e.epoch),
            || Ok(serde_json::to_value(&meta)?),
            &[
                ("params", &self.model.params),
                ("adam_m", &self.trainer.adam.m),
                ("adam_v", &self.trainer.adam.v),
                ("best", &self.best),
            ],
        )
    }
}

/// The state at `saver.path` for this run, if any (a damaged one is
/// reported and training starts over), put into `steps`.
fn resume(steps: &mut Steps, saver: &Saver) -> Result<Option<Meta>> {
    let Some(mut l) = saver.load()? else {
        return Ok(None);
    };
    let meta: Meta = l.meta()?;
    let p = steps.model.params.len();
    steps.model.params = l.take("params", p)?;
    steps.trainer.adam.m = l.take("adam_m", p)?;
    steps.trainer.adam.v = l.take("adam_v", p)?;
    steps.trainer.adam.t = meta.adam_t;
    steps.best = l.take("best", p)?;
    eprintln!(
        "  resuming from {} after epoch {}",
        saver.path.display(),
        meta.progress.stop_epoch()
    );
    Ok(Some(meta))
}

/// Trains on `split.train`, validates on every position of `split.val`
/// after each epoch; writes the epoch log and the best weights to `paths`.
pub fn run(cfg: &Config, split: &Split, paths: &CellPaths) -> Result<ModelRun> {
    let t_all = Instant::now();
    let dims = dims_for(cfg);
    dims.validate()?;
    let (n, m) = (split.train.len(), split.val.len());
    let predicted = predict_peak_bytes(cfg);
    eprintln!(
        "transformer cell {} samples: {} layers x d_model {}, {} heads, block {}; {n} train / {m} val tokens, predicted peak memory {}",
        split.samples,
        dims.n_layer,
        dims.d_model,
        dims.n_head,
        dims.block_size,
        gib(predicted)
    );
    refuse_if_too_big(
        predicted,
        "use a smaller transformer_dim / transformer_block_size / phase2_batch_size",
    )?;
    let wpb = windows_per_batch(cfg);
    let model = Transformer::new(dims, cfg.seed)?.with_precision(cfg.precision);
    // the state: weights, Adam's two moments, the best weights
    let state_bytes = state::file_bytes(4 * model.params.len() as u64);
    eprintln!("  resume state {} on disk", gib(state_bytes));
    refuse_if_disk_too_small(&paths.state, state_bytes)?;
    let trainer = Trainer::new(
        &model,
        wpb * dims.block_size,
        cfg.phase2_learning_rate,
        cfg.phase2_gradient_clip,
    )?;
    let best = model.params.clone();
    let mut steps = Steps {
        model,
        trainer,
        train: batches(&split.train, dims.block_size, wpb)?,
        val: batches(&split.val, dims.block_size, wpb)?,
        val_bins: split.val_bins(),
        best,
        cell: None,
    };
    let saver = Saver::new(
        paths.state.clone(),
        Fingerprint::new(cfg, &split.train, &split.val)?,
        cfg,
    );
    let base = resume(&mut steps, &saver)?.unwrap_or_default();
    // The log so far is the state's; lines written after it are redone.
    let lines: Vec<serde_json::Value> = base.progress.epochs.iter().map(log_entry).collect();
    rewrite_log(&paths.log, &lines)?;
    let resumed = base.progress.clone();
    steps.cell = Some(CellIo {
        log: paths.log.clone(),
        saver,
        base,
        started: t_all,
        training: Instant::now(),
    });
    let log = train_loop::run_epochs(
        "Transformer training",
        cfg.phase2_epochs,
        cfg.phase2_patience,
        m - 1,
        &mut steps,
        Some(resumed),
    )
    .map_err(|e| e.context(format!("log so far: {}", paths.log.display())))?;
    steps.model.params.copy_from_slice(&steps.best);
    save_checkpoint(&steps.model, cfg, &paths.checkpoint)?;
    let so_far = steps
        .cell
        .as_ref()
        .expect("set above")
        .meta(&log, steps.trainer.adam.t);
    let mut seconds = Timings::default();
    seconds.add("train", so_far.train_seconds);
    seconds.add("state_write", so_far.state_write_seconds);
    seconds.add("total", so_far.total_seconds);
    Ok(ModelRun {
        ran_on: "cpu".into(),
        threads: crate::ops::threads(),
        predicted_peak_bytes: predicted,
        seconds,
        scored: Scored::Epochs(log),
        architecture: format!(
            "{} layers x d_model {}, {} heads, block {}",
            dims.n_layer, dims.d_model, dims.n_head, dims.block_size
        ),
        trainable_params: dims.param_count_total() as u64,
        non_embedding_params: dims.param_count_non_embedding() as u64,
        train_flops_per_token: dims.train_flops_per_token() as f64,
        newllm: None,
    })
}

/// The weights under GPT-2's names (which say what model it is), with the
/// config, as safetensors. One metadata key only: safetensors writes a
/// HashMap's keys in its random order, and the bytes must not depend on it.
fn save_checkpoint(model: &Transformer, cfg: &Config, path: &std::path::Path) -> Result<()> {
    let mut meta = std::collections::HashMap::new();
    meta.insert("config".to_string(), serde_json::to_string(cfg)?);
    save_safetensors(path, &model.named_params(), meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn tiny() -> Config {
        Config {
            vocab_size: 30,
            embed_dim: 8,
            context_dim: 8,
            num_layers: 2,
            transformer_heads: 2,
            transformer_block_size: 8,
            phase2_batch_size: 16,
            phase2_epochs: 2,
            phase2_patience: 0,
            ..Config::default()
        }
    }

    /// The size rule picks the width whose non-embedding parameters come
    /// closest to New-LLM's ContextBlock + TokenBlock.
    #[test]
    fn size_rule_matches_newllm_blocks() {
        for cfg in [Config::default(), Config::preset("quick").unwrap(), tiny()] {
            let (ctx, tok) = block_param_counts(&cfg);
            let target = (ctx + tok) as f64;
            let d = dims_for(&cfg);
            assert_eq!(d.d_model % cfg.transformer_heads, 0);
            let size =
                |w: usize| TransformerDims { d_model: w, ..d }.param_count_non_embedding() as f64;
            let err = (size(d.d_model) - target).abs();
            for w in [
                d.d_model - cfg.transformer_heads,
                d.d_model + cfg.transformer_heads,
            ] {
                if w > 0 {
                    assert!(
                        err <= (size(w) - target).abs(),
                        "width {w} is closer than {}",
                        d.d_model
                    );
                }
            }
        }
        // The seed model: 23,960,576 block parameters -> 6 layers x d_model 576.
        assert_eq!(dims_for(&Config::default()).d_model, 576);
        // An explicit width is kept.
        let cfg = Config {
            transformer_dim: 64,
            ..tiny()
        };
        assert_eq!(dims_for(&cfg).d_model, 64);
    }

    /// The leak test: training with two different validation streams (fixed
    /// epochs) leaves bit-identical weights and training losses.
    #[test]
    fn no_validation_token_reaches_any_training_step() {
        let cfg = tiny();
        let mut rng = Rng::new(8);
        let mut ids = |n: usize| (0..n).map(|_| rng.below(30) as u32).collect::<Vec<u32>>();
        let train = ids(120);
        let (val_a, val_b) = (ids(30), ids(30));
        let train_with = |val: &[u32]| {
            let dims = dims_for(&cfg);
            let model = Transformer::new(dims, cfg.seed).unwrap();
            let trainer = Trainer::new(
                &model,
                16,
                cfg.phase2_learning_rate,
                cfg.phase2_gradient_clip,
            )
            .unwrap();
            let best = model.params.clone();
            let mut steps = Steps {
                model,
                trainer,
                train: batches(&train, dims.block_size, 2).unwrap(),
                val: batches(val, dims.block_size, 2).unwrap(),
                val_bins: Vec::new(),
                best,
                cell: None,
            };
            let log =
                train_loop::run_epochs("test", 2, 0, val.len() - 1, &mut steps, None).unwrap();
            let train_losses: Vec<f64> = log.epochs.iter().map(|e| e.train_loss).collect();
            let val_losses: Vec<f64> = log.epochs.iter().map(|e| e.val_loss).collect();
            (steps.model.params, train_losses, val_losses)
        };
        let (wa, ta, va) = train_with(&val_a);
        let (wb, tb, vb) = train_with(&val_b);
        assert_eq!(wa, wb);
        assert_eq!(ta, tb);
        assert_ne!(
            va, vb,
            "the validation streams must differ for the test to mean anything"
        );
    }
}
