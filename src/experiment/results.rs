//! A whole sweep's results: every cell plus the analysis of docs/algorithm.md
//! section 7, written as `results.json` and read back by `report`/`compare`.

use crate::cell_result::CellResult;
use crate::config::{Config, ValMode};
use crate::experiment::laws::{
    alpha_trend, compare_laws, extrapolate, leave_last_out, window_alphas, AlphaTrend,
    Extrapolation, Holdout, Law, LawComparison, WindowAlpha,
};
use crate::experiment::stats::{
    alpha_difference_p, bootstrap_ppl_over_conversations, bootstrap_ratio_over_conversations,
    correlation_pair, scaling_fit, ConversationInterval, CorrelationPair, ScalingFit,
    BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED,
};
use crate::models::ModelKind;
use serde::{Deserialize, Serialize};

/// A mean with its sample standard deviation over replicates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MeanSd {
    pub mean: f64,
    /// Sample standard deviation (n - 1); None with a single value.
    pub sd: Option<f64>,
    pub n: usize,
}

impl MeanSd {
    /// Over the finite values (None when there is none).
    pub fn of(values: &[f64]) -> Option<MeanSd> {
        let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        let n = v.len();
        if n == 0 {
            return None;
        }
        let mean = v.iter().sum::<f64>() / n as f64;
        let sd = (n >= 2)
            .then(|| (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt());
        Some(MeanSd { mean, sd, n })
    }
}

/// One model's figures at one sample count, over its replicates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CellSummary {
    pub samples: usize,
    pub train_tokens: usize,
    pub val_ppl: Option<MeanSd>,
    /// The seed-mean Val PPL's 95% interval over validation samples
    /// (whole conversations resampled, the same draw for every seed): the
    /// validation set's own sampling error.
    #[serde(default)]
    pub val_ppl_interval: Option<ConversationInterval>,
    /// The validation set's identity (`CellResult::val_set`).
    #[serde(default)]
    pub val_set: String,
    /// PPL here / PPL of the previous cell, its 95% interval over validation
    /// conversations (one draw for both cells' seeds); only when the two
    /// cells validate on the same set.
    #[serde(default)]
    pub change_interval: Option<[f64; 2]>,
    pub val_acc: Option<MeanSd>,
    /// New-LLM only.
    pub train_er: Option<MeanSd>,
    pub val_er: Option<MeanSd>,
}

/// One model across the sweep.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelResults {
    pub model: ModelKind,
    /// Where its runs ran ("cpu" or a GPU's name; several joined by "/").
    pub ran_on: String,
    /// Seeds per cell (1 for a deterministic model).
    pub replicates: usize,
    pub cells: Vec<CellSummary>,
    /// ln PPL = ln A + alpha ln tokens over every run (all replicates).
    pub scaling: Option<ScalingFit>,
    /// Sliding-window alphas, the power law against the saturation law,
    /// the leave-last-out check and the extrapolations.
    #[serde(default)]
    pub analysis: ScalingAnalysis,
    /// Two-sided p-value of alpha equal to New-LLM's (None for New-LLM).
    pub alpha_vs_newllm_p: Option<f64>,
    /// Trainable parameters and those outside the embeddings and head, and
    /// training GEMM FLOPs per token (from the largest cell's run).
    pub trainable_params: u64,
    pub non_embedding_params: u64,
    pub train_flops_per_token: f64,
}

/// A law's predictions beyond the largest cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LawExtrapolation {
    pub law: Law,
    pub points: Vec<Extrapolation>,
}

/// How a model's PPL scales beyond one power-law line over all the cells.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScalingAnalysis {
    /// Consecutive sample counts per window (config `scaling_window`).
    pub window: usize,
    /// Alpha over each window (empty with fewer than window + 1 counts).
    pub windows: Vec<WindowAlpha>,
    /// The quadratic term of ln PPL in ln tokens: does alpha change with data?
    pub trend: Option<AlphaTrend>,
    /// Power law against saturation law, by AICc.
    pub laws: Option<LawComparison>,
    /// Each law fitted without the largest cell, predicting it.
    pub holdouts: Vec<Holdout>,
    /// At 2x and 10x the largest cell: under the better law, or under both
    /// when the data cannot tell them apart.
    pub extrapolations: Vec<LawExtrapolation>,
}

/// Where the extrapolations go: 2x and 10x the largest cell's tokens.
pub const EXTRAPOLATION_FACTORS: [f64; 2] = [2.0, 10.0];

/// A whole sweep: the config, every run, and the analysis of docs/algorithm.md
/// section 7 for New-LLM and each baseline. Built by `analyse`; written as
/// `results.json` and read back by the report and compare commands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepResults {
    pub config: Config,
    /// New-LLM, one per sample count: Val PPL / loss / acc and ER are the
    /// replicate means; epochs, timings and the Phase-1 log are replicate
    /// 0's. The seed-structured sections of the report read these.
    pub cells: Vec<CellResult>,
    /// Every run of every model and replicate (sorted by model, samples,
    /// replicate): the per-seed values.
    #[serde(default)]
    pub runs: Vec<CellResult>,
    /// New-LLM first, then the baselines.
    #[serde(default)]
    pub models: Vec<ModelResults>,
    /// New-LLM's fit over every run (all replicate points); None when fewer
    /// than 2 usable points.
    pub scaling: Option<ScalingFit>,
    /// Over New-LLM's per-cell means.
    #[serde(default)]
    pub correlations: Correlations,
    /// Runs left out of every figure because they were validated on another
    /// set than the sweep's (named with the set they used).
    #[serde(default)]
    pub left_out: Vec<String>,
}

impl SweepResults {
    pub fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        use anyhow::Context;
        let json = serde_json::to_string_pretty(self).context("serialising sweep results")?;
        crate::io::write_atomic(path, json.as_bytes())
    }

    pub fn load(path: &std::path::Path) -> anyhow::Result<SweepResults> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a sweep results file", path.display()))
    }
}

/// The relations the seed document discusses: does ER go with performance?
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Correlations {
    /// Validation ER vs best-epoch validation PPL.
    pub val_er_vs_val_ppl: CorrelationPair,
    /// Validation ER vs best-epoch validation accuracy.
    pub val_er_vs_val_acc: CorrelationPair,
    /// ln(train tokens) vs validation accuracy (the fit covers PPL).
    pub log_tokens_vs_val_acc: CorrelationPair,
}

/// Sorts the runs, summarises each model per cell (mean +/- sd over
/// replicates), fits every model's scaling law over all its runs, tests
/// each baseline's alpha against New-LLM's, and correlates New-LLM's
/// per-cell mean ER with its mean PPL and accuracy.
pub fn analyse(config: &Config, runs: &[CellResult]) -> SweepResults {
    let (mut runs, left_out) = one_validation_set(config, runs);
    let order = |m: ModelKind| m as usize;
    runs.sort_by_key(|c| (order(c.model), c.samples, c.train_tokens, c.replicate));
    let mut models: Vec<ModelResults> = Vec::new();
    for kind in [ModelKind::NewLlm, ModelKind::Kn, ModelKind::Transformer] {
        let mine: Vec<&CellResult> = runs.iter().filter(|c| c.model == kind).collect();
        if !mine.is_empty() {
            models.push(model_results(kind, &mine, config.scaling_window));
        }
    }
    if let Some(base) = models.first().and_then(|m| m.scaling.clone()) {
        for m in models.iter_mut().skip(1) {
            m.alpha_vs_newllm_p = m
                .scaling
                .as_ref()
                .and_then(|f| alpha_difference_p(f, &base));
        }
    }
    let cells = newllm_mean_cells(&runs);
    let scaling = models
        .first()
        .filter(|m| m.model == ModelKind::NewLlm)
        .and_then(|m| m.scaling.clone());
    let column = |f: fn(&CellResult) -> f64| cells.iter().map(f).collect::<Vec<f64>>();
    let log_tokens = column(|c| (c.train_tokens as f64).max(1.0).ln());
    let (er, acc, all_ppl) = (
        column(|c| c.nl().val_er),
        column(|c| c.val_acc),
        column(|c| c.val_ppl),
    );
    let correlations = Correlations {
        val_er_vs_val_ppl: finite_pair(&er, &all_ppl),
        val_er_vs_val_acc: finite_pair(&er, &acc),
        log_tokens_vs_val_acc: finite_pair(&log_tokens, &acc),
    };
    SweepResults {
        config: config.clone(),
        cells,
        runs,
        models,
        scaling,
        correlations,
        left_out,
    }
}

/// The runs validated on the sweep's validation set, and the others named.
/// Heldout: one set for every cell, the one New-LLM's largest cell used
/// (the latest data); tail: per cell, the one its New-LLM runs used. Runs
/// from before sets were recorded (no `val_set`) count as one set.
fn one_validation_set(config: &Config, runs: &[CellResult]) -> (Vec<CellResult>, Vec<String>) {
    let reference = |samples: Option<usize>| {
        runs.iter()
            .filter(|c| c.model == ModelKind::NewLlm)
            .filter(|c| samples.is_none_or(|s| c.samples == s))
            .max_by_key(|c| (c.samples, std::cmp::Reverse(c.replicate)))
            .map(|c| c.val_set.clone())
    };
    let heldout = reference(None);
    let (mut kept, mut left_out) = (Vec::new(), Vec::new());
    for c in runs {
        let want = match config.val_mode {
            ValMode::Heldout => heldout.clone(),
            ValMode::Tail => reference(Some(c.samples)),
        };
        if want.as_ref().is_none_or(|w| *w == c.val_set) {
            kept.push(c.clone());
        } else {
            left_out.push(format!(
                "{} {} samples replicate {} (validated on {})",
                c.model, c.samples, c.replicate, c.val_set
            ));
        }
    }
    (kept, left_out)
}

/// One model's per-cell summaries and its fit over every run. A diverged
/// run (infinite or NaN PPL) is left out rather than voiding the analysis;
/// the report states how many points each figure used.
fn model_results(kind: ModelKind, runs: &[&CellResult], window: usize) -> ModelResults {
    let mut samples: Vec<usize> = runs.iter().map(|c| c.samples).collect();
    samples.dedup();
    let per_sample = |s: usize| -> Vec<(&[f64], &[usize])> {
        runs.iter()
            .filter(|c| c.samples == s)
            .map(|c| (&c.val_sample_losses[..], &c.val_sample_positions[..]))
            .collect()
    };
    let mut cells: Vec<CellSummary> = samples
        .iter()
        .map(|&s| {
            let here: Vec<&&CellResult> = runs.iter().filter(|c| c.samples == s).collect();
            let col = |f: &dyn Fn(&CellResult) -> f64| {
                MeanSd::of(&here.iter().map(|c| f(c)).collect::<Vec<f64>>())
            };
            let newllm = kind == ModelKind::NewLlm;
            CellSummary {
                samples: s,
                train_tokens: here[0].train_tokens,
                val_ppl: col(&|c| c.val_ppl),
                val_ppl_interval: bootstrap_ppl_over_conversations(
                    &per_sample(s),
                    BOOTSTRAP_RESAMPLES,
                    BOOTSTRAP_SEED,
                ),
                val_set: here[0].val_set.clone(),
                change_interval: None,
                val_acc: col(&|c| c.val_acc),
                train_er: if newllm {
                    col(&|c| c.nl().train_er)
                } else {
                    None
                },
                val_er: if newllm {
                    col(&|c| c.nl().val_er)
                } else {
                    None
                },
            }
        })
        .collect();
    for i in 1..cells.len() {
        if cells[i].val_set == cells[i - 1].val_set && !cells[i].val_set.is_empty() {
            cells[i].change_interval = bootstrap_ratio_over_conversations(
                &per_sample(cells[i - 1].samples),
                &per_sample(cells[i].samples),
                BOOTSTRAP_RESAMPLES,
                BOOTSTRAP_SEED,
            );
        }
    }
    let fit_runs: Vec<&&CellResult> = runs
        .iter()
        .filter(|c| c.train_tokens > 0 && c.val_ppl.is_finite() && c.val_ppl > 0.0)
        .collect();
    let tokens: Vec<f64> = fit_runs.iter().map(|c| c.train_tokens as f64).collect();
    let ppl: Vec<f64> = fit_runs.iter().map(|c| c.val_ppl).collect();
    let mut ran_on: Vec<&str> = runs.iter().map(|c| c.ran_on.as_str()).collect();
    ran_on.sort_unstable();
    ran_on.dedup();
    let largest = runs.iter().max_by_key(|c| c.train_tokens);
    ModelResults {
        model: kind,
        ran_on: ran_on.join("/"),
        replicates: runs.iter().map(|c| c.replicate + 1).max().unwrap_or(0),
        cells,
        scaling: scaling_fit(&tokens, &ppl),
        analysis: scaling_analysis(&tokens, &ppl, window),
        alpha_vs_newllm_p: None,
        trainable_params: largest.map_or(0, |c| c.trainable_params),
        non_embedding_params: largest.map_or(0, |c| c.non_embedding_params),
        train_flops_per_token: largest.map_or(0.0, |c| c.train_flops_per_token),
    }
}

/// Windows, laws, leave-last-out and extrapolations over a model's runs.
fn scaling_analysis(tokens: &[f64], ppl: &[f64], window: usize) -> ScalingAnalysis {
    let laws = compare_laws(tokens, ppl);
    let holdouts = [Law::Power, Law::Saturation]
        .into_iter()
        .filter_map(|law| leave_last_out(tokens, ppl, law))
        .collect();
    let extrapolated: Vec<Law> = match laws.as_ref().map(|l| l.better) {
        Some(Some(law)) => vec![law],
        Some(None) => vec![Law::Power, Law::Saturation],
        None => Vec::new(),
    };
    let extrapolations = extrapolated
        .into_iter()
        .map(|law| LawExtrapolation {
            law,
            points: extrapolate(
                tokens,
                ppl,
                law,
                &EXTRAPOLATION_FACTORS,
                BOOTSTRAP_RESAMPLES,
                BOOTSTRAP_SEED,
            ),
        })
        .filter(|e| !e.points.is_empty())
        .collect();
    ScalingAnalysis {
        window,
        windows: window_alphas(tokens, ppl, window),
        trend: alpha_trend(tokens, ppl),
        laws,
        holdouts,
        extrapolations,
    }
}

/// New-LLM's per-cell view: replicate 0's run with Val PPL / loss / acc and
/// ER replaced by the means over its replicates.
fn newllm_mean_cells(runs: &[CellResult]) -> Vec<CellResult> {
    let mine: Vec<&CellResult> = runs
        .iter()
        .filter(|c| c.model == ModelKind::NewLlm)
        .collect();
    let mut samples: Vec<usize> = mine.iter().map(|c| c.samples).collect();
    samples.dedup();
    samples
        .iter()
        .filter_map(|&s| {
            let here: Vec<&&CellResult> = mine.iter().filter(|c| c.samples == s).collect();
            let mean = |f: &dyn Fn(&CellResult) -> f64| {
                here.iter().map(|c| f(c)).sum::<f64>() / here.len() as f64
            };
            let mut cell = (**here.iter().min_by_key(|c| c.replicate)?).clone();
            cell.val_ppl = mean(&|c| c.val_ppl);
            cell.val_loss = mean(&|c| c.val_loss);
            cell.val_acc = mean(&|c| c.val_acc);
            if let Some(n) = cell.newllm.as_mut() {
                n.train_er = mean(&|c| c.nl().train_er);
                n.val_er = mean(&|c| c.nl().val_er);
                n.train_er_abs = mean(&|c| c.nl().train_er_abs);
                n.val_er_abs = mean(&|c| c.nl().val_er_abs);
            }
            Some(cell)
        })
        .collect()
}

/// Correlations over the positions where both values are finite.
fn finite_pair(x: &[f64], y: &[f64]) -> CorrelationPair {
    let (fx, fy): (Vec<f64>, Vec<f64>) = x
        .iter()
        .zip(y)
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .map(|(a, b)| (*a, *b))
        .unzip();
    correlation_pair(&fx, &fy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analyse_skips_diverged_cells() {
        let cells: Vec<CellResult> = [
            (500, 529173, f64::INFINITY),
            (50, 56602, 1503.3),
            (200, 216119, 757.7),
            (100, 110516, 1036.3),
        ]
        .iter()
        .map(|&(samples, train_tokens, val_ppl)| CellResult {
            samples,
            train_tokens,
            val_ppl,
            newllm: Some(crate::cell_result::NewLlmResult {
                val_er: 0.08 + samples as f64 * 1e-5,
                ..Default::default()
            }),
            val_acc: 0.1,
            ..CellResult::default()
        })
        .collect();
        let r = analyse(&Config::default(), &cells);
        let order: Vec<usize> = r.cells.iter().map(|c| c.samples).collect();
        assert_eq!(order, vec![50, 100, 200, 500]);
        let fit = r.scaling.clone().unwrap();
        assert_eq!(fit.n, 3);
        assert!(fit.alpha < -0.4 && fit.alpha > -0.6, "{}", fit.alpha);
        assert_eq!(r.correlations.val_er_vs_val_ppl.pearson.unwrap().n, 3);
        // Constant accuracy: no correlation rather than NaN.
        assert_eq!(r.correlations.val_er_vs_val_acc.pearson, None);
        assert!(!serde_json::to_string(&r.scaling).unwrap().contains("NaN"));
    }
}
