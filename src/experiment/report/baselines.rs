//! "Compared with what?": New-LLM next to the baselines trained and
//! evaluated on each cell's exact split, with replicate spread, each
//! model's scaling exponent, and which differences the replicates support.

use super::verdicts::Verdicts;
use super::wording::{alpha_sentence, p_phrase};
use crate::config::Config;
use crate::experiment::format::{fmt_p, pct, thousands};
use crate::experiment::results::{MeanSd, ModelResults, SweepResults};
use crate::experiment::stats::SIGNIFICANCE;
use crate::models::ModelKind;

/// "359.1 +/- 12.3" (or the single value).
pub fn mean_sd(m: Option<MeanSd>, scale: f64, digits: usize) -> String {
    match m {
        None => "-".to_string(),
        Some(MeanSd {
            mean, sd: Some(sd), ..
        }) => {
            format!("{:.*} ± {:.*}", digits, mean * scale, digits, sd * scale)
        }
        Some(MeanSd { mean, .. }) => format!("{:.*}", digits, mean * scale),
    }
}

fn label(m: &ModelResults) -> &str {
    m.model.label()
}

/// How each model was set up, in one line each.
fn setup_lines(c: &Config, r: &SweepResults) -> Vec<String> {
    r.models
        .iter()
        .map(|m| {
            let what = match m.model {
                ModelKind::NewLlm => format!(
                    "{} layers, context_dim {}, embed_dim {} (the configuration above)",
                    c.num_layers, c.context_dim, c.embed_dim
                ),
                ModelKind::Kn => format!(
                    "interpolated modified Kneser-Ney, order {}, three discounts per order from the count-of-counts, interpolated down to a uniform distribution over all {} tokens; deterministic, so one run per cell",
                    c.kn_order,
                    thousands(c.vocab_size)
                ),
                ModelKind::Transformer => {
                    let dims = r
                        .runs
                        .iter()
                        .find(|x| x.model == ModelKind::Transformer)
                        .map_or(String::new(), |x| format!(", {}", x.architecture));
                    format!(
                        "GPT-2-style decoder (pre-LayerNorm, causal attention, GELU MLP, learned positions, head tied to the token embedding){dims}; trained with New-LLM's Phase-2 protocol (Adam lr {}, clip {}, {} positions per batch, up to {} epochs, patience {}); validation in contiguous windows of {} tokens, so the first tokens of each window see less context",
                        c.phase2_learning_rate,
                        c.phase2_gradient_clip,
                        c.phase2_batch_size,
                        c.phase2_epochs,
                        c.phase2_patience,
                        c.transformer_block_size
                    )
                }
            };
            let seeds = if m.replicates > 1 {
                format!("; {} seeds per cell ({}..{})", m.replicates, c.seed, c.seed + m.replicates as u64 - 1)
            } else {
                String::new()
            };
            format!("- **{}** (ran on {}): {what}{seeds}", label(m), m.ran_on)
        })
        .collect()
}

pub fn section_baselines(md: &mut String, r: &SweepResults, v: &Verdicts) {
    if r.models.len() < 2 && r.models.iter().all(|m| m.replicates <= 1) {
        return;
    }
    *md += "## Compared with standard models\n\n";
    *md += "Every model is trained and evaluated on each cell's exact token split (same train tokens, same validation positions, no validation token in training). Values are mean ± sd over seeds where a model has several.\n\n";
    for line in setup_lines(&r.config, r) {
        *md += &line;
        *md += "\n";
    }
    *md += "\n| Samples | Tokens |";
    for m in &r.models {
        *md += &format!(" {} Val PPL |", label(m));
    }
    for m in &r.models {
        *md += &format!(" {} Val Acc |", label(m));
    }
    *md += "\n|---|---|";
    *md += &"---|".repeat(2 * r.models.len());
    *md += "\n";
    let samples: Vec<(usize, usize)> = r.models[0]
        .cells
        .iter()
        .map(|c| (c.samples, c.train_tokens))
        .collect();
    for &(s, tokens) in &samples {
        *md += &format!("| {s} | {} |", thousands(tokens));
        let cell = |m: &ModelResults| m.cells.iter().find(|c| c.samples == s).cloned();
        for m in &r.models {
            *md += &format!(" {} |", mean_sd(cell(m).and_then(|c| c.val_ppl), 1.0, 1));
        }
        for m in &r.models {
            *md += &format!(" {}% |", mean_sd(cell(m).and_then(|c| c.val_acc), 100.0, 1));
        }
        *md += "\n";
    }
    *md += "\n| Model | Trainable parameters | Non-embedding parameters | Training GFLOP per token | Scaling exponent alpha (fit over every run) | Differs from New-LLM's alpha? |\n|---|---|---|---|---|---|\n";
    for m in &r.models {
        let params = |v: u64| {
            if v == 0 {
                "n/a (counts)".to_string()
            } else {
                thousands(v as usize)
            }
        };
        let flops = if m.train_flops_per_token > 0.0 {
            format!("{:.3}", m.train_flops_per_token / 1e9)
        } else {
            "n/a".to_string()
        };
        let alpha = m
            .scaling
            .as_ref()
            .map_or("no fit".to_string(), alpha_sentence);
        let verdict = v.baselines.iter().find(|b| b.model == m.model);
        let vs = match (
            m.model,
            verdict.and_then(|b| b.alpha_p.map(|p| (p, b.alpha_differs))),
        ) {
            (ModelKind::NewLlm, _) => "-".to_string(),
            (_, Some((p, true))) => format!("yes ({})", p_phrase(p)),
            (_, Some((p, false))) => format!("no ({})", p_phrase(p)),
            (_, None) => "not testable (needs 3+ points on each side)".to_string(),
        };
        *md += &format!(
            "| {} | {} | {} | {flops} | {alpha} | {vs} |\n",
            label(m),
            params(m.trainable_params),
            params(m.non_embedding_params)
        );
    }
    *md += "\nNew-LLM's FLOPs are those of a Phase-2 step; Phase 1 adds 6 per ContextBlock weight per token and iteration before it.\n\n";
    *md += "In plain words:\n\n";
    for line in plain_words(r, v) {
        *md += &format!("- {line}\n");
    }
    *md += "\n";
}

/// One sentence per baseline: where New-LLM is better or worse, and whether
/// the replicates support it (verdicts.rs); then the exponents.
fn plain_words(r: &SweepResults, v: &Verdicts) -> Vec<String> {
    let mut out = Vec::new();
    let Some(base) = r.models.iter().find(|m| m.model == ModelKind::NewLlm) else {
        return out;
    };
    for b in &v.baselines {
        let Some(m) = r.models.iter().find(|m| m.model == b.model) else {
            continue;
        };
        let list = |v: &[usize]| {
            v.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut s = format!("Against {}: New-LLM's Val PPL is ", label(m));
        let mut parts = Vec::new();
        if !b.newllm_lower.is_empty() {
            parts.push(format!(
                "significantly lower at {} samples",
                list(&b.newllm_lower)
            ));
        }
        if !b.newllm_higher.is_empty() {
            parts.push(format!(
                "significantly higher at {} samples",
                list(&b.newllm_higher)
            ));
        }
        if !b.unclear.is_empty() {
            parts.push(format!(
                "not distinguishable from seed noise at {} samples",
                list(&b.unclear)
            ));
        }
        s += &parts.join("; ");
        s += " (t test on the per-seed PPLs at 5%";
        if m.replicates <= 1 {
            s += &format!(
                "; {} is deterministic, so New-LLM's seeds are tested against its single value",
                label(m)
            );
        }
        s += ").";
        if let (Some(a), Some(bf)) = (&base.scaling, &m.scaling) {
            let steeper = if a.alpha < bf.alpha {
                "falls faster"
            } else {
                "falls more slowly"
            };
            s += &match b.alpha_p {
                Some(p) if b.alpha_differs => format!(
                    " With more tokens New-LLM's PPL {steeper} (alpha {:.3} vs {:.3}; the exponents differ, {}).",
                    a.alpha, bf.alpha, p_phrase(p)
                ),
                Some(p) => format!(
                    " Its exponent alpha {:.3} and New-LLM's {:.3} are not significantly different ({}).",
                    bf.alpha, a.alpha, p_phrase(p)
                ),
                None => format!(
                    " Exponents: New-LLM {:.3}, {} {:.3} (too few points to test the difference).",
                    a.alpha,
                    label(m),
                    bf.alpha
                ),
            };
        }
        out.push(s);
    }
    if base.replicates > 1 {
        let sds: Vec<f64> = base
            .cells
            .iter()
            .filter_map(|c| c.val_ppl.and_then(|v| v.sd.map(|sd| sd / v.mean)))
            .collect();
        if !sds.is_empty() {
            out.push(format!(
                "Seed noise: New-LLM's Val PPL varies by {} (sd / mean, averaged over cells) between seeds of the same cell; differences below that are not evidence. The p-value threshold is {}.",
                pct(sds.iter().sum::<f64>() / sds.len() as f64),
                fmt_p(SIGNIFICANCE)
            ));
        }
    }
    out
}
