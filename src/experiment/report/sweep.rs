//! The sweep's `report.md`, in the seed document's structure, from a
//! `SweepResults`; plots go to `plots/`. Every data-dependent statement is
//! computed here, and each recommendation is made only when its evidence is
//! present.

use super::analysis::{
    section_conclusion, section_er, section_factor_table, section_recommendations, section_tokens,
    section_training,
};
use super::baselines::{mean_sd, section_baselines};
use super::diagnostics::diagnose;
use super::scaling::{section_scaling, section_validation};
use super::verdicts::decide;
use super::wording::alpha_sentence;
use crate::cell_result::CellResult;
use crate::config::{ModelKind, ValMode};
use crate::experiment::format::{now_utc, pct, serde_plain, thousands};
use crate::experiment::plots;
use crate::experiment::results::{MeanSd, SweepResults};
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
    let validation = match c.val_mode {
        ValMode::Tail => format!(
            "validation = last {} of each cell's token stream (`val_mode = \"tail\"`: it changes with N)",
            pct(c.val_fraction)
        ),
        ValMode::Heldout => format!(
            "validation = the corpus's last {} conversations, the same for every cell (`val_mode = \"heldout\"`)",
            c.val_samples
        ),
    };
    *md += &format!("- Data: {corpus}; {validation}; sample counts {counts}\n");
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
    let newllm = r.models.iter().find(|m| m.model == ModelKind::NewLlm);
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
    let intervals = newllm.is_some_and(|m| m.cells.iter().any(|x| x.val_ppl_interval.is_some()));
    *md += "| Samples | Tokens | Val PPL |";
    if intervals {
        *md += " 95% interval over validation conversations |";
    }
    *md += " Val Acc | Val ER |\n|---------|--------|---------|";
    if intervals {
        *md += "---|";
    }
    *md += "---------|--------|\n";
    for c in &r.cells {
        let sum = newllm.and_then(|m| m.cells.iter().find(|x| x.samples == c.samples));
        let one = |v: f64| MeanSd::of(&[v]);
        *md += &format!(
            "| {} | {} | {} |",
            c.samples,
            thousands(c.train_tokens),
            mean_sd(sum.map_or(one(c.val_ppl), |x| x.val_ppl), 1.0, 1),
        );
        if intervals {
            *md += &match sum.and_then(|x| x.val_ppl_interval.as_ref()) {
                Some(i) => format!(
                    " [{:.1}, {:.1}] ({} conversations) |",
                    i.ci95[0], i.ci95[1], i.conversations
                ),
                None => " - |".into(),
            };
        }
        *md += &format!(
            " {} | {} |\n",
            mean_sd(sum.map_or(one(c.val_acc), |x| x.val_acc), 100.0, 1) + "%",
            mean_sd(sum.map_or(one(c.nl().val_er), |x| x.val_er), 100.0, 1) + "%"
        );
    }
    *md += "\n";
    if intervals && reps > 1 {
        *md += "The ± is the spread between seeds; the interval is the validation set's own sampling error (whole conversations resampled).\n\n";
    }
    if !r.left_out.is_empty() {
        *md += &format!(
            "Left out of every figure, validated on another set than this sweep's: {}.\n\n",
            r.left_out.join("; ")
        );
    }
    match &r.scaling {
        Some(fit) => {
            *md += &format!("Scaling coefficient, from PPL = A * tokens^alpha (least squares on ln PPL vs ln tokens): {}.", alpha_sentence(fit));
            *md += &format!(" A = {:.4e}", fit.a);
            if let Some(se) = fit.stderr {
                *md += &format!(", standard error of alpha {se:.4}");
            }
            *md += ".";
            let runs = r.runs.iter().filter(|c| c.model == ModelKind::NewLlm).count().max(r.cells.len());
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

/// A stage key as a column heading ("train_cache" -> "Train cache").
fn stage_heading(key: &str) -> String {
    match key {
        "phase1" => "Phase 1".into(),
        "phase2" => "Phase 2".into(),
        "effective_rank" => "ER".into(),
        // Spent inside the training stages, not after them.
        "state_write" => "Of which state writes".into(),
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
    let v = decide(r, &d);
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
    section_validation(&mut md, r);
    section_baselines(&mut md, r, &v);
    md += "## Analysis: which matters more, Effective Rank or token count?\n\n";
    section_er(&mut md, r);
    section_tokens(&mut md, r, &v);
    section_conclusion(&mut md, r, &v);
    section_training(&mut md, r, &d, &v);
    section_scaling(&mut md, r, &v);
    section_recommendations(&mut md, r, &d, &v);
    section_factor_table(&mut md, r, &v);
    section_timings(&mut md, r);
    section_epochs(&mut md, r);
    md
}

/// Writes `dir/report.md` and the plots under `dir/plots/`.
pub fn write_report(dir: &Path, results: &SweepResults) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    plots::write_sweep_plots(&dir.join("plots"), results)?;
    let path = dir.join("report.md");
    crate::io::write_atomic(&path, render_report(results).as_bytes())
}
