//! The scaling sweep (ALGORITHM.md section 7): one cell per sample count,
//! each re-seeded with a fresh model. Each finished cell is written
//! atomically before the next starts; a rerun skips finished cells; cells can
//! run as separate processes (`--cell INDEX`) into one shared directory, and
//! `report` merges whatever is there. A directory belongs to one config.

use super::cell::{run_cell, summary_line};
use super::report::{write_compare_report, write_report};
use super::results::{analyse, SweepResults};
use crate::cell_result::CellResult;
use crate::config::Config;
use crate::io::write_atomic;
use crate::models::CellPaths;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The config with the fields that do not change results blanked, for the
/// "same experiment?" check (thread count and device may differ per process).
fn experiment_identity(cfg: &Config) -> Config {
    Config {
        threads: 0,
        device: String::new(),
        ..cfg.clone()
    }
}

/// Claims `dir` for `cfg`, or refuses if it holds another config's cells.
fn claim_dir(dir: &Path, cfg: &Config) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("config.json");
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let old: Config = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a newllm config", path.display()))?;
        if experiment_identity(&old) != experiment_identity(cfg) {
            let a = serde_json::to_value(experiment_identity(&old))?;
            let b = serde_json::to_value(experiment_identity(cfg))?;
            let diff: Vec<String> = a
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| b.get(k.as_str()) != Some(v))
                .map(|(k, v)| {
                    format!(
                        "{k}: {v} there, {} now",
                        b.get(k.as_str()).unwrap_or(&serde_json::Value::Null)
                    )
                })
                .collect();
            bail!(
                "{} already holds a sweep with a different config ({}); use another --out directory or the same settings",
                dir.display(),
                diff.join("; ")
            );
        }
        return Ok(());
    }
    write_atomic(&path, serde_json::to_string_pretty(cfg)?.as_bytes())
}

/// A finished cell of this config, if `dir` has one.
fn finished_cell(dir: &Path, cfg: &Config, samples: usize) -> Option<CellResult> {
    let text = std::fs::read_to_string(CellPaths::new(dir, samples).result).ok()?;
    let r: CellResult = serde_json::from_str(&text).ok()?;
    (experiment_identity(&r.config) == experiment_identity(cfg)).then_some(r)
}

/// Runs the sweep's cells (all, or only `only_cell`), skipping finished ones;
/// when every cell is present, writes results.json and the report.
pub fn run_sweep(
    cfg: &Config,
    dir: &Path,
    cache_dir: &Path,
    only_cell: Option<usize>,
) -> Result<Option<SweepResults>> {
    claim_dir(dir, cfg)?;
    let indices: Vec<usize> = match only_cell {
        Some(i) if i >= cfg.sample_counts.len() => {
            bail!(
                "--cell {i} is out of range: the sweep has {} cells (0..{})",
                cfg.sample_counts.len(),
                cfg.sample_counts.len() - 1
            )
        }
        Some(i) => vec![i],
        None => (0..cfg.sample_counts.len()).collect(),
    };
    for i in indices {
        let samples = cfg.sample_counts[i];
        if let Some(r) = finished_cell(dir, cfg, samples) {
            eprintln!(
                "cell {i} ({samples} samples) already finished, skipping: {}",
                summary_line(&r)
            );
            continue;
        }
        eprintln!("== cell {i}: {samples} samples");
        let r = run_cell(cfg, samples, dir, cache_dir).with_context(|| {
            format!(
                "cell {i} ({samples} samples) failed; finished cells are kept in {}",
                dir.display()
            )
        })?;
        eprintln!("{}", summary_line(&r));
    }
    let missing: Vec<usize> = cfg
        .sample_counts
        .iter()
        .copied()
        .filter(|&s| finished_cell(dir, cfg, s).is_none())
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "cells still to run: samples {missing:?}; `newllm report {}` merges what is there",
            dir.display()
        );
        return Ok(None);
    }
    report_dir(dir).map(Some)
}

/// Merges the finished cells in `dir` into results.json and report.md.
pub fn report_dir(dir: &Path) -> Result<SweepResults> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} has no config.json: is it a sweep directory?",
            dir.display()
        )
    })?;
    let cfg: Config = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a newllm config", path.display()))?;
    let cells: Vec<CellResult> = cfg
        .sample_counts
        .iter()
        .filter_map(|&s| finished_cell(dir, &cfg, s))
        .collect();
    if cells.is_empty() {
        bail!("{} has no finished cells yet", dir.display());
    }
    if cells.len() < cfg.sample_counts.len() {
        eprintln!(
            "report covers {} of {} cells",
            cells.len(),
            cfg.sample_counts.len()
        );
    }
    let results = analyse(&cfg, &cells);
    write_atomic(
        &dir.join("results.json"),
        serde_json::to_string_pretty(&results)?.as_bytes(),
    )?;
    write_report(dir, &results)?;
    Ok(results)
}

/// One side of a comparison: a label and its config.
pub fn vary_sides(base: &Config, vary: &str) -> Result<Vec<(String, Config)>> {
    let (key, values) = vary
        .split_once('=')
        .with_context(|| format!("--vary {vary:?}: expected key=v1,v2"))?;
    let values: Vec<&str> = values
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    if values.len() < 2 {
        bail!("--vary {vary:?}: give at least two values, e.g. {key}=true,false");
    }
    values
        .iter()
        .map(|v| {
            let mut cfg = base.clone();
            cfg.apply_overrides(&[format!("{key}={v}")])?;
            Ok((format!("{key}={v}"), cfg))
        })
        .collect()
}

/// Runs the same cells under each side's config (same data, same seeds) in
/// `dir/<label>/`, then writes one side-by-side report `dir/compare.md`.
pub fn run_compare(
    sides: &[(String, Config)],
    dir: &Path,
    cache_dir: &Path,
) -> Result<Vec<(String, SweepResults)>> {
    let mut done = Vec::new();
    for (label, cfg) in sides {
        let sub: PathBuf = dir.join(label.replace(['/', ' '], "_"));
        eprintln!("==== side {label}");
        match run_sweep(cfg, &sub, cache_dir, None)? {
            Some(r) => done.push((label.clone(), r)),
            None => bail!("side {label} did not finish all cells"),
        }
    }
    write_compare_report(dir, &done)?;
    Ok(done)
}
