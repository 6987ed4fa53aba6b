//! Sentences both reports (and the command line) use to state a fit or a
//! correlation, with its p-value and what it means at the 5% level.

use super::verdicts::{significant, Scaling};
use crate::config::Config;
use crate::experiment::format::fmt_p;
use crate::experiment::stats::{Correlation, CorrelationPair, ScalingFit};

/// "p = 0.0037" or "p < 0.0001".
pub fn p_phrase(p: f64) -> String {
    let s = fmt_p(p);
    if s.starts_with('<') {
        format!("p {s}")
    } else {
        format!("p = {s}")
    }
}

pub fn verdict(p: Option<f64>) -> &'static str {
    match p {
        Some(p) if significant(p) => "significant at 5%",
        Some(_) => "not significant at 5%",
        None => "significance not testable (fewer than 3 cells)",
    }
}

/// "alpha = -0.459 (95% CI [-0.579, -0.339]; R^2 = 0.993; p = 0.0037, n = 4 runs): significant at 5%"
pub fn alpha_sentence(fit: &ScalingFit) -> String {
    let mut inner = Vec::new();
    if let Some([lo, hi]) = fit.alpha_ci95 {
        inner.push(format!("95% CI [{lo:.3}, {hi:.3}]"));
    }
    if let Some(r2) = fit.r2 {
        inner.push(format!("R^2 = {r2:.3}"));
    }
    let mut last = format!("n = {} runs", fit.n);
    if let Some(p) = fit.p_value {
        last = format!("{}, {last}", p_phrase(p));
    }
    inner.push(last);
    let verdict = match fit.p_value {
        Some(p) if significant(p) => "significant at 5%".to_string(),
        Some(_) => "not significant at 5%".to_string(),
        None => "no p-value or confidence interval with fewer than 3 runs".to_string(),
    };
    format!("alpha = {:.3} ({}): {verdict}", fit.alpha, inner.join("; "))
}

/// "Pearson r = -0.17 (p = 0.83)".
pub fn corr_phrase(name: &str, c: &Correlation) -> String {
    match c.p_value {
        Some(p) => format!("{name} = {:.2} ({})", c.r, p_phrase(p)),
        None => format!("{name} = {:.2} (no p-value, n = {})", c.r, c.n),
    }
}

/// One line on a Pearson/Spearman pair, ending in the verdict; with
/// `counted` false (ER within seed noise: verdicts.rs) a p below 5% is
/// stated but not claimed as a relation.
pub fn correlation_sentence(what: &str, pair: &CorrelationPair, counted: bool) -> String {
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
    let sig = |c: &Option<Correlation>| c.as_ref().and_then(|c| c.p_value).is_some_and(significant);
    // Say which coefficient carries a positive verdict: two tests at 5%
    // find "something" more often than one.
    let v = if !counted && (sig(&pair.pearson) || sig(&pair.spearman)) {
        "p below 0.05 on its own, not counted as evidence: ER differs between cells no more than between seeds"
    } else if sig(&pair.pearson) && sig(&pair.spearman) {
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

/// What every data-scaling statement of a tail-mode sweep carries.
pub const TAIL_CAVEAT: &str = "tail validation: each cell is scored on the end of its own stream, so this mixes more training data with different validation text";

/// The verdict on PPL against tokens, in words (with the fit).
pub fn scaling_phrase(scaling: Scaling, fit: Option<&ScalingFit>) -> String {
    let fit_text = fit.map(alpha_sentence).unwrap_or_else(|| "no fit".into());
    match scaling {
        Scaling::Falls => format!("PPL falls significantly with training tokens, {fit_text}"),
        Scaling::Rises => format!("PPL **rises** with training tokens, {fit_text}: more data went with worse validation PPL"),
        Scaling::NotSignificant => format!("no significant trend of PPL with training tokens, {fit_text}"),
        Scaling::Untestable => format!("the trend of PPL with tokens is not testable here, {fit_text}"),
    }
}

/// What every Effective Rank statement of a run with random embeddings
/// carries: its ER level is not the seed's (which used GPT-2 embeddings).
pub fn er_caveat(cfg: &Config) -> &'static str {
    if cfg.pretrained_embeddings.is_empty() {
        " Random embeddings: the seed's 8-9% ER came with frozen GPT-2 embeddings, and with random ones the original implementation itself gives ~30-35% on this corpus, so this ER level is not comparable with the seed's."
    } else {
        ""
    }
}
