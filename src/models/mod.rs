//! The models the experiment trains, each in its own folder, top to bottom.
//! Every model has one entry point that trains and evaluates one cell on a
//! given train/validation split and returns a `CellResult`; the experiment
//! code (sweep, results, statistics, plots, report) sees nothing else.

pub mod newllm;

use crate::cell_result::CellResult;
use crate::config::Config;
use crate::data::Split;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

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

/// Trains and evaluates the configured model on one cell's split; its log
/// and checkpoint go to `paths` (the caller writes the result).
pub fn run_cell(
    cfg: &Config,
    samples: usize,
    split: &Split,
    paths: &CellPaths,
) -> Result<CellResult> {
    newllm::cell::run(cfg, samples, split, paths)
}
