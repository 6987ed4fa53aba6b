//! The models the experiment trains, each in its own folder, top to bottom.
//! Every model has one entry point that trains and evaluates one cell on a
//! given train/validation split and returns a `CellResult`; the experiment
//! code (sweep, results, statistics, plots, report) sees nothing else.

pub mod kn;
pub mod newllm;
pub mod transformer;

use crate::cell_result::CellResult;
use crate::config::Config;
use crate::data::Split;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// A model the experiment can train on a cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    NewLlm,
    /// Interpolated modified Kneser-Ney n-gram (`kn/`).
    Kn,
    /// GPT-2-style decoder (`transformer/`).
    Transformer,
}

impl ModelKind {
    /// The name results and configs use.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::NewLlm => "newllm",
            ModelKind::Kn => "kn",
            ModelKind::Transformer => "transformer",
        }
    }

    /// The name a report shows.
    pub fn label(self) -> &'static str {
        match self {
            ModelKind::NewLlm => "New-LLM",
            ModelKind::Kn => "Kneser-Ney",
            ModelKind::Transformer => "Transformer",
        }
    }

    pub fn from_name(name: &str) -> Option<ModelKind> {
        [ModelKind::NewLlm, ModelKind::Kn, ModelKind::Transformer]
            .into_iter()
            .find(|k| k.name() == name)
    }

    /// Whether a run depends on the seed (a deterministic model runs once
    /// per cell, whatever `replicates` says).
    pub fn seeded(self) -> bool {
        self != ModelKind::Kn
    }

    /// The models a config trains on every cell: New-LLM, then its baselines.
    pub fn for_config(cfg: &Config) -> Vec<ModelKind> {
        std::iter::once(ModelKind::NewLlm)
            .chain(cfg.baselines.iter().filter_map(|b| ModelKind::from_name(b)))
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
/// cannot run here (no GPU build, no driver).
pub fn check_device(cfg: &Config) -> Result<()> {
    newllm::engine::for_config(cfg).map(drop)
}

/// Trains and evaluates `model` on one cell's split (with the replicate's
/// config); its log and checkpoint go to `paths` (the caller writes the
/// result).
pub fn run_cell(
    model: ModelKind,
    cfg: &Config,
    samples: usize,
    split: &Split,
    paths: &CellPaths,
) -> Result<CellResult> {
    match model {
        ModelKind::NewLlm => newllm::cell::run(cfg, samples, split, paths),
        ModelKind::Kn => kn::cell::run(cfg, samples, split),
        ModelKind::Transformer => transformer::cell::run(cfg, samples, split, paths),
    }
}
