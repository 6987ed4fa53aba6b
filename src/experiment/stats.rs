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
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    // Seed document's results table.
    const TOKENS: [f64; 4] = [56602.0, 110516.0, 216119.0, 529173.0];
    const PPL: [f64; 4] = [1503.3, 1036.3, 757.7, 536.0];

    #[test]
    fn t_distribution_spot_values() {
        // References from scipy.stats.t (cdf / ppf).
        assert!(close(student_t_cdf(2.0, 2.0), 0.908_248_290_463_863, 1e-12));
        assert!(close(
            student_t_cdf(-1.5, 5.0),
            0.096_951_840_121_236_64,
            1e-12
        ));
        assert!(close(
            student_t_cdf(3.0, 1.0),
            0.897_583_617_650_433_3,
            1e-12
        ));
        assert!(close(
            student_t_cdf(0.5, 100.0),
            0.690_913_217_084_556_7,
            1e-10
        ));
        assert!(close(
            student_t_quantile(0.975, 2.0),
            4.302_652_729_749_462,
            1e-9
        ));
        assert!(close(
            student_t_quantile(0.9, 10.0),
            1.372_183_641_110_336,
            1e-9
        ));
        assert!(close(
            student_t_quantile(0.995, 30.0),
            2.749_995_653_567_225,
            1e-9
        ));
        assert!(close(
            student_t_quantile(0.025, 2.0),
            -4.302_652_729_749_462,
            1e-9
        ));
        assert_eq!(student_t_quantile(0.5, 7.0), 0.0);
        // Non-integer dof, and a quantile near the median (needs 1 - x exactly).
        assert!(close(
            student_t_cdf(1.5, 2.5),
            0.876_081_773_456_851_9,
            1e-12
        ));
        assert!(close(
            student_t_cdf(-3.0, 0.5),
            0.183_654_077_992_971_7,
            1e-12
        ));
        // Near the median statrs's inverse is good to ~1e-7 relative (the
        // reports only ask for the 0.975 quantile, good to 1e-9 above).
        let q = student_t_quantile(0.5001, 1000.0);
        assert!(close(q / 2.507_255_036_228_889e-4, 1.0, 1e-6), "{q}");
    }

    #[test]
    fn seed_table_fit() {
        let fit = scaling_fit(&TOKENS, &PPL).unwrap();
        assert_eq!(fit.n, 4);
        // scipy.stats.linregress on the logs: slope -0.4591268237616494,
        // exp(intercept) 220810.059, r^2 0.9927066998, p 0.0036533234835581787,
        // stderr 0.027827182545359642; CI with t(0.975, 2) = 4.302652729749462.
        assert!(close(fit.alpha, -0.459, 0.0005), "{}", fit.alpha);
        assert!(close(fit.alpha, -0.459_126_823_761_649_4, 1e-12));
        assert!(close(fit.r2.unwrap(), 0.993, 0.0005));
        assert!(close(fit.r2.unwrap(), 0.992_706_699_805_359_2, 1e-12));
        assert!(close(fit.a / 220_810.059_019_437_5, 1.0, 1e-9));
        assert!(close(
            fit.p_value.unwrap(),
            0.003_653_323_483_558_178_7,
            1e-10
        ));
        assert!(close(fit.stderr.unwrap(), 0.027_827_182_545_359_642, 1e-12));
        let [lo, hi] = fit.alpha_ci95.unwrap();
        assert!(close(lo, -0.578_857_526_701_677_7, 1e-9), "{lo}");
        assert!(close(hi, -0.339_396_120_821_621_2, 1e-9), "{hi}");
        // n = 4 < 5: no bootstrap.
        assert_eq!(fit.bootstrap_ci95, None);
    }

    #[test]
    fn fit_json_shape_has_no_nan() {
        let fit = scaling_fit(&TOKENS[..2], &PPL[..2]).unwrap();
        assert_eq!(
            (fit.p_value, fit.stderr, fit.alpha_ci95),
            (None, None, None)
        );
        let json = serde_json::to_value(&fit).unwrap();
        for key in [
            "alpha",
            "A",
            "r2",
            "p_value",
            "stderr",
            "alpha_ci95",
            "bootstrap_ci95",
            "n",
        ] {
            assert!(json.get(key).is_some(), "missing {key} in {json}");
        }
        assert!(json["p_value"].is_null());
        let back: ScalingFit = serde_json::from_value(json).unwrap();
        assert_eq!(back, fit);
        // Unfittable inputs give None instead of NaN.
        assert_eq!(scaling_fit(&TOKENS[..1], &PPL[..1]), None);
        assert_eq!(scaling_fit(&[100.0, 100.0, 100.0], &[5.0, 4.0, 3.0]), None);
        assert_eq!(scaling_fit(&[100.0, 200.0], &[0.0, 4.0]), None);
    }

    #[test]
    fn bootstrap_brackets_alpha_and_is_seeded() {
        // Five cells on a noisy power law (alpha about -0.45).
        let tokens = [50e3, 100e3, 200e3, 500e3, 1e6];
        let ppl = [1500.0, 1080.0, 740.0, 560.0, 380.0];
        let fit = scaling_fit(&tokens, &ppl).unwrap();
        let [lo, hi] = fit.bootstrap_ci95.unwrap();
        assert!(lo < fit.alpha && fit.alpha < hi, "{lo} {} {hi}", fit.alpha);
        assert!(hi - lo < 0.3, "{lo} {hi}");
        assert_eq!(
            scaling_fit(&tokens, &ppl).unwrap().bootstrap_ci95,
            fit.bootstrap_ci95
        );
        // Exact power law: every resample has slope -0.5.
        let exact: Vec<f64> = tokens.iter().map(|t| 3.0e5 * t.powf(-0.5)).collect();
        let fit = scaling_fit(&tokens, &exact).unwrap();
        let [lo, hi] = fit.bootstrap_ci95.unwrap();
        assert!(close(lo, -0.5, 1e-9) && close(hi, -0.5, 1e-9));
        assert!(fit.p_value.unwrap() < 1e-12);
    }

    #[test]
    fn pearson_and_spearman_known_values() {
        // scipy.stats.pearsonr / spearmanr on the seed's Val ER vs Val PPL.
        let er = [0.085, 0.078, 0.084, 0.086];
        let p = pearson(&er, &PPL).unwrap();
        assert!(close(p.r, -0.170_707_191_105_235_7, 1e-12));
        assert!(close(p.p_value.unwrap(), 0.829_292_808_894_764_2, 1e-10));
        let s = spearman(&er, &PPL).unwrap();
        assert!(close(s.r, -0.4, 1e-12));
        assert!(close(s.p_value.unwrap(), 0.6, 1e-10));
        // Ties: ranks averaged; scipy gives rho 0.6668859288553503, p 0.21889398131323148.
        let (a, b) = ([1.0, 2.0, 2.0, 3.0, 4.0], [2.0, 1.0, 4.0, 3.0, 5.0]);
        assert_eq!(ranks(&a), vec![1.0, 2.5, 2.5, 4.0, 5.0]);
        let s = spearman(&a, &b).unwrap();
        assert!(close(s.r, 0.666_885_928_855_350_3, 1e-12));
        assert!(close(s.p_value.unwrap(), 0.218_893_981_311_231_48, 1e-10));
        let p = pearson(&a, &b).unwrap();
        assert!(close(p.r, 0.693_375_245_281_536_3, 1e-12));
        assert!(close(p.p_value.unwrap(), 0.194_171_345_612_058_73, 1e-10));
        // Perfect monotone relation, constant input, too few points.
        assert_eq!(
            spearman(&[1.0, 2.0, 3.0], &[1.0, 8.0, 27.0]).unwrap().r,
            1.0
        );
        assert_eq!(pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(pearson(&[1.0, 2.0], &[3.0, 1.0]).unwrap().p_value, None);
    }

    #[test]
    fn differences_of_means() {
        // Welch by hand: variances 5/3 and 4, se = sqrt(5/12 + 4/3) =
        // sqrt(1.75), t = -1.88982, dof = 1.75^2 / ((5/12)^2/3 + (4/3)^2/2)
        // = 3.23472; p = 0.148471 (numerical integration of the t density).
        let d = mean_difference(&[1.0, 2.0, 3.0, 4.0], &[3.0, 5.0, 7.0]).unwrap();
        assert!(close(d.diff, -2.5, 1e-12));
        assert!(close(d.dof, 3.234_718_826_405_868, 1e-12), "{}", d.dof);
        assert!(close(d.p_value, 0.148_471_347, 1e-7), "{}", d.p_value);
        assert!(d.ci95[0] < -2.5 && d.ci95[1] > 0.0);
        // One exact side: a one-sample t test of [10, 12] against 9:
        // t = 2 / 1 = 2 with 1 dof -> p = 1 - (2/pi) atan 2.
        let e = mean_difference(&[10.0, 12.0], &[9.0]).unwrap();
        assert!(close(e.diff, 2.0, 1e-12) && close(e.dof, 1.0, 0.0));
        assert!(
            close(e.p_value, 0.295_167_235_300_866_6, 1e-9),
            "{}",
            e.p_value
        );
        assert_eq!(mean_difference(&[1.0], &[2.0]), None);
        assert_eq!(mean_difference(&[1.0, 1.0], &[2.0]), None);
        // Paired: differences 1, 2, 3 -> mean 2, se 1/sqrt(3), 2 dof:
        // t = sqrt(12), p = 1 - sqrt(12/14) (the 2-dof closed form).
        let p = paired_difference(&[2.0, 4.0, 6.0], &[1.0, 2.0, 3.0]).unwrap();
        assert!(close(p.diff, 2.0, 1e-12));
        assert!(
            close(p.p_value, 1.0 - (12.0f64 / 14.0).sqrt(), 1e-12),
            "{}",
            p.p_value
        );
        assert_eq!(paired_difference(&[1.0], &[2.0]), None);
    }

    #[test]
    fn difference_intervals_use_student_t() {
        // With 2 or 3 dof t(0.975) is far from z = 1.96, so these bounds
        // fail if the interval ever uses the normal quantile. References
        // from scipy.stats.t.ppf (scripts/laws_reference.py).
        // Paired, differences 1, 2, 3: 2 -+ t(0.975, 2) / sqrt(3), t = 4.302652729749462.
        let p = paired_difference(&[2.0, 4.0, 6.0], &[1.0, 2.0, 3.0]).unwrap();
        assert!(
            close(p.ci95[0], -0.484_137_711_750_330_27, 1e-9),
            "{:?}",
            p.ci95
        );
        assert!(close(p.ci95[1], 4.484_137_711_750_33, 1e-9), "{:?}", p.ci95);
        assert_eq!(p.dof, 2.0);
        // Welch, 3.2347 dof: t(0.975) = 3.055712710425896, se sqrt(1.75).
        let w = mean_difference(&[1.0, 2.0, 3.0, 4.0], &[3.0, 5.0, 7.0]).unwrap();
        assert!(
            close(w.ci95[0], -6.542_327_954_923_024, 1e-8),
            "{:?}",
            w.ci95
        );
        assert!(
            close(w.ci95[1], 1.542_327_954_923_024_4, 1e-8),
            "{:?}",
            w.ci95
        );
        // One exact side, 1 dof: 2 -+ t(0.975, 1) = 12.706204736174694.
        let e = mean_difference(&[10.0, 12.0], &[9.0]).unwrap();
        assert!(
            close(e.ci95[0], -10.706_204_736_174_694, 1e-8),
            "{:?}",
            e.ci95
        );
        assert!(
            close(e.ci95[1], 14.706_204_736_174_694, 1e-8),
            "{:?}",
            e.ci95
        );
    }

    /// Three runs of one cell scored on the same six conversations.
    fn cell_runs() -> (Vec<Vec<f64>>, Vec<usize>) {
        let positions = vec![120, 80, 200, 50, 150, 100];
        let per_token = [
            [6.1, 6.4, 5.9, 6.8, 6.0, 6.3],
            [6.0, 6.5, 5.8, 6.9, 6.1, 6.2],
            [6.2, 6.3, 6.0, 6.7, 5.9, 6.4],
        ];
        let nll = per_token
            .iter()
            .map(|run| {
                run.iter()
                    .zip(&positions)
                    .map(|(l, &p)| l * p as f64)
                    .collect()
            })
            .collect();
        (nll, positions)
    }

    #[test]
    fn conversation_bootstrap_is_paired_seeded_and_brackets_the_mean() {
        let (nll, positions) = cell_runs();
        let runs: Vec<(&[f64], &[usize])> = nll
            .iter()
            .map(|n| (n.as_slice(), positions.as_slice()))
            .collect();
        let ci = bootstrap_ppl_over_conversations(&runs, 2000, 7).unwrap();
        // Each run's PPL is exp(total NLL / total positions), then the mean.
        let expected: f64 = nll
            .iter()
            .map(|n| (n.iter().sum::<f64>() / 700.0).exp())
            .sum::<f64>()
            / 3.0;
        assert!(
            close(ci.ppl_mean, expected, 1e-9),
            "{} {expected}",
            ci.ppl_mean
        );
        assert_eq!((ci.conversations, ci.resamples), (6, 2000));
        let [lo, hi] = ci.ci95;
        assert!(
            lo < ci.ppl_mean && ci.ppl_mean < hi,
            "{lo} {} {hi}",
            ci.ppl_mean
        );
        assert_eq!(
            bootstrap_ppl_over_conversations(&runs, 2000, 7),
            Some(ci.clone())
        );
        assert_ne!(
            bootstrap_ppl_over_conversations(&runs, 2000, 8),
            Some(ci.clone())
        );
        // Every conversation alike: every resample gives the same PPL.
        let flat = [6.0 * 100.0; 4];
        let same = bootstrap_ppl_over_conversations(&[(&flat, &[100; 4])], 500, 1).unwrap();
        assert!(close(same.ci95[0], 6f64.exp(), 1e-9) && close(same.ci95[1], 6f64.exp(), 1e-9));
        // Paired draws: a run that is another plus a constant per token
        // keeps that exact ratio in every resample, so the interval of the
        // pair's mean is the single run's scaled by (1 + e^0.5) / 2.
        let shifted: Vec<f64> = nll[0]
            .iter()
            .zip(&positions)
            .map(|(n, &p)| n + 0.5 * p as f64)
            .collect();
        let one = bootstrap_ppl_over_conversations(&[(&nll[0], &positions)], 1000, 3).unwrap();
        let pair = bootstrap_ppl_over_conversations(
            &[(&nll[0], &positions), (&shifted, &positions)],
            1000,
            3,
        )
        .unwrap();
        let scale = (1.0 + 0.5f64.exp()) / 2.0;
        for k in 0..2 {
            assert!(
                close(pair.ci95[k], one.ci95[k] * scale, 1e-9),
                "{pair:?} {one:?}"
            );
        }
    }

    /// Two cells on the same conversations: what they share cancels. A cell
    /// whose every token is 0.1 nats better has PPL ratio e^-0.1 on every
    /// draw; the interval of a noisier change brackets its point ratio.
    #[test]
    fn the_ratio_bootstrap_is_paired_over_conversations() {
        let (nll, positions) = cell_runs();
        let better: Vec<Vec<f64>> = nll
            .iter()
            .map(|run| {
                run.iter()
                    .zip(&positions)
                    .map(|(l, &p)| l - 0.1 * p as f64)
                    .collect()
            })
            .collect();
        let from: Vec<(&[f64], &[usize])> = nll.iter().map(|r| (&r[..], &positions[..])).collect();
        let to: Vec<(&[f64], &[usize])> = better.iter().map(|r| (&r[..], &positions[..])).collect();
        let [lo, hi] = bootstrap_ratio_over_conversations(&from, &to, 2000, 7).unwrap();
        let want = (-0.1f64).exp();
        assert!(
            (lo - want).abs() < 1e-12 && (hi - want).abs() < 1e-12,
            "{lo} {hi}"
        );
        // a change that differs by conversation: an interval around it
        let mixed: Vec<Vec<f64>> = nll
            .iter()
            .map(|run| {
                run.iter()
                    .enumerate()
                    .map(|(i, l)| l * (0.8 + 0.04 * i as f64))
                    .collect()
            })
            .collect();
        let to: Vec<(&[f64], &[usize])> = mixed.iter().map(|r| (&r[..], &positions[..])).collect();
        let [lo, hi] = bootstrap_ratio_over_conversations(&from, &to, 2000, 7).unwrap();
        let point = drawn_mean_ppl(&to, &(0..positions.len()).collect::<Vec<_>>()).unwrap()
            / drawn_mean_ppl(&from, &(0..positions.len()).collect::<Vec<_>>()).unwrap();
        assert!(
            lo < point && point < hi && hi - lo > 1e-3,
            "{lo} {point} {hi}"
        );
        assert_eq!(
            bootstrap_ratio_over_conversations(&from, &to[..0], 100, 1),
            None
        );
        let short: Vec<(&[f64], &[usize])> = vec![(&nll[0][..3], &positions[..3])];
        assert_eq!(
            bootstrap_ratio_over_conversations(&from, &short, 100, 1),
            None
        );
    }

    #[test]
    fn conversation_bootstrap_refuses_what_it_cannot_use() {
        let (nll, positions) = cell_runs();
        let good: (&[f64], &[usize]) = (&nll[0], &positions);
        assert_eq!(bootstrap_ppl_over_conversations(&[], 100, 1), None);
        // Runs of different lengths, nll and positions of different lengths.
        let short: (&[f64], &[usize]) = (&nll[1][..5], &positions[..5]);
        assert_eq!(
            bootstrap_ppl_over_conversations(&[good, short], 100, 1),
            None
        );
        assert_eq!(
            bootstrap_ppl_over_conversations(&[(&nll[0], &positions[..5])], 100, 1),
            None
        );
        // One conversation, no positions at all, a NaN, no resamples.
        assert_eq!(
            bootstrap_ppl_over_conversations(&[(&[3.0], &[2])], 100, 1),
            None
        );
        assert_eq!(
            bootstrap_ppl_over_conversations(&[(&[0.0, 0.0], &[0, 0])], 100, 1),
            None
        );
        assert_eq!(
            bootstrap_ppl_over_conversations(&[(&[f64::NAN, 1.0], &[1, 1])], 100, 1),
            None
        );
        assert_eq!(bootstrap_ppl_over_conversations(&[good], 0, 1), None);
        // A draw of [empty, empty, empty, scored] misses the scored one with
        // probability (3/4)^4 = 0.32: those resamples are skipped and counted out.
        let sparse: (&[f64], &[usize]) = (&[0.0, 0.0, 0.0, 5.0], &[0, 0, 0, 1]);
        let ci = bootstrap_ppl_over_conversations(&[sparse], 400, 1).unwrap();
        assert!(ci.resamples > 200 && ci.resamples < 400, "{}", ci.resamples);
        assert_eq!(ci.ci95, [5f64.exp(), 5f64.exp()]);
    }

    #[test]
    fn anova_by_hand() {
        // Groups [1,2,3] and [4,5,6]: grand mean 3.5, between = 2 * 3 * 1.5^2
        // = 13.5 on 1 dof, within = 2 + 2 = 4 on 4 dof: F = 13.5 / 1 = 13.5.
        // p = P(F(1,4) > 13.5) = P(|t_4| > sqrt(13.5)).
        let (f, p) = one_way_anova(&[vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]]).unwrap();
        assert!(close(f, 13.5, 1e-12));
        assert!(
            close(p, student_t_two_sided_p(13.5f64.sqrt(), 4.0), 1e-9),
            "{p}"
        );
        assert_eq!(one_way_anova(&[vec![1.0], vec![2.0]]), None);
        assert_eq!(one_way_anova(&[vec![1.0, 1.0], vec![2.0, 2.0]]), None);
    }
}
