//! The sweep report's validation design and its scaling analyses beyond
//! the one power-law line: alpha over sliding windows, the power law
//! against a saturation law, the leave-last-out check and the predictions
//! beyond the data. Figures come from `results.rs` (`ScalingAnalysis`),
//! claims from `verdicts.rs`.

use super::verdicts::{AlphaChange, Verdicts};
use super::wording::{alpha_sentence, p_phrase};
use crate::config::ValMode;
use crate::experiment::format::{pct, short_number, thousands};
use crate::experiment::laws::{Law, LawFit, AICC_TIE};
use crate::experiment::results::{ModelResults, SweepResults};
use crate::experiment::stats::BOOTSTRAP_RESAMPLES;
use crate::models::ModelKind;

fn law_name(law: Law) -> &'static str {
    match law {
        Law::Power => "power law",
        Law::Saturation => "saturation law",
    }
}

/// "PPL = 95.4 + 1.0e4 * tokens^-0.778" with the parameters' 95% CIs.
pub fn law_formula(fit: &LawFit) -> String {
    let ci = |c: Option<[f64; 2]>, digits: usize| {
        c.map_or(String::new(), |[lo, hi]| {
            format!(" [{lo:.digits$}, {hi:.digits$}]")
        })
    };
    let a = format!("{:.3e}", fit.a);
    match fit.law {
        Law::Power => format!(
            "PPL = {a} * tokens^-{:.3}{}",
            fit.exponent,
            ci(fit.exponent_ci95, 3)
        ),
        Law::Saturation => format!(
            "PPL = {:.1}{} + {a} * tokens^-{:.3}{}",
            fit.e,
            ci(fit.e_ci95, 1),
            fit.exponent,
            ci(fit.exponent_ci95, 3)
        ),
    }
}

/// How validation was done, and in tail mode what that costs: the n-gram's
/// PPL per cell as the measure of the validation text changing with N.
pub fn section_validation(md: &mut String, r: &SweepResults) {
    *md += "## Validation design\n\n";
    let c = &r.config;
    match c.val_mode {
        ValMode::Heldout => {
            let val = r.cells.first().map(|x| (x.val_tokens, x.val_set.clone()));
            *md += &format!(
                "One validation set for every cell, seed and model: the corpus's last {} conversations{}, never among any cell's training conversations, so the cells differ in their training data alone. Intervals \"over validation conversations\" resample those conversations (whole, {} times, the same draw for every seed): the validation set's own sampling error, next to the seed spread.\n\n",
                c.val_samples,
                val.map_or(String::new(), |(t, id)| format!(" ({} tokens, set `{id}`)", thousands(t))),
                BOOTSTRAP_RESAMPLES
            );
        }
        ValMode::Tail => {
            *md += &format!(
                "**The validation text changes with N.** Each cell is scored on the last {} of its own token stream (the seed's design), so a larger cell is scored on other, later text, and alpha mixes more training data with different validation text. ",
                pct(c.val_fraction)
            );
            match r.models.iter().find(|m| m.model == ModelKind::Kn) {
                Some(kn) => {
                    let ppl: Vec<String> = kn
                        .cells
                        .iter()
                        .filter_map(|x| {
                            Some(format!("{:.1} ({} samples)", x.val_ppl?.mean, x.samples))
                        })
                        .collect();
                    *md += &format!(
                        "The Kneser-Ney n-gram depends on nothing but the data; its Val PPL per cell, {}, shows how much the text alone moves (on one fixed set it falls steadily as its training data grows: BENCHMARKS.md, \"Validation set size\").",
                        ppl.join(", ")
                    );
                }
                None => {
                    *md += "Add the Kneser-Ney baseline (`baselines = [\"kn\"]`) to measure how much the text alone moves.";
                }
            }
            *md += " Set `val_mode = \"heldout\"` for one validation set for every cell.\n\n";
        }
    }
}

/// Windows, the two laws, the leave-last-out check and the predictions,
/// for New-LLM in full and the baselines in one table.
pub fn section_scaling(md: &mut String, r: &SweepResults, v: &Verdicts) {
    let Some(m) = r.models.iter().find(|m| m.model == ModelKind::NewLlm) else {
        return;
    };
    *md += "## Scaling beyond one line\n\n";
    if v.tail {
        *md += "Caution: tail validation (see \"Validation design\"): every figure here mixes more data with different validation text.\n\n";
    }
    section_windows(md, m, v);
    section_laws(md, m);
    section_holdout(md, m);
    section_predictions(md, m);
    let others: Vec<&ModelResults> = r.models.iter().skip(1).collect();
    if !others.is_empty() {
        *md += "The same analyses for the baselines:\n\n| Model | Better law (AICc) | Saturation E | alpha change with data |\n|---|---|---|---|\n";
        for b in others {
            let a = &b.analysis;
            let better = match &a.laws {
                Some(l) if l.delta_aicc.is_some() => match l.better {
                    Some(law) => law_name(law).to_string(),
                    None => "cannot tell apart".into(),
                },
                _ => "not comparable (too few runs)".into(),
            };
            let e = a
                .laws
                .as_ref()
                .and_then(|l| l.saturation.as_ref())
                .map_or("-".into(), |s| format!("{:.1}", s.e));
            let trend = match super::verdicts::alpha_change_of(a.trend.as_ref()) {
                AlphaChange::Flattens => "flattens (significant)",
                AlphaChange::Steepens => "steepens (significant)",
                AlphaChange::NoChange => "no significant change",
                AlphaChange::Untestable => "not testable",
            };
            let name = b.model.label();
            *md += &format!("| {name} | {better} | {e} | {trend} |\n");
        }
        *md += "\n";
    }
}

fn section_windows(md: &mut String, m: &ModelResults, v: &Verdicts) {
    let a = &m.analysis;
    *md += &format!(
        "### Alpha over sliding windows of {} sample counts\n\n",
        a.window
    );
    if a.windows.is_empty() {
        *md += &format!(
            "Needs at least {} sample counts; this sweep has {}. Add cells (into the same `--out` directory, only the new ones run).\n\n",
            a.window + 1,
            m.cells.len()
        );
    } else {
        *md += "| Samples | Tokens | alpha (95% CI) | R^2 | Runs |\n|---|---|---|---|---|\n";
        let samples = |t: f64| {
            m.cells
                .iter()
                .find(|c| c.train_tokens as f64 == t)
                .map_or("?".to_string(), |c| c.samples.to_string())
        };
        for w in &a.windows {
            let ci = w
                .fit
                .alpha_ci95
                .map_or(String::new(), |[lo, hi]| format!(" [{lo:.3}, {hi:.3}]"));
            *md += &format!(
                "| {}-{} | {}-{} | {:.3}{ci} | {} | {} |\n",
                samples(w.first_tokens),
                samples(w.last_tokens),
                short_number(w.first_tokens),
                short_number(w.last_tokens),
                w.fit.alpha,
                w.fit.r2.map_or("-".into(), |r2| format!("{r2:.3}")),
                w.fit.n
            );
        }
        *md += "\n";
    }
    let trend = a.trend.as_ref();
    let test = trend.map_or(String::new(), |t| {
        format!(
            " (quadratic term of ln PPL in ln tokens over every run: {:+.4} ± {:.4}, {}, {} dof)",
            t.curvature,
            t.stderr,
            t.p_value.map_or("no p-value".into(), p_phrase),
            t.dof
        )
    });
    *md += &match v.alpha_change {
        AlphaChange::Flattens => format!("In plain words: alpha rises towards 0 as data grows, significantly{test}: each doubling of the data buys less than the one before (diminishing returns).\n\n"),
        AlphaChange::Steepens => format!("In plain words: alpha grows more negative as data grows, significantly{test}: returns increase over this range.\n\n"),
        AlphaChange::NoChange => format!("In plain words: no change of alpha with data is distinguishable from the scatter{test}; one power law describes this range.\n\n"),
        AlphaChange::Untestable => "Whether alpha changes with data is not testable: it needs at least 4 sample counts.\n\n".to_string(),
    };
}

fn section_laws(md: &mut String, m: &ModelResults) {
    *md += "### Power law or saturation law?\n\n";
    let Some(l) = &m.analysis.laws else {
        *md += "Not fitted: too few runs.\n\n";
        return;
    };
    *md += "Both fitted over every run by least squares on ln PPL, so they are compared under one error model; AICc counts each law's parameters plus the error variance.\n\n| Law | Fit (95% CIs) | AICc |\n|---|---|---|\n";
    let aicc = |f: &LawFit| f.aicc.map_or("-".into(), |a| format!("{a:.2}"));
    *md += &format!(
        "| power law | {} | {} |\n",
        law_formula(&l.power),
        aicc(&l.power)
    );
    if let Some(s) = &l.saturation {
        let bound = if s.at_bound {
            " (E at its bound 0: the power law)"
        } else {
            ""
        };
        *md += &format!(
            "| saturation law | {}{bound} | {} |\n",
            law_formula(s),
            aicc(s)
        );
    }
    *md += "\n";
    *md += &match (l.delta_aicc, l.better) {
        (Some(d), Some(law)) => {
            let fit = if law == Law::Power { Some(&l.power) } else { l.saturation.as_ref() };
            format!(
                "The {} fits better (AICc difference saturation - power = {d:+.2}, beyond the {AICC_TIE} that counts as evidence): {}.\n\n",
                law_name(law),
                fit.map_or(String::new(), law_formula)
            )
        }
        (Some(d), None) => format!(
            "The data cannot tell the two laws apart (AICc difference {d:+.2}; within {AICC_TIE}, or the saturation law sits at E = 0).\n\n"
        ),
        (None, _) => "The two laws cannot be compared by AICc with so few runs (the saturation law needs more runs than its 4 counted parameters + 1).\n\n".to_string(),
    };
}

fn section_holdout(md: &mut String, m: &ModelResults) {
    let a = &m.analysis;
    if a.holdouts.is_empty() {
        return;
    }
    *md += "### Leave-last-out check\n\nEach law fitted without the largest cell, predicting it:\n\n| Law | Predicted Val PPL | Observed (mean ± sd) | Error |\n|---|---|---|---|\n";
    for h in &a.holdouts {
        let obs = match h.observed_sd {
            Some(sd) => format!("{:.1} ± {sd:.1} ({} runs)", h.observed_mean, h.observed_n),
            None => format!("{:.1}", h.observed_mean),
        };
        let within = h
            .observed_sd
            .filter(|sd| (h.predicted - h.observed_mean).abs() <= *sd)
            .map_or("", |_| ", within one sd");
        *md += &format!(
            "| {} | {:.1} at {} tokens | {obs} | {:+.1}%{within} |\n",
            law_name(h.law),
            h.predicted,
            thousands(h.largest_tokens as usize),
            100.0 * h.rel_error
        );
    }
    *md += "\n";
}

fn section_predictions(md: &mut String, m: &ModelResults) {
    let a = &m.analysis;
    if a.extrapolations.is_empty() {
        return;
    }
    *md += &format!(
        "### Predicted Val PPL beyond the data (extrapolation)\n\n**Extrapolation:** these assume the law keeps holding beyond the largest cell; the intervals (percentile bootstrap over runs, {BOOTSTRAP_RESAMPLES} resamples) cover the fit's uncertainty only, not whether the law holds there.\n\n| Law | Tokens | Predicted Val PPL (95% interval) |\n|---|---|---|\n"
    );
    for e in &a.extrapolations {
        for p in &e.points {
            let ci = p
                .ci95
                .map_or(String::new(), |[lo, hi]| format!(" [{lo:.1}, {hi:.1}]"));
            *md += &format!(
                "| {} | {} ({}x the largest cell) | {:.1}{ci} |\n",
                law_name(e.law),
                thousands(p.tokens as usize),
                p.factor,
                p.predicted
            );
        }
    }
    *md += "\n";
    if let Some(fit) = &m.scaling {
        *md += &format!(
            "For reference, the headline fit: {}.\n\n",
            alpha_sentence(fit)
        );
    }
}
