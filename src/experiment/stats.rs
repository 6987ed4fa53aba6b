//! Statistics for the scaling analysis (docs/algorithm.md section 7), pure
//! maths on plain numbers: the power-law fit ln PPL = ln A + alpha ln tokens
//! with its uncertainty, Pearson / Spearman correlations, and the t-based
//! tests the reports quote. The Student-t distribution comes from `statrs`.
//!
//! Anything that cannot be computed (too few points, constant inputs) is
//! `None`, never NaN, so results serialise to valid JSON.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

// ---------------------------------------------------------------------------
// Student's t

fn students_t(dof: f64) -> StudentsT {
    // dof > 0 is guaranteed by every caller (n - 2 with n >= 3, or more).
    StudentsT::new(0.0, 1.0, dof).expect("Student-t with positive degrees of freedom")
}

/// P(|T| >= |t|) for Student's t with `dof` degrees of freedom (from the
/// survival function, so tiny p-values keep their digits).
pub fn student_t_two_sided_p(t: f64, dof: f64) -> f64 {
    if t.is_infinite() {
        return 0.0;
    }
    (2.0 * students_t(dof).sf(t.abs())).min(1.0)
}

/// Student-t cumulative distribution function P(T <= t).
pub fn student_t_cdf(t: f64, dof: f64) -> f64 {
    students_t(dof).cdf(t)
}

/// Student-t quantile: the t with P(T <= t) = p, for p in (0, 1).
pub fn student_t_quantile(p: f64, dof: f64) -> f64 {
    assert!(p > 0.0 && p < 1.0, "quantile needs p in (0, 1), got {p}");
    students_t(dof).inverse_cdf(p)
}

// ---------------------------------------------------------------------------
// Scaling fit

/// Least-squares fit of ln PPL = ln A + alpha ln tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalingFit {
    pub alpha: f64,
    #[serde(rename = "A")]
    pub a: f64,
    /// Coefficient of determination in log-log space; None when PPL is constant.
    pub r2: Option<f64>,
    /// Two-sided p-value for alpha = 0 (t test, n - 2 dof); None when n < 3.
    pub p_value: Option<f64>,
    /// Standard error of alpha; None when n < 3.
    pub stderr: Option<f64>,
    /// 95% confidence interval for alpha from the t distribution; None when n < 3.
    pub alpha_ci95: Option<[f64; 2]>,
    /// Percentile bootstrap 95% interval (resampling cells); only when n >= 5.
    pub bootstrap_ci95: Option<[f64; 2]>,
    pub n: usize,
}

/// Bootstrap resamples for the alpha interval.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;
/// Fixed seed so the same cells always give the same interval.
pub const BOOTSTRAP_SEED: u64 = 42;

/// Plain least squares y = b0 + b1 x; returns (slope, intercept, sse, ss_tot), or
/// None when x has no spread.
pub(crate) fn least_squares(x: &[f64], y: &[f64]) -> Option<(f64, f64, f64, f64)> {
    let n = x.len() as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let sxx: f64 = x.iter().map(|v| (v - mx).powi(2)).sum();
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let syy: f64 = y.iter().map(|v| (v - my).powi(2)).sum();
    // Relative threshold: x values that differ only by rounding are "no spread".
    if sxx <= 1e-24 * x.iter().map(|v| v * v).sum::<f64>().max(1e-300) {
        return None;
    }
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let sse: f64 = x
        .iter()
        .zip(y)
        .map(|(a, b)| (b - intercept - slope * a).powi(2))
        .sum();
    Some((slope, intercept, sse, syy))
}

/// Fits PPL = A * tokens^alpha. None when fewer than 2 points, a value is
/// not positive and finite, or all token counts are equal.
pub fn scaling_fit(tokens: &[f64], ppl: &[f64]) -> Option<ScalingFit> {
    let n = tokens.len();
    if n < 2 || ppl.len() != n {
        return None;
    }
    let usable = |v: &f64| v.is_finite() && *v > 0.0;
    if !tokens.iter().all(usable) || !ppl.iter().all(usable) {
        return None;
    }
    let x: Vec<f64> = tokens.iter().map(|v| v.ln()).collect();
    let y: Vec<f64> = ppl.iter().map(|v| v.ln()).collect();
    let (alpha, ln_a, sse, ss_tot) = least_squares(&x, &y)?;
    let r2 = (ss_tot > 0.0).then(|| (1.0 - sse / ss_tot).clamp(0.0, 1.0));

    let (mut stderr, mut p_value, mut alpha_ci95) = (None, None, None);
    if n >= 3 {
        let dof = (n - 2) as f64;
        let mx = x.iter().sum::<f64>() / n as f64;
        let sxx: f64 = x.iter().map(|v| (v - mx).powi(2)).sum();
        let se = (sse / dof / sxx).sqrt();
        let t = alpha / se;
        stderr = Some(se);
        // alpha = 0 with zero residuals (constant PPL) has no defined t.
        if t.is_finite() || (se == 0.0 && alpha != 0.0) {
            p_value = Some(student_t_two_sided_p(t, dof));
        }
        let q = student_t_quantile(0.975, dof);
        alpha_ci95 = Some([alpha - q * se, alpha + q * se]);
    }
    let bootstrap_ci95 = if n >= 5 {
        bootstrap_alpha_ci95(&x, &y, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)
    } else {
        None
    };
    Some(ScalingFit {
        alpha,
        a: ln_a.exp(),
        r2,
        p_value,
        stderr,
        alpha_ci95,
        bootstrap_ci95,
        n,
    })
}

/// SplitMix64: a tiny seeded generator, enough for bootstrap index draws
/// (the seed is the field, so `SplitMix64(seed)` starts a stream).
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        // Modulo bias is ~n / 2^64: irrelevant for a handful of cells.
        (self.next_u64() % n as u64) as usize
    }
}

/// Percentile bootstrap of the slope, resampling (x, y) pairs with
/// replacement. Resamples whose x has no spread cannot be fitted and are
/// skipped; None if fewer than half of them were usable.
fn bootstrap_alpha_ci95(x: &[f64], y: &[f64], resamples: usize, seed: u64) -> Option<[f64; 2]> {
    let n = x.len();
    let mut rng = SplitMix64(seed);
    let mut slopes = Vec::with_capacity(resamples);
    let (mut bx, mut by) = (vec![0.0; n], vec![0.0; n]);
    for _ in 0..resamples {
        for i in 0..n {
            let j = rng.below(n);
            bx[i] = x[j];
            by[i] = y[j];
        }
        if let Some((slope, ..)) = least_squares(&bx, &by) {
            slopes.push(slope);
        }
    }
    if slopes.len() < resamples / 2 {
        return None;
    }
    slopes.sort_by(f64::total_cmp);
    Some([percentile(&slopes, 0.025), percentile(&slopes, 0.975)])
}

/// Linear-interpolated percentile of sorted data (q in [0, 1]).
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

// ---------------------------------------------------------------------------
// Uncertainty from the validation set

/// How much a cell's Val PPL owes to which validation conversations were
/// drawn: a percentile bootstrap over conversations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConversationInterval {
    /// Mean over the runs of each run's Val PPL on every conversation (the
    /// cell's Val PPL).
    pub ppl_mean: f64,
    /// Percentile 95% interval of that mean over the resamples.
    pub ci95: [f64; 2],
    pub conversations: usize,
    /// Resamples that were used (a draw of conversations with no predicted
    /// position has no PPL and is skipped).
    pub resamples: usize,
}

/// Percentile bootstrap of a cell's Val PPL over its validation
/// conversations. Each run is (per-conversation sum of token NLL,
/// per-conversation predicted positions), the same conversations in the
/// same order for every run, and its PPL is exp(sum nll / sum positions).
/// Every resample draws one set of conversation indices and applies it to
/// every run (the runs were scored on the same conversations, so the draw
/// is paired), then takes the mean of the runs' PPLs. None when the runs
/// disagree in length, there are fewer than 2 conversations, an NLL is not
/// finite, a run predicts no position, or fewer than half of the
/// resamples are usable.
pub fn bootstrap_ppl_over_conversations(
    runs: &[(&[f64], &[usize])],
    resamples: usize,
    seed: u64,
) -> Option<ConversationInterval> {
    let conversations = checked_conversations(runs)?;
    let all: Vec<usize> = (0..conversations).collect();
    let ppl_mean = drawn_mean_ppl(runs, &all)?;
    // Both buffers are allocated once: the draw is rewritten each resample.
    let mut rng = SplitMix64(seed);
    let mut draw = vec![0usize; conversations];
    let mut means = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        for slot in draw.iter_mut() {
            *slot = rng.below(conversations);
        }
        if let Some(m) = drawn_mean_ppl(runs, &draw) {
            means.push(m);
        }
    }
    if means.is_empty() || means.len() * 2 < resamples {
        return None;
    }
    means.sort_by(f64::total_cmp);
    Some(ConversationInterval {
        ppl_mean,
        ci95: [percentile(&means, 0.025), percentile(&means, 0.975)],
        conversations,
        resamples: means.len(),
    })
}

/// Percentile 95% interval over validation conversations of the ratio of
/// two cells' seed-mean Val PPLs (`to` / `from`), both scored on the same
/// conversations: one draw per resample for every run of both, so what the
/// two cells share cancels and the interval is that of their difference.
/// None as for `bootstrap_ppl_over_conversations`, or when the two cells'
/// runs cover different numbers of conversations.
pub fn bootstrap_ratio_over_conversations(
    from: &[(&[f64], &[usize])],
    to: &[(&[f64], &[usize])],
    resamples: usize,
    seed: u64,
) -> Option<[f64; 2]> {
    let conversations = checked_conversations(from)?;
    if checked_conversations(to)? != conversations {
        return None;
    }
    let mut rng = SplitMix64(seed);
    let mut draw = vec![0usize; conversations];
    let mut ratios = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        for slot in draw.iter_mut() {
            *slot = rng.below(conversations);
        }
        if let (Some(a), Some(b)) = (drawn_mean_ppl(from, &draw), drawn_mean_ppl(to, &draw)) {
            ratios.push(b / a);
        }
    }
    if ratios.is_empty() || ratios.len() * 2 < resamples {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    Some([percentile(&ratios, 0.025), percentile(&ratios, 0.975)])
}

/// The conversation count every run agrees on, if the runs are usable:
/// at least 2 conversations, finite losses, some predicted position.
fn checked_conversations(runs: &[(&[f64], &[usize])]) -> Option<usize> {
    let conversations = runs.first()?.0.len();
    if conversations < 2 {
        return None;
    }
    for (nll, positions) in runs {
        if nll.len() != conversations || positions.len() != conversations {
            return None;
        }
        if !nll.iter().all(|v| v.is_finite()) || positions.iter().sum::<usize>() == 0 {
            return None;
        }
    }
    Some(conversations)
}

/// Mean over the runs of each run's PPL on the drawn conversations; None
/// when the draw has no predicted position.
fn drawn_mean_ppl(runs: &[(&[f64], &[usize])], draw: &[usize]) -> Option<f64> {
    let mut sum_ppl = 0.0;
    for (nll, positions) in runs {
        let drawn_nll: f64 = draw.iter().map(|&c| nll[c]).sum();
        let drawn_positions: usize = draw.iter().map(|&c| positions[c]).sum();
        if drawn_positions == 0 {
            return None;
        }
        sum_ppl += (drawn_nll / drawn_positions as f64).exp();
    }
    Some(sum_ppl / runs.len() as f64)
}

// ---------------------------------------------------------------------------
// Correlations

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Correlation {
    pub r: f64,
    /// Two-sided p-value for r = 0 from t = r sqrt((n-2)/(1-r^2)), n - 2 dof;
    /// None when n < 3.
    pub p_value: Option<f64>,
    pub n: usize,
}

/// Pearson and Spearman correlation of the same two quantities.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CorrelationPair {
    pub pearson: Option<Correlation>,
    /// Rank correlation (ties get average ranks). Its p-value uses the same t
    /// approximation as Pearson's, which is rough for very few cells.
    pub spearman: Option<Correlation>,
}

fn correlation_p(r: f64, n: usize) -> Option<f64> {
    if n < 3 {
        return None;
    }
    let dof = (n - 2) as f64;
    if r.abs() >= 1.0 {
        return Some(0.0);
    }
    Some(student_t_two_sided_p(r * (dof / (1.0 - r * r)).sqrt(), dof))
}

/// Pearson r; None when fewer than 2 points, lengths differ, a value is not
/// finite, or either side is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<Correlation> {
    let n = x.len();
    if n < 2 || y.len() != n || !x.iter().chain(y).all(|v| v.is_finite()) {
        return None;
    }
    let mx = x.iter().sum::<f64>() / n as f64;
    let my = y.iter().sum::<f64>() / n as f64;
    let sxx: f64 = x.iter().map(|v| (v - mx).powi(2)).sum();
    let syy: f64 = y.iter().map(|v| (v - my).powi(2)).sum();
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    if sxx <= 0.0 || syy <= 0.0 {
        return None;
    }
    let r = (sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0);
    Some(Correlation {
        r,
        p_value: correlation_p(r, n),
        n,
    })
}

/// 1-based ranks; tied values share the average of their ranks.
pub fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut out = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        // Positions i..=j are tied: ranks i+1..=j+1, mean (i+j)/2 + 1.
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = rank;
        }
        i = j + 1;
    }
    out
}

/// Spearman rho = Pearson r of the ranks; p-value by the t approximation.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<Correlation> {
    if x.len() != y.len() || !x.iter().chain(y).all(|v| v.is_finite()) {
        return None;
    }
    pearson(&ranks(x), &ranks(y))
}

pub fn correlation_pair(x: &[f64], y: &[f64]) -> CorrelationPair {
    CorrelationPair {
        pearson: pearson(x, y),
        spearman: spearman(x, y),
    }
}

// ---------------------------------------------------------------------------
// Tests the reports quote

/// Significance level used in every verdict.
pub const SIGNIFICANCE: f64 = 0.05;

/// Whether either coefficient of the pair reaches 5%.
pub fn correlation_significant(pair: &CorrelationPair) -> bool {
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

/// A difference of means with its 95% confidence interval and the
/// two-sided p-value for "no difference".
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    /// mean(a) - mean(b).
    pub diff: f64,
    pub ci95: [f64; 2],
    pub p_value: f64,
    pub dof: f64,
}

fn t_difference(diff: f64, se: f64, dof: f64) -> Option<Difference> {
    if dof.is_nan() || dof <= 0.0 || !diff.is_finite() || !se.is_finite() {
        return None;
    }
    if se == 0.0 {
        // Identical replicates: no spread to test against.
        return None;
    }
    let q = student_t_quantile(0.975, dof);
    Some(Difference {
        diff,
        ci95: [diff - q * se, diff + q * se],
        p_value: student_t_two_sided_p(diff / se, dof),
        dof,
    })
}

fn mean_var(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var)
}

/// mean(a) - mean(b) for independent samples: Welch's t when both have at
/// least 2 values; when one side is a single value (a deterministic model)
/// it is taken as exact and the other side gets a one-sample t test. None
/// when neither side has a spread to test with.
pub fn mean_difference(a: &[f64], b: &[f64]) -> Option<Difference> {
    if a.is_empty() || b.is_empty() || !a.iter().chain(b).all(|v| v.is_finite()) {
        return None;
    }
    let ((ma, va), (mb, vb)) = (mean_var(a), mean_var(b));
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let diff = ma - mb;
    match (a.len() >= 2, b.len() >= 2) {
        (true, true) => {
            let (sa, sb) = (va / na, vb / nb);
            let se = (sa + sb).sqrt();
            // Welch-Satterthwaite degrees of freedom.
            let dof = (sa + sb).powi(2) / (sa * sa / (na - 1.0) + sb * sb / (nb - 1.0));
            t_difference(diff, se, dof)
        }
        (true, false) => t_difference(diff, (va / na).sqrt(), na - 1.0),
        (false, true) => t_difference(diff, (vb / nb).sqrt(), nb - 1.0),
        (false, false) => None,
    }
}

/// Mean of the paired differences a_i - b_i (same seed on both sides) with
/// a paired t test; None with fewer than 2 pairs or no spread.
pub fn paired_difference(a: &[f64], b: &[f64]) -> Option<Difference> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    if !d.iter().all(|v| v.is_finite()) {
        return None;
    }
    let (m, v) = mean_var(&d);
    let n = d.len() as f64;
    t_difference(m, (v / n).sqrt(), n - 1.0)
}

/// One-way analysis of variance: do the group means differ by more than
/// the spread within groups? Returns (F, p) with (groups - 1, values -
/// groups) degrees of freedom; None without at least two groups, a group
/// with two values, or any within-group spread.
pub fn one_way_anova(groups: &[Vec<f64>]) -> Option<(f64, f64)> {
    let k = groups.len();
    let n: usize = groups.iter().map(Vec::len).sum();
    if k < 2 || n <= k || groups.iter().any(Vec::is_empty) {
        return None;
    }
    let all: Vec<f64> = groups.iter().flatten().copied().collect();
    if !all.iter().all(|v| v.is_finite()) {
        return None;
    }
    let grand = all.iter().sum::<f64>() / n as f64;
    let (mut between, mut within) = (0.0, 0.0);
    for g in groups {
        let m = g.iter().sum::<f64>() / g.len() as f64;
        between += g.len() as f64 * (m - grand).powi(2);
        within += g.iter().map(|v| (v - m).powi(2)).sum::<f64>();
    }
    let (d1, d2) = ((k - 1) as f64, (n - k) as f64);
    if within <= 0.0 {
        return None;
    }
    let f = (between / d1) / (within / d2);
    let dist = statrs::distribution::FisherSnedecor::new(d1, d2).ok()?;
    Some((f, dist.sf(f)))
}

#[cfg(test)]
mod tests;
