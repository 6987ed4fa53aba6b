//! Grids of configs (`newllm compare`): the cartesian product of one or
//! more `--vary key=v1,v2,...` axes (or a list of presets), each config a
//! full sweep in its own sub-directory, resumable like any sweep. The grid's
//! `grid.json` names the configs in order; baselines run once per distinct
//! baseline configuration, in `baselines/` (sweep.rs, `Layout`), by the
//! first config that needs each. A Slurm array can run one config
//! (`--config I`) or one config's cell (`--cell J`) per task; `newllm
//! report DIR` then merges: every config's report and `compare.md`.

use super::report::compare::GridShape;
use super::report::write_compare_report;
use super::results::SweepResults;
use super::sweep::{dir_config, report_sweep, run_sweep_in, Layout};
use crate::config::Config;
use crate::io::write_atomic;
use crate::models::ModelKind;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One varied setting and its values, in the order given.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Axis {
    pub key: String,
    pub values: Vec<String>,
}

/// One config of the grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Side {
    /// `key=value` per axis, joined by ", " (its sub-directory's name, made safe).
    pub label: String,
    /// The value of each axis, in axis order.
    pub values: Vec<String>,
    pub config: Config,
}

impl Side {
    pub fn dir(&self, grid: &Path) -> PathBuf {
        grid.join(self.label.replace(['/', ' '], "_").replace(",_", ","))
    }
}

/// The configs of a comparison, in order (the first axis varies slowest).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Grid {
    pub axes: Vec<Axis>,
    pub sides: Vec<Side>,
}

impl Grid {
    /// The cartesian product of `varies` ("key=v1,v2,...", each at least two
    /// values) over `base`.
    pub fn vary(base: &Config, varies: &[String]) -> Result<Grid> {
        if varies.is_empty() {
            bail!("compare needs --vary key=v1,v2 (repeatable) or --presets a,b");
        }
        let mut axes: Vec<Axis> = Vec::new();
        for vary in varies {
            let (key, values) = vary
                .split_once('=')
                .with_context(|| format!("--vary {vary:?}: expected key=v1,v2"))?;
            let key = key.trim().to_string();
            let values: Vec<String> = values
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(String::from)
                .collect();
            if values.len() < 2 {
                bail!("--vary {vary:?}: give at least two values, e.g. {key}=true,false");
            }
            if axes.iter().any(|a| a.key == key) {
                bail!("--vary names {key:?} twice; give all its values in one --vary");
            }
            axes.push(Axis { key, values });
        }
        let mut sides = vec![(Vec::<String>::new(), base.clone())];
        for axis in &axes {
            let mut next = Vec::new();
            for (values, cfg) in &sides {
                for v in &axis.values {
                    let mut cfg = cfg.clone();
                    cfg.apply_overrides(&[format!("{}={v}", axis.key)])?;
                    let mut values = values.clone();
                    values.push(v.clone());
                    next.push((values, cfg));
                }
            }
            sides = next;
        }
        let sides = sides
            .into_iter()
            .map(|(values, config)| Side {
                label: axes
                    .iter()
                    .zip(&values)
                    .map(|(a, v)| format!("{}={v}", a.key))
                    .collect::<Vec<_>>()
                    .join(", "),
                values,
                config,
            })
            .collect();
        Ok(Grid { axes, sides })
    }

    /// One axis of presets: (name, config) each.
    pub fn presets(presets: Vec<(String, Config)>) -> Grid {
        Grid {
            axes: vec![Axis {
                key: "preset".into(),
                values: presets.iter().map(|(n, _)| n.clone()).collect(),
            }],
            sides: presets
                .into_iter()
                .map(|(name, config)| Side {
                    label: name.clone(),
                    values: vec![name],
                    config,
                })
                .collect(),
        }
    }

    /// The baselines config `i` computes: those no earlier config shares.
    fn owned_baselines(&self, i: usize) -> Vec<ModelKind> {
        let cfg = &self.sides[i].config;
        ModelKind::for_config(cfg)
            .into_iter()
            .filter(|&m| m != ModelKind::NewLlm)
            .filter(|&m| {
                !self.sides[..i].iter().any(|s| {
                    ModelKind::for_config(&s.config).contains(&m)
                        && m.identity(&s.config) == m.identity(cfg)
                })
            })
            .collect()
    }

    /// Where config `i`'s runs live in a grid at `dir`.
    pub fn layout(&self, dir: &Path, i: usize) -> Layout {
        Layout {
            dir: self.sides[i].dir(dir),
            shared: Some((dir.to_path_buf(), self.owned_baselines(i))),
        }
    }
}

/// Writes `dir/grid.json` for `grid`, or checks that the one there is the
/// same grid: the same axes and, per label, the same experiment
/// (`Config::identity`; sample counts and replicates may grow). Configs new
/// to it are appended, so an earlier config keeps computing the baselines
/// it computed. Returns the grid as stored.
fn claim_grid(dir: &Path, grid: &Grid) -> Result<Grid> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("grid.json");
    let mut stored = match read_grid(dir)? {
        Some(old) => old,
        None => Grid {
            axes: grid.axes.clone(),
            sides: Vec::new(),
        },
    };
    let keys = |g: &Grid| g.axes.iter().map(|a| a.key.clone()).collect::<Vec<_>>();
    if keys(&stored) != keys(grid) {
        bail!(
            "{} holds a comparison over {:?}, not {:?}: use another --out directory",
            dir.display(),
            keys(&stored),
            keys(grid)
        );
    }
    for side in &grid.sides {
        match stored.sides.iter_mut().find(|s| s.label == side.label) {
            Some(old) if old.config.identity() != side.config.identity() => bail!(
                "{} holds config `{}` with other settings than now: use another --out directory or the same settings",
                dir.display(),
                side.label
            ),
            Some(old) => old.config = side.config.clone(),
            None => stored.sides.push(side.clone()),
        }
    }
    for (axis, stored_axis) in grid.axes.iter().zip(stored.axes.iter_mut()) {
        for v in &axis.values {
            if !stored_axis.values.contains(v) {
                stored_axis.values.push(v.clone());
            }
        }
    }
    write_atomic(&path, serde_json::to_string_pretty(&stored)?.as_bytes())?;
    Ok(stored)
}

/// The grid a directory holds, if it is one.
fn read_grid(dir: &Path) -> Result<Option<Grid>> {
    let path = dir.join("grid.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .map(Some)
        .with_context(|| format!("{} is not a newllm grid", path.display()))
}

/// Runs the grid's configs (all, or only `only_config`), each a sweep of
/// all cells (or only `only_cell`) in its sub-directory, then writes every
/// config's report and `dir/compare.md` over the configs that finished.
/// None when some run is still missing (another task's).
pub fn run_grid(
    grid: &Grid,
    dir: &Path,
    cache_dir: &Path,
    only_config: Option<usize>,
    only_cell: Option<usize>,
) -> Result<Option<Vec<(String, SweepResults)>>> {
    if let Some(i) = only_config.filter(|&i| i >= grid.sides.len()) {
        bail!(
            "--config {i} is out of range: the comparison has {} configs (0..{})",
            grid.sides.len(),
            grid.sides.len() - 1
        );
    }
    // Every config refused before any is run: a bad one stops nothing midway.
    for side in &grid.sides {
        crate::models::check_device(&side.config)?;
        let largest = side.config.sample_counts.iter().copied().max().unwrap_or(0);
        crate::data::check_fits(&side.config, largest, cache_dir)
            .with_context(|| format!("config `{}`", side.label))?;
    }
    let stored = claim_grid(dir, grid)?;
    let mut complete = true;
    for (i, side) in grid.sides.iter().enumerate() {
        if only_config.is_some_and(|o| o != i) {
            continue;
        }
        let at = stored
            .sides
            .iter()
            .position(|s| s.label == side.label)
            .expect("claim_grid stores every side");
        eprintln!("==== config {i}: {}", side.label);
        let done = run_sweep_in(&side.config, &stored.layout(dir, at), cache_dir, only_cell)
            .with_context(|| format!("config `{}`", side.label))?;
        complete &= done.is_some();
    }
    let merged = report_grid(dir, &stored)?;
    Ok((complete && merged.len() == stored.sides.len()).then_some(merged))
}

/// Rewrites every config's report from what is finished, then compare.md.
fn report_grid(dir: &Path, grid: &Grid) -> Result<Vec<(String, SweepResults)>> {
    let mut done = Vec::new();
    for (i, side) in grid.sides.iter().enumerate() {
        let layout = grid.layout(dir, i);
        if !layout.dir.join("config.json").exists() {
            eprintln!("config `{}` has not started", side.label);
            continue;
        }
        match report_sweep(&layout)? {
            Some(r) => done.push((side.label.clone(), r)),
            None => eprintln!("config `{}` has no finished New-LLM runs yet", side.label),
        }
    }
    if done.is_empty() {
        bail!("{} has no finished New-LLM runs yet", dir.display());
    }
    let shape = GridShape {
        axes: grid
            .axes
            .iter()
            .map(|a| (a.key.clone(), a.values.clone()))
            .collect(),
        values: done
            .iter()
            .map(|(label, _)| {
                grid.sides
                    .iter()
                    .find(|s| &s.label == label)
                    .map_or_else(Vec::new, |s| s.values.clone())
            })
            .collect(),
    };
    write_compare_report(dir, &shape, &done)?;
    Ok(done)
}

/// `newllm report DIR`: a grid (every config's report and compare.md), one
/// config of a grid (its report, with the grid's shared baselines), or a
/// plain sweep.
pub fn report_dir(dir: &Path) -> Result<Vec<(String, SweepResults)>> {
    if let Some(grid) = read_grid(dir)? {
        return report_grid(dir, &grid);
    }
    let layout = grid_layout_of(dir)?.unwrap_or_else(|| Layout::single(dir));
    let label = dir_config(dir).map(|_| dir.display().to_string())?;
    match report_sweep(&layout)? {
        Some(r) => Ok(vec![(label, r)]),
        None => bail!("{} has no finished New-LLM cells yet", dir.display()),
    }
}

/// The layout of `dir` when it is one config of a grid (its parent holds
/// the grid.json naming it).
fn grid_layout_of(dir: &Path) -> Result<Option<Layout>> {
    let Some(parent) = dir.parent() else {
        return Ok(None);
    };
    let Some(grid) = read_grid(parent)? else {
        return Ok(None);
    };
    let name = dir.file_name();
    Ok(grid
        .sides
        .iter()
        .position(|s| s.dir(parent).file_name() == name)
        .map(|i| grid.layout(parent, i)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config {
            sample_counts: vec![4, 8],
            threads: 2,
            ..Config::default()
        }
    }

    #[test]
    fn one_axis_builds_one_config_per_value() {
        let g = Grid::vary(&cfg(), &["phase2_patience=1, 3,".into()]).unwrap();
        let labels: Vec<&str> = g.sides.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, vec!["phase2_patience=1", "phase2_patience=3"]);
        assert_eq!(g.sides[0].config.phase2_patience, 1);
        assert_eq!(
            g.sides[1].config,
            Config {
                phase2_patience: 3,
                ..cfg()
            }
        );
        let g = Grid::vary(&cfg(), &["token_input_all_layers=true,false".into()]).unwrap();
        assert!(
            g.sides[0].config.token_input_all_layers && !g.sides[1].config.token_input_all_layers
        );
    }

    #[test]
    fn several_axes_are_their_cartesian_product() {
        let g = Grid::vary(
            &cfg(),
            &["num_layers=1,2,3".into(), "num_input_tokens=1,2,3".into()],
        )
        .unwrap();
        assert_eq!(g.sides.len(), 9);
        assert_eq!(g.axes[1].values, vec!["1", "2", "3"]);
        assert_eq!(g.sides[0].label, "num_layers=1, num_input_tokens=1");
        assert_eq!(g.sides[5].label, "num_layers=2, num_input_tokens=3");
        assert_eq!(g.sides[5].values, vec!["2", "3"]);
        assert_eq!(
            (
                g.sides[5].config.num_layers,
                g.sides[5].config.num_input_tokens
            ),
            (2, 3)
        );
        assert_eq!(
            g.sides[5].dir(Path::new("/g")),
            Path::new("/g/num_layers=2,num_input_tokens=3")
        );
    }

    /// The n-gram does not read New-LLM's settings: one run for the whole
    /// grid; the transformer's size rule does read num_layers: one per
    /// layer count, shared by the configs that agree on it.
    #[test]
    fn baselines_are_computed_by_the_first_config_that_needs_each() {
        let g = Grid::vary(
            &cfg(),
            &[
                "num_layers=1,2".into(),
                "phase1_learning_rate=0.002,0.004".into(),
            ],
        )
        .unwrap();
        let owned: Vec<Vec<ModelKind>> = (0..4).map(|i| g.owned_baselines(i)).collect();
        assert_eq!(
            owned,
            vec![
                vec![ModelKind::Kn, ModelKind::Transformer],
                vec![],
                vec![ModelKind::Transformer],
                vec![],
            ]
        );
        let dir = Path::new("/g");
        let (a, b) = (g.layout(dir, 0), g.layout(dir, 1));
        assert_eq!(
            a.dir,
            Path::new("/g/num_layers=1,phase1_learning_rate=0.002")
        );
        for m in [ModelKind::Kn, ModelKind::Transformer] {
            assert_eq!(
                a.model_dir(m, &g.sides[0].config),
                b.model_dir(m, &g.sides[1].config)
            );
        }
        let t = |i: usize| {
            g.layout(dir, i)
                .model_dir(ModelKind::Transformer, &g.sides[i].config)
        };
        assert_ne!(t(0), t(2));
        assert!(
            t(0).starts_with("/g/baselines/") && t(0).to_string_lossy().contains("transformer-")
        );
    }

    #[test]
    fn grid_errors_are_clear() {
        let err = |v: &[&str]| {
            let v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
            Grid::vary(&cfg(), &v).unwrap_err().to_string()
        };
        assert_eq!(
            err(&["phase2_patience=3"]),
            "--vary \"phase2_patience=3\": give at least two values, e.g. phase2_patience=true,false"
        );
        assert_eq!(
            err(&["phase2_patience"]),
            "--vary \"phase2_patience\": expected key=v1,v2"
        );
        assert!(err(&["no_such=1,2"]).contains("unknown config field \"no_such\""));
        assert!(err(&["phase2_batch_size=8,0"]).contains("phase2_batch_size must be at least 1"));
        assert_eq!(
            err(&["num_layers=1,2", "num_layers=3,4"]),
            "--vary names \"num_layers\" twice; give all its values in one --vary"
        );
    }
}
