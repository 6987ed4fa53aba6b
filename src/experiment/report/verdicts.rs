//! Every claim the reports make, decided once. Each verdict reads the
//! numbers, the sign and the design (tail validation, seed noise), and the
//! report sections only render these values: no section tests a p-value of
//! its own, so no two sections can disagree.

use super::diagnostics::Diagnostics;
use crate::config::ValMode;
use crate::experiment::laws::{AlphaTrend, Law};
use crate::experiment::results::{ModelResults, SweepResults};
use crate::experiment::stats::{
    alpha_difference_p, correlation_significant, mean_difference, one_way_anova, paired_difference,
    Difference, ScalingFit, SIGNIFICANCE,
};
use crate::models::ModelKind;

/// The one comparison of a p-value with the 5% level every verdict uses.
pub fn significant(p: f64) -> bool {
    p < SIGNIFICANCE
}

/// What the scaling fit says about PPL against training tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scaling {
    /// alpha < 0 at p < SIGNIFICANCE: PPL falls with more data.
    Falls,
    /// alpha > 0 at p < SIGNIFICANCE: PPL rises with more data.
    Rises,
    /// p >= SIGNIFICANCE: no trend distinguishable from the scatter.
    NotSignificant,
    /// No fit, or no p-value (fewer than 3 runs).
    Untestable,
}

/// The scaling verdict of one fit.
pub fn scaling_of(fit: Option<&ScalingFit>) -> Scaling {
    match fit.and_then(|f| f.p_value.map(|p| (f.alpha, p))) {
        Some((a, p)) if significant(p) && a < 0.0 => Scaling::Falls,
        Some((a, p)) if significant(p) && a > 0.0 => Scaling::Rises,
        Some(_) => Scaling::NotSignificant,
        None => Scaling::Untestable,
    }
}

/// Effective Rank against performance, with the seed noise read first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ErRelation {
    /// A correlation with PPL or accuracy reaches 5%, and ER's differences
    /// between cells exceed its spread between seeds (or there are no seeds).
    Related,
    /// Tested, and no correlation reaches 5%.
    NotRelated,
    /// ER differs between cells no more than between seeds (ANOVA p): no
    /// correlation with it is evidence, whatever its p-value.
    WithinSeedNoise { p: f64 },
    /// Too few cells for a p-value.
    Untestable,
}

/// A baseline against New-LLM, cell by cell and in its exponent.
#[derive(Clone, Debug, PartialEq)]
pub struct BaselineVerdict {
    pub model: ModelKind,
    /// Cells (samples) where New-LLM's Val PPL is significantly lower / higher
    /// / not distinguishable (t test on the per-seed PPLs).
    pub newllm_lower: Vec<usize>,
    pub newllm_higher: Vec<usize>,
    pub unclear: Vec<usize>,
    /// p of "same alpha as New-LLM's" and whether it is below SIGNIFICANCE.
    pub alpha_p: Option<f64>,
    pub alpha_differs: bool,
}

/// An accuracy dip between two cells against the seeds' spread.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DipNoise {
    /// The drop's CI excludes 0.
    BeyondNoise(Difference),
    /// It does not.
    WithinNoise(Difference),
    /// Seeds with no spread.
    NoSpread,
    /// One seed per cell.
    OneSeed,
}

/// Whether alpha changes with the amount of data (the quadratic term).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlphaChange {
    /// alpha rises towards 0: diminishing returns.
    Flattens,
    /// alpha falls: returns grow.
    Steepens,
    /// No change distinguishable from the scatter.
    NoChange,
    /// Fewer than 4 sample counts.
    Untestable,
}

/// The trend verdict of a fit of the quadratic term.
pub fn alpha_change_of(trend: Option<&AlphaTrend>) -> AlphaChange {
    match trend.and_then(|t| t.p_value.map(|p| (t.curvature, p))) {
        Some((c, p)) if significant(p) && c > 0.0 => AlphaChange::Flattens,
        Some((c, p)) if significant(p) && c < 0.0 => AlphaChange::Steepens,
        Some(_) => AlphaChange::NoChange,
        None => AlphaChange::Untestable,
    }
}

/// Every verdict of one sweep report.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdicts {
    /// Tail validation: the text scored changes with N, so a data-scaling
    /// verdict carries that warning.
    pub tail: bool,
    /// New-LLM's PPL against tokens.
    pub tokens: Scaling,
    pub er_anova: Option<(f64, f64)>,
    pub er: ErRelation,
    /// Val ER's range across cells (fraction).
    pub er_range: f64,
    pub baselines: Vec<BaselineVerdict>,
    /// Per accuracy dip (same order as `Diagnostics::dips`).
    pub dips: Vec<DipNoise>,
    /// New-LLM's alpha over the data.
    pub alpha_change: AlphaChange,
    /// The better law by AICc; None = the data cannot tell them apart (or
    /// no comparison was possible: see `laws_compared`).
    pub better_law: Option<Law>,
    pub laws_compared: bool,
}

impl Verdicts {
    /// Whether the evidence says the token count drives PPL down here.
    pub fn data_helps(&self) -> bool {
        self.tokens == Scaling::Falls
    }
}

/// Decides every verdict of a sweep report.
pub fn decide(r: &SweepResults, d: &Diagnostics) -> Verdicts {
    let newllm = r.models.iter().find(|m| m.model == ModelKind::NewLlm);
    let er_anova = er_between_cells(r);
    let related = correlation_significant(&r.correlations.val_er_vs_val_ppl)
        || correlation_significant(&r.correlations.val_er_vs_val_acc);
    let tested = r
        .correlations
        .val_er_vs_val_ppl
        .pearson
        .as_ref()
        .is_some_and(|c| c.p_value.is_some());
    let er = match er_anova {
        Some((_, p)) if !significant(p) => ErRelation::WithinSeedNoise { p },
        _ if related => ErRelation::Related,
        _ if tested => ErRelation::NotRelated,
        _ => ErRelation::Untestable,
    };
    let ers: Vec<f64> = r.cells.iter().map(|c| c.nl().val_er).collect();
    let er_range =
        ers.iter().copied().fold(f64::MIN, f64::max) - ers.iter().copied().fold(f64::MAX, f64::min);
    let laws = newllm.and_then(|m| m.analysis.laws.as_ref());
    Verdicts {
        tail: r.config.val_mode == ValMode::Tail,
        tokens: scaling_of(r.scaling.as_ref()),
        er_anova,
        er,
        er_range: if ers.is_empty() { 0.0 } else { er_range },
        baselines: baseline_verdicts(r),
        dips: d
            .dips
            .iter()
            .map(|dip| dip_noise(r, dip.from_samples, dip.to_samples))
            .collect(),
        alpha_change: alpha_change_of(newllm.and_then(|m| m.analysis.trend.as_ref())),
        better_law: laws.and_then(|l| l.better),
        laws_compared: laws.is_some_and(|l| l.delta_aicc.is_some()),
    }
}

/// One-way ANOVA of New-LLM's val ER grouped by cell (None without seeds).
pub fn er_between_cells(r: &SweepResults) -> Option<(f64, f64)> {
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

/// The per-seed values of `model` at `samples`.
fn per_seed(
    r: &SweepResults,
    model: ModelKind,
    samples: usize,
    f: fn(&crate::cell_result::CellResult) -> f64,
) -> Vec<f64> {
    r.runs
        .iter()
        .filter(|c| c.model == model && c.samples == samples)
        .map(f)
        .collect()
}

fn baseline_verdicts(r: &SweepResults) -> Vec<BaselineVerdict> {
    let Some(base) = r.models.iter().find(|m| m.model == ModelKind::NewLlm) else {
        return Vec::new();
    };
    r.models
        .iter()
        .filter(|m| m.model != ModelKind::NewLlm)
        .map(|m| {
            let mut v = BaselineVerdict {
                model: m.model,
                newllm_lower: Vec::new(),
                newllm_higher: Vec::new(),
                unclear: Vec::new(),
                alpha_p: m.alpha_vs_newllm_p,
                alpha_differs: m.alpha_vs_newllm_p.is_some_and(significant),
            };
            for c in &base.cells {
                let ours = per_seed(r, ModelKind::NewLlm, c.samples, |c| c.val_ppl);
                let theirs = per_seed(r, m.model, c.samples, |c| c.val_ppl);
                match mean_difference(&ours, &theirs) {
                    Some(d) if significant(d.p_value) && d.diff < 0.0 => {
                        v.newllm_lower.push(c.samples)
                    }
                    Some(d) if significant(d.p_value) => v.newllm_higher.push(c.samples),
                    _ => v.unclear.push(c.samples),
                }
            }
            v
        })
        .collect()
}

fn dip_noise(r: &SweepResults, from: usize, to: usize) -> DipNoise {
    let (a, b) = (
        per_seed(r, ModelKind::NewLlm, from, |c| c.val_acc),
        per_seed(r, ModelKind::NewLlm, to, |c| c.val_acc),
    );
    if a.len() < 2 && b.len() < 2 {
        return DipNoise::OneSeed;
    }
    match mean_difference(&b, &a) {
        Some(t) if significant(t.p_value) => DipNoise::BeyondNoise(t),
        Some(t) => DipNoise::WithinNoise(t),
        None => DipNoise::NoSpread,
    }
}

/// A config of a comparison with its figures for ranking.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked {
    pub side: usize,
    pub value: f64,
}

/// The comparison's winners and whether they beat the runner-up.
#[derive(Clone, Debug, PartialEq)]
pub struct GridVerdict {
    /// Samples of the largest cell every config has.
    pub largest: Option<usize>,
    /// Configs by mean Val PPL at that cell, best first.
    pub by_ppl: Vec<Ranked>,
    /// Best minus runner-up Val PPL there, paired by seed; None when
    /// untestable (one seed, identical pairs, or different validation sets).
    pub ppl_vs_runner_up: Option<Difference>,
    /// The best is lower beyond seed noise.
    pub ppl_beats_runner_up: bool,
    /// Configs by alpha, most negative first.
    pub by_alpha: Vec<Ranked>,
    /// p of "same alpha" for the best two.
    pub alpha_vs_runner_up_p: Option<f64>,
    pub alpha_beats_runner_up: bool,
}

/// Ranks a comparison's configs (each a finished sweep) and tests the best
/// against the runner-up.
pub fn decide_grid(sides: &[(String, SweepResults)]) -> GridVerdict {
    fn newllm(r: &SweepResults) -> Option<&ModelResults> {
        r.models.iter().find(|m| m.model == ModelKind::NewLlm)
    }
    let largest = sides
        .iter()
        .map(|(_, r)| r.cells.iter().map(|c| c.samples).collect::<Vec<_>>())
        .reduce(|a, b| a.into_iter().filter(|s| b.contains(s)).collect())
        .and_then(|common| common.into_iter().max());
    let mut by_ppl: Vec<Ranked> = sides
        .iter()
        .enumerate()
        .filter_map(|(i, (_, r))| {
            let cell = newllm(r)?
                .cells
                .iter()
                .find(|c| Some(c.samples) == largest)?;
            Some(Ranked {
                side: i,
                value: cell.val_ppl?.mean,
            })
        })
        .collect();
    by_ppl.sort_by(|a, b| a.value.total_cmp(&b.value));
    let ppl_vs_runner_up = match (by_ppl.first(), by_ppl.get(1), largest) {
        (Some(a), Some(b), Some(s)) => paired_by_seed(&sides[a.side].1, &sides[b.side].1, s)
            .and_then(|(x, y)| paired_difference(&x, &y)),
        _ => None,
    };
    let mut by_alpha: Vec<Ranked> = sides
        .iter()
        .enumerate()
        .filter_map(|(i, (_, r))| {
            Some(Ranked {
                side: i,
                value: r.scaling.as_ref()?.alpha,
            })
        })
        .collect();
    by_alpha.sort_by(|a, b| a.value.total_cmp(&b.value));
    let alpha_vs_runner_up_p = match (by_alpha.first(), by_alpha.get(1)) {
        (Some(a), Some(b)) if same_validation(&sides[a.side].1, &sides[b.side].1) => {
            let fit = |i: usize| sides[i].1.scaling.as_ref();
            fit(a.side)
                .zip(fit(b.side))
                .and_then(|(x, y)| alpha_difference_p(x, y))
        }
        _ => None,
    };
    GridVerdict {
        largest,
        ppl_beats_runner_up: ppl_vs_runner_up
            .is_some_and(|d| significant(d.p_value) && d.diff < 0.0),
        ppl_vs_runner_up,
        by_ppl,
        by_alpha,
        alpha_beats_runner_up: alpha_vs_runner_up_p.is_some_and(significant),
        alpha_vs_runner_up_p,
    }
}

/// One config against another at one cell, paired by seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paired {
    /// The compared side's PPL is lower beyond seed noise.
    SideLower,
    /// The reference side's is.
    BaseLower,
    WithinNoise,
    /// The two validated the cell on different sets: not compared.
    DifferentSets,
    /// Fewer than 2 pairs.
    TooFewSeeds,
    /// Pairs with no spread in their differences.
    IdenticalPairs,
}

/// The verdict on a paired difference (side minus reference) of Val PPL.
pub fn paired_verdict(ppl: Option<Difference>, different_sets: bool, pairs: usize) -> Paired {
    match ppl {
        Some(d) if significant(d.p_value) && d.diff < 0.0 => Paired::SideLower,
        Some(d) if significant(d.p_value) => Paired::BaseLower,
        Some(_) => Paired::WithinNoise,
        None if different_sets => Paired::DifferentSets,
        None if pairs < 2 => Paired::TooFewSeeds,
        None => Paired::IdenticalPairs,
    }
}

/// New-LLM's Val PPLs of two sweeps at `samples`, paired by seed; None when
/// the two validated that cell on different sets (nothing to pair).
pub fn paired_by_seed(
    a: &SweepResults,
    b: &SweepResults,
    samples: usize,
) -> Option<(Vec<f64>, Vec<f64>)> {
    let runs = |r: &SweepResults| -> Vec<(u64, f64, String)> {
        r.runs
            .iter()
            .filter(|c| c.model == ModelKind::NewLlm && c.samples == samples)
            .map(|c| (c.config.seed, c.val_ppl, c.val_set.clone()))
            .collect()
    };
    let (ra, rb) = (runs(a), runs(b));
    let mut pairs = (Vec::new(), Vec::new());
    for (seed, p, set) in &ra {
        if let Some((_, q, other)) = rb.iter().find(|x| x.0 == *seed) {
            if set != other {
                return None;
            }
            pairs.0.push(*p);
            pairs.1.push(*q);
        }
    }
    Some(pairs)
}

/// Whether two sweeps validated every shared cell on the same set.
pub fn same_validation(a: &SweepResults, b: &SweepResults) -> bool {
    a.runs.iter().all(|x| {
        b.runs
            .iter()
            .filter(|y| y.samples == x.samples)
            .all(|y| y.val_set == x.val_set)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell_result::CellResult;
    use crate::config::Config;
    use crate::experiment::results::analyse;

    fn fit(alpha: f64, p: Option<f64>) -> ScalingFit {
        ScalingFit {
            alpha,
            a: 1.0,
            r2: None,
            p_value: p,
            stderr: None,
            alpha_ci95: None,
            bootstrap_ci95: None,
            n: 4,
        }
    }

    /// The 5% threshold, pinned on both sides, and the sign read.
    #[test]
    fn scaling_verdicts_read_the_threshold_and_the_sign() {
        assert_eq!(SIGNIFICANCE, 0.05);
        assert_eq!(scaling_of(Some(&fit(-0.4, Some(0.049)))), Scaling::Falls);
        assert_eq!(
            scaling_of(Some(&fit(-0.4, Some(0.051)))),
            Scaling::NotSignificant
        );
        assert_eq!(
            scaling_of(Some(&fit(-0.4, Some(0.3)))),
            Scaling::NotSignificant
        );
        assert_eq!(scaling_of(Some(&fit(0.189, Some(0.01)))), Scaling::Rises);
        assert_eq!(
            scaling_of(Some(&fit(0.189, Some(0.2)))),
            Scaling::NotSignificant
        );
        assert_eq!(scaling_of(Some(&fit(-0.4, None))), Scaling::Untestable);
        assert_eq!(scaling_of(None), Scaling::Untestable);
    }

    /// New-LLM's seeds against a deterministic baseline's single value: a
    /// one-sample t test with 1 dof. [100, 104] vs 130: t = -14, p = 0.045
    /// (lower); [100, 120] vs 130: t = -2, p = 0.295 (not distinguishable,
    /// which a threshold of 0.5 would call lower).
    #[test]
    fn baseline_verdicts_use_the_five_percent_threshold() {
        let run = |model: ModelKind, samples: usize, r: usize, ppl: f64| CellResult {
            model,
            samples,
            train_tokens: samples * 100,
            replicate: r,
            val_ppl: ppl,
            newllm: (model == ModelKind::NewLlm).then(Default::default),
            config: Config {
                seed: 42 + r as u64,
                ..Config::default()
            },
            ..CellResult::default()
        };
        let runs = vec![
            run(ModelKind::NewLlm, 10, 0, 100.0),
            run(ModelKind::NewLlm, 10, 1, 104.0),
            run(ModelKind::NewLlm, 20, 0, 100.0),
            run(ModelKind::NewLlm, 20, 1, 120.0),
            run(ModelKind::Kn, 10, 0, 130.0),
            run(ModelKind::Kn, 20, 0, 130.0),
        ];
        let r = analyse(&Config::default(), &runs);
        let v = baseline_verdicts(&r);
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].newllm_lower.clone(), v[0].unclear.clone()),
            (vec![10], vec![20])
        );
        assert!(v[0].newllm_higher.is_empty());
        let ours = [100.0, 104.0];
        let d = mean_difference(&ours, &[130.0]).unwrap();
        assert!((d.p_value - 0.045_396).abs() < 1e-5, "{}", d.p_value);
        let d = mean_difference(&[100.0, 120.0], &[130.0]).unwrap();
        assert!((d.p_value - 0.295_167).abs() < 1e-5, "{}", d.p_value);
    }

    #[test]
    fn alpha_change_reads_the_sign_of_the_quadratic_term() {
        let trend = |c: f64, p: Option<f64>| AlphaTrend {
            curvature: c,
            stderr: 0.01,
            p_value: p,
            dof: 5,
            slope_at_centre: -0.4,
            centre_tokens: 1e5,
            n: 8,
        };
        assert_eq!(
            alpha_change_of(Some(&trend(0.05, Some(0.01)))),
            AlphaChange::Flattens
        );
        assert_eq!(
            alpha_change_of(Some(&trend(-0.05, Some(0.049)))),
            AlphaChange::Steepens
        );
        assert_eq!(
            alpha_change_of(Some(&trend(0.05, Some(0.051)))),
            AlphaChange::NoChange
        );
        assert_eq!(
            alpha_change_of(Some(&trend(0.05, None))),
            AlphaChange::Untestable
        );
        assert_eq!(alpha_change_of(None), AlphaChange::Untestable);
    }

    /// Every threshold a verdict uses, at its documented value.
    #[test]
    fn thresholds_keep_their_documented_values() {
        use crate::experiment::report::diagnostics::{
            ACC_DIP_MIN, EARLY_STOP_EPOCH, FAST_FIT_RATIO, NEAR_BEST,
        };
        use crate::experiment::stats::{BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED};
        assert_eq!(
            (EARLY_STOP_EPOCH, NEAR_BEST, FAST_FIT_RATIO, ACC_DIP_MIN),
            (3, 0.05, 1.5, 0.001)
        );
        assert_eq!((BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED), (2000, 42));
        assert_eq!(crate::experiment::laws::AICC_TIE, 2.0);
        assert!(significant(0.0499) && !significant(0.05) && !significant(0.3));
    }

    #[test]
    fn paired_verdicts_need_significance_sets_and_seeds() {
        let d = |diff: f64, p: f64| Difference {
            diff,
            ci95: [diff - 1.0, diff + 1.0],
            p_value: p,
            dof: 2.0,
        };
        assert_eq!(
            paired_verdict(Some(d(-5.0, 0.01)), false, 3),
            Paired::SideLower
        );
        assert_eq!(
            paired_verdict(Some(d(5.0, 0.049)), false, 3),
            Paired::BaseLower
        );
        assert_eq!(
            paired_verdict(Some(d(-5.0, 0.2)), false, 3),
            Paired::WithinNoise
        );
        assert_eq!(paired_verdict(None, true, 0), Paired::DifferentSets);
        assert_eq!(paired_verdict(None, false, 1), Paired::TooFewSeeds);
        assert_eq!(paired_verdict(None, false, 3), Paired::IdenticalPairs);
    }
}
