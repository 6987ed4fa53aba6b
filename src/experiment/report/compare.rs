//! `compare.md`: several sweeps of the same cells side by side, with the
//! per-cell differences and whether the scaling exponents differ.

use super::wording::{alpha_sentence, p_phrase, verdict};
use crate::experiment::format::{change_pct, fmt_p, now_utc, pct, thousands};
use crate::experiment::plots;
use crate::experiment::results::SweepResults;
use crate::experiment::stats::{alpha_difference_p, paired_difference, Difference, SIGNIFICANCE};
use anyhow::{Context, Result};
use std::path::Path;

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
    let runs = |r: &SweepResults, s: usize| -> Vec<(u64, f64, f64)> {
        r.runs
            .iter()
            .filter(|c| c.model == "newllm" && c.samples == s)
            .map(|c| (c.config.seed, c.val_ppl, c.val_acc))
            .collect()
    };
    md += "Each row pairs the runs of both sides that used the same seed; a difference is claimed only when its 95% CI excludes zero.\n\n";
    md += "| Cell | Pairs | Val PPL difference (95% CI) | p | Val Acc difference, points (95% CI) | p | Verdict |\n|---|---|---|---|---|---|---|\n";
    let mut any = false;
    for (i, (_, r)) in sides.iter().enumerate().skip(1) {
        for c in &base.cells {
            let (a, b) = (runs(r, c.samples), runs(base, c.samples));
            // (side PPL, base PPL, side Acc, base Acc) of each shared seed.
            let pairs: Vec<[f64; 4]> = a
                .iter()
                .filter_map(|&(seed, p, acc)| {
                    b.iter()
                        .find(|x| x.0 == seed)
                        .map(|&(_, bp, bacc)| [p, bp, acc, bacc])
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
            let mut verdict = match ppl {
                Some(d) if d.p_value < SIGNIFICANCE && d.diff < 0.0 => {
                    format!("{l} beats {b0} (lower PPL)")
                }
                Some(d) if d.p_value < SIGNIFICANCE => format!("{b0} beats {l} (lower PPL)"),
                Some(_) => "PPL: no difference beyond seed noise".to_string(),
                None if pairs.len() < 2 => "untestable: needs 2+ seeds (`replicates`)".to_string(),
                None => "untestable: identical pairs".to_string(),
            };
            if let Some(d) = acc.filter(|d| d.p_value < SIGNIFICANCE) {
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
pub fn render_compare_report(sides: &[(String, SweepResults)]) -> String {
    let mut md = String::new();
    md += "# Comparison of settings on the same cells\n\n";
    md += &format!(
        "Generated by newllm on {}. Sides: {}.\n\n",
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
    let mut samples: Vec<usize> = sides
        .iter()
        .flat_map(|(_, r)| r.cells.iter().map(|c| c.samples))
        .collect();
    samples.sort_unstable();
    samples.dedup();
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

/// Writes `dir/compare.md` and `dir/plots/compare_scaling.{svg,png}`.
pub fn write_compare_report(dir: &Path, sides: &[(String, SweepResults)]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    plots::write_compare_plot(&dir.join("plots"), sides)?;
    let path = dir.join("compare.md");
    crate::io::write_atomic(&path, render_compare_report(sides).as_bytes())
}
