//! The models the experiment trains, each in its own folder, top to bottom.
//! Every model has one entry point that trains and evaluates one cell on a
//! given train/validation split and returns a `CellResult`; the experiment
//! code (sweep, results, statistics, plots, report) sees nothing else.

pub mod kn;
pub mod newllm;
pub mod transformer;

use crate::cell_result::{CellResult, NewLlmResult, Timings};
use crate::config::Config;
use crate::data::Split;
use crate::train_loop::{EpochProgress, Evaluation};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

pub use crate::config::ModelKind;

/// What the experiment needs of each model beyond its name (which lives
/// with the config, `config::ModelKind`, since `baselines` names models).
impl ModelKind {
    /// The models a config trains on every cell: New-LLM, then its baselines.
    pub fn for_config(cfg: &Config) -> Vec<ModelKind> {
        std::iter::once(ModelKind::NewLlm)
            .chain(cfg.baselines.iter().copied())
            .collect()
    }

    /// What this model's result depends on under `cfg` (`Config::identity`
    /// narrowed to the settings the model reads, resolved): two configs with
    /// equal identities give the model the same run, so a comparison trains
    /// each distinct baseline once.
    pub fn identity(self, cfg: &Config) -> serde_json::Value {
        match self {
            ModelKind::NewLlm => serde_json::to_value(cfg.identity()).unwrap_or_default(),
            ModelKind::Kn => kn::cell::identity(cfg),
            ModelKind::Transformer => transformer::cell::identity(cfg),
        }
    }

    /// Replicate indices this model runs under `cfg`.
    pub fn replicates(self, cfg: &Config) -> std::ops::Range<usize> {
        0..if self.seeded() { cfg.replicates } else { 1 }
    }
}

/// The data settings every model's result depends on: the corpus, the
/// validation setting and the vocabulary.
pub fn data_identity(cfg: &Config) -> serde_json::Value {
    let id = cfg.identity();
    serde_json::json!({
        "corpus": id.corpus,
        "vocab_size": id.vocab_size,
        "val_mode": id.val_mode,
        "val_fraction": id.val_fraction,
        "val_samples": id.val_samples,
    })
}

/// The config replicate `r` of a seeded model runs with: seed + r.
pub fn replicate_config(cfg: &Config, replicate: usize) -> Config {
    Config {
        seed: cfg.seed + replicate as u64,
        ..cfg.clone()
    }
}

/// Where a cell writes: `DIR/[MODEL-]cell-<samples>[-r<replicate>].{log.jsonl,
/// safetensors,json,state,claim}` (New-LLM's replicate 0 keeps the plain `cell-<samples>`).
pub struct CellPaths {
    pub log: PathBuf,
    pub checkpoint: PathBuf,
    pub result: PathBuf,
    /// The resumable state while the run is unfinished (state.rs).
    pub state: PathBuf,
    /// Held by the process computing the run (claim.rs).
    pub claim: PathBuf,
}

impl CellPaths {
    pub fn new(dir: &Path, model: ModelKind, samples: usize, replicate: usize) -> CellPaths {
        let prefix = match model {
            ModelKind::NewLlm => String::new(),
            other => format!("{}-", other.name()),
        };
        let suffix = if replicate == 0 {
            String::new()
        } else {
            format!("-r{replicate}")
        };
        let stem = format!("{prefix}cell-{samples}{suffix}");
        CellPaths {
            log: dir.join(format!("{stem}.log.jsonl")),
            checkpoint: dir.join(format!("{stem}.safetensors")),
            result: dir.join(format!("{stem}.json")),
            state: dir.join(format!("{stem}.state")),
            claim: dir.join(format!("{stem}.claim")),
        }
    }
}

/// Checks a split against the config before any model trains on it.
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
    Ok(())
}

/// Fails, before any data is read or written, when the configured device
/// cannot run here (no GPU build, no driver); says once, up front, when
/// bf16 runs emulated on this CPU.
pub fn check_device(cfg: &Config) -> Result<()> {
    use crate::ops::bf16;
    newllm::engine::for_config(cfg)?;
    if cfg.precision == crate::ops::Precision::Bf16 && bf16::kernel() == bf16::Kernel::Emulated {
        let why = match bf16::register_rates() {
            Some((h, f)) => format!(
                "this CPU's vdpbf16ps does {:.2}x the FLOPs per second of its f32 FMA",
                h / f
            ),
            None => "this CPU has no AVX512_BF16".into(),
        };
        eprintln!("note: precision bf16: {why}, so the GEMMs run in f32 on bf16-rounded inputs (bf16 numbers at f32 speed; the recurrent pass reads bf16 weights)");
    }
    Ok(())
}

/// What a model's cell runner returns: how the run went and what only the
/// model knows. `run_cell` adds what every model shares (the data, the
/// validation set, the best figures), so each model fills only these.
pub struct ModelRun {
    /// "cpu" or the GPU's name.
    pub ran_on: String,
    pub threads: usize,
    pub predicted_peak_bytes: u64,
    pub seconds: Timings,
    pub scored: Scored,
    /// The model's shape as run, e.g. "3 layers x d_model 48, 4 heads, block 128".
    pub architecture: String,
    pub trainable_params: u64,
    pub non_embedding_params: u64,
    pub train_flops_per_token: f64,
    pub newllm: Option<NewLlmResult>,
}

/// How a run was scored on validation.
pub enum Scored {
    /// After every epoch; the best epoch's figures are the result's.
    Epochs(EpochProgress),
    /// Once, by a model without epochs.
    Once(Evaluation),
}

/// Trains and evaluates replicate `replicate` of `model` on one cell's split
/// (`cfg` is the replicate's config); its log and checkpoint go to `paths`
/// (the caller writes the result).
pub fn run_cell(
    model: ModelKind,
    cfg: &Config,
    replicate: usize,
    split: &Split,
    paths: &CellPaths,
) -> Result<CellResult> {
    let run = match model {
        ModelKind::NewLlm => newllm::cell::run(cfg, split, paths)?,
        ModelKind::Kn => kn::cell::run(cfg, split)?,
        ModelKind::Transformer => transformer::cell::run(cfg, split, paths)?,
    };
    Ok(record(model, cfg, replicate, split, run))
}

/// The result of `model`'s run on `split`: the common figures from the split
/// and the scores, the rest from the model.
pub fn record(
    model: ModelKind,
    cfg: &Config,
    replicate: usize,
    split: &Split,
    run: ModelRun,
) -> CellResult {
    let val_positions = split.val.len().saturating_sub(1);
    let (val_loss, val_acc, sample_losses, epochs, best_epoch, stop_epoch, early_stopped) =
        match run.scored {
            Scored::Epochs(p) => {
                let best = &p.epochs[p.best_epoch - 1];
                let (loss, acc) = (best.val_loss, best.val_acc);
                let stop = p.stop_epoch();
                (
                    loss,
                    acc,
                    p.best_sample_losses,
                    p.epochs,
                    p.best_epoch,
                    stop,
                    p.early_stopped,
                )
            }
            Scored::Once(e) => {
                let acc = e.correct as f64 / val_positions as f64;
                (e.loss, acc, e.sample_losses, Vec::new(), 0, 0, false)
            }
        };
    CellResult {
        model,
        replicate,
        ran_on: run.ran_on,
        precision_ran: match model {
            ModelKind::Kn => "n/a".into(),
            _ => cfg.precision.describe().into(),
        },
        samples: split.samples,
        train_tokens: split.train.len(),
        val_tokens: split.val.len(),
        val_ppl: val_loss.exp(),
        val_loss,
        val_acc,
        val_set: split.val_set_id(),
        val_sample_losses: sample_losses,
        val_sample_positions: split.val_positions_per_sample(),
        best_epoch,
        stop_epoch,
        early_stopped,
        epochs,
        seconds: run.seconds,
        threads: run.threads,
        predicted_peak_bytes: run.predicted_peak_bytes,
        measured_peak_bytes: crate::memory::peak_rss().unwrap_or(0),
        config: cfg.clone(),
        architecture: run.architecture,
        trainable_params: run.trainable_params,
        non_embedding_params: run.non_embedding_params,
        train_flops_per_token: run.train_flops_per_token,
        newllm: run.newllm,
    }
}
