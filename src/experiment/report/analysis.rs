//! The analysis sections of the sweep report, after the seed document's:
//! Effective Rank, token count, the conclusion, training diagnostics, the
//! recommendations each backed by its evidence, and the factor table. Every
//! claim comes from `verdicts.rs`; these functions only render.

use super::diagnostics::{Diagnostics, EARLY_STOP_EPOCH, FAST_FIT_RATIO, NEAR_BEST};
use super::verdicts::{DipNoise, ErRelation, Scaling, Verdicts};
use super::wording::{
    alpha_sentence, corr_phrase, correlation_sentence, er_caveat, p_phrase, scaling_phrase,
    TAIL_CAVEAT,
};
use crate::cell_result::CellResult;
use crate::experiment::format::{
    change_pct, compare_command, pct, set_command, short_number, sweep_command, thousands,
};
use crate::experiment::results::SweepResults;
use crate::experiment::stats::critical_r;
use crate::models::ModelKind;

pub fn section_er(md: &mut String, r: &SweepResults) {
    *md += "### 1. Stability of Effective Rank (ER)\n\n";
    let band = |f: fn(&CellResult) -> f64| {
        r.cells
            .iter()
            .map(f)
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)))
    };
    let (vlo, vhi) = band(|c| c.nl().val_er);
    let (tlo, thi) = band(|c| c.nl().train_er);
    let (alo, ahi) = (vlo.min(tlo), vhi.max(thi));
    *md += &format!(
        "ER ranges over {}-{} across all cells and both splits ({:.1} points): val ER {}-{}, train ER {}-{}.\n\n",
        pct(alo),
        pct(ahi),
        (ahi - alo) * 100.0,
        pct(vlo),
        pct(vhi),
        pct(tlo),
        pct(thi)
    );
    *md += "| Samples | Train ER | Val ER | Val ER (dims) |\n|---------|----------|--------|---------------|\n";
    for c in &r.cells {
        *md += &format!(
            "| {} | {} | {} | {:.1} |\n",
            c.samples,
            pct(c.nl().train_er),
            pct(c.nl().val_er),
            c.nl().val_er_abs
        );
    }
    let mean_abs = r.cells.iter().map(|c| c.nl().val_er_abs).sum::<f64>() / r.cells.len() as f64;
    *md += &format!(
        "\nOn average about {:.0} of the {} context dimensions are effectively used on validation.{}\n\n",
        mean_abs,
        r.config.context_dim,
        er_caveat(&r.config)
    );
    if let Some(spread) = er_seed_spread(r) {
        *md += &format!(
            "Between seeds of the same cell val ER varies by {:.1} points (sd, averaged over cells), against a range of {:.1} points across cells.\n\n",
            spread * 100.0,
            (vhi - vlo) * 100.0
        );
    }
    *md += "![effective rank](plots/effective_rank.png)\n\n";
}

/// Mean over cells of New-LLM's between-seed sd of val ER (None without replicates).
pub fn er_seed_spread(r: &SweepResults) -> Option<f64> {
    let sds: Vec<f64> = r
        .models
        .iter()
        .find(|m| m.model == ModelKind::NewLlm)?
        .cells
        .iter()
        .filter_map(|c| c.val_er.and_then(|v| v.sd))
        .collect();
    (!sds.is_empty()).then(|| sds.iter().sum::<f64>() / sds.len() as f64)
}

pub fn section_tokens(md: &mut String, r: &SweepResults, v: &Verdicts) {
    *md += "### 2. Token count vs performance\n\n";
    let newllm = r.models.iter().find(|m| m.model == ModelKind::NewLlm);
    let interval = |samples: usize| {
        newllm
            .and_then(|m| m.cells.iter().find(|c| c.samples == samples))
            .and_then(|c| c.change_interval)
    };
    let any_interval = r.cells.iter().any(|c| interval(c.samples).is_some());
    *md += "| Tokens | Val PPL | Val Acc | PPL vs previous cell | Acc vs previous cell |\n|--------|---------|---------|----------------------|----------------------|\n";
    for (i, c) in r.cells.iter().enumerate() {
        let (dp, da) = match i.checked_sub(1).map(|j| &r.cells[j]) {
            Some(p) => (
                change_pct(p.val_ppl, c.val_ppl)
                    + &interval(c.samples).map_or(String::new(), |[lo, hi]| {
                        format!(
                            " [{:+.1}%, {:+.1}%]",
                            (lo - 1.0) * 100.0,
                            (hi - 1.0) * 100.0
                        )
                    }),
                format!("{:+.1} points", (c.val_acc - p.val_acc) * 100.0),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        *md += &format!(
            "| {} | {:.1} | {} | {dp} | {da} |\n",
            short_number(c.train_tokens as f64),
            c.val_ppl,
            pct(c.val_acc)
        );
    }
    *md += "\n";
    if any_interval {
        *md += "The brackets: the change's 95% interval over validation conversations (both cells scored on the same conversations, one draw for both), the validation set's own error in the difference.\n\n";
    }
    let (Some(first), Some(last)) = (r.cells.first(), r.cells.last()) else {
        return;
    };
    if r.cells.len() >= 2 {
        *md += &format!(
            "- Val PPL from {} to {} train tokens: {:.1} -> {:.1} ({}).\n",
            thousands(first.train_tokens),
            thousands(last.train_tokens),
            first.val_ppl,
            last.val_ppl,
            change_pct(first.val_ppl, last.val_ppl)
        );
        let best = r
            .cells
            .iter()
            .max_by(|a, b| a.val_acc.total_cmp(&b.val_acc))
            .unwrap_or(last);
        *md += &format!(
            "- Val Acc: {} -> {} over the same range; highest {} at {} samples.\n",
            pct(first.val_acc),
            pct(last.val_acc),
            pct(best.val_acc),
            best.samples
        );
    }
    if let Some(fit) = &r.scaling {
        let per_doubling = |a: f64| (2f64.powf(a) - 1.0) * 100.0;
        *md += &format!(
            "- By the fit, doubling the tokens changes PPL by about {:+.0}%",
            per_doubling(fit.alpha)
        );
        if let Some([lo, hi]) = fit.alpha_ci95 {
            *md += &format!(
                " (95% CI {:+.0}% to {:+.0}%)",
                per_doubling(lo),
                per_doubling(hi)
            );
        }
        *md += ".\n";
    }
    *md += &format!(
        "- {}\n\n",
        correlation_sentence(
            "ln(tokens) vs Val Acc",
            &r.correlations.log_tokens_vs_val_acc,
            true
        )
    );
    if v.tail {
        *md += &format!("Caution, {TAIL_CAVEAT} (see \"Validation design\" above).\n\n");
    }
}

pub fn section_conclusion(md: &mut String, r: &SweepResults, v: &Verdicts) {
    *md += "### 3. Conclusion\n\n";
    let n = r.cells.len();
    let tail = if v.tail {
        format!(" Caution: {TAIL_CAVEAT}.")
    } else {
        String::new()
    };
    *md += "Token count:\n\n";
    *md += &format!(
        "- {}.{tail}\n",
        scaling_phrase(v.tokens, r.scaling.as_ref())
    );
    *md += "\nEffective Rank vs performance:\n\n";
    let caveat = er_caveat(&r.config);
    let per_cell = if r.runs.len() > r.cells.len() {
        " Computed over the cells' seed means."
    } else {
        ""
    };
    let counted = !matches!(v.er, ErRelation::WithinSeedNoise { .. });
    *md += &format!(
        "- {}{per_cell}{caveat}\n",
        correlation_sentence(
            "Val ER vs Val PPL",
            &r.correlations.val_er_vs_val_ppl,
            counted
        )
    );
    *md += &format!(
        "- {}{per_cell}{caveat}\n",
        correlation_sentence(
            "Val ER vs Val Acc",
            &r.correlations.val_er_vs_val_acc,
            counted
        )
    );
    if let (Some(spread), Some((f, p))) = (er_seed_spread(r), v.er_anova) {
        let beyond = counted;
        *md += &format!(
            "- Seed spread: val ER moves {:.1} points (sd) between seeds of one cell. Its differences between cells {} (one-way ANOVA over the runs, F = {f:.2}, {}){}.\n",
            spread * 100.0,
            if beyond { "exceed that noise" } else { "do not exceed that noise" },
            p_phrase(p),
            if beyond { "" } else { ", so no correlation with ER is counted as evidence here" }
        );
    }
    if let Some(rc) = critical_r(n) {
        *md += &format!(
            "- Caution: with only n = {n} cells a correlation needs |r| >= {rc:.2} to reach p < 0.05, so \"not significant\" is weak evidence of no relation; the Spearman p-value uses the t approximation, which is rough for so few cells.\n"
        );
    }
    let related = v.er == ErRelation::Related;
    let noise = matches!(v.er, ErRelation::WithinSeedNoise { .. });
    *md += "\nVerdict: ";
    *md += match (v.tokens, related) {
        (Scaling::Falls, false) if noise => "token count is the dominant factor in this sweep: PPL falls significantly with it, while ER moves between cells no more than between seeds, so no relation with ER counts as evidence.",
        (Scaling::Falls, false) => "token count is the dominant factor in this sweep: PPL falls significantly with it, and no significant relation between ER and performance was found.",
        (Scaling::Falls, true) => "both token count and ER relate significantly to performance here; ER also grows with the cells, so the two are not separated by this sweep.",
        (Scaling::Rises, _) if v.tail => "PPL rises significantly with more training data, the opposite of data scaling; with tail validation the likeliest cause is the validation text itself changing with N (the n-gram's PPL per cell above measures that), so no conclusion about data scaling can be drawn from this sweep.",
        (Scaling::Rises, _) => "PPL rises significantly with more training data on one fixed validation set, the opposite of data scaling: look for a training problem in the larger cells (early stopping, learning rate, Phase 1 convergence) before drawing conclusions.",
        (_, true) => "ER relates significantly to performance while the token fit does not reach significance.",
        (_, false) => "neither token count nor ER reaches significance with these cells; more cells are needed before ranking the factors.",
    };
    if v.tail && v.tokens != Scaling::Rises {
        *md += &format!(" Caution: {TAIL_CAVEAT}.");
    }
    if n > 0 && v.er_range < 0.02 {
        *md += &format!(
            " Note that val ER varied by only {:.1} points across cells, so this sweep barely tests ER's effect.",
            v.er_range * 100.0
        );
    }
    *md += "\n\n";
}

pub fn section_training(md: &mut String, r: &SweepResults, d: &Diagnostics, v: &Verdicts) {
    *md += "### 4. Accuracy, early stopping and over-fitting\n\n";
    *md += "| Samples | Best epoch | Stop epoch | Early stop | Val PPL at stop vs best | Val loss rise after best | Train PPL ep1/ep2 | Val PPL ep1/ep2 |\n";
    *md += "|---------|------------|------------|------------|-------------------------|--------------------------|-------------------|-----------------|\n";
    let opt =
        |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map(f).unwrap_or_else(|| "-".to_string());
    for c in &d.cells {
        *md += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            c.samples,
            c.best_epoch,
            c.stop_epoch,
            if c.early_stopped { "yes" } else { "no" },
            opt(c.stop_over_best, &|v| format!("{:+.1}%", v * 100.0)),
            opt(c.val_loss_rise, &|v| format!("{:+.2}%", v * 100.0)),
            opt(c.train_drop, &|v| format!("{v:.2}x")),
            opt(c.val_drop, &|v| format!("{v:.2}x")),
        );
    }
    *md += "\n";
    for (dip, noise) in d.dips.iter().zip(&v.dips) {
        *md += &format!(
            "#### Why accuracy dropped at {} samples\n\n",
            dip.to_samples
        );
        *md += &format!(
            "From {} to {} samples Val Acc fell {} -> {} while Val PPL improved {:.1} -> {:.1}. Evidence from the curves:\n\n",
            dip.from_samples,
            dip.to_samples,
            pct(dip.acc_from),
            pct(dip.acc_to),
            dip.ppl_from,
            dip.ppl_to
        );
        let runs = |samples: usize| {
            r.runs
                .iter()
                .filter(|c| c.model == ModelKind::NewLlm && c.samples == samples)
                .count()
        };
        let (from, to) = (runs(dip.from_samples), runs(dip.to_samples));
        *md += &match noise {
            DipNoise::BeyondNoise(t) => format!(
                "Over the seeds ({to} and {from} runs) the drop is {:+.1} points (95% CI {:+.1} to {:+.1}, {}): larger than seed noise.\n\n",
                t.diff * 100.0, t.ci95[0] * 100.0, t.ci95[1] * 100.0, p_phrase(t.p_value)
            ),
            DipNoise::WithinNoise(t) => format!(
                "Over the seeds ({to} and {from} runs) the drop is {:+.1} points (95% CI {:+.1} to {:+.1}, {}): **not distinguishable from seed noise**, so the explanations below are candidates, not findings.\n\n",
                t.diff * 100.0, t.ci95[0] * 100.0, t.ci95[1] * 100.0, p_phrase(t.p_value)
            ),
            DipNoise::NoSpread => "The seeds show no spread to test the drop against.\n\n".to_string(),
            DipNoise::OneSeed => "One seed per cell: whether this drop exceeds seed noise cannot be tested (set `replicates` >= 2).\n\n".to_string(),
        };
        let prev = d.cells.iter().find(|c| c.samples == dip.from_samples);
        let Some(cur) = d.cells.iter().find(|c| c.samples == dip.to_samples) else {
            continue;
        };
        let mut reasons = Vec::new();
        if cur.early_stopped {
            let mut s = format!(
                "Early stopping fired at epoch {} (best epoch {}",
                cur.stop_epoch, cur.best_epoch
            );
            if let Some(v) = cur.stop_over_best {
                s += &format!(", val PPL at the stop {:+.1}% vs best", v * 100.0);
            }
            s += ")";
            if cur.premature_stop {
                s += &format!(
                    ": at or before epoch {EARLY_STOP_EPOCH} with validation still near its best, so it may have fired too early"
                );
            } else if cur.stopped_early {
                s += ": early, but validation had clearly worsened by then";
            }
            s += ".";
            if let Some(p) = prev {
                s += &format!(
                    " For comparison, {} samples stopped at epoch {}.",
                    p.samples, p.stop_epoch
                );
            }
            reasons.push(s);
        }
        if let (Some(t), Some(v)) = (cur.train_drop, cur.val_drop) {
            if cur.fast_fit {
                reasons.push(format!(
                    "Over-fitting sign: train PPL fell {t:.2}x from epoch 1 to 2 but val PPL only {v:.2}x (train falls {:.1}x faster).",
                    t / v
                ));
            }
        }
        if cur.train_still_falling {
            if let Some(rise) = cur.val_loss_rise {
                reasons.push(format!(
                    "After the best epoch val loss rose {:+.2}% while train loss kept falling.",
                    rise * 100.0
                ));
            }
        }
        if reasons.is_empty() {
            reasons.push(
                "No early-stopping or over-fitting sign in this cell's curves explains it."
                    .to_string(),
            );
        }
        for (i, s) in reasons.iter().enumerate() {
            *md += &format!("{}. {s}\n", i + 1);
        }
        *md += "\n";
    }
    if d.dips.is_empty() && r.cells.len() >= 2 {
        *md += "No accuracy dip: Val Acc never fell between consecutive cells while Val PPL improved.\n\n";
    }
    let early: Vec<String> = d
        .cells
        .iter()
        .filter(|c| c.stopped_early)
        .map(|c| c.samples.to_string())
        .collect();
    if !early.is_empty() {
        *md += &format!(
            "Early stopping fired at or before epoch {EARLY_STOP_EPOCH} for {} samples (patience {}).\n",
            early.join(", "),
            r.config.phase2_patience
        );
    }
    let fast: Vec<String> = d
        .cells
        .iter()
        .filter(|c| c.fast_fit)
        .map(|c| c.samples.to_string())
        .collect();
    if !fast.is_empty() {
        *md += &format!(
            "Train PPL fell at least {FAST_FIT_RATIO}x faster than val PPL from epoch 1 to 2 for {} samples (a sign of fitting the training data quickly; note epoch-1 train PPL averages over a still-learning model).\n",
            fast.join(", ")
        );
    }
    *md += "\n";
}

pub fn section_recommendations(md: &mut String, r: &SweepResults, d: &Diagnostics, v: &Verdicts) {
    *md += "## Recommendations\n\n";
    let c = &r.config;
    let mut recs: Vec<String> = Vec::new();

    if v.tail {
        recs.push(format!(
            "Validate every cell on one held-out set: with tail validation a larger cell is scored on other, later text, so alpha mixes more data with different validation text. `val_mode = \"heldout\"` scores every cell, seed and model on the corpus's last `val_samples` conversations, never trained on:\n\n   `{}`",
            set_command(c, &[("val_mode", "heldout")])
        ));
    }
    if let Some(fit) = &r.scaling {
        let mut counts: Vec<usize> = r.cells.iter().map(|c| c.samples).collect();
        if let Some(&max) = counts.last() {
            counts.extend([max * 2, max * 4]);
        }
        match v.tokens {
            Scaling::Falls => recs.push(format!(
                "More tokens: PPL falls significantly with tokens, {}. Growing the training data is the most reliable lever; larger cells also tighten the CI{}. Run into the same `--out` directory, only the new cells run:\n\n   `{}`",
                alpha_sentence(fit),
                if fit.n < 5 { " and enable the bootstrap interval (n >= 5)" } else { "" },
                sweep_command(c, &counts)
            )),
            Scaling::NotSignificant | Scaling::Untestable => recs.push(format!(
                "More cells: the scaling fit is not conclusive, {}. Add larger cells before drawing a conclusion (into the same `--out` directory, only the new cells run):\n\n   `{}`",
                alpha_sentence(fit),
                sweep_command(c, &counts)
            )),
            Scaling::Rises => recs.push(format!(
                "Find out why PPL rises with data ({}) before scaling further: {}",
                alpha_sentence(fit),
                if v.tail {
                    "first validate on one held-out set (above)."
                } else {
                    "compare the larger cells' curves below (early stopping, over-fitting, Phase 1 convergence)."
                }
            )),
        }
    }

    if d.any_premature_stop() && c.phase2_patience > 0 {
        let cells: Vec<String> = d
            .cells
            .iter()
            .filter(|x| x.premature_stop)
            .map(|x| match x.stop_over_best {
                Some(v) => format!(
                    "{} samples (stopped at epoch {}, val PPL {:+.1}% vs best)",
                    x.samples,
                    x.stop_epoch,
                    v * 100.0
                ),
                None => format!("{} samples (stopped at epoch {})", x.samples, x.stop_epoch),
            })
            .collect();
        let dip_note = if d.dips.iter().any(|dip| {
            d.cells
                .iter()
                .any(|x| x.samples == dip.to_samples && x.premature_stop)
        }) {
            " The accuracy dip falls on such a cell."
        } else {
            ""
        };
        let values = [
            c.phase2_patience.to_string(),
            (c.phase2_patience + 2).to_string(),
            "0".to_string(),
        ];
        recs.push(format!(
            "Tune early stopping: patience {} fired early, with validation still within {:.0}% of its best, for {}.{dip_note} Compare a larger patience and fixed epochs (`phase2_patience = 0`):\n\n   `{}`",
            c.phase2_patience,
            NEAR_BEST * 100.0,
            cells.join(", "),
            compare_command(c, "phase2_patience", &values)
        ));
    }

    let why = match v.er {
        ErRelation::NotRelated => Some("ER shows no significant relation with performance"),
        ErRelation::WithinSeedNoise { .. } => {
            Some("ER moves between cells no more than between seeds, so this sweep cannot test its effect")
        }
        ErRelation::Related | ErRelation::Untestable => None,
    };
    if let Some(why) = why {
        let other = !c.token_input_all_layers;
        recs.push(format!(
            "Compare the other ContextBlock structure: {why}. Run `token_input_all_layers = {other}` under identical conditions to see whether a different ER level changes Phase 2.\n\n   `{}`",
            compare_command(c, "token_input_all_layers", &[c.token_input_all_layers.to_string(), other.to_string()])
        ));
    }

    if recs.is_empty() {
        *md += "None: no evidence in these results calls for a follow-up experiment.\n\n";
    }
    for (i, rec) in recs.iter().enumerate() {
        *md += &format!("{}. {rec}\n\n", i + 1);
    }
}

pub fn section_factor_table(md: &mut String, r: &SweepResults, v: &Verdicts) {
    *md += "## Summary\n\n| Factor | Evidence | Verdict |\n|--------|----------|---------|\n";
    let tokens_ev = match &r.scaling {
        Some(f) => {
            let r2 = f.r2.map(|v| format!("R^2 = {v:.3}, ")).unwrap_or_default();
            let p = f
                .p_value
                .map(p_phrase)
                .unwrap_or_else(|| "no p-value".to_string());
            format!("alpha = {:.3}, {r2}{p}, n = {}", f.alpha, f.n)
        }
        None => "no fit".to_string(),
    };
    let tokens_v = match v.tokens {
        Scaling::Falls => "PPL falls significantly with tokens (5%)",
        Scaling::Rises => "PPL rises significantly with tokens (5%)",
        Scaling::NotSignificant => "not significant at 5%",
        Scaling::Untestable => "significance not testable (fewer than 3 runs)",
    };
    let tokens_v = if v.tail {
        format!("{tokens_v}; {TAIL_CAVEAT}")
    } else {
        tokens_v.to_string()
    };
    *md += &format!("| Token count | {tokens_ev} | {tokens_v} |\n");
    let pair = &r.correlations.val_er_vs_val_ppl;
    let er_ev: Vec<String> = [
        ("r(ER, PPL)", &pair.pearson),
        ("r(ER, Acc)", &r.correlations.val_er_vs_val_acc.pearson),
    ]
    .iter()
    .filter_map(|(name, c)| c.as_ref().map(|c| corr_phrase(name, c)))
    .collect();
    let er_ev = if er_ev.is_empty() {
        "not computable".to_string()
    } else {
        er_ev.join(", ")
    };
    let er_v = match v.er {
        ErRelation::WithinSeedNoise { p } => format!(
            "no evidence: ER differs between cells no more than between seeds (ANOVA {})",
            p_phrase(p)
        ),
        ErRelation::Related => "significant relation with performance at 5%".into(),
        ErRelation::NotRelated => "no significant relation with performance at 5%".into(),
        ErRelation::Untestable => "not testable".into(),
    };
    let er_ev = if r.config.pretrained_embeddings.is_empty() {
        format!("{er_ev} (random embeddings: ER level not comparable with the seed's)")
    } else {
        er_ev
    };
    *md += &format!("| Effective Rank | {er_ev} | {er_v} |\n\n");
}
