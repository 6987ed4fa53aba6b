//! Which law describes how validation PPL falls with training tokens, and
//! how far it can be trusted beyond the data: pure maths on "runs", the
//! parallel slices `tokens` (train tokens of a run's cell) and `ppl` (its
//! Val PPL), several runs (seeds) per token count.
//!
//! Two laws:
//! - power law PPL = A tokens^-a (the log-log line of `stats::scaling_fit`,
//!   with a = -alpha),
//! - saturation law PPL = E + A tokens^-a, E >= 0 the irreducible PPL.
//!
//! Every fit minimises squared residuals in log space, ln PPL - ln f(tokens),
//! so the two laws are compared under the same Gaussian error model on
//! ln PPL (AICc). Standard errors are those of scipy's curve_fit with
//! absolute_sigma=False; scripts/laws_reference.py prints the references the
//! tests hold these functions to.
//!
//! Anything that cannot be computed is `None` (or an empty list), never NaN,
//! so results serialise to valid JSON.

use serde::{Deserialize, Serialize};

use crate::experiment::stats::{
    least_squares, percentile, scaling_fit, student_t_quantile, student_t_two_sided_p, ScalingFit,
    SplitMix64,
};

/// A difference in AICc below this is no evidence either way (Burnham &
/// Anderson: models within 2 of the best have substantial support).
pub const AICC_TIE: f64 = 2.0;

/// Exponents tried for the saturation law's starting point: 0.02, 0.04, ...
/// 3.0. Language-model exponents sit well inside (0, 3].
const EXPONENT_GRID_STEP: f64 = 0.02;
const EXPONENT_GRID_POINTS: usize = 150;

/// Levenberg-Marquardt stops once no parameter moves by more than this
/// relative amount in a step.
const STEP_TOLERANCE: f64 = 1e-12;
/// SSEs within this relative distance are equal to rounding.
const SSE_ROUNDING: f64 = 1e-14;
/// A fit still moving after this many iterations is given up (None).
const MAX_ITERATIONS: usize = 500;

// ---------------------------------------------------------------------------
// Fits

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Law {
    /// PPL = A tokens^-a.
    Power,
    /// PPL = E + A tokens^-a with E >= 0.
    Saturation,
}

/// A law fitted to runs by least squares on ln PPL.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LawFit {
    pub law: Law,
    /// Irreducible PPL E (0 for the power law).
    pub e: f64,
    /// Coefficient A.
    #[serde(rename = "A")]
    pub a: f64,
    /// Exponent a in tokens^-a (minus scaling_fit's alpha).
    pub exponent: f64,
    /// Standard errors from s^2 (J^T J)^-1, s^2 = SSE / (n - params); None
    /// with no residual degree of freedom, a singular J^T J, or (for E) at
    /// the bound.
    pub e_stderr: Option<f64>,
    #[serde(rename = "A_stderr")]
    pub a_stderr: Option<f64>,
    pub exponent_stderr: Option<f64>,
    /// estimate -+ t(0.975, n - params) stderr; None where stderr is.
    pub e_ci95: Option<[f64; 2]>,
    #[serde(rename = "A_ci95")]
    pub a_ci95: Option<[f64; 2]>,
    pub exponent_ci95: Option<[f64; 2]>,
    /// Sum of squared log residuals.
    pub sse: f64,
    pub n: usize,
    /// The law's parameter count (3 for the saturation law even at the bound).
    pub params: usize,
    /// Small-sample AIC with k = params + 1 (the variance); None when
    /// n - k - 1 <= 0 or the fit is exact (SSE = 0 has no likelihood).
    pub aicc: Option<f64>,
    /// Saturation law only: the best E >= 0 is E = 0, where the law is the
    /// power law. The fit is then the power law's (E fixed at 0, so A's and
    /// a's standard errors are the power law's, n - 2 dof) with the
    /// saturation law's parameter count.
    pub at_bound: bool,
}

/// The fitted law's PPL at `tokens`.
pub fn predict(fit: &LawFit, tokens: f64) -> f64 {
    fit.e + fit.a * tokens.powf(-fit.exponent)
}

/// Fits `law` to the runs. None when the slices differ in length, a value
/// is not finite and positive, or there is too little to fit: the power
/// law needs 2 distinct token counts; the saturation law needs more than 3
/// runs over at least 3 distinct counts, PPL that is not constant, and a
/// converged fit.
pub fn fit_law(tokens: &[f64], ppl: &[f64], law: Law) -> Option<LawFit> {
    match law {
        Law::Power => fit_power(tokens, ppl),
        Law::Saturation => fit_saturation(tokens, ppl),
    }
}

/// Whether runs can be fitted in log space at all.
fn usable(tokens: &[f64], ppl: &[f64]) -> bool {
    let positive = |v: &f64| v.is_finite() && *v > 0.0;
    !tokens.is_empty()
        && tokens.len() == ppl.len()
        && tokens.iter().all(positive)
        && ppl.iter().all(positive)
}

/// The distinct token counts, ascending.
fn distinct_counts(tokens: &[f64]) -> Vec<f64> {
    let mut counts = tokens.to_vec();
    counts.sort_by(f64::total_cmp);
    counts.dedup();
    counts
}

fn fit_power(tokens: &[f64], ppl: &[f64]) -> Option<LawFit> {
    if !usable(tokens, ppl) {
        return None;
    }
    let x: Vec<f64> = tokens.iter().map(|t| t.ln()).collect();
    let y: Vec<f64> = ppl.iter().map(|p| p.ln()).collect();
    let (slope, intercept, sse, _) = least_squares(&x, &y)?;
    let (a, exponent) = (intercept.exp(), -slope);
    // d ln f / d(A, a) for ln f = ln A - a ln t.
    let jacobian: Vec<[f64; 2]> = x.iter().map(|x| [1.0 / a, -x]).collect();
    let se = standard_errors(&jacobian, sse);
    let ci = intervals(&[a, exponent], se, x.len());
    Some(LawFit {
        law: Law::Power,
        e: 0.0,
        a,
        exponent,
        e_stderr: None,
        a_stderr: se.map(|s| s[0]),
        exponent_stderr: se.map(|s| s[1]),
        e_ci95: None,
        a_ci95: ci.map(|c| c[0]),
        exponent_ci95: ci.map(|c| c[1]),
        sse,
        n: x.len(),
        params: 2,
        aicc: aicc(sse, x.len(), 2),
        at_bound: false,
    })
}

/// The saturation law: a grid over the exponent for a start, then
/// Levenberg-Marquardt on all three parameters with E kept >= 0.
///
/// Tokens are divided by the largest count, so the fitted coefficient
/// B = A max^-a is of the order of PPL and all three parameters are of
/// similar size while iterating; A is recovered at the end.
fn fit_saturation(tokens: &[f64], ppl: &[f64]) -> Option<LawFit> {
    if !usable(tokens, ppl) || tokens.len() <= 3 || distinct_counts(tokens).len() < 3 {
        return None;
    }
    if ppl.iter().all(|p| *p == ppl[0]) {
        // Constant PPL: E = PPL with A = 0, and the exponent is anything.
        return None;
    }
    let power = fit_power(tokens, ppl)?;
    let largest = tokens.iter().copied().fold(0.0, f64::max);
    let ln_u: Vec<f64> = tokens.iter().map(|t| (t / largest).ln()).collect();
    let y: Vec<f64> = ppl.iter().map(|p| p.ln()).collect();

    let start = grid_start(&ln_u, ppl, &y)?;
    let ([e, b, exponent], sse) = refine(&ln_u, &y, start)?;
    let n = tokens.len();
    if e == 0.0 || sse >= power.sse {
        return Some(LawFit {
            law: Law::Saturation,
            params: 3,
            aicc: aicc(power.sse, n, 3),
            at_bound: true,
            ..power
        });
    }
    let a = b * largest.powf(exponent);
    if !a.is_finite() {
        return None;
    }
    // d ln f / d(E, A, a) for f = E + A t^-a, in the caller's units.
    let jacobian: Vec<[f64; 3]> = tokens
        .iter()
        .map(|t| {
            let g = t.powf(-exponent);
            let f = e + a * g;
            [1.0 / f, g / f, -a * g * t.ln() / f]
        })
        .collect();
    let se = standard_errors(&jacobian, sse);
    let ci = intervals(&[e, a, exponent], se, n);
    Some(LawFit {
        law: Law::Saturation,
        e,
        a,
        exponent,
        e_stderr: se.map(|s| s[0]),
        a_stderr: se.map(|s| s[1]),
        exponent_stderr: se.map(|s| s[2]),
        e_ci95: ci.map(|c| c[0]),
        a_ci95: ci.map(|c| c[1]),
        exponent_ci95: ci.map(|c| c[2]),
        sse,
        n,
        params: 3,
        aicc: aicc(sse, n, 3),
        at_bound: false,
    })
}

/// Sum of squared log residuals of E + B u^-a (u = tokens / largest), or
/// None where the law is not positive at every run (no logarithm).
fn log_sse(ln_u: &[f64], y: &[f64], [e, b, exponent]: [f64; 3]) -> Option<f64> {
    let mut sse = 0.0;
    for (lu, y) in ln_u.iter().zip(y) {
        let f = e + b * (-exponent * lu).exp();
        if !(f > 0.0 && f.is_finite()) {
            return None;
        }
        sse += (y - f.ln()).powi(2);
    }
    Some(sse)
}

/// Starting point: for each exponent on the grid, (E, B) by least squares
/// of PPL on [1, u^-a] weighted by 1/PPL (relative errors, close to the
/// log residuals and linear in E and B), E clipped to 0; the candidate
/// with the smallest log SSE wins. None when no exponent gives B > 0.
fn grid_start(ln_u: &[f64], ppl: &[f64], y: &[f64]) -> Option<[f64; 3]> {
    let mut best: Option<([f64; 3], f64)> = None;
    for k in 1..=EXPONENT_GRID_POINTS {
        let exponent = k as f64 * EXPONENT_GRID_STEP;
        let (mut m, mut rhs) = ([[0.0; 2]; 2], [0.0; 2]);
        for (lu, p) in ln_u.iter().zip(ppl) {
            let g = (-exponent * lu).exp();
            let w = 1.0 / (p * p);
            m[0][0] += w;
            m[0][1] += w * g;
            m[1][1] += w * g * g;
            rhs[0] += w * p;
            rhs[1] += w * p * g;
        }
        m[1][0] = m[0][1];
        let Some([mut e, mut b]) = solve(m, rhs) else {
            continue;
        };
        if e < 0.0 {
            e = 0.0;
            b = rhs[1] / m[1][1];
        }
        if b.is_nan() || b <= 0.0 {
            continue;
        }
        let theta = [e, b, exponent];
        if let Some(sse) = log_sse(ln_u, y, theta) {
            if best.is_none_or(|(_, s)| sse < s) {
                best = Some((theta, sse));
            }
        }
    }
    best.map(|(theta, _)| theta)
}

/// Levenberg-Marquardt (Marquardt's diagonal damping) on (E, B, a) with E
/// held >= 0 by an active set: a step that crosses E = 0 stops on it, and
/// while E is on the bound and the step would push it below, E stays fixed
/// and only (B, a) move. Returns the parameters and their log SSE, or None
/// if the fit has not settled within MAX_ITERATIONS.
///
/// Near the optimum the SSE stops changing in floating point long before
/// the parameters do, so a step that ties the SSE to rounding is also
/// taken when it shrinks the gradient: without that the fit stops ~1e-8
/// (relative) short of the optimum scipy reaches.
///
/// Hand-written rather than the levenberg-marquardt crate: three
/// parameters need only a 3x3 solve, the crate has no bounds (E >= 0 is
/// the delicate part), and it brings nalgebra 0.34 and six more crates,
/// ~23 s of extra cold build.
fn refine(ln_u: &[f64], y: &[f64], start: [f64; 3]) -> Option<([f64; 3], f64)> {
    let mut theta = start;
    let (mut sse, mut jtj, mut jtr) = normal_equations(ln_u, y, theta)?;
    let mut lambda = 1e-3;
    for _ in 0..MAX_ITERATIONS {
        // Raise the damping until a step is taken; none at any damping
        // means theta is a minimum to machine precision.
        loop {
            if lambda > 1e16 {
                return Some((theta, sse));
            }
            let mut damped = jtj;
            for (i, row) in damped.iter_mut().enumerate() {
                row[i] += lambda * jtj[i][i];
            }
            let Some(mut step) = solve(damped, jtr) else {
                lambda *= 10.0;
                continue;
            };
            if theta[0] == 0.0 && step[0] < 0.0 {
                let reduced = [[damped[1][1], damped[1][2]], [damped[2][1], damped[2][2]]];
                let Some([db, da]) = solve(reduced, [jtr[1], jtr[2]]) else {
                    lambda *= 10.0;
                    continue;
                };
                step = [0.0, db, da];
            }
            let mut trial = [theta[0] + step[0], theta[1] + step[1], theta[2] + step[2]];
            trial[0] = trial[0].max(0.0);
            let Some((trial_sse, trial_jtj, trial_jtr)) = normal_equations(ln_u, y, trial) else {
                lambda *= 10.0;
                continue;
            };
            let lower = trial_sse < sse;
            let tie = trial_sse <= sse * (1.0 + SSE_ROUNDING)
                && gradient_size(&trial_jtj, &trial_jtr, trial) < gradient_size(&jtj, &jtr, theta);
            if !(lower || tie) {
                lambda *= 10.0;
                continue;
            }
            let settled = (0..3)
                .all(|i| (trial[i] - theta[i]).abs() <= STEP_TOLERANCE * (theta[i].abs() + 1e-12));
            (theta, sse, jtj, jtr) = (trial, trial_sse, trial_jtj, trial_jtr);
            lambda = (lambda / 10.0).max(1e-12);
            if settled {
                return Some((theta, sse));
            }
            break;
        }
    }
    None
}

/// Log SSE of E + B u^-a with J^T J and J^T r (J the Jacobian of ln f in
/// (E, B, a), r the log residuals); None where the law is not positive at
/// every run.
fn normal_equations(
    ln_u: &[f64],
    y: &[f64],
    theta: [f64; 3],
) -> Option<(f64, [[f64; 3]; 3], [f64; 3])> {
    let sse = log_sse(ln_u, y, theta)?;
    let (mut jtj, mut jtr) = ([[0.0; 3]; 3], [0.0; 3]);
    for (lu, y) in ln_u.iter().zip(y) {
        let g = (-theta[2] * lu).exp();
        let f = theta[0] + theta[1] * g;
        let row = [1.0 / f, g / f, -theta[1] * g * lu / f];
        let r = y - f.ln();
        for i in 0..3 {
            jtr[i] += row[i] * r;
            for j in 0..3 {
                jtj[i][j] += row[i] * row[j];
            }
        }
    }
    Some((sse, jtj, jtr))
}

/// Squared gradient of the SSE in unit-scaled parameters (each component
/// over its J^T J diagonal), leaving out E while it sits on its bound and
/// the gradient pushes it below.
fn gradient_size(jtj: &[[f64; 3]; 3], jtr: &[f64; 3], theta: [f64; 3]) -> f64 {
    let first = if theta[0] == 0.0 && jtr[0] < 0.0 {
        1
    } else {
        0
    };
    (first..3).map(|i| jtr[i] * jtr[i] / jtj[i][i]).sum()
}

/// Solves m x = b by Gaussian elimination with partial pivoting; None when
/// m is singular to working precision.
fn solve<const P: usize>(mut m: [[f64; P]; P], mut b: [f64; P]) -> Option<[f64; P]> {
    let scale = m.iter().flatten().fold(0.0f64, |acc, v| acc.max(v.abs()));
    if !(scale > 0.0 && scale.is_finite()) {
        return None;
    }
    for col in 0..P {
        let pivot = (col..P).max_by(|&i, &j| m[i][col].abs().total_cmp(&m[j][col].abs()))?;
        if m[pivot][col].abs() <= 1e-14 * scale {
            return None;
        }
        m.swap(col, pivot);
        b.swap(col, pivot);
        let pivot_row = m[col];
        for row in col + 1..P {
            let factor = m[row][col] / pivot_row[col];
            for (v, p) in m[row][col..].iter_mut().zip(&pivot_row[col..]) {
                *v -= factor * p;
            }
            b[row] -= factor * b[col];
        }
    }
    let mut x = [0.0; P];
    for row in (0..P).rev() {
        let tail: f64 = (row + 1..P).map(|k| m[row][k] * x[k]).sum();
        x[row] = (b[row] - tail) / m[row][row];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// sqrt of the diagonal of s^2 (J^T J)^-1 with s^2 = sse / (n - P), the
/// covariance curve_fit reports with absolute_sigma=False. J^T J is scaled
/// to a unit diagonal before inverting, so parameters of very different
/// size (A ~ 1e6 beside a ~ 0.5) do not spoil the inverse. None when
/// n <= P or J^T J is singular.
fn standard_errors<const P: usize>(jacobian: &[[f64; P]], sse: f64) -> Option<[f64; P]> {
    let n = jacobian.len();
    if n <= P {
        return None;
    }
    let mut jtj = [[0.0; P]; P];
    for row in jacobian {
        for i in 0..P {
            for j in 0..P {
                jtj[i][j] += row[i] * row[j];
            }
        }
    }
    let scale: [f64; P] = std::array::from_fn(|i| jtj[i][i].sqrt());
    if !scale.iter().all(|s| *s > 0.0 && s.is_finite()) {
        return None;
    }
    for (i, row) in jtj.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v /= scale[i] * scale[j];
        }
    }
    let s2 = sse / (n - P) as f64;
    let mut se = [0.0; P];
    for k in 0..P {
        let mut unit = [0.0; P];
        unit[k] = 1.0;
        let column = solve(jtj, unit)?;
        let variance = s2 * column[k] / (scale[k] * scale[k]);
        if !(variance >= 0.0 && variance.is_finite()) {
            return None;
        }
        se[k] = variance.sqrt();
    }
    Some(se)
}

/// estimate -+ t(0.975, n - P) stderr for each parameter.
fn intervals<const P: usize>(
    estimates: &[f64; P],
    stderr: Option<[f64; P]>,
    n: usize,
) -> Option<[[f64; 2]; P]> {
    let se = stderr?;
    let q = student_t_quantile(0.975, (n - P) as f64);
    Some(std::array::from_fn(|i| {
        [estimates[i] - q * se[i], estimates[i] + q * se[i]]
    }))
}

/// AICc = n ln(SSE/n) + 2k + 2k(k+1)/(n-k-1), k = params + 1 (the error
/// variance is estimated too).
fn aicc(sse: f64, n: usize, params: usize) -> Option<f64> {
    let k = params + 1;
    if n <= k + 1 || sse.is_nan() || sse <= 0.0 {
        return None;
    }
    let (n, k) = (n as f64, k as f64);
    Some(n * (sse / n).ln() + 2.0 * k + 2.0 * k * (k + 1.0) / (n - k - 1.0))
}

// ---------------------------------------------------------------------------
// Comparison

/// Both laws on the same runs, and which one the data prefer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LawComparison {
    pub power: LawFit,
    pub saturation: Option<LawFit>,
    /// Saturation AICc minus power AICc (negative favours saturation).
    pub delta_aicc: Option<f64>,
    /// None when the data cannot tell the laws apart: |delta| < AICC_TIE,
    /// or an AICc is unavailable.
    pub better: Option<Law>,
}

/// Fits both laws; None when even the power law cannot be fitted.
pub fn compare_laws(tokens: &[f64], ppl: &[f64]) -> Option<LawComparison> {
    let power = fit_power(tokens, ppl)?;
    let saturation = fit_saturation(tokens, ppl);
    let delta_aicc = saturation
        .as_ref()
        .and_then(|s| Some(s.aicc? - power.aicc?));
    let at_bound = saturation.as_ref().is_some_and(|s| s.at_bound);
    Some(LawComparison {
        better: better_law(delta_aicc, at_bound),
        power,
        saturation,
        delta_aicc,
    })
}

/// The verdict on delta = AICc(saturation) - AICc(power). A saturation fit
/// at its E = 0 bound is the power law with a wasted parameter, never the
/// better law (its delta is the extra penalty alone, so this only guards).
fn better_law(delta_aicc: Option<f64>, at_bound: bool) -> Option<Law> {
    let delta = delta_aicc?;
    if delta.abs() < AICC_TIE {
        None
    } else if delta > 0.0 {
        Some(Law::Power)
    } else {
        (!at_bound).then_some(Law::Saturation)
    }
}

// ---------------------------------------------------------------------------
// Out-of-sample checks

/// A law fitted without the largest cell, against that cell's runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Holdout {
    pub law: Law,
    pub largest_tokens: f64,
    /// The law's PPL at largest_tokens, fitted on the smaller cells.
    pub predicted: f64,
    /// Mean and sample standard deviation (n - 1) of the held-out runs; sd
    /// is None with a single run.
    pub observed_mean: f64,
    pub observed_sd: Option<f64>,
    pub observed_n: usize,
    /// (predicted - observed_mean) / observed_mean.
    pub rel_error: f64,
}

/// Leave-last-out: fit `law` on the runs below the largest token count and
/// predict at it. None when the runs are not usable or the smaller cells
/// are too few for the law.
pub fn leave_last_out(tokens: &[f64], ppl: &[f64], law: Law) -> Option<Holdout> {
    if !usable(tokens, ppl) {
        return None;
    }
    let largest = tokens.iter().copied().fold(0.0, f64::max);
    let (mut fit_tokens, mut fit_ppl, mut held) = (Vec::new(), Vec::new(), Vec::new());
    for (&t, &p) in tokens.iter().zip(ppl) {
        if t < largest {
            fit_tokens.push(t);
            fit_ppl.push(p);
        } else {
            held.push(p);
        }
    }
    let fit = fit_law(&fit_tokens, &fit_ppl, law)?;
    let predicted = predict(&fit, largest);
    let n = held.len();
    let observed_mean = held.iter().sum::<f64>() / n as f64;
    let observed_sd = (n >= 2).then(|| {
        let ss: f64 = held.iter().map(|p| (p - observed_mean).powi(2)).sum();
        (ss / (n - 1) as f64).sqrt()
    });
    Some(Holdout {
        law,
        largest_tokens: largest,
        predicted,
        observed_mean,
        observed_sd,
        observed_n: n,
        rel_error: (predicted - observed_mean) / observed_mean,
    })
}

/// A law's PPL beyond the data, with a bootstrap interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Extrapolation {
    /// Multiple of the largest token count.
    pub factor: f64,
    pub tokens: f64,
    /// From the fit on every run.
    pub predicted: f64,
    /// Percentile bootstrap 95% interval over runs; None when fewer than
    /// half of the resamples could be fitted.
    pub ci95: Option<[f64; 2]>,
}

/// Predicts at factor x the largest token count for each finite positive
/// factor (others are skipped), with a percentile bootstrap that resamples
/// (tokens, ppl) pairs with replacement and refits; resamples whose fit
/// fails are skipped. Empty when the law cannot be fitted to all the runs.
/// The same seed gives the same intervals.
pub fn extrapolate(
    tokens: &[f64],
    ppl: &[f64],
    law: Law,
    factors: &[f64],
    resamples: usize,
    seed: u64,
) -> Vec<Extrapolation> {
    let Some(fit) = fit_law(tokens, ppl, law) else {
        return Vec::new();
    };
    let largest = tokens.iter().copied().fold(0.0, f64::max);
    let factors: Vec<f64> = factors
        .iter()
        .copied()
        .filter(|f| f.is_finite() && *f > 0.0)
        .collect();
    let targets: Vec<f64> = factors.iter().map(|f| f * largest).collect();

    let n = tokens.len();
    let mut rng = SplitMix64(seed);
    let (mut drawn_tokens, mut drawn_ppl) = (vec![0.0; n], vec![0.0; n]);
    let mut draws: Vec<Vec<f64>> = vec![Vec::with_capacity(resamples); targets.len()];
    for _ in 0..resamples {
        for i in 0..n {
            let j = rng.below(n);
            drawn_tokens[i] = tokens[j];
            drawn_ppl[i] = ppl[j];
        }
        let Some(refit) = fit_law(&drawn_tokens, &drawn_ppl, law) else {
            continue;
        };
        for (values, &t) in draws.iter_mut().zip(&targets) {
            let value = predict(&refit, t);
            if value.is_finite() {
                values.push(value);
            }
        }
    }
    factors
        .iter()
        .zip(&targets)
        .zip(draws.iter_mut())
        .map(|((&factor, &t), values)| {
            let ci95 = (!values.is_empty() && values.len() * 2 >= resamples).then(|| {
                values.sort_by(f64::total_cmp);
                [percentile(values, 0.025), percentile(values, 0.975)]
            });
            Extrapolation {
                factor,
                tokens: t,
                predicted: predict(&fit, t),
                ci95,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Does alpha change with data?

/// The power-law fit over one window of consecutive token counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowAlpha {
    pub first_tokens: f64,
    pub last_tokens: f64,
    pub fit: ScalingFit,
}

/// `stats::scaling_fit` over every window of `w` consecutive distinct token
/// counts (all runs at those counts), smallest counts first. Empty unless
/// there are at least w + 1 distinct counts (one window says nothing about
/// change) and w >= 2, or when the runs are not usable.
pub fn window_alphas(tokens: &[f64], ppl: &[f64], w: usize) -> Vec<WindowAlpha> {
    if !usable(tokens, ppl) || w < 2 {
        return Vec::new();
    }
    let counts = distinct_counts(tokens);
    if counts.len() < w + 1 {
        return Vec::new();
    }
    counts
        .windows(w)
        .filter_map(|window| {
            let (first, last) = (window[0], window[w - 1]);
            let (t, p): (Vec<f64>, Vec<f64>) = tokens
                .iter()
                .zip(ppl)
                .filter(|(t, _)| **t >= first && **t <= last)
                .map(|(t, p)| (*t, *p))
                .unzip();
            let fit = scaling_fit(&t, &p)?;
            Some(WindowAlpha {
                first_tokens: first,
                last_tokens: last,
                fit,
            })
        })
        .collect()
}

/// Curvature of ln PPL in x = ln tokens: the OLS fit
/// ln PPL = b0 + b1 (x - xc) + b2 (x - xc)^2, xc the mean of x (centred
/// for conditioning; b2 does not depend on the centre). The local slope,
/// alpha at x, is d ln PPL / dx = b1 + 2 b2 (x - xc): b2 > 0 means alpha
/// rises towards 0 with more data (diminishing returns, as a saturating
/// law gives), b2 < 0 that the curve steepens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlphaTrend {
    /// b2.
    pub curvature: f64,
    /// Standard error of b2 (OLS, n - 3 dof).
    pub stderr: f64,
    /// Two-sided p-value of the t test b2 = 0; None when b2 and its
    /// standard error are both 0 (an exact power law).
    pub p_value: Option<f64>,
    pub dof: usize,
    /// b1: alpha at centre_tokens.
    pub slope_at_centre: f64,
    /// exp(xc): the geometric mean of the runs' token counts.
    pub centre_tokens: f64,
    pub n: usize,
}

/// Tests whether alpha changes with data. None when the runs are not
/// usable, there are fewer than 4 runs or 4 distinct token counts.
pub fn alpha_trend(tokens: &[f64], ppl: &[f64]) -> Option<AlphaTrend> {
    let n = tokens.len();
    if !usable(tokens, ppl) || n < 4 || distinct_counts(tokens).len() < 4 {
        return None;
    }
    let x: Vec<f64> = tokens.iter().map(|t| t.ln()).collect();
    let centre = x.iter().sum::<f64>() / n as f64;
    let (mut xtx, mut xty) = ([[0.0; 3]; 3], [0.0; 3]);
    for (x, p) in x.iter().zip(ppl) {
        let z = x - centre;
        let row = [1.0, z, z * z];
        for i in 0..3 {
            xty[i] += row[i] * p.ln();
            for j in 0..3 {
                xtx[i][j] += row[i] * row[j];
            }
        }
    }
    let b = solve(xtx, xty)?;
    let sse: f64 = x
        .iter()
        .zip(ppl)
        .map(|(x, p)| {
            let z = x - centre;
            (p.ln() - b[0] - b[1] * z - b[2] * z * z).powi(2)
        })
        .sum();
    let dof = n - 3;
    // var(b2) = s^2 [(X^T X)^-1]_22.
    let inverse_column = solve(xtx, [0.0, 0.0, 1.0])?;
    let stderr = (sse / dof as f64 * inverse_column[2]).sqrt();
    if !stderr.is_finite() {
        return None;
    }
    let t = b[2] / stderr;
    let p_value = (t.is_finite() || b[2] != 0.0).then(|| student_t_two_sided_p(t, dof as f64));
    Some(AlphaTrend {
        curvature: b[2],
        stderr,
        p_value,
        dof,
        slope_at_centre: b[1],
        centre_tokens: centre.exp(),
        n,
    })
}

#[cfg(test)]
mod tests;
