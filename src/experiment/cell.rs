//! One cell of the experiment: load the first `samples` samples' split,
//! check it, hand it to the model, and write the result atomically.

use crate::cell_result::CellResult;
use crate::config::Config;
use crate::data::load_split;
use crate::io::write_atomic;
use crate::models::{self, check_split, CellPaths};
use anyhow::{Context, Result};
use std::path::Path;
use std::time::Instant;

/// Runs one cell on the first `samples` samples of the configured corpus.
/// Prints progress lines; writes the log, checkpoint and result under `dir`.
pub fn run_cell(cfg: &Config, samples: usize, dir: &Path, cache_dir: &Path) -> Result<CellResult> {
    crate::ops::set_threads(cfg.threads);
    models::check_device(cfg)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let paths = CellPaths::new(dir, samples);
    let t = Instant::now();
    let split = load_split(&cfg.corpus, samples, cfg.val_fraction, cache_dir)?;
    check_split(cfg, &split)?;
    let load_seconds = t.elapsed().as_secs_f64();
    let mut result = models::run_cell(cfg, samples, &split, &paths)?;
    result.seconds.add("data", load_seconds);
    result.seconds.add("total", load_seconds);
    write_atomic(
        &paths.result,
        serde_json::to_string_pretty(&result)?.as_bytes(),
    )?;
    Ok(result)
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
    format!(
        "{} | samples {} | tokens {} | Val PPL {:.1} | Val Acc {:.1}%{er} | best epoch {}/{} | {:.1}s",
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
