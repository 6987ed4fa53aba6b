//! One cell of the experiment: load the first `samples` samples' split,
//! check it, hand it to a model, and write the result atomically.

use crate::cell_result::CellResult;
use crate::claim::Claim;
use crate::config::Config;
use crate::data::{load_split, Split, Validation};
use crate::io::write_atomic;
use crate::models::{self, check_split, replicate_config, CellPaths, ModelKind};
use anyhow::{Context, Result};
use std::path::Path;
use std::time::Instant;

/// The split of a cell with `samples` samples, checked against the config,
/// and the seconds it took to load.
pub fn load_cell_split(cfg: &Config, samples: usize, cache_dir: &Path) -> Result<(Split, f64)> {
    let t = Instant::now();
    let split = load_split(&cfg.corpus, samples, Validation::of(cfg), cache_dir)?;
    check_split(cfg, &split)?;
    Ok((split, t.elapsed().as_secs_f64()))
}

/// Trains replicate `replicate` of `model` on a loaded split and writes its
/// result to `dir`; `load_seconds` is added to the result's data stage. The
/// run is claimed first (one live process per run), and continues from its
/// state if an interrupted run left one; once the result is written the
/// state and the claim are removed. `finished` (the sweep's) returns a
/// result another process wrote before the claim, which is then kept.
pub fn run_model_cell(
    model: ModelKind,
    cfg: &Config,
    replicate: usize,
    split: &Split,
    dir: &Path,
    load_seconds: f64,
    finished: Option<&dyn Fn() -> Option<CellResult>>,
) -> Result<CellResult> {
    let paths = CellPaths::new(dir, model, split.samples, replicate);
    let what = format!(
        "cell {} samples ({} replicate {replicate})",
        split.samples,
        model.name()
    );
    // A stop that came while the previous run or the data finished.
    crate::stop::check(|| "between runs, with nothing to save".into())?;
    let claim = Claim::take(&paths.claim, &what)?;
    if let Some(done) = finished.and_then(|f| f()) {
        claim.release();
        return Ok(done);
    }
    // Left by a process killed while writing them.
    for p in [&paths.checkpoint, &paths.result, &paths.log, &paths.state] {
        crate::io::remove_tmp_files(p);
    }
    let run_cfg = replicate_config(cfg, replicate);
    let mut result = models::run_cell(model, &run_cfg, replicate, split, &paths)?;
    result.seconds.add("data", load_seconds);
    result.seconds.add("total", load_seconds);
    write_atomic(
        &paths.result,
        serde_json::to_string_pretty(&result)?.as_bytes(),
    )?;
    crate::state::remove(&paths.state)?;
    claim.release();
    Ok(result)
}

/// Runs replicate 0 of `model` on the first `samples` samples of the
/// configured corpus (`newllm train`). Prints progress lines; writes the
/// log, checkpoint and result under `dir`.
pub fn run_cell(
    model: ModelKind,
    cfg: &Config,
    samples: usize,
    dir: &Path,
    cache_dir: &Path,
) -> Result<CellResult> {
    crate::ops::set_threads(cfg.threads);
    models::check_device(cfg)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (split, load_seconds) = load_cell_split(cfg, samples, cache_dir)?;
    run_model_cell(model, cfg, 0, &split, dir, load_seconds, None)
}

/// One line per cell, like the seed's summary table (ER where the model has it).
pub fn summary_line(r: &CellResult) -> String {
    let er = r.newllm.as_ref().map_or(String::new(), |n| {
        format!(
            " | Train ER {:.1}% | Val ER {:.1}%",
            100.0 * n.train_er,
            100.0 * n.val_er
        )
    });
    let seed = if r.replicate > 0 {
        format!(" (replicate {}, seed {})", r.replicate, r.config.seed)
    } else {
        String::new()
    };
    format!(
        "{}{seed} | samples {} | tokens {} | Val PPL {:.1} | Val Acc {:.1}%{er} | best epoch {}/{} | {:.1}s",
        r.model,
        r.samples,
        r.train_tokens,
        r.val_ppl,
        100.0 * r.val_acc,
        r.best_epoch,
        r.stop_epoch,
        r.seconds.total()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device that cannot run here is refused before anything is read or
    /// written (without the cuda feature: the rebuild hint; with it but no
    /// driver: the driver message).
    #[test]
    fn an_unusable_device_is_refused_before_any_file_is_written() {
        let cfg = Config {
            device: crate::config::Device::Cuda,
            ..Config::default()
        };
        let Err(want) = crate::models::check_device(&cfg) else {
            eprintln!("skipped: this machine can run device = \"cuda\"");
            return;
        };
        let dir = std::env::temp_dir().join(format!("newllm-nodevice-{}", std::process::id()));
        let err = run_cell(ModelKind::NewLlm, &cfg, 1, &dir, &dir).unwrap_err();
        assert_eq!(err.to_string(), want.to_string());
        assert!(!dir.exists(), "nothing is written before the device check");
        let err = crate::bench::run(&cfg, 8, 2, &dir).unwrap_err();
        assert_eq!(err.to_string(), want.to_string());
    }
}
