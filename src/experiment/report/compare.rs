//! `compare.md`: the configs of a comparison (one or more varied axes) on
//! the same cells: one cross-config table, per-cell figures, the
//! baselines (each distinct one once), heatmaps for a two-axis grid, the
//! best config against the runner-up, and the side-by-side differences.

use super::baselines::mean_sd;
use super::verdicts::{
    decide_grid, paired_verdict, same_validation, significant, GridVerdict, Paired,
};
use super::wording::{alpha_sentence, p_phrase, verdict};
use crate::experiment::format::{change_pct, fmt_p, now_utc, pct, thousands};
use crate::experiment::laws::Law;
use crate::experiment::plots::{self, Heatmap};
use crate::experiment::results::{ModelResults, SweepResults};
use crate::experiment::stats::{alpha_difference_p, paired_difference, Difference};
use crate::models::ModelKind;
use anyhow::{Context, Result};
use std::path::Path;

/// The shape of a comparison: each axis (key, values in order) and each
/// compared config's value on every axis (aligned with the sides).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GridShape {
    pub axes: Vec<(String, Vec<String>)>,
    pub values: Vec<Vec<String>>,
}

/// Up to this many configs the report also shows every config's cells side
/// by side against the first (wider grids get the per-cell tables only).
const SIDE_BY_SIDE_MAX: usize = 4;

/// Config fields whose values differ between the sides: (field, value per side).
pub fn differing_fields(sides: &[(String, SweepResults)]) -> Vec<(String, Vec<String>)> {
    let tables: Vec<toml::Table> = sides
        .iter()
        .filter_map(|(_, r)| toml::Table::try_from(&r.config).ok())
        .collect();
    let Some(first) = tables.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for key in first.keys() {
        let values: Vec<Option<&toml::Value>> = tables.iter().map(|t| t.get(key)).collect();
        if values.iter().any(|v| *v != values[0]) {
            let shown = values
                .iter()
                .map(|v| v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_string()))
                .collect();
            out.push((key.clone(), shown));
        }
    }
    out
}

/// Per cell, each side against the first, paired by seed (replicate r of
/// both sides ran with the same seed on the same split): the mean paired
/// difference of Val PPL and Val Acc with a 95% CI and the paired t test.
fn paired_section(sides: &[(String, SweepResults)], labels: &[String]) -> String {
    let mut md = String::from("## Paired by seed\n\n");
    let Some((_, base)) = sides.first() else {
        return md;
    };
    let runs = |r: &SweepResults, s: usize| -> Vec<(u64, f64, f64, String)> {
        r.runs
            .iter()
            .filter(|c| c.model == ModelKind::NewLlm && c.samples == s)
            .map(|c| (c.config.seed, c.val_ppl, c.val_acc, c.val_set.clone()))
            .collect()
    };
    md += "Each row pairs the runs of both sides that used the same seed; a difference is claimed only when its 95% CI excludes zero.\n\n";
    md += "| Cell | Pairs | Val PPL difference (95% CI) | p | Val Acc difference, points (95% CI) | p | Verdict |\n|---|---|---|---|---|---|---|\n";
    let mut any = false;
    for (i, (_, r)) in sides.iter().enumerate().skip(1) {
        for c in &base.cells {
            let (a, b) = (runs(r, c.samples), runs(base, c.samples));
            // Runs scored on different validation sets are not paired.
            let other_set = a.iter().any(|x| b.iter().any(|y| y.0 == x.0 && y.3 != x.3));
            // (side PPL, base PPL, side Acc, base Acc) of each shared seed.
            let pairs: Vec<[f64; 4]> = a
                .iter()
                .filter_map(|(seed, p, acc, set)| {
                    b.iter()
                        .find(|x| x.0 == *seed && x.3 == *set)
                        .map(|(_, bp, bacc, _)| [*p, *bp, *acc, *bacc])
                })
                .collect();
            let col = |i: usize| -> Vec<f64> { pairs.iter().map(|x| x[i]).collect() };
            let ppl = paired_difference(&col(0), &col(1));
            let acc = paired_difference(&col(2), &col(3));
            let show = |d: &Option<Difference>, scale: f64| match d {
                Some(d) => (
                    format!(
                        "{:+.1} ({:+.1} to {:+.1})",
                        d.diff * scale,
                        d.ci95[0] * scale,
                        d.ci95[1] * scale
                    ),
                    fmt_p(d.p_value),
                ),
                None => ("-".into(), "-".into()),
            };
            let ((pd, pp), (ad, ap)) = (show(&ppl, 1.0), show(&acc, 100.0));
            let (l, b0) = (&labels[i], &labels[0]);
            let mut verdict = match paired_verdict(ppl, other_set, pairs.len()) {
                Paired::SideLower => format!("{l} beats {b0} (lower PPL)"),
                Paired::BaseLower => format!("{b0} beats {l} (lower PPL)"),
                Paired::WithinNoise => "PPL: no difference beyond seed noise".to_string(),
                Paired::DifferentSets => "not compared: different validation sets".to_string(),
                Paired::TooFewSeeds => "untestable: needs 2+ seeds (`replicates`)".to_string(),
                Paired::IdenticalPairs => "untestable: identical pairs".to_string(),
            };
            if let Some(d) = acc.filter(|d| significant(d.p_value)) {
                let (hi, lo) = if d.diff > 0.0 { (l, b0) } else { (b0, l) };
                verdict += &format!(
                    "; Val Acc higher for {hi} than {lo} (only {} pairs: a fragile test)",
                    pairs.len()
                );
            }
            any = true;
            md += &format!(
                "| {l} vs {b0}, {} samples | {} | {pd} | {pp} | {ad} | {ap} | {verdict} |\n",
                c.samples,
                pairs.len()
            );
        }
    }
    if !any {
        md += "(no shared cells)\n";
    }
    md += "\n";
    md
}

/// The compare report text (no files touched).
pub fn render_compare_report(shape: &GridShape, sides: &[(String, SweepResults)]) -> String {
    let mut md = String::new();
    md += "# Comparison of settings on the same cells\n\n";
    md += &format!(
        "Generated by newllm on {}. Configs: {}.\n\n",
        now_utc(),
        sides
            .iter()
            .map(|(n, _)| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let Some((base_name, base)) = sides.first() else {
        md += "No sides to compare.\n";
        return md;
    };

    md += "## Settings that differ\n\n";
    let diffs = differing_fields(sides);
    if diffs.is_empty() {
        md += "None: every config field is equal on all sides.\n\n";
    } else {
        md += &format!(
            "| Field | {} |\n|-------|{}\n",
            names(sides, " | "),
            "------|".repeat(sides.len())
        );
        for (key, values) in &diffs {
            md += &format!("| `{key}` | {} |\n", values.join(" | "));
        }
        md += "\n";
    }
    if !sides.iter().all(|(_, r)| same_validation(base, r)) {
        md += "**The configs do not all validate on the same set** (another corpus or validation setting): Val PPLs of different sets are not compared, paired or ranked against each other.\n\n";
    }
    let v = decide_grid(sides);
    md += &section_configs(sides);
    md += &section_per_cell(sides);
    md += &section_grid_baselines(sides);
    if shape.axes.len() == 2 {
        md += &section_heatmaps(shape, sides, &v);
    }
    md += &section_best(sides, &v);
    if sides.len() > SIDE_BY_SIDE_MAX {
        md += &format!("(With more than {SIDE_BY_SIDE_MAX} configs the side-by-side tables against the first are left out; the tables above hold every figure.)\n");
        md += "\n![compare](plots/compare_scaling.png)\n";
        return md;
    }

    md += "## Per-cell results\n\n";
    // Side names can be long; the table uses letters.
    let labels: Vec<String> = (0..sides.len()).map(side_label).collect();
    for (label, (name, _)) in labels.iter().zip(sides) {
        md += &format!("- {label} = `{name}`\n");
    }
    md += "\n";
    let mut header = "| Samples | Tokens |".to_string();
    for l in &labels {
        header += &format!(" Val PPL {l} | Val Acc {l} | Val ER {l} |");
    }
    for l in &labels[1..] {
        header += &format!(
            " PPL {l} vs {} | Acc {l} - {} | ER {l} - {} |",
            labels[0], labels[0], labels[0]
        );
    }
    md += &header;
    md += "\n|";
    md += &"---|".repeat(header.matches('|').count() - 1);
    md += "\n";
    let samples = all_samples(sides);
    let cell = |r: &SweepResults, s: usize| r.cells.iter().find(|c| c.samples == s).cloned();
    for &s in &samples {
        // Token counts differ between sides only when the data settings do.
        let mut tokens: Vec<String> = sides
            .iter()
            .filter_map(|(_, r)| cell(r, s).map(|c| thousands(c.train_tokens)))
            .collect();
        tokens.dedup();
        let mut row = format!("| {s} | {} |", tokens.join(" / "));
        for (_, r) in sides {
            match cell(r, s) {
                Some(c) => {
                    row += &format!(
                        " {:.1} | {} | {} |",
                        c.val_ppl,
                        pct(c.val_acc),
                        pct(c.nl().val_er)
                    )
                }
                None => row += " - | - | - |",
            }
        }
        for (_, r) in &sides[1..] {
            match (cell(base, s), cell(r, s)) {
                (Some(b), Some(c)) => {
                    row += &format!(
                        " {} | {:+.1} points | {:+.1} points |",
                        change_pct(b.val_ppl, c.val_ppl),
                        (c.val_acc - b.val_acc) * 100.0,
                        (c.nl().val_er - b.nl().val_er) * 100.0
                    )
                }
                _ => row += " - | - | - |",
            }
        }
        md += &row;
        md += "\n";
    }
    md += "\n";

    md += &paired_section(sides, &labels);

    md += "## Scaling per side\n\n";
    for (name, r) in sides {
        let fit = match &r.scaling {
            Some(fit) => alpha_sentence(fit),
            None => "no scaling fit".to_string(),
        };
        let er = r.cells.iter().map(|c| c.nl().val_er);
        let (lo, hi) = er.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let band = if r.cells.is_empty() {
            String::new()
        } else {
            format!("; val ER {}-{}", pct(lo), pct(hi))
        };
        md += &format!("- `{name}`: {fit}{band}.\n");
    }
    md += "\n";
    if let Some(bf) = &base.scaling {
        for (name, r) in &sides[1..] {
            let Some(fit) = &r.scaling else { continue };
            md += &format!(
                "- alpha `{name}` - `{base_name}` = {:+.3}",
                fit.alpha - bf.alpha
            );
            match alpha_difference_p(fit, bf) {
                Some(p) => {
                    md += &format!(
                        " ({}, approximate t test from the two standard errors): {}.\n",
                        p_phrase(p),
                        verdict(Some(p))
                    )
                }
                None => md += " (no test: a side has fewer than 3 cells).\n",
            }
            let mean_change = mean_log_ratio(base, r);
            if let Some(m) = mean_change {
                md += &format!("- Val PPL `{name}` vs `{base_name}`, geometric mean over shared cells: {:+.1}%.\n", (m.exp() - 1.0) * 100.0);
            }
        }
    }
    md += "\n![compare](plots/compare_scaling.png)\n";
    md
}

/// A, B, ..., Z, then S27, S28, ...
pub fn side_label(i: usize) -> String {
    if i < 26 {
        char::from(b'A' + i as u8).to_string()
    } else {
        format!("S{}", i + 1)
    }
}

pub fn names(sides: &[(String, SweepResults)], sep: &str) -> String {
    sides
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(sep)
}

/// Mean of ln(PPL_other / PPL_base) over cells present on both sides.
pub fn mean_log_ratio(base: &SweepResults, other: &SweepResults) -> Option<f64> {
    let logs: Vec<f64> = base
        .cells
        .iter()
        .filter_map(|b| {
            other
                .cells
                .iter()
                .find(|c| c.samples == b.samples)
                .map(|c| (c.val_ppl / b.val_ppl).ln())
        })
        .filter(|v| v.is_finite())
        .collect();
    (!logs.is_empty()).then(|| logs.iter().sum::<f64>() / logs.len() as f64)
}

/// Writes `dir/compare.md`, `dir/plots/compare_scaling.{svg,png}` and, for
/// a two-axis grid, the heatmaps.
pub fn write_compare_report(
    dir: &Path,
    shape: &GridShape,
    sides: &[(String, SweepResults)],
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let plots_dir = dir.join("plots");
    plots::write_compare_plot(&plots_dir, sides)?;
    if shape.axes.len() == 2 {
        for (stem, map) in heatmaps(shape, sides, &decide_grid(sides)) {
            plots::write_heatmap(&plots_dir.join(stem), &map)?;
        }
    }
    let path = dir.join("compare.md");
    crate::io::write_atomic(&path, render_compare_report(shape, sides).as_bytes())
}

fn newllm(r: &SweepResults) -> Option<&ModelResults> {
    r.models.iter().find(|m| m.model == ModelKind::NewLlm)
}

/// Every sample count any config has, ascending.
fn all_samples(sides: &[(String, SweepResults)]) -> Vec<usize> {
    let mut samples: Vec<usize> = sides
        .iter()
        .flat_map(|(_, r)| r.cells.iter().map(|c| c.samples))
        .collect();
    samples.sort_unstable();
    samples.dedup();
    samples
}

/// One row per config: its fit, Phase 1 and ER, and its better law.
fn section_configs(sides: &[(String, SweepResults)]) -> String {
    let mut md = String::from("## Configs side by side\n\n| Config | alpha (95% CI) | A | R^2 | Phase-1 iterations (mean) | Phase 1 converged | Val ER (mean over cells) | Better law (AICc) |\n|---|---|---|---|---|---|---|---|\n");
    for (name, r) in sides {
        let fit = r.scaling.as_ref();
        let alpha = fit.map_or("no fit".into(), |f| {
            f.alpha_ci95.map_or(format!("{:.3}", f.alpha), |[lo, hi]| {
                format!("{:.3} [{lo:.3}, {hi:.3}]", f.alpha)
            })
        });
        let nl: Vec<_> = r.runs.iter().filter(|c| c.newllm.is_some()).collect();
        let iters = nl
            .iter()
            .map(|c| c.nl().phase1_iterations as f64)
            .sum::<f64>()
            / nl.len().max(1) as f64;
        let converged = nl.iter().filter(|c| c.nl().phase1_converged).count();
        let er = r.cells.iter().map(|c| c.nl().val_er).sum::<f64>() / r.cells.len().max(1) as f64;
        let law = newllm(r)
            .and_then(|m| m.analysis.laws.as_ref())
            .map_or("-".into(), |l| match (l.delta_aicc, l.better) {
                (Some(_), Some(Law::Power)) => "power".to_string(),
                (Some(_), Some(Law::Saturation)) => {
                    l.saturation.as_ref().map_or("saturation".into(), |s| {
                        format!("saturation (E = {:.1})", s.e)
                    })
                }
                (Some(_), None) => "cannot tell apart".into(),
                (None, _) => "too few runs".into(),
            });
        md += &format!(
            "| `{name}` | {alpha} | {} | {} | {iters:.1} | {converged} of {} | {} | {law} |\n",
            fit.map_or("-".into(), |f| format!("{:.3e}", f.a)),
            fit.and_then(|f| f.r2)
                .map_or("-".into(), |v| format!("{v:.3}")),
            nl.len(),
            pct(er)
        );
    }
    md + "\n"
}

/// Val PPL and Val Acc per cell, mean +/- sd over seeds, one row per config.
fn section_per_cell(sides: &[(String, SweepResults)]) -> String {
    let samples = all_samples(sides);
    let mut md = String::new();
    for (what, f, scale, unit) in [
        (
            "Val PPL",
            (|c: &crate::experiment::results::CellSummary| c.val_ppl) as fn(&_) -> _,
            1.0,
            "",
        ),
        (
            "Val Acc",
            |c: &crate::experiment::results::CellSummary| c.val_acc,
            100.0,
            "%",
        ),
    ] {
        md += &format!("## {what} per cell (mean ± sd over seeds)\n\n| Config |");
        for s in &samples {
            md += &format!(" {s} samples |");
        }
        md += "\n|---|";
        md += &"---|".repeat(samples.len());
        md += "\n";
        for (name, r) in sides {
            md += &format!("| `{name}` |");
            for &s in &samples {
                let cell = newllm(r).and_then(|m| m.cells.iter().find(|c| c.samples == s));
                md += &match cell.and_then(f) {
                    Some(v) => format!(" {}{unit} |", mean_sd(Some(v), scale, 1)),
                    None => " - |".into(),
                };
            }
            md += "\n";
        }
        md += "\n";
    }
    md
}

/// Each distinct baseline once, with the configs it serves.
fn section_grid_baselines(sides: &[(String, SweepResults)]) -> String {
    // (model, its per-cell figures as a key, configs) for each distinct run set
    let mut distinct: Vec<(&ModelResults, Vec<String>)> = Vec::new();
    for (name, r) in sides {
        for m in r.models.iter().filter(|m| m.model != ModelKind::NewLlm) {
            match distinct
                .iter_mut()
                .find(|(d, _)| d.model == m.model && d.cells == m.cells)
            {
                Some((_, configs)) => configs.push(name.clone()),
                None => distinct.push((m, vec![name.clone()])),
            }
        }
    }
    if distinct.is_empty() {
        return String::new();
    }
    let samples = all_samples(sides);
    let mut md = String::from("## Baselines (each distinct configuration trained once)\n\n| Baseline | For configs | alpha (95% CI) |");
    for s in &samples {
        md += &format!(" Val PPL {s} |");
    }
    md += "\n|---|---|---|";
    md += &"---|".repeat(samples.len());
    md += "\n";
    for (m, configs) in &distinct {
        let label = m.model.label();
        let configs = if configs.len() == sides.len() {
            "all".to_string()
        } else {
            configs
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let alpha = m.scaling.as_ref().map_or("no fit".into(), |f| {
            f.alpha_ci95.map_or(format!("{:.3}", f.alpha), |[lo, hi]| {
                format!("{:.3} [{lo:.3}, {hi:.3}]", f.alpha)
            })
        });
        md += &format!("| {label} | {configs} | {alpha} |");
        for &s in &samples {
            let cell = m.cells.iter().find(|c| c.samples == s);
            md += &format!(" {} |", mean_sd(cell.and_then(|c| c.val_ppl), 1.0, 1));
        }
        md += "\n";
    }
    md + "\n"
}

/// The heatmaps of a two-axis grid: (file stem, map).
fn heatmaps(
    shape: &GridShape,
    sides: &[(String, SweepResults)],
    v: &GridVerdict,
) -> Vec<(String, Heatmap)> {
    let [(ykey, yvals), (xkey, xvals)] = [&shape.axes[0], &shape.axes[1]];
    let grid = |f: &dyn Fn(&SweepResults) -> Option<f64>| -> Vec<Vec<Option<f64>>> {
        yvals
            .iter()
            .map(|y| {
                xvals
                    .iter()
                    .map(|x| {
                        let i = shape.values.iter().position(|v| v[0] == *y && v[1] == *x)?;
                        f(&sides.get(i)?.1)
                    })
                    .collect()
            })
            .collect()
    };
    let map = |title: String, values: Vec<Vec<Option<f64>>>, digits: usize| Heatmap {
        title,
        x_key: xkey.clone(),
        x_values: xvals.clone(),
        y_key: ykey.clone(),
        y_values: yvals.clone(),
        values,
        digits,
    };
    let mut out = vec![(
        "heatmap_alpha".to_string(),
        map(
            "alpha (lower = PPL falls faster with data)".into(),
            grid(&|r| r.scaling.as_ref().map(|f| f.alpha)),
            3,
        ),
    )];
    if let Some(s) = v.largest {
        let ppl = grid(&|r| {
            newllm(r)?
                .cells
                .iter()
                .find(|c| c.samples == s)?
                .val_ppl
                .map(|m| m.mean)
        });
        out.push((
            format!("heatmap_ppl_{s}"),
            map(format!("Val PPL at {s} samples (mean over seeds)"), ppl, 1),
        ));
    }
    out
}

fn section_heatmaps(
    shape: &GridShape,
    sides: &[(String, SweepResults)],
    v: &GridVerdict,
) -> String {
    let mut md = String::from("## Heatmaps\n\n");
    for (stem, map) in heatmaps(shape, sides, v) {
        md += &format!("![{}](plots/{stem}.png)\n\n", map.title);
    }
    md
}

/// The best config by largest-cell PPL and by alpha, against the runner-up.
fn section_best(sides: &[(String, SweepResults)], v: &GridVerdict) -> String {
    let mut md = String::from("## Best config\n\n");
    let name = |i: usize| format!("`{}`", sides[i].0);
    match (v.by_ppl.first(), v.by_ppl.get(1), v.largest) {
        (Some(best), Some(second), Some(s)) => {
            md += &format!(
                "- By Val PPL at the largest cell ({s} samples): {} ({:.1}), runner-up {} ({:.1}). ",
                name(best.side),
                best.value,
                name(second.side),
                second.value
            );
            md += &match &v.ppl_vs_runner_up {
                Some(d) if v.ppl_beats_runner_up => format!(
                    "Paired by seed the best is lower by {:.1} (95% CI {:.1} to {:.1}, {}): **beyond seed noise**.\n",
                    -d.diff, -d.ci95[1], -d.ci95[0], p_phrase(d.p_value)
                ),
                Some(d) => format!(
                    "Paired by seed the difference is {:+.1} (95% CI {:+.1} to {:+.1}, {}): **not distinguishable from seed noise**; the ranking of these two is not established.\n",
                    d.diff, d.ci95[0], d.ci95[1], p_phrase(d.p_value)
                ),
                None => "Not testable against the runner-up: it needs 2+ seeds paired on one validation set (`replicates`).\n".into(),
            };
        }
        (Some(best), None, Some(s)) => {
            md += &format!("- Only {} has the {s}-sample cell.\n", name(best.side));
        }
        _ => md += "- No cell common to every config.\n",
    }
    if let (Some(best), Some(second)) = (v.by_alpha.first(), v.by_alpha.get(1)) {
        md += &format!(
            "- By alpha (PPL falling fastest with data): {} ({:.3}), runner-up {} ({:.3}); ",
            name(best.side),
            best.value,
            name(second.side),
            second.value
        );
        md += &match v.alpha_vs_runner_up_p {
            Some(p) if v.alpha_beats_runner_up => {
                format!("the exponents differ ({}).\n", p_phrase(p))
            }
            Some(p) => format!(
                "the exponents are not significantly different ({}).\n",
                p_phrase(p)
            ),
            None => {
                "not testable (a side has fewer than 3 runs, or they validate on different sets).\n"
                    .into()
            }
        };
    }
    md + "\n"
}
