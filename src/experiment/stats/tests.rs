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
    let pair =
        bootstrap_ppl_over_conversations(&[(&nll[0], &positions), (&shifted, &positions)], 1000, 3)
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
