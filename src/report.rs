//! The generated analysis (ALGORITHM.md section 7): `report.md` in the
//! seed document's structure, written from a `SweepResults`, with plots in
//! `plots/`. Every statement that depends on the data is computed here, and
//! each recommendation is made only when its evidence is present.
//! `write_compare_report` puts several sweeps of the same cells side by side.

use crate::config::Config;
use crate::plots;
use crate::results::{CellResult, SweepResults};
use crate::stats::{
    student_t_quantile, student_t_two_sided_p, Correlation, CorrelationPair, ScalingFit,
};
use anyhow::{Context, Result};
use std::path::Path;

/// Significance level used in every verdict.
pub const SIGNIFICANCE: f64 = 0.05;
/// Patience firing at or before this epoch counts as "early" (the seed's
/// 500-sample cell stopped at epoch 3).
pub const EARLY_STOP_EPOCH: usize = 3;
/// Val PPL at the stop epoch within this fraction of the best: the stop
/// came while validation was still close to its best.
pub const NEAR_BEST: f64 = 0.05;
/// Train PPL's epoch-1 -> 2 drop factor at least this many times the val
/// drop factor counts as fitting the training data much faster.
pub const FAST_FIT_RATIO: f64 = 1.5;
/// Accuracy drops smaller than this (fraction, 0.1 points) are noise.
pub const ACC_DIP_MIN: f64 = 0.001;

// ---------------------------------------------------------------------------
// Formatting helpers

/// Fraction -> "9.9%".
fn pct(frac: f64) -> String {
    format!("{:.1}%", frac * 100.0)
}

/// 56602 -> "56,602".
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// p-values with enough digits to compare with 0.05.
pub fn fmt_p(p: f64) -> String {
    if p < 1e-4 {
        "< 0.0001".to_string()
    } else if p < 0.01 {
        format!("{p:.4}")
    } else {
        format!("{p:.2}")
    }
}

/// "p = 0.0037" or "p < 0.0001".
fn p_phrase(p: f64) -> String {
    let s = fmt_p(p);
    if s.starts_with('<') {
        format!("p {s}")
    } else {
        format!("p = {s}")
    }
}

fn verdict(p: Option<f64>) -> &'static str {
    match p {
        Some(p) if p < SIGNIFICANCE => "significant at 5%",
        Some(_) => "not significant at 5%",
        None => "significance not testable (fewer than 3 cells)",
    }
}

/// Signed percent change from a to b.
fn change_pct(a: f64, b: f64) -> String {
    format!("{:+.1}%", (b / a - 1.0) * 100.0)
}

/// Shell-safe single-quoting when a word needs it.
fn shell_word(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "_=.,-/:+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `--set key=value` flags for every config field that differs from the
/// defaults, except `skip`: with them a command reruns the same conditions.
fn set_flags(config: &Config, skip: &[&str]) -> String {
    let (Ok(cur), Ok(def)) = (
        toml::Table::try_from(config),
        toml::Table::try_from(Config::default()),
    ) else {
        return String::new();
    };
    let mut flags = String::new();
    for (key, value) in &cur {
        if skip.contains(&key.as_str()) || def.get(key) == Some(value) {
            continue;
        }
        flags += &format!(" --set {}", shell_word(&format!("{key}={value}")));
    }
    flags
}

/// The command that reruns this sweep's conditions with `key` taking each value.
pub fn compare_command(config: &Config, key: &str, values: &[String]) -> String {
    format!(
        "newllm compare --vary {}{}",
        shell_word(&format!("{key}={}", values.join(","))),
        set_flags(config, &[key])
    )
}

/// The command that reruns this sweep's conditions with other sample counts.
pub fn sweep_command(config: &Config, sample_counts: &[usize]) -> String {
    let counts: Vec<String> = sample_counts.iter().map(|s| s.to_string()).collect();
    format!(
        "newllm sweep --set {}{}",
        shell_word(&format!("sample_counts=[{}]", counts.join(", "))),
        set_flags(config, &["sample_counts"])
    )
}

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian.
fn civil_date(days: i64) -> (i64, u32, u32) {
    // Shift to eras of 400 years starting 0000-03-01 so leap days fall last.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_date(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        s / 3600,
        (s % 3600) / 60
    )
}

// ---------------------------------------------------------------------------
// Statements about the fit and correlations

/// "alpha = -0.459 (95% CI [-0.579, -0.339]; R^2 = 0.993; p = 0.0037, n = 4 cells): significant at 5%"
pub fn alpha_sentence(fit: &ScalingFit) -> String {
    let mut inner = Vec::new();
    if let Some([lo, hi]) = fit.alpha_ci95 {
        inner.push(format!("95% CI [{lo:.3}, {hi:.3}]"));
    }
    if let Some(r2) = fit.r2 {
        inner.push(format!("R^2 = {r2:.3}"));
    }
    let mut last = format!("n = {} cells", fit.n);
    if let Some(p) = fit.p_value {
        last = format!("{}, {last}", p_phrase(p));
    }
    inner.push(last);
    let verdict = match fit.p_value {
        Some(p) if p < SIGNIFICANCE => "significant at 5%".to_string(),
        Some(_) => "not significant at 5%".to_string(),
        None => "no p-value or confidence interval with fewer than 3 cells".to_string(),
    };
    format!("alpha = {:.3} ({}): {verdict}", fit.alpha, inner.join("; "))
}

/// "Pearson r = -0.17 (p = 0.83)".
fn corr_phrase(name: &str, c: &Correlation) -> String {
    match c.p_value {
        Some(p) => format!("{name} = {:.2} ({})", c.r, p_phrase(p)),
        None => format!("{name} = {:.2} (no p-value, n = {})", c.r, c.n),
    }
}

/// One line on a Pearson/Spearman pair, ending in the verdict.
pub fn correlation_sentence(what: &str, pair: &CorrelationPair) -> String {
    let mut parts = Vec::new();
    if let Some(c) = &pair.pearson {
        parts.push(corr_phrase("Pearson r", c));
    }
    if let Some(c) = &pair.spearman {
        parts.push(corr_phrase("Spearman rho", c) + " [t approximation]");
    }
    if parts.is_empty() {
        return format!("{what}: not computable (fewer than 2 cells or a constant column).");
    }
    let n = pair
        .pearson
        .as_ref()
        .or(pair.spearman.as_ref())
        .map(|c| c.n)
        .unwrap_or(0);
    let sig = |c: &Option<Correlation>| {
        c.as_ref()
            .and_then(|c| c.p_value)
            .is_some_and(|p| p < SIGNIFICANCE)
    };
    // Say which coefficient carries a positive verdict: two tests at 5%
    // find "something" more often than one.
    let v = if sig(&pair.pearson) && sig(&pair.spearman) {
        "significant at 5% (both coefficients)"
    } else if sig(&pair.pearson) {
        "significant at 5% by Pearson only"
    } else if sig(&pair.spearman) {
        "significant at 5% by Spearman only"
    } else if pair.pearson.as_ref().and_then(|c| c.p_value).is_none() {
        "significance not testable"
    } else {
        "not significant at 5%"
    };
    format!("{what}: {}, n = {n} cells: {v}.", parts.join("; "))
}

/// Whether either coefficient of the pair reaches 5%.
fn correlation_significant(pair: &CorrelationPair) -> bool {
    [&pair.pearson, &pair.spearman].iter().any(|c| {
        c.as_ref()
            .and_then(|c| c.p_value)
            .is_some_and(|p| p < SIGNIFICANCE)
    })
}

/// Smallest |r| that reaches p < 0.05 with n points (t test, n - 2 dof).
pub fn critical_r(n: usize) -> Option<f64> {
    if n < 3 {
        return None;
    }
    let dof = (n - 2) as f64;
    let t = student_t_quantile(1.0 - SIGNIFICANCE / 2.0, dof);
    Some(t / (dof + t * t).sqrt())
}

// ---------------------------------------------------------------------------
// Diagnostics from the per-epoch curves

/// Accuracy fell between consecutive cells while Val PPL improved.
#[derive(Clone, Debug, PartialEq)]
pub struct AccuracyDip {
    pub from_samples: usize,
    pub to_samples: usize,
    pub acc_from: f64,
    pub acc_to: f64,
    pub ppl_from: f64,
    pub ppl_to: f64,
}

/// One cell's early-stopping and over-fitting figures.
#[derive(Clone, Debug, PartialEq)]
pub struct CellDiagnosis {
    pub samples: usize,
    pub best_epoch: usize,
    pub stop_epoch: usize,
    pub early_stopped: bool,
    /// Patience fired at epoch <= EARLY_STOP_EPOCH.
    pub stopped_early: bool,
    /// Stopped early while val PPL was still within NEAR_BEST of its best:
    /// more patience might have found a better epoch.
    pub premature_stop: bool,
    /// Val PPL at the stop epoch / best Val PPL - 1.
    pub stop_over_best: Option<f64>,
    /// train_ppl[epoch 1] / train_ppl[epoch 2].
    pub train_drop: Option<f64>,
    /// val_ppl[epoch 1] / val_ppl[epoch 2].
    pub val_drop: Option<f64>,
    /// train_drop >= FAST_FIT_RATIO * val_drop.
    pub fast_fit: bool,
    /// Largest val loss after the best epoch, relative to the best (fraction).
    pub val_loss_rise: Option<f64>,
    /// Train PPL still fell after the best epoch while val got worse.
    pub train_still_falling: bool,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct Diagnostics {
    pub dips: Vec<AccuracyDip>,
    pub cells: Vec<CellDiagnosis>,
}

impl Diagnostics {
    pub fn any_premature_stop(&self) -> bool {
        self.cells.iter().any(|c| c.premature_stop)
    }
}

fn diagnose_cell(c: &CellResult) -> CellDiagnosis {
    let epoch = |n: usize| c.epochs.iter().find(|e| e.epoch == n);
    let best = epoch(c.best_epoch);
    let stop = epoch(c.stop_epoch);
    let stop_over_best = match (best, stop) {
        (Some(b), Some(s)) if b.val_ppl > 0.0 => Some(s.val_ppl / b.val_ppl - 1.0),
        _ => None,
    };
    let (train_drop, val_drop) = match (epoch(1), epoch(2)) {
        (Some(e1), Some(e2)) if e2.train_ppl > 0.0 && e2.val_ppl > 0.0 => (
            Some(e1.train_ppl / e2.train_ppl),
            Some(e1.val_ppl / e2.val_ppl),
        ),
        _ => (None, None),
    };
    let fast_fit =
        matches!((train_drop, val_drop), (Some(t), Some(v)) if v > 0.0 && t >= FAST_FIT_RATIO * v);
    let after: Vec<_> = c.epochs.iter().filter(|e| e.epoch > c.best_epoch).collect();
    let val_loss_rise = match best {
        Some(b) if !after.is_empty() && b.val_loss > 0.0 => Some(
            after
                .iter()
                .map(|e| e.val_loss / b.val_loss - 1.0)
                .fold(f64::MIN, f64::max),
        ),
        _ => None,
    };
    let train_still_falling = match (best, after.last()) {
        (Some(b), Some(l)) => l.train_loss < b.train_loss && l.val_loss > b.val_loss,
        _ => false,
    };
    let stopped_early = c.early_stopped && c.stop_epoch <= EARLY_STOP_EPOCH;
    CellDiagnosis {
        samples: c.samples,
        best_epoch: c.best_epoch,
        stop_epoch: c.stop_epoch,
        early_stopped: c.early_stopped,
        stopped_early,
        premature_stop: stopped_early && stop_over_best.is_none_or(|v| v <= NEAR_BEST),
        stop_over_best,
        train_drop,
        val_drop,
        fast_fit,
        val_loss_rise,
        train_still_falling,
    }
}

/// Accuracy dips between consecutive cells and each cell's stopping and
/// over-fitting figures. Cells are taken in the order given (by samples).
pub fn diagnose(results: &SweepResults) -> Diagnostics {
    let dips = results
        .cells
        .windows(2)
        .filter(|w| w[1].val_acc < w[0].val_acc - ACC_DIP_MIN && w[1].val_ppl < w[0].val_ppl)
        .map(|w| AccuracyDip {
            from_samples: w[0].samples,
            to_samples: w[1].samples,
            acc_from: w[0].val_acc,
            acc_to: w[1].val_acc,
            ppl_from: w[0].val_ppl,
            ppl_to: w[1].val_ppl,
        })
        .collect();
    Diagnostics {
        dips,
        cells: results.cells.iter().map(diagnose_cell).collect(),
    }
}

// ---------------------------------------------------------------------------
// Sections

fn section_conditions(md: &mut String, r: &SweepResults) {
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

/// A serde enum as its plain config spelling ("sequential").
fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn section_summary(md: &mut String, r: &SweepResults) {
    *md += "## Results summary\n\n";
    *md += "| Samples | Tokens | Val PPL | Val Acc | Val ER |\n|---------|--------|---------|---------|--------|\n";
    for c in &r.cells {
        *md += &format!(
            "| {} | {} | {:.1} | {} | {} |\n",
            c.samples,
            thousands(c.train_tokens),
            c.val_ppl,
            pct(c.val_acc),
            pct(c.val_er)
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
            let left_out = r.cells.len().saturating_sub(fit.n);
            if left_out > 0 {
                *md += &format!(" {left_out} cell(s) without a finite, positive Val PPL are left out of the fit.");
            }
            if let Some([lo, hi]) = fit.bootstrap_ci95 {
                *md += &format!(
                    " Bootstrap 95% interval over cells ({} resamples): [{lo:.3}, {hi:.3}].",
                    crate::stats::BOOTSTRAP_RESAMPLES
                );
            }
            *md += "\n\n![scaling](plots/scaling.png)\n\n";
        }
        None => *md += "Scaling coefficient: not available (needs at least 2 cells with different token counts and positive PPL).\n\n",
    }
}

fn section_er(md: &mut String, r: &SweepResults) {
    *md += "### 1. Stability of Effective Rank (ER)\n\n";
    let band = |f: fn(&CellResult) -> f64| {
        r.cells
            .iter()
            .map(f)
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)))
    };
    let (vlo, vhi) = band(|c| c.val_er);
    let (tlo, thi) = band(|c| c.train_er);
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
            pct(c.train_er),
            pct(c.val_er),
            c.val_er_abs
        );
    }
    let mean_abs = r.cells.iter().map(|c| c.val_er_abs).sum::<f64>() / r.cells.len() as f64;
    *md += &format!(
        "\nOn average about {:.0} of the {} context dimensions are effectively used on validation.\n\n![effective rank](plots/effective_rank.png)\n\n",
        mean_abs, r.config.context_dim
    );
}

fn section_tokens(md: &mut String, r: &SweepResults) {
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
            plots::short_number(c.train_tokens as f64),
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

fn section_conclusion(md: &mut String, r: &SweepResults) {
    *md += "### 3. Conclusion\n\n";
    let n = r.cells.len();
    let tokens_sig = r
        .scaling
        .as_ref()
        .and_then(|f| f.p_value)
        .is_some_and(|p| p < SIGNIFICANCE);
    let er_sig = correlation_significant(&r.correlations.val_er_vs_val_ppl)
        || correlation_significant(&r.correlations.val_er_vs_val_acc);
    *md += "Token count:\n\n";
    match &r.scaling {
        Some(fit) => *md += &format!("- Scaling law: {}.\n", alpha_sentence(fit)),
        None => *md += "- No scaling fit (too few usable cells).\n",
    }
    *md += "\nEffective Rank vs performance:\n\n";
    *md += &format!(
        "- {}\n",
        correlation_sentence("Val ER vs Val PPL", &r.correlations.val_er_vs_val_ppl)
    );
    *md += &format!(
        "- {}\n",
        correlation_sentence("Val ER vs Val Acc", &r.correlations.val_er_vs_val_acc)
    );
    if let Some(rc) = critical_r(n) {
        *md += &format!(
            "- Caution: with only n = {n} cells a correlation needs |r| >= {rc:.2} to reach p < 0.05, so \"not significant\" is weak evidence of no relation; the Spearman p-value uses the t approximation, which is rough for so few cells.\n"
        );
    }
    let er_spread = r.cells.iter().map(|c| c.val_er).fold(f64::MIN, f64::max)
        - r.cells.iter().map(|c| c.val_er).fold(f64::MAX, f64::min);
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

fn section_training(md: &mut String, r: &SweepResults, d: &Diagnostics) {
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

fn section_recommendations(md: &mut String, r: &SweepResults, d: &Diagnostics) {
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

fn section_factor_table(md: &mut String, r: &SweepResults) {
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
    let er_v = if correlation_significant(pair)
        || correlation_significant(&r.correlations.val_er_vs_val_acc)
    {
        "significant relation with performance at 5%"
    } else if pair.pearson.as_ref().and_then(|c| c.p_value).is_some() {
        "no significant relation with performance at 5%"
    } else {
        "not testable"
    };
    *md += &format!("| Effective Rank | {er_ev} | {er_v} |\n\n");
}

fn section_timings(md: &mut String, r: &SweepResults) {
    *md += "## Timings (seconds)\n\n";
    *md += "| Samples | Data | Phase 1 | Train cache | Val cache | ER | Phase 2 | Total | Phase 1 iterations | Converged |\n";
    *md += "|---------|------|---------|-------------|-----------|----|---------|-------|--------------------|-----------|\n";
    for c in &r.cells {
        let s = &c.seconds;
        *md += &format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} ({}) |\n",
            c.samples,
            s.data,
            s.phase1,
            s.train_cache,
            s.val_cache,
            s.effective_rank,
            s.phase2,
            s.total,
            c.phase1_iterations,
            if c.phase1_converged { "yes" } else { "no" },
            pct(c.phase1_final_convergence_rate)
        );
    }
    let total: f64 = r.cells.iter().map(|c| c.seconds.total).sum();
    *md += &format!(
        "\nWhole sweep: {:.1} s ({:.1} min).\n\n",
        total,
        total / 60.0
    );
}

fn section_epochs(md: &mut String, r: &SweepResults) {
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

// ---------------------------------------------------------------------------
// Side-by-side comparison of sweeps

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

/// Approximate test of alpha_1 = alpha_2 from the two standard errors
/// (t with n1 + n2 - 4 dof). None when either side lacks a standard error.
pub fn alpha_difference_p(a: &ScalingFit, b: &ScalingFit) -> Option<f64> {
    let (sa, sb) = (a.stderr?, b.stderr?);
    let se = (sa * sa + sb * sb).sqrt();
    let dof = (a.n + b.n).checked_sub(4).filter(|d| *d > 0)? as f64;
    if se == 0.0 {
        return None;
    }
    Some(student_t_two_sided_p((a.alpha - b.alpha) / se, dof))
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
                        pct(c.val_er)
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
                        (c.val_er - b.val_er) * 100.0
                    )
                }
                _ => row += " - | - | - |",
            }
        }
        md += &row;
        md += "\n";
    }
    md += "\n";

    md += "## Scaling per side\n\n";
    for (name, r) in sides {
        let fit = match &r.scaling {
            Some(fit) => alpha_sentence(fit),
            None => "no scaling fit".to_string(),
        };
        let er = r.cells.iter().map(|c| c.val_er);
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
fn side_label(i: usize) -> String {
    if i < 26 {
        char::from(b'A' + i as u8).to_string()
    } else {
        format!("S{}", i + 1)
    }
}

fn names(sides: &[(String, SweepResults)], sep: &str) -> String {
    sides
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(sep)
}

/// Mean of ln(PPL_other / PPL_base) over cells present on both sides.
fn mean_log_ratio(base: &SweepResults, other: &SweepResults) -> Option<f64> {
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
    std::fs::write(&path, render_compare_report(sides))
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{Epoch, StageSeconds};
    use crate::stats::analyse;
    use std::path::PathBuf;

    /// One cell shaped like the seed's: per-epoch (train PPL, val PPL, val acc).
    fn cell(
        samples: usize,
        tokens: usize,
        er: (f64, f64),
        curve: &[(f64, f64, f64)],
        best: usize,
    ) -> CellResult {
        let epochs: Vec<Epoch> = curve
            .iter()
            .enumerate()
            .map(|(i, &(tr, va, acc))| Epoch {
                epoch: i + 1,
                train_loss: tr.ln(),
                train_ppl: tr,
                val_loss: va.ln(),
                val_ppl: va,
                val_acc: acc,
                seconds: tokens as f64 / 2000.0,
            })
            .collect();
        let b = &epochs[best - 1];
        CellResult {
            samples,
            train_tokens: tokens,
            val_tokens: tokens / 9,
            train_er: er.0,
            val_er: er.1,
            train_er_abs: er.0 * 768.0,
            val_er_abs: er.1 * 768.0,
            val_ppl: b.val_ppl,
            val_loss: b.val_loss,
            val_acc: b.val_acc,
            best_epoch: best,
            stop_epoch: epochs.len(),
            early_stopped: epochs.len() < 10,
            phase1_iterations: 12,
            phase1_converged: true,
            phase1_final_convergence_rate: 0.97,
            phase1: Vec::new(),
            seconds: StageSeconds {
                data: 1.0,
                phase1: 30.0,
                train_cache: 5.0,
                val_cache: 0.5,
                effective_rank: 2.0,
                phase2: 60.0,
                total: 98.5,
            },
            epochs,
            threads: 2,
            predicted_peak_bytes: 1 << 30,
            measured_peak_bytes: 1 << 30,
            config: Config::default(),
        }
    }

    /// The seed document's four cells (arithmetic decrease), with curves in
    /// which only the 500-sample cell stops early and fits fast.
    fn seed_cells() -> Vec<CellResult> {
        vec![
            cell(
                50,
                56602,
                (0.096, 0.085),
                &[
                    (3000., 2400., 0.05),
                    (1900., 1900., 0.07),
                    (1500., 1700., 0.08),
                    (1200., 1580., 0.09),
                    (1000., 1520., 0.095),
                    (850., 1503.3, 0.099),
                    (720., 1510., 0.098),
                ],
                6,
            ),
            cell(
                100,
                110516,
                (0.085, 0.078),
                &[
                    (2500., 1900., 0.08),
                    (1400., 1400., 0.10),
                    (1000., 1180., 0.12),
                    (780., 1080., 0.13),
                    (620., 1036.3, 0.137),
                    (500., 1045., 0.136),
                ],
                5,
            ),
            cell(
                200,
                216119,
                (0.087, 0.084),
                &[
                    (1800., 1250., 0.12),
                    (1000., 900., 0.15),
                    (700., 790., 0.165),
                    (500., 757.7, 0.176),
                    (380., 770., 0.174),
                ],
                4,
            ),
            cell(
                500,
                529173,
                (0.090, 0.086),
                &[
                    (918., 700., 0.13),
                    (306., 536.0, 0.154),
                    (190., 560., 0.150),
                ],
                2,
            ),
        ]
    }

    /// The later `token_input_all_layers = true` sweep from the seed's context section.
    fn seed_true_cells() -> Vec<CellResult> {
        let figures = [
            (50, 56602, 787.3, 0.717),
            (100, 110516, 648.8, 0.733),
            (200, 216119, 482.4, 0.740),
            (500, 529173, 324.5, 0.759),
        ];
        figures
            .iter()
            .map(|&(s, t, ppl, er)| {
                let mut c = cell(
                    s,
                    t,
                    (er + 0.01, er),
                    &[
                        (ppl * 2.0, ppl * 1.3, 0.15),
                        (ppl * 1.2, ppl, 0.19),
                        (ppl * 0.9, ppl * 1.02, 0.185),
                    ],
                    2,
                );
                c.config.token_input_all_layers = true;
                c
            })
            .collect()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("newllm-report-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Set NEWLLM_KEEP_TEST_OUTPUT=1 to keep the generated reports for viewing.
    fn cleanup(dir: &Path) {
        if std::env::var_os("NEWLLM_KEEP_TEST_OUTPUT").is_none() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    fn assert_png(path: &Path) {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{} is not a PNG",
            path.display()
        );
        assert!(
            bytes.len() > 5000,
            "{} is suspiciously small",
            path.display()
        );
    }

    fn assert_svg(path: &Path) {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            text.contains("<svg") && text.trim_end().ends_with("</svg>"),
            "{} is not an SVG",
            path.display()
        );
    }

    #[test]
    fn helpers_format() {
        assert_eq!(thousands(529173), "529,173");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(fmt_p(0.0036533), "0.0037");
        assert_eq!(fmt_p(0.8293), "0.83");
        assert_eq!(fmt_p(1e-7), "< 0.0001");
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(20_000), (2024, 10, 4));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(-1), (1969, 12, 31));
        // With 4 cells |r| must reach 0.95 for p < 0.05.
        assert!((critical_r(4).unwrap() - 0.95).abs() < 1e-3);
        assert_eq!(shell_word("sample_counts=[1, 2]"), "'sample_counts=[1, 2]'");
        assert_eq!(shell_word("phase2_patience=1,3,0"), "phase2_patience=1,3,0");
        // Non-default fields travel as --set flags (the varied one excepted).
        let quick = Config {
            num_layers: 3,
            embed_dim: 128,
            context_dim: 128,
            phase2_patience: 2,
            device: "cuda".into(),
            ..Config::default()
        };
        let cmd = compare_command(&quick, "phase2_patience", &["2".into(), "4".into()]);
        assert!(
            cmd.starts_with("newllm compare --vary phase2_patience=2,4 --set "),
            "{cmd}"
        );
        for flag in [
            "--set num_layers=3",
            "--set embed_dim=128",
            "--set context_dim=128",
            "--set 'device=\"cuda\"'",
        ] {
            assert!(cmd.contains(flag), "{cmd} lacks {flag}");
        }
        assert_eq!(cmd.matches("--set").count(), 4, "{cmd}");
        let cmd = sweep_command(&quick, &[10, 20]);
        assert!(
            cmd.starts_with("newllm sweep --set 'sample_counts=[10, 20]' --set "),
            "{cmd}"
        );
        assert!(cmd.contains("--set phase2_patience=2"), "{cmd}");
    }

    #[test]
    fn diagnostics_flag_only_the_500_cell() {
        let r = analyse(&Config::default(), &seed_cells());
        let d = diagnose(&r);
        assert_eq!(d.dips.len(), 1);
        assert_eq!((d.dips[0].from_samples, d.dips[0].to_samples), (200, 500));
        let early: Vec<usize> = d
            .cells
            .iter()
            .filter(|c| c.stopped_early)
            .map(|c| c.samples)
            .collect();
        assert_eq!(early, vec![500]);
        let fast: Vec<usize> = d
            .cells
            .iter()
            .filter(|c| c.fast_fit)
            .map(|c| c.samples)
            .collect();
        assert_eq!(fast, vec![500]);
        let c500 = &d.cells[3];
        assert!((c500.train_drop.unwrap() - 3.0).abs() < 1e-12);
        assert!((c500.stop_over_best.unwrap() - (560.0 / 536.0 - 1.0)).abs() < 1e-12);
        assert!(c500.train_still_falling);
    }

    #[test]
    fn report_from_fixture_file() {
        let dir = scratch("sweep");
        // Unsorted on purpose: analyse must sort by samples.
        let mut cells = seed_cells();
        cells.reverse();
        let results = analyse(&Config::default(), &cells);
        assert_eq!(
            results.cells.iter().map(|c| c.samples).collect::<Vec<_>>(),
            vec![50, 100, 200, 500]
        );
        let file = dir.join("results.json");
        results.save(&file).unwrap();
        let json = std::fs::read_to_string(&file).unwrap();
        assert!(
            json.contains("\"A\":") && json.contains("\"alpha_ci95\"") && !json.contains("NaN")
        );
        // serde_json may round the last bit of a float, so compare loosely.
        let back = SweepResults::load(&file).unwrap();
        assert!(back.config == results.config && back.cells.len() == 4);
        let (a, b) = (
            back.scaling.as_ref().unwrap(),
            results.scaling.as_ref().unwrap(),
        );
        assert!((a.alpha - b.alpha).abs() < 1e-12 && (a.a - b.a).abs() < 1e-6 && a.n == b.n);
        assert!((back.cells[3].epochs[1].val_ppl - 536.0).abs() < 1e-12);

        write_report(&dir, &back).unwrap();
        let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
        for row in [
            "| 50 | 56,602 | 1503.3 | 9.9% | 8.5% |",
            "| 100 | 110,516 | 1036.3 | 13.7% | 7.8% |",
            "| 200 | 216,119 | 757.7 | 17.6% | 8.4% |",
            "| 500 | 529,173 | 536.0 | 15.4% | 8.6% |",
            "alpha = -0.459 (95% CI [-0.579, -0.339]; R^2 = 0.993; p = 0.0037, n = 4 cells): significant at 5%",
            "Val ER vs Val PPL: Pearson r = -0.17 (p = 0.83); Spearman rho = -0.40 (p = 0.60) [t approximation], n = 4 cells: not significant at 5%.",
            "|r| >= 0.95",
            "ER ranges over 7.8%-9.6%",
            "(-64.3%)",
            "token count is the dominant factor",
            "#### Why accuracy dropped at 500 samples",
            "From 200 to 500 samples Val Acc fell 17.6% -> 15.4% while Val PPL improved 757.7 -> 536.0.",
            "Early stopping fired at epoch 3 (best epoch 2, val PPL at the stop +4.5% vs best): at or before epoch 3 with validation still near its best, so it may have fired too early. For comparison, 200 samples stopped at epoch 5.",
            "train PPL fell 3.00x from epoch 1 to 2 but val PPL only 1.31x",
            "`newllm compare --vary phase2_patience=1,3,0`",
            "| Effective Rank | r(ER, PPL) = -0.17 (p = 0.83), r(ER, Acc) = 0.03 (p = 0.97) | no significant relation with performance at 5% |",
            "`newllm compare --vary token_input_all_layers=false,true`",
            "`newllm sweep --set 'sample_counts=[50, 100, 200, 500, 1000, 2000]'`",
            "| 500 | 1.0 | 30.0 | 5.0 | 0.5 | 2.0 | 60.0 | 98.5 | 12 | yes (97.0%) |",
            "Architecture: E plan (separate ContextBlock/TokenBlock), \"arithmetic decrease\"",
            "1536 -> 1408 -> 1280 -> 1152 -> 1024 -> 896 -> 768",
            "early-stopping patience 1",
        ] {
            assert!(md.contains(row), "report lacks {row:?}\n{md}");
        }
        assert_eq!(md.matches("Why accuracy dropped").count(), 1, "{md}");
        for stem in [
            "scaling",
            "effective_rank",
            "epochs_50",
            "epochs_100",
            "epochs_200",
            "epochs_500",
        ] {
            assert_svg(&dir.join("plots").join(format!("{stem}.svg")));
            assert_png(&dir.join("plots").join(format!("{stem}.png")));
        }
        cleanup(&dir);
    }

    #[test]
    fn report_without_evidence_makes_no_claims() {
        // No accuracy dip, no early stop at epoch <= 3, and a run of fixed epochs.
        let mut cells = seed_cells();
        cells[3] = cell(
            500,
            529173,
            (0.090, 0.086),
            &[
                (918., 700., 0.13),
                (600., 600., 0.16),
                (450., 560., 0.17),
                (380., 536.0, 0.18),
                (330., 545., 0.179),
            ],
            4,
        );
        let config = Config {
            token_input_all_layers: true,
            ..Config::default()
        };
        let md = render_report(&analyse(&config, &cells));
        assert!(!md.contains("Why accuracy dropped"), "{md}");
        assert!(md.contains("No accuracy dip"), "{md}");
        assert!(!md.contains("phase2_patience="), "{md}");
        // The varied field is not repeated as a --set flag.
        assert!(
            md.contains("`newllm compare --vary token_input_all_layers=true,false`"),
            "{md}"
        );

        // Stopped at epoch 3, but val had worsened by 12%: stopping was
        // justified, so no patience recommendation.
        let mut cells = seed_cells();
        cells[3] = cell(
            500,
            529173,
            (0.090, 0.086),
            &[
                (918., 700., 0.13),
                (306., 536.0, 0.154),
                (190., 600., 0.150),
            ],
            2,
        );
        let md = render_report(&analyse(&Config::default(), &cells));
        assert!(
            md.contains("#### Why accuracy dropped at 500 samples"),
            "{md}"
        );
        assert!(
            md.contains("early, but validation had clearly worsened by then"),
            "{md}"
        );
        assert!(!md.contains("phase2_patience="), "{md}");

        // Two cells of a partial sweep: a fit without p-value, stated as such.
        let md = render_report(&analyse(&Config::default(), &cells[..2]));
        assert!(
            md.contains("sample counts 50, 100 (configured: 50, 100, 200, 500)"),
            "{md}"
        );
        assert!(
            md.contains("n = 2 cells): no p-value or confidence interval with fewer than 3 cells"),
            "{md}"
        );
    }

    #[test]
    fn degenerate_sweeps_still_report() {
        let dir = scratch("edge");
        let mut no_epochs = seed_cells()[0].clone();
        no_epochs.epochs.clear();
        for cells in [
            vec![],
            vec![seed_cells()[0].clone()],
            vec![no_epochs],
            seed_cells()[..2].to_vec(),
        ] {
            let r = analyse(&Config::default(), &cells);
            write_report(&dir, &r).unwrap();
            let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
            assert!(md.contains("## Conditions"), "{md}");
            if cells.len() == 1 {
                assert!(md.contains("Scaling coefficient: not available"), "{md}");
            }
        }
        assert_png(&dir.join("plots/effective_rank.png"));
        cleanup(&dir);
    }

    #[test]
    fn compare_report_side_by_side() {
        let dir = scratch("compare");
        let base = Config::default();
        let other = Config {
            token_input_all_layers: true,
            ..Config::default()
        };
        let sides = vec![
            (
                "token_input_all_layers=false".to_string(),
                analyse(&base, &seed_cells()),
            ),
            (
                "token_input_all_layers=true".to_string(),
                analyse(&other, &seed_true_cells()),
            ),
        ];
        write_compare_report(&dir, &sides).unwrap();
        let md = std::fs::read_to_string(dir.join("compare.md")).unwrap();
        for want in [
            "| `token_input_all_layers` | false | true |",
            "- B = `token_input_all_layers=true`",
            "| Samples | Tokens | Val PPL A | Val Acc A | Val ER A | Val PPL B | Val Acc B | Val ER B | PPL B vs A | Acc B - A | ER B - A |",
            "| 50 | 56,602 | 1503.3 | 9.9% | 8.5% | 787.3 | 19.0% | 71.7% | -47.6% | +9.1 points | +63.2 points |",
            "| 500 | 529,173 | 536.0 | 15.4% | 8.6% | 324.5 | 19.0% | 75.9% | -39.5% | +3.6 points | +67.3 points |",
            "`token_input_all_layers=false`: alpha = -0.459 (95% CI [-0.579, -0.339]",
            "`token_input_all_layers=true`: alpha = -0.403 (",
            "significant at 5%; val ER 71.7%-75.9%.",
            "alpha `token_input_all_layers=true` - `token_input_all_layers=false` = +0.057",
            "not significant at 5%",
        ] {
            assert!(md.contains(want), "compare report lacks {want:?}\n{md}");
        }
        assert_eq!(differing_fields(&sides).len(), 1);
        assert_svg(&dir.join("plots/compare_scaling.svg"));
        assert_png(&dir.join("plots/compare_scaling.png"));
        cleanup(&dir);
    }
}
