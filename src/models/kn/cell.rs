//! One Kneser-Ney cell: count the training stream, score the validation
//! stream position by position (history from the validation stream only, as
//! New-LLM's validation pass starts from a zero context).

use super::model::KneserNey;
use crate::cell_result::{CellResult, Timings};
use crate::config::Config;
use crate::data::Split;
use crate::memory::{gib, peak_rss, refuse_if_too_big};
use anyhow::Result;
use std::time::Instant;

/// Builds the model on `split.train` and evaluates it on every position of
/// `split.val` (the positions New-LLM is scored on).
pub fn run(cfg: &Config, samples: usize, split: &Split) -> Result<CellResult> {
    let t_all = Instant::now();
    let (n, m) = (split.train.len(), split.val.len());
    let predicted = KneserNey::predict_bytes(n, cfg.kn_order, cfg.vocab_size);
    eprintln!(
        "kn cell {samples} samples: order {}, {n} train / {m} val tokens, predicted peak memory {}",
        cfg.kn_order,
        gib(predicted)
    );
    refuse_if_too_big(predicted, "use fewer samples or a lower kn_order")?;
    let t = Instant::now();
    let lm = KneserNey::train(&split.train, cfg.kn_order, cfg.vocab_size)?;
    let build = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let eval = lm.evaluate(&split.val)?;
    let evaluate = t.elapsed().as_secs_f64();
    let mut seconds = Timings::default();
    seconds.add("build", build);
    seconds.add("evaluate", evaluate);
    seconds.add("total", t_all.elapsed().as_secs_f64());
    Ok(CellResult {
        model: "kn".into(),
        replicate: 0,
        ran_on: "cpu".into(),
        samples,
        train_tokens: n,
        val_tokens: m,
        val_ppl: eval.ppl(),
        val_loss: eval.total_log_loss / eval.positions as f64,
        val_acc: eval.acc(),
        best_epoch: 0,
        stop_epoch: 0,
        early_stopped: false,
        epochs: Vec::new(),
        seconds,
        threads: 1,
        predicted_peak_bytes: predicted,
        measured_peak_bytes: peak_rss().unwrap_or(0),
        config: cfg.clone(),
        // Counts, not trained weights: nothing comparable to report.
        architecture: format!("order {}", cfg.kn_order),
        trainable_params: 0,
        non_embedding_params: 0,
        train_flops_per_token: 0.0,
        newllm: None,
    })
}
