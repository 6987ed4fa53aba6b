//! The sweep's `report.md`, in the seed document's structure, from a
//! `SweepResults`; plots go to `plots/`. Every data-dependent statement is
//! computed here, and each recommendation is made only when its evidence is
//! present.

use super::baselines::{mean_sd, section_baselines};
use super::diagnostics::{diagnose, Diagnostics, EARLY_STOP_EPOCH, FAST_FIT_RATIO, NEAR_BEST};
use super::wording::{
    alpha_sentence, corr_phrase, correlation_sentence, er_caveat, p_phrase, verdict,
};
use crate::cell_result::CellResult;
use crate::experiment::format::{
    change_pct, compare_command, now_utc, pct, serde_plain, short_number, sweep_command, thousands,
};
use crate::experiment::plots;
use crate::experiment::results::{MeanSd, SweepResults};
use crate::experiment::stats::{
    correlation_significant, critical_r, mean_difference, one_way_anova, SIGNIFICANCE,
};
use anyhow::{Context, Result};
use std::path::Path;

pub fn section_conditions(md: &mut String, r: &SweepResults) {
    let c = &r.config;
    *md += "## Conditions\n\n";
    let arch = if c.token_input_all_layers {
        "\"old structure\" (`token_input_all_layers = true`): token input at every ContextBlock layer".to_string()
    } else {
        let dims: Vec<String> = c.context_dims().iter().map(|d| d.to_string()).collect();
        format!(
            "\"arithmetic decrease\" (`token_input_all_layers = false`): token input at the first ContextBlock layer only; widths d_0..d_L {}",
            dims.join(" -> ")
        )
    };
    *md += &format!("- Architecture: E plan (separate ContextBlock/TokenBlock), {arch}\n");
    *md += &format!(
        "- Model: {} layers / context_dim {} / embed_dim {}, k = {} input token(s), weight tying {}\n",
        c.num_layers,
        c.context_dim,
        c.embed_dim,
        c.num_input_tokens,
        if c.use_weight_tying { "on" } else { "off" }
    );
    let emb = if c.pretrained_embeddings.is_empty() {
        "random N(0, 0.02)".to_string()
    } else {
        format!("`{}`", c.pretrained_embeddings)
    };
    *md += &format!("- Embeddings: {emb}; seed {}\n", c.seed);
    *md += &format!(
        "- Phase 1: init `{}`, lr {}, batch {}, iterations {}-{}, convergence threshold {}, min converged ratio {}, context noise {}, dist_reg_weight {}\n",
        serde_plain(&c.phase1_init),
        c.phase1_learning_rate,
        c.phase1_batch_size,
        c.phase1_min_iterations,
        c.phase1_max_iterations,
        c.phase1_convergence_threshold,
        c.phase1_min_converged_ratio,
        c.phase1_context_noise,
        c.dist_reg_weight
    );
    *md += &format!(
        "- Phase-2 training cache: `{}`\n",
        serde_plain(&c.train_cache)
    );
    let patience = if c.phase2_patience == 0 {
        "off (fixed epochs)".to_string()
    } else {
        c.phase2_patience.to_string()
    };
    *md += &format!(
        "- Phase 2: lr {}, batch size {}, up to {} epochs, early-stopping patience {patience}\n",
        c.phase2_learning_rate, c.phase2_batch_size, c.phase2_epochs
    );
    let corpus = if c.corpus.is_empty() {
        "the embedded chitchat corpus".to_string()
    } else {
        format!("`{}`", c.corpus)
    };
    let join = |v: &[usize]| {
        v.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let done: Vec<usize> = r.cells.iter().map(|c| c.samples).collect();
    // A partial sweep (results saved after each cell) names what is missing.
    let counts = if done == c.sample_counts {
        join(&done)
    } else {
        format!("{} (configured: {})", join(&done), join(&c.sample_counts))
    };
    *md += &format!(
        "- Data: {corpus}; validation = last {} of each cell's token stream; sample counts {counts}\n",
        pct(c.val_fraction),
    );
    let mut threads: Vec<usize> = r.cells.iter().map(|c| c.threads).collect();
    threads.dedup();
    let threads: Vec<String> = threads.iter().map(|t| t.to_string()).collect();
    *md += &format!(
        "- Runtime: device `{}`, threads {} (config `threads = {}`); Effective Rank on up to {} rows\n\n",
        c.device,
        if threads.is_empty() { "-".to_string() } else { threads.join("/") },
        c.threads,
        if c.effective_rank_max_rows == 0 { "all".to_string() } else { thousands(c.effective_rank_max_rows) }
    );
}

pub fn section_summary(md: &mut String, r: &SweepResults) {
    *md += "## Results summary\n\n";
    let reps = r.models.first().map_or(1, |m| m.replicates);
    if reps > 1 {
        *md += &format!("New-LLM, mean ± sd over {reps} seeds per cell (the per-seed values are in `results.json`).\n\n");
    }
    let newllm = r.models.iter().find(|m| m.model == "newllm");
    let runs: Vec<&CellResult> = if r.runs.is_empty() {
        r.cells.iter().collect()
    } else {
        r.runs.iter().filter(|c| c.newllm.is_some()).collect()
    };
    let converged = runs.iter().filter(|c| c.nl().phase1_converged).count();
    *md += &if converged == runs.len() {
        format!(
            "Phase 1 converged in every New-LLM run ({} of {}): at least {} of the tokens' contexts changed by less than the threshold {} (mean squared) within {} iterations.\n\n",
            converged,
            runs.len(),
            pct(r.config.phase1_min_converged_ratio),
            r.config.phase1_convergence_threshold,
            r.config.phase1_max_iterations
        )
    } else {
        let missed: Vec<String> = runs
            .iter()
            .filter(|c| !c.nl().phase1_converged)
            .map(|c| {
                format!(
                    "{} samples seed {} ({})",
                    c.samples,
                    c.config.seed,
                    pct(c.nl().phase1_final_convergence_rate)
                )
            })
            .collect();
        format!(
            "**Phase 1 did not converge in {} of {} New-LLM runs** (final convergence rate below {} after {} iterations: {}); their contexts are not fixed points, so those cells test Phase 2 on unconverged contexts.\n\n",
            runs.len() - converged,
            runs.len(),
            pct(r.config.phase1_min_converged_ratio),
            r.config.phase1_max_iterations,
            missed.join(", ")
        )
    };
    *md += "| Samples | Tokens | Val PPL | Val Acc | Val ER |\n|---------|--------|---------|---------|--------|\n";
    for c in &r.cells {
        let sum = newllm.and_then(|m| m.cells.iter().find(|x| x.samples == c.samples));
        let one = |v: f64| MeanSd::of(&[v]);
        *md += &format!(
            "| {} | {} | {} | {} | {} |\n",
            c.samples,
            thousands(c.train_tokens),
            mean_sd(sum.map_or(one(c.val_ppl), |x| x.val_ppl), 1.0, 1),
            mean_sd(sum.map_or(one(c.val_acc), |x| x.val_acc), 100.0, 1) + "%",
            mean_sd(sum.map_or(one(c.nl().val_er), |x| x.val_er), 100.0, 1) + "%"
        );
    }
    *md += "\n";
    match &r.scaling {
        Some(fit) => {
            *md += &format!("Scaling coefficient, from PPL = A * tokens^alpha (least squares on ln PPL vs ln tokens): {}.", alpha_sentence(fit));
            *md += &format!(" A = {:.4e}", fit.a);
            if let Some(se) = fit.stderr {
                *md += &format!(", standard error of alpha {se:.4}");
            }
            *md += ".";
            let runs = r.runs.iter().filter(|c| c.model == "newllm").count().max(r.cells.len());
            if runs > r.cells.len() {
                *md += &format!(" The fit uses every run: {} cells x {} seeds.", r.cells.len(), runs / r.cells.len().max(1));
            }
            let left_out = runs.saturating_sub(fit.n);
            if left_out > 0 {
                *md += &format!(" {left_out} run(s) without a finite, positive Val PPL are left out of the fit.");
            }
            if let Some([lo, hi]) = fit.bootstrap_ci95 {
                *md += &format!(
                    " Bootstrap 95% interval over cells ({} resamples): [{lo:.3}, {hi:.3}].",
                    crate::experiment::stats::BOOTSTRAP_RESAMPLES
                );
            }
            *md += "\n\n![scaling](plots/scaling.png)\n\n";
        }
        None => *md += "Scaling coefficient: not available (needs at least 2 cells with different token counts and positive PPL).\n\n",
    }
}

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

/// One-way ANOVA of New-LLM's val ER grouped by cell (None without seeds).
fn er_between_cells(r: &SweepResults) -> Option<(f64, f64)> {
    let groups: Vec<Vec<f64>> = r
        .cells
        .iter()
        .map(|c| {
            r.runs
                .iter()
                .filter(|x| x.newllm.is_some() && x.samples == c.samples)
                .map(|x| x.nl().val_er)
                .collect()
        })
        .collect();
    one_way_anova(&groups)
}

/// Mean over cells of New-LLM's between-seed sd of val ER (None without replicates).
fn er_seed_spread(r: &SweepResults) -> Option<f64> {
    let sds: Vec<f64> = r
        .models
        .iter()
        .find(|m| m.model == "newllm")?
        .cells
        .iter()
        .filter_map(|c| c.val_er.and_then(|v| v.sd))
        .collect();
    (!sds.is_empty()).then(|| sds.iter().sum::<f64>() / sds.len() as f64)
}

pub fn section_tokens(md: &mut String, r: &SweepResults) {
    *md += "### 2. Token count vs performance\n\n";
    *md += "| Tokens | Val PPL | Val Acc | PPL vs previous cell | Acc vs previous cell |\n|--------|---------|---------|----------------------|----------------------|\n";
    for (i, c) in r.cells.iter().enumerate() {
        let (dp, da) = match i.checked_sub(1).map(|j| &r.cells[j]) {
            Some(p) => (
                change_pct(p.val_ppl, c.val_ppl),
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
            &r.correlations.log_tokens_vs_val_acc
        )
    );
}

pub fn section_conclusion(md: &mut String, r: &SweepResults) {
    *md += "### 3. Conclusion\n\n";
    let n = r.cells.len();
    let tokens_sig = r
        .scaling
        .as_ref()
        .and_then(|f| f.p_value)
        .is_some_and(|p| p < SIGNIFICANCE);
    // With seeds, ER's differences between cells must exceed its spread
    // between seeds before a correlation with it can count as evidence.
    let er_anova = er_between_cells(r);
    let er_beyond_noise = er_anova.is_none_or(|(_, p)| p < SIGNIFICANCE);
    let er_sig = er_beyond_noise
        && (correlation_significant(&r.correlations.val_er_vs_val_ppl)
            || correlation_significant(&r.correlations.val_er_vs_val_acc));
    *md += "Token count:\n\n";
    match &r.scaling {
        Some(fit) => *md += &format!("- Scaling law: {}.\n", alpha_sentence(fit)),
        None => *md += "- No scaling fit (too few usable cells).\n",
    }
    *md += "\nEffective Rank vs performance:\n\n";
    let caveat = er_caveat(&r.config);
    let per_cell = if r.runs.len() > r.cells.len() {
        " Computed over the cells' seed means."
    } else {
        ""
    };
    *md += &format!(
        "- {}{per_cell}{caveat}\n",
        correlation_sentence("Val ER vs Val PPL", &r.correlations.val_er_vs_val_ppl)
    );
    *md += &format!(
        "- {}{per_cell}{caveat}\n",
        correlation_sentence("Val ER vs Val Acc", &r.correlations.val_er_vs_val_acc)
    );
    if let (Some(spread), Some((f, p))) = (er_seed_spread(r), er_anova) {
        *md += &format!(
            "- Seed spread: val ER moves {:.1} points (sd) between seeds of one cell. Its differences between cells {} (one-way ANOVA over the runs, F = {f:.2}, {}){}.\n",
            spread * 100.0,
            if er_beyond_noise { "exceed that noise" } else { "do not exceed that noise" },
            p_phrase(p),
            if er_beyond_noise { "" } else { ", so no correlation with ER is counted as evidence here" }
        );
    }
    if let Some(rc) = critical_r(n) {
        *md += &format!(
            "- Caution: with only n = {n} cells a correlation needs |r| >= {rc:.2} to reach p < 0.05, so \"not significant\" is weak evidence of no relation; the Spearman p-value uses the t approximation, which is rough for so few cells.\n"
        );
    }
    let er_spread = r
        .cells
        .iter()
        .map(|c| c.nl().val_er)
        .fold(f64::MIN, f64::max)
        - r.cells
            .iter()
            .map(|c| c.nl().val_er)
            .fold(f64::MAX, f64::min);
    *md += "\nVerdict: ";
    *md += match (tokens_sig, er_sig) {
        (true, false) => "token count is the dominant factor in this sweep: its relation with PPL is significant, and no significant relation between ER and performance was found.",
        (true, true) => "both token count and ER relate significantly to performance here; ER also grows with the cells, so the two are not separated by this sweep.",
        (false, true) => "ER relates significantly to performance while the token fit does not reach significance.",
        (false, false) => "neither token count nor ER reaches significance with these cells; more cells are needed before ranking the factors.",
    };
    if n > 0 && er_spread < 0.02 {
        *md += &format!(
            " Note that val ER varied by only {:.1} points across cells, so this sweep barely tests ER's effect.",
            er_spread * 100.0
        );
    }
    *md += "\n\n";
}

pub fn section_training(md: &mut String, r: &SweepResults, d: &Diagnostics) {
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
    for dip in &d.dips {
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
        let acc_runs = |samples: usize| -> Vec<f64> {
            r.runs
                .iter()
                .filter(|c| c.model == "newllm" && c.samples == samples)
                .map(|c| c.val_acc)
                .collect()
        };
        let (from, to) = (acc_runs(dip.from_samples), acc_runs(dip.to_samples));
        if from.len() >= 2 || to.len() >= 2 {
            *md += &match mean_difference(&to, &from) {
                Some(t) if t.p_value < SIGNIFICANCE => format!(
                    "Over the seeds ({} and {} runs) the drop is {:+.1} points (95% CI {:+.1} to {:+.1}, {}): larger than seed noise.\n\n",
                    to.len(), from.len(), t.diff * 100.0, t.ci95[0] * 100.0, t.ci95[1] * 100.0, p_phrase(t.p_value)
                ),
                Some(t) => format!(
                    "Over the seeds ({} and {} runs) the drop is {:+.1} points (95% CI {:+.1} to {:+.1}, {}): **not distinguishable from seed noise**, so the explanations below are candidates, not findings.\n\n",
                    to.len(), from.len(), t.diff * 100.0, t.ci95[0] * 100.0, t.ci95[1] * 100.0, p_phrase(t.p_value)
                ),
                None => "The seeds show no spread to test the drop against.\n\n".to_string(),
            };
        } else {
            *md += "One seed per cell: whether this drop exceeds seed noise cannot be tested (set `replicates` >= 2).\n\n";
        }
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

pub fn section_recommendations(md: &mut String, r: &SweepResults, d: &Diagnostics) {
    *md += "## Recommendations\n\n";
    let c = &r.config;
    let mut recs: Vec<String> = Vec::new();

    if let Some(fit) = &r.scaling {
        let sig = fit.p_value.is_some_and(|p| p < SIGNIFICANCE);
        let mut counts: Vec<usize> = r.cells.iter().map(|c| c.samples).collect();
        if let Some(&max) = counts.last() {
            counts.extend([max * 2, max * 4]);
        }
        if sig && fit.alpha < 0.0 {
            recs.push(format!(
                "More tokens: PPL falls significantly with tokens, {}. Growing the training data is the most reliable lever; larger cells also tighten the CI{}.\n\n   `{}`",
                alpha_sentence(fit),
                if fit.n < 5 { " and enable the bootstrap interval (n >= 5)" } else { "" },
                sweep_command(c, &counts)
            ));
        } else if fit.p_value.is_none() || !sig {
            recs.push(format!(
                "More cells: the scaling fit is not conclusive, {}. Add larger cells before drawing a conclusion.\n\n   `{}`",
                alpha_sentence(fit),
                sweep_command(c, &counts)
            ));
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

    let er_related = correlation_significant(&r.correlations.val_er_vs_val_ppl)
        || correlation_significant(&r.correlations.val_er_vs_val_acc);
    let er_tested = r
        .correlations
        .val_er_vs_val_ppl
        .pearson
        .as_ref()
        .is_some_and(|p| p.p_value.is_some());
    if er_tested && !er_related {
        let other = !c.token_input_all_layers;
        recs.push(format!(
            "Compare the other ContextBlock structure: ER shows no significant relation with performance, so run `token_input_all_layers = {other}` under identical conditions to see whether a different ER level changes Phase 2.\n\n   `{}`",
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

pub fn section_factor_table(md: &mut String, r: &SweepResults) {
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
    let tokens_v = verdict(r.scaling.as_ref().and_then(|f| f.p_value));
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
    let er_anova = er_between_cells(r).filter(|(_, p)| *p >= SIGNIFICANCE);
    let er_v = if let Some((_, p)) = er_anova {
        &*format!(
            "no evidence: ER differs between cells no more than between seeds (ANOVA {})",
            p_phrase(p)
        )
    } else if correlation_significant(pair)
        || correlation_significant(&r.correlations.val_er_vs_val_acc)
    {
        "significant relation with performance at 5%"
    } else if pair.pearson.as_ref().and_then(|c| c.p_value).is_some() {
        "no significant relation with performance at 5%"
    } else {
        "not testable"
    };
    let er_ev = if r.config.pretrained_embeddings.is_empty() {
        format!("{er_ev} (random embeddings: ER level not comparable with the seed's)")
    } else {
        er_ev
    };
    *md += &format!("| Effective Rank | {er_ev} | {er_v} |\n\n");
}

/// A stage key as a column heading ("train_cache" -> "Train cache").
fn stage_heading(key: &str) -> String {
    match key {
        "phase1" => "Phase 1".into(),
        "phase2" => "Phase 2".into(),
        "effective_rank" => "ER".into(),
        _ => {
            let text = key.replace('_', " ");
            let mut chars = text.chars();
            chars.next().map_or(String::new(), |f| {
                f.to_uppercase().collect::<String>() + chars.as_str()
            })
        }
    }
}

pub fn section_timings(md: &mut String, r: &SweepResults) {
    let rows: &[CellResult] = if r.runs.is_empty() { &r.cells } else { &r.runs };
    // Every stage any run recorded, in the order the runs ran them.
    let mut stages: Vec<&str> = Vec::new();
    for c in rows {
        for (k, _) in &c.seconds.0 {
            if !stages.contains(&k.as_str()) {
                stages.push(k);
            }
        }
    }
    let phase1 = rows.iter().any(|c| c.newllm.is_some());
    *md += "## Timings (seconds)\n\n| Model | Samples | Seed |";
    for k in &stages {
        *md += &format!(" {} |", stage_heading(k));
    }
    if phase1 {
        *md += " Phase 1 iterations | Converged |";
    }
    *md += "\n|---|---|---|";
    *md += &"---|".repeat(stages.len() + if phase1 { 2 } else { 0 });
    *md += "\n";
    for c in rows {
        *md += &format!("| {} | {} | {} |", c.model, c.samples, c.config.seed);
        for k in &stages {
            *md += &c
                .seconds
                .get(k)
                .map_or(" - |".into(), |v| format!(" {v:.1} |"));
        }
        match (&c.newllm, phase1) {
            (Some(n), _) => {
                *md += &format!(
                    " {} | {} ({}) |",
                    n.phase1_iterations,
                    if n.phase1_converged { "yes" } else { "no" },
                    pct(n.phase1_final_convergence_rate)
                )
            }
            (None, true) => *md += " - | - |",
            (None, false) => {}
        }
        *md += "\n";
    }
    let total: f64 = rows.iter().map(|c| c.seconds.total()).sum();
    *md += &format!(
        "\nWhole sweep: {:.1} s ({:.1} min).\n\n",
        total,
        total / 60.0
    );
}

pub fn section_epochs(md: &mut String, r: &SweepResults) {
    *md += "## Appendix: Phase-2 curves per cell\n\n";
    for c in r.cells.iter().filter(|c| !c.epochs.is_empty()) {
        *md += &format!("### {} samples\n\n| Epoch | Train PPL | Val PPL | Val Acc | Seconds |\n|-------|-----------|---------|---------|---------|\n", c.samples);
        for e in &c.epochs {
            let mark = if e.epoch == c.best_epoch {
                " (best)"
            } else {
                ""
            };
            *md += &format!(
                "| {}{mark} | {:.1} | {:.1} | {} | {:.1} |\n",
                e.epoch,
                e.train_ppl,
                e.val_ppl,
                pct(e.val_acc),
                e.seconds
            );
        }
        let stem = plots::epoch_plot_stem(c);
        *md += &format!("\n![{} samples](plots/{stem}.png)\n\n", c.samples);
    }
}

/// The report text (no files touched).
pub fn render_report(results: &SweepResults) -> String {
    let r = results;
    let d = diagnose(r);
    let mut md = String::new();
    md += "# Scaling experiment analysis: Effective Rank vs token count\n\n";
    md += &format!(
        "Generated by newllm on {} from {} cell(s).\n\n",
        now_utc(),
        r.cells.len()
    );
    section_conditions(&mut md, r);
    if r.cells.is_empty() {
        md += "No cells were recorded: nothing to analyse.\n";
        return md;
    }
    section_summary(&mut md, r);
    section_baselines(&mut md, r);
    md += "## Analysis: which matters more, Effective Rank or token count?\n\n";
    section_er(&mut md, r);
    section_tokens(&mut md, r);
    section_conclusion(&mut md, r);
    section_training(&mut md, r, &d);
    section_recommendations(&mut md, r, &d);
    section_factor_table(&mut md, r);
    section_timings(&mut md, r);
    section_epochs(&mut md, r);
    md
}

/// Writes `dir/report.md` and the plots under `dir/plots/`.
pub fn write_report(dir: &Path, results: &SweepResults) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    plots::write_sweep_plots(&dir.join("plots"), results)?;
    let path = dir.join("report.md");
    std::fs::write(&path, render_report(results))
        .with_context(|| format!("cannot write {}", path.display()))
}
