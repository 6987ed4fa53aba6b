//! The scaling sweep (docs/algorithm.md section 7): one cell per sample count,
//! each re-seeded with a fresh model. Each finished cell is written
//! atomically before the next starts; a rerun skips finished cells; cells can
//! run as separate processes (`--cell INDEX`) into one shared directory, and
//! `report` merges whatever is there. A directory belongs to one config.

use super::cell::{load_cell_split, run_model_cell, summary_line};
use super::report::write_report;
use super::results::{analyse, SweepResults};
use crate::cell_result::CellResult;
use crate::claim::Claim;
use crate::config::Config;
use crate::io::write_atomic;
use crate::models::{self, replicate_config, CellPaths, ModelKind};
use anyhow::{bail, Context, Result};
use sha2::Digest;
use std::path::{Path, PathBuf};

/// Claims `dir` for `cfg`, or refuses if it holds another experiment's
/// cells (`Config::identity`: other sample counts or replicates are the same
/// experiment, grown). Returns the directory's config: `cfg` with the sample
/// counts and replicates of every sweep run into it so far, what the report
/// covers.
fn claim_dir(dir: &Path, cfg: &Config) -> Result<Config> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("config.json");
    let mut merged = cfg.clone();
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let old: Config = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a newllm config", path.display()))?;
        if old.identity() != cfg.identity() {
            let a = serde_json::to_value(old.identity())?;
            let b = serde_json::to_value(cfg.identity())?;
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
        // The runtime fields stay the first sweep's; the cells and seeds grow.
        merged = Config {
            sample_counts: union(&old.sample_counts, &cfg.sample_counts),
            replicates: old.replicates.max(cfg.replicates),
            ..old.clone()
        };
        if merged == old {
            return Ok(merged);
        }
    }
    write_atomic(&path, serde_json::to_string_pretty(&merged)?.as_bytes())?;
    Ok(merged)
}

/// The sample counts of both lists, ascending, each once.
fn union(a: &[usize], b: &[usize]) -> Vec<usize> {
    let mut all: Vec<usize> = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// A finished cell of `model`'s replicate under this config, if `dir` has one.
fn finished_cell(
    dir: &Path,
    cfg: &Config,
    model: ModelKind,
    samples: usize,
    replicate: usize,
) -> Option<CellResult> {
    let path = CellPaths::new(dir, model, samples, replicate).result;
    let text = std::fs::read_to_string(&path).ok()?;
    let r: CellResult = match serde_json::from_str(&text) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "{} is not a readable cell result ({e}); the cell will be run again",
                path.display()
            );
            return None;
        }
    };
    let want = replicate_config(cfg, replicate);
    (r.model == model && model.identity(&r.config) == model.identity(&want)).then_some(r)
}

/// Removes the state of a finished run, left when a kill landed between its
/// result and the state's removal; only under the run's claim, so never
/// from under a process still computing it.
fn remove_leftover_state(paths: &CellPaths) {
    if !paths.state.exists() {
        return;
    }
    if let Ok(claim) = Claim::take(&paths.claim, "a finished run") {
        if let Err(e) = crate::state::remove(&paths.state) {
            eprintln!("{e:#}");
        }
        claim.release();
    }
}

/// Every (model, replicate) a cell of `cfg` trains, New-LLM first.
fn cell_jobs(cfg: &Config) -> Vec<(ModelKind, usize)> {
    ModelKind::for_config(cfg)
        .into_iter()
        .flat_map(|m| m.replicates(cfg).map(move |r| (m, r)))
        .collect()
}

/// Where a sweep's runs live. A plain sweep keeps every model's runs in its
/// directory. A config of a grid (grid.rs) keeps New-LLM's in its own
/// directory and each baseline's in the grid's `baselines/<model>-<hash>/`,
/// one folder per distinct baseline configuration (`ModelKind::identity`),
/// computed by the first config of the grid that needs it and read by the
/// others, so a baseline trains once however many configs share it.
#[derive(Clone, Debug)]
pub struct Layout {
    pub dir: PathBuf,
    /// A grid's config: the grid's directory and the baselines this config computes.
    pub shared: Option<(PathBuf, Vec<ModelKind>)>,
}

impl Layout {
    pub fn single(dir: &Path) -> Layout {
        Layout {
            dir: dir.to_path_buf(),
            shared: None,
        }
    }

    /// The directory of `model`'s runs under `cfg`.
    pub fn model_dir(&self, model: ModelKind, cfg: &Config) -> PathBuf {
        match &self.shared {
            Some((grid, _)) if model != ModelKind::NewLlm => {
                grid.join("baselines").join(baseline_folder(model, cfg))
            }
            _ => self.dir.clone(),
        }
    }

    /// Whether this sweep computes `model`'s runs (or only reads them).
    fn computes(&self, model: ModelKind) -> bool {
        match &self.shared {
            Some((_, owned)) => model == ModelKind::NewLlm || owned.contains(&model),
            None => true,
        }
    }
}

/// `<model>-<hash of its identity>`: one folder per distinct baseline configuration.
pub fn baseline_folder(model: ModelKind, cfg: &Config) -> String {
    let id = model.identity(cfg).to_string();
    let digest = sha2::Sha256::digest(id.as_bytes());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{hex}", model.name())
}

/// Runs the sweep's cells (all, or only `only_cell`): every model and
/// replicate of each, skipping finished ones; when every cell is present,
/// writes results.json and the report.
pub fn run_sweep(
    cfg: &Config,
    dir: &Path,
    cache_dir: &Path,
    only_cell: Option<usize>,
) -> Result<Option<SweepResults>> {
    run_sweep_in(cfg, &Layout::single(dir), cache_dir, only_cell)
}

/// `run_sweep` with the runs where `layout` puts them.
pub fn run_sweep_in(
    cfg: &Config,
    layout: &Layout,
    cache_dir: &Path,
    only_cell: Option<usize>,
) -> Result<Option<SweepResults>> {
    crate::ops::set_threads(cfg.threads);
    // Fail before anything is written when the device cannot run here, or
    // the corpus cannot hold the largest cell beside a held-out validation set.
    models::check_device(cfg)?;
    let largest = cfg.sample_counts.iter().copied().max().unwrap_or(0);
    crate::data::check_fits(cfg, largest, cache_dir)?;
    let dir = &layout.dir;
    let merged = claim_dir(dir, cfg)?;
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
    let jobs = cell_jobs(cfg);
    for i in indices {
        let samples = cfg.sample_counts[i];
        let failed = |what: String| {
            format!(
                "cell {i} ({samples} samples, {what}) failed; finished cells are kept in {}",
                dir.display()
            )
        };
        // Loaded first: a finished run counts only if it was validated on
        // this cell's validation set (a corpus edited in place changes it).
        let (split, load_seconds) =
            load_cell_split(cfg, samples, cache_dir).with_context(|| failed("data".into()))?;
        let val_set = split.val_set_id();
        let finished_here = |m: ModelKind, r: usize| {
            let done = finished_cell(&layout.model_dir(m, cfg), cfg, m, samples, r)?;
            if done.val_set.is_empty() || done.val_set == val_set {
                return Some(done);
            }
            eprintln!(
                "cell {i}: {} replicate {r} was validated on {}, not this cell's {val_set}; it runs again",
                m.name(),
                done.val_set
            );
            None
        };
        let todo: Vec<(ModelKind, usize)> = jobs
            .iter()
            .copied()
            .filter(|&(m, _)| layout.computes(m))
            .filter(|&(m, r)| match finished_here(m, r) {
                Some(done) => {
                    eprintln!("cell {i} already has: {}", summary_line(&done));
                    let mdir = layout.model_dir(m, cfg);
                    remove_leftover_state(&CellPaths::new(&mdir, m, samples, r));
                    false
                }
                None => true,
            })
            .collect();
        if todo.is_empty() {
            continue;
        }
        eprintln!("== cell {i}: {samples} samples");
        for (model, r) in todo {
            let mdir = layout.model_dir(model, cfg);
            std::fs::create_dir_all(&mdir)
                .with_context(|| format!("cannot create {}", mdir.display()))?;
            let finished = || finished_here(model, r);
            let res = run_model_cell(model, cfg, r, &split, &mdir, load_seconds, Some(&finished))
                .with_context(|| failed(format!("{} replicate {r}", model.name())))?;
            eprintln!("{}", summary_line(&res));
        }
    }
    // The report covers every cell and seed the directory has been asked for.
    let (done, missing) = finished_runs(layout, &merged);
    if !missing.is_empty() {
        eprintln!(
            "still to run: {}; `newllm report {}` merges what is there",
            missing.join(", "),
            dir.display()
        );
        return Ok(None);
    }
    write_results(dir, &merged, &done).map(Some)
}

/// Every finished run of `cfg` where `layout` keeps it (each result file
/// read once), and the runs still missing, named.
fn finished_runs(layout: &Layout, cfg: &Config) -> (Vec<CellResult>, Vec<String>) {
    let (mut done, mut missing) = (Vec::new(), Vec::new());
    for &s in &cfg.sample_counts {
        for (m, r) in cell_jobs(cfg) {
            match finished_cell(&layout.model_dir(m, cfg), cfg, m, s, r) {
                Some(c) => done.push(c),
                None => missing.push(format!("{} {s} samples replicate {r}", m.name())),
            }
        }
    }
    (done, missing)
}

/// The config a sweep directory was claimed with (its config.json).
pub fn dir_config(dir: &Path) -> Result<Config> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} has no config.json: is it a sweep directory?",
            dir.display()
        )
    })?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a newllm config", path.display()))
}

/// Merges the finished runs of a sweep directory (`layout.dir`) into
/// results.json and report.md; None when it has no finished New-LLM run.
pub fn report_sweep(layout: &Layout) -> Result<Option<SweepResults>> {
    let cfg = dir_config(&layout.dir)?;
    let (cells, missing) = finished_runs(layout, &cfg);
    if !cells.iter().any(|c| c.model == ModelKind::NewLlm) {
        return Ok(None);
    }
    if !missing.is_empty() {
        eprintln!(
            "{}: report covers {} of {} runs",
            layout.dir.display(),
            cells.len(),
            cells.len() + missing.len()
        );
    }
    write_results(&layout.dir, &cfg, &cells).map(Some)
}

/// Analyses the runs and writes results.json and report.md.
fn write_results(dir: &Path, cfg: &Config, runs: &[CellResult]) -> Result<SweepResults> {
    let results = analyse(cfg, runs);
    write_atomic(
        &dir.join("results.json"),
        serde_json::to_string_pretty(&results)?.as_bytes(),
    )?;
    write_report(dir, &results)?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::scratch;

    fn cfg() -> Config {
        Config {
            sample_counts: vec![4, 8],
            threads: 2,
            ..Config::default()
        }
    }

    #[test]
    fn claim_dir_writes_the_config_then_accepts_only_the_same_experiment() {
        let d = scratch("claim");
        let dir = d.0.join("out");
        claim_dir(&dir, &cfg()).unwrap();
        let saved: Config =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(saved, cfg());
        // another process with other threads / device runs the same experiment
        let other_runtime = Config {
            threads: 7,
            device: crate::config::Device::Cuda,
            ..cfg()
        };
        claim_dir(&dir, &other_runtime).unwrap();
        let again: Config =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(again, cfg(), "an accepted claim keeps the first config");
        // a result-changing field differs: refused, naming that field only
        let other = Config {
            dist_reg_weight: 0.5,
            threads: 7,
            ..cfg()
        };
        let err = claim_dir(&dir, &other).unwrap_err().to_string();
        assert!(err.contains("different config"), "{err}");
        assert!(
            err.contains("(dist_reg_weight: 0.8 there, 0.5 now)"),
            "{err}"
        );
        assert!(!err.contains("threads"), "{err}");
    }

    #[test]
    fn claim_dir_refuses_a_foreign_config_file() {
        let d = scratch("foreign");
        std::fs::create_dir_all(&d.0).unwrap();
        std::fs::write(d.0.join("config.json"), "{\"no_such_field\": 1}").unwrap();
        let err = format!("{:#}", claim_dir(&d.0, &cfg()).unwrap_err());
        assert!(err.contains("is not a newllm config"), "{err}");
    }

    #[test]
    fn finished_cell_only_counts_results_of_the_same_experiment() {
        let d = scratch("finished");
        std::fs::create_dir_all(&d.0).unwrap();
        let write = |config: Config| {
            let r = CellResult {
                samples: 4,
                val_ppl: 12.5,
                config,
                ..CellResult::default()
            };
            let path = CellPaths::new(&d.0, ModelKind::NewLlm, 4, 0).result;
            std::fs::write(path, serde_json::to_string(&r).unwrap()).unwrap();
        };
        assert!(
            finished_cell(&d.0, &cfg(), ModelKind::NewLlm, 4, 0).is_none(),
            "nothing there yet"
        );
        write(Config {
            threads: 1,
            ..cfg()
        });
        assert_eq!(
            finished_cell(&d.0, &cfg(), ModelKind::NewLlm, 4, 0)
                .unwrap()
                .val_ppl,
            12.5
        );
        assert!(finished_cell(&d.0, &cfg(), ModelKind::NewLlm, 8, 0).is_none());
        write(Config {
            phase2_patience: 3,
            ..cfg()
        });
        assert!(finished_cell(&d.0, &cfg(), ModelKind::NewLlm, 4, 0).is_none());
        std::fs::write(
            CellPaths::new(&d.0, ModelKind::NewLlm, 4, 0).result,
            "{ half a fi",
        )
        .unwrap();
        assert!(finished_cell(&d.0, &cfg(), ModelKind::NewLlm, 4, 0).is_none());
    }

    #[test]
    fn a_cell_index_out_of_range_is_refused_with_the_valid_range() {
        let d = scratch("range");
        let err = run_sweep(&cfg(), &d.0, &d.0.join("cache"), Some(2))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--cell 2 is out of range: the sweep has 2 cells (0..1)"
        );
    }
}
