use super::*;

/// |a / b - 1| <= tol (b != 0).
fn rel(a: f64, b: f64, tol: f64) -> bool {
    ((a - b) / b).abs() <= tol
}

macro_rules! assert_rel {
    ($a:expr, $b:expr, $tol:expr) => {{
        let (a, b): (f64, f64) = ($a, $b);
        assert!(rel(a, b, $tol), "{} = {a}, expected {b}", stringify!($a));
    }};
}

fn assert_interval(got: Option<[f64; 2]>, want: [f64; 2], tol: f64) {
    let got = got.expect("an interval");
    assert!(
        rel(got[0], want[0], tol) && rel(got[1], want[1], tol),
        "{got:?} vs {want:?}"
    );
}

/// Two seeds at each of four token counts (a short sweep).
const REALISTIC_TOKENS: [f64; 8] = [
    4587.0, 4587.0, 13396.0, 13396.0, 20935.0, 20935.0, 71614.0, 71614.0,
];
const REALISTIC_PPL: [f64; 8] = [1104.2, 1096.5, 951.8, 946.1, 628.4, 633.9, 356.7, 353.2];

/// A sweep that flattens out (samples 200 .. 3200), one run per cell.
const SAT_TOKENS: [f64; 5] = [240132.0, 473429.0, 948524.0, 1920992.0, 3864746.0];
const SAT_PPL: [f64; 5] = [258.3, 187.6, 150.5, 127.4, 114.8];
/// The same cells with two seeds each (means as above).
const SAT_SEED_TOKENS: [f64; 10] = [
    240132.0, 240132.0, 473429.0, 473429.0, 948524.0, 948524.0, 1920992.0, 1920992.0, 3864746.0,
    3864746.0,
];
const SAT_SEED_PPL: [f64; 10] = [
    259.1, 257.5, 188.3, 186.9, 149.8, 151.2, 127.9, 126.9, 114.3, 115.3,
];

/// A noisy power law with a little bend: the saturation law fits with
/// E > 0, but no better than its extra parameter costs.
const TIE_TOKENS: [f64; 10] = [
    50e3, 50e3, 100e3, 100e3, 200e3, 200e3, 400e3, 400e3, 800e3, 800e3,
];
const TIE_PPL: [f64; 10] = [
    1142.0, 1173.6, 843.2, 825.9, 619.1, 593.4, 454.7, 444.3, 337.7, 336.4,
];

// References: scripts/laws_reference.py (scipy 1.17.1, numpy 2.4.6).

#[test]
fn power_law_matches_linregress_and_curve_fit() {
    let fit = fit_law(&REALISTIC_TOKENS, &REALISTIC_PPL, Law::Power).unwrap();
    let scaling = scaling_fit(&REALISTIC_TOKENS, &REALISTIC_PPL).unwrap();
    assert_eq!(
        (fit.law, fit.n, fit.params, fit.at_bound),
        (Law::Power, 8, 2, false)
    );
    assert_eq!((fit.e, fit.e_stderr, fit.e_ci95), (0.0, None, None));
    assert_rel!(fit.exponent, -scaling.alpha, 1e-12);
    assert_rel!(fit.a, scaling.a, 1e-12);
    assert_rel!(fit.a, 45568.39635393936, 1e-9);
    assert_rel!(fit.exponent, 0.428285459931277, 1e-9);
    assert_rel!(fit.a_stderr.unwrap(), 22111.545954427074, 1e-9);
    assert_rel!(fit.exponent_stderr.unwrap(), 0.049438264010343624, 1e-9);
    assert_rel!(fit.exponent_stderr.unwrap(), scaling.stderr.unwrap(), 1e-9);
    assert_interval(fit.a_ci95, [-8536.607489085058, 99673.40019696378], 1e-8);
    assert_interval(
        fit.exponent_ci95,
        [0.3073143858243329, 0.5492565340382211],
        1e-9,
    );
    assert_rel!(fit.sse, 0.1138534172871748, 1e-9);
    assert_rel!(fit.aicc.unwrap(), -22.01828010324048, 1e-9);
    assert_rel!(
        predict(&fit, 71614.0),
        45568.39635393936 * 71614f64.powf(-0.428285459931277),
        1e-9
    );
}

#[test]
fn saturation_law_matches_curve_fit() {
    // curve_fit with ftol = xtol = gtol = 1e-15 and the analytic
    // Jacobian agrees to ~1e-10 here. On the five single runs below
    // scipy stops where the gradient is ~1e-9 (ours ~1e-14, checked at
    // 50 digits), so parameters agree to ~5e-8: hence 1e-6.
    let fit = fit_law(&SAT_SEED_TOKENS, &SAT_SEED_PPL, Law::Saturation).unwrap();
    assert_eq!(
        (fit.law, fit.n, fit.params, fit.at_bound),
        (Law::Saturation, 10, 3, false)
    );
    assert_rel!(fit.e, 99.6914275197429, 1e-6);
    assert_rel!(fit.a, 5155776.35928983, 1e-6);
    assert_rel!(fit.exponent, 0.838939345424461, 1e-6);
    assert_rel!(fit.e_stderr.unwrap(), 1.4364066326257554, 1e-6);
    assert_rel!(fit.a_stderr.unwrap(), 1424503.7549454942, 1e-6);
    assert_rel!(fit.exponent_stderr.unwrap(), 0.022613341501369122, 1e-6);
    assert_interval(fit.e_ci95, [96.29486556108732, 103.08798947839848], 1e-6);
    assert_interval(fit.a_ci95, [1787360.2338607297, 8524192.48471893], 1e-6);
    assert_interval(
        fit.exponent_ci95,
        [0.7854672897007741, 0.892411401148148],
        1e-6,
    );
    assert_rel!(fit.sse, 0.0003781089417299048, 1e-9);
    assert_rel!(fit.aicc.unwrap(), -85.8291329122733, 1e-9);
    assert_rel!(predict(&fit, 2.0 * 3864746.0), 108.27273018490499, 1e-8);
    assert_rel!(predict(&fit, 10.0 * 3864746.0), 101.91555554266073, 1e-8);

    // One run per cell: n = 5 leaves no AICc for three parameters
    // (n - k - 1 = 0), so the comparison has no verdict.
    let single = fit_law(&SAT_TOKENS, &SAT_PPL, Law::Saturation).unwrap();
    assert_rel!(single.e, 99.69201687803151, 1e-6);
    assert_rel!(single.a, 5155244.836467365, 1e-6);
    assert_rel!(single.exponent, 0.8389307114468263, 1e-6);
    assert_rel!(single.e_stderr.unwrap(), 2.0457556077217736, 1e-6);
    assert_rel!(single.exponent_stderr.unwrap(), 0.032205567879298916, 1e-6);
    assert_rel!(single.sse, 0.00010955927294309148, 1e-9);
    assert_eq!(single.aicc, None);
    let c = compare_laws(&SAT_TOKENS, &SAT_PPL).unwrap();
    assert_rel!(c.power.aicc.unwrap(), 1.8861225305331075, 1e-9);
    assert_eq!((c.delta_aicc, c.better), (None, None));
}

#[test]
fn saturating_sweep_prefers_the_saturation_law() {
    let c = compare_laws(&SAT_SEED_TOKENS, &SAT_SEED_PPL).unwrap();
    assert_rel!(c.power.aicc.unwrap(), -46.18354473996797, 1e-9);
    assert_rel!(c.power.exponent, 0.288334138109327, 1e-9);
    assert_rel!(c.delta_aicc.unwrap(), -39.645588172305324, 1e-8);
    assert_eq!(c.better, Some(Law::Saturation));
}

#[test]
fn saturation_wanting_negative_e_collapses_to_the_power_law() {
    // Unbounded, curve_fit runs off to E = -3.7e6 (a log law); bounded
    // (trf, E >= 0) it stops at E = 7e-22, A 45568.39601685829,
    // a 0.42828545918141764 (trf's tolerance: 1e-8 of the exact E = 0
    // optimum, which is the power law).
    let fit = fit_law(&REALISTIC_TOKENS, &REALISTIC_PPL, Law::Saturation).unwrap();
    let power = fit_law(&REALISTIC_TOKENS, &REALISTIC_PPL, Law::Power).unwrap();
    assert!(fit.at_bound);
    assert_eq!(
        (fit.law, fit.params, fit.e, fit.e_stderr, fit.e_ci95),
        (Law::Saturation, 3, 0.0, None, None)
    );
    assert_eq!(
        (fit.a, fit.exponent, fit.sse),
        (power.a, power.exponent, power.sse)
    );
    assert_eq!(
        (fit.a_stderr, fit.exponent_ci95),
        (power.a_stderr, power.exponent_ci95)
    );
    assert_rel!(fit.a, 45568.39601685829, 1e-8);
    assert_rel!(fit.exponent, 0.42828545918141764, 1e-8);
    assert_rel!(fit.aicc.unwrap(), -12.684946769907144, 1e-9);
    let c = compare_laws(&REALISTIC_TOKENS, &REALISTIC_PPL).unwrap();
    // Same SSE, one more parameter: delta is the penalty alone, 28/3.
    assert_rel!(c.delta_aicc.unwrap(), 9.333333333333334, 1e-9);
    assert_eq!(c.better, Some(Law::Power));

    // An exact power law: at the bound too, and never "saturation".
    let tokens: [f64; 8] = [1e4, 1e4, 3e4, 3e4, 1e5, 1e5, 3e5, 3e5];
    let ppl: Vec<f64> = tokens.iter().map(|t| 3e5 * t.powf(-0.5)).collect();
    let c = compare_laws(&tokens, &ppl).unwrap();
    assert!(c.saturation.unwrap().at_bound);
    assert_ne!(c.better, Some(Law::Saturation));
}

#[test]
fn close_laws_are_a_tie() {
    let c = compare_laws(&TIE_TOKENS, &TIE_PPL).unwrap();
    let s = c.saturation.as_ref().unwrap();
    assert!(!s.at_bound);
    assert_rel!(s.e, 76.89948179180742, 1e-6);
    assert_rel!(s.a, 279112.04714543145, 1e-6);
    assert_rel!(s.exponent, 0.5133206801812399, 1e-6);
    assert_rel!(s.e_stderr.unwrap(), 28.233236149731358, 1e-6);
    assert_rel!(s.a_stderr.unwrap(), 83329.01444916204, 1e-6);
    assert_rel!(s.exponent_stderr.unwrap(), 0.029260572022860303, 1e-6);
    assert_rel!(s.aicc.unwrap(), -70.33854391281679, 1e-9);
    assert_rel!(c.power.aicc.unwrap(), -70.46840300404462, 1e-9);
    assert_rel!(c.delta_aicc.unwrap(), 0.12985909122782857, 1e-6);
    assert_eq!(c.better, None);
}

#[test]
fn aicc_tie_threshold_and_verdicts() {
    assert_eq!(AICC_TIE, 2.0);
    assert_eq!(better_law(None, false), None);
    assert_eq!(better_law(Some(1.999), false), None);
    assert_eq!(better_law(Some(-1.999), false), None);
    assert_eq!(better_law(Some(2.0), false), Some(Law::Power));
    assert_eq!(better_law(Some(-2.0), false), Some(Law::Saturation));
    assert_eq!(better_law(Some(-5.0), true), None);
    // The grid the saturation fit starts from spans (0, 3].
    assert_eq!(EXPONENT_GRID_STEP * EXPONENT_GRID_POINTS as f64, 3.0);
    assert_eq!(
        (STEP_TOLERANCE, SSE_ROUNDING, MAX_ITERATIONS),
        (1e-12, 1e-14, 500)
    );
    // k = params + 1; None without a residual dof for the correction.
    assert_eq!(aicc(1.0, 5, 3), None);
    assert_eq!(aicc(0.0, 10, 2), None);
    let by_hand = 10.0 * 0.1f64.ln() + 6.0 + 24.0 / 6.0;
    assert_rel!(aicc(1.0, 10, 2).unwrap(), by_hand, 1e-15);
}

#[test]
fn unfittable_runs_give_none() {
    let t = [1e4, 2e4, 4e4, 8e4];
    let p = [900.0, 700.0, 560.0, 480.0];
    // Too few runs or token counts for three parameters.
    assert_eq!(fit_law(&t[..3], &p[..3], Law::Saturation), None);
    assert_eq!(fit_law(&[1e4, 1e4, 2e4, 2e4], &p, Law::Saturation), None);
    assert!(fit_law(&[1e4, 1e4, 2e4, 4e4], &p, Law::Saturation).is_some());
    assert_eq!(fit_law(&t[..1], &p[..1], Law::Power), None);
    assert_eq!(fit_law(&[1e4, 1e4], &p[..2], Law::Power), None);
    // Constant PPL: the power law is flat, the saturation law undefined.
    let flat = fit_law(&t, &[500.0; 4], Law::Power).unwrap();
    assert_eq!(flat.exponent.abs(), 0.0);
    assert_eq!(fit_law(&t, &[500.0; 4], Law::Saturation), None);
    let c = compare_laws(&t, &[500.0; 4]).unwrap();
    assert_eq!((c.saturation, c.delta_aicc, c.better), (None, None, None));
    // Non-finite, non-positive, mismatched.
    for bad in [
        [900.0, f64::NAN, 560.0, 480.0],
        [900.0, 0.0, 560.0, 480.0],
        [900.0, -1.0, 560.0, 480.0],
        [900.0, f64::INFINITY, 560.0, 480.0],
    ] {
        for law in [Law::Power, Law::Saturation] {
            assert_eq!(fit_law(&t, &bad, law), None);
            assert_eq!(fit_law(&bad, &p, law), None);
        }
        assert_eq!(compare_laws(&t, &bad), None);
    }
    assert_eq!(fit_law(&t, &p[..3], Law::Power), None);
    assert_eq!(compare_laws(&[], &[]), None);
    // PPL that rises with data has no saturation (B would be negative).
    assert_eq!(
        fit_law(&t, &[480.0, 560.0, 700.0, 900.0], Law::Saturation),
        None
    );
}

#[test]
fn leave_last_out_predicts_the_largest_cell() {
    // Fitted on the four smaller cells (one run each: 1 dof, so the
    // optimum is flat and the two optimisers agree to ~1e-7).
    let h = leave_last_out(&SAT_TOKENS, &SAT_PPL, Law::Saturation).unwrap();
    assert_eq!(
        (h.law, h.largest_tokens, h.observed_n, h.observed_sd),
        (Law::Saturation, 3864746.0, 1, None)
    );
    assert_eq!(h.observed_mean, 114.8);
    assert_rel!(h.predicted, 115.98910435707734, 1e-7);
    assert_rel!(h.rel_error, 0.0103580518909176, 1e-5);
    let p = leave_last_out(&SAT_TOKENS, &SAT_PPL, Law::Power).unwrap();
    assert_rel!(p.predicted, 96.92486281739843, 1e-9);
    assert_rel!(p.rel_error, -0.15570676988328888, 1e-8);
    // Two seeds: the held-out cell has a spread.
    let h = leave_last_out(&SAT_SEED_TOKENS, &SAT_SEED_PPL, Law::Saturation).unwrap();
    assert_eq!(h.observed_n, 2);
    assert_rel!(h.observed_mean, 114.8, 1e-12);
    // sd of 114.3 and 115.3: 0.7071067811865476 = 1 / sqrt 2.
    assert_rel!(
        h.observed_sd.unwrap(),
        std::f64::consts::FRAC_1_SQRT_2,
        1e-9
    );
    assert_rel!(h.predicted, 115.98835402863405, 1e-7);
    assert_rel!(h.rel_error, 0.010351515928868049, 1e-5);
    // Too little below the largest cell, or unusable runs.
    assert_eq!(
        leave_last_out(&SAT_TOKENS[2..], &SAT_PPL[2..], Law::Saturation),
        None
    );
    assert_eq!(leave_last_out(&[1e4, 1e4], &[5.0, 6.0], Law::Power), None);
    assert_eq!(leave_last_out(&SAT_TOKENS, &SAT_PPL[..4], Law::Power), None);
}

#[test]
fn extrapolation_is_seeded_and_brackets_the_prediction() {
    let run = |seed| {
        extrapolate(
            &SAT_SEED_TOKENS,
            &SAT_SEED_PPL,
            Law::Saturation,
            &[2.0, 10.0, -1.0, f64::NAN],
            400,
            seed,
        )
    };
    let out = run(42);
    assert_eq!(out.len(), 2, "non-positive and NaN factors are skipped");
    assert_eq!((out[0].factor, out[0].tokens), (2.0, 2.0 * 3864746.0));
    assert_rel!(out[0].predicted, 108.27273018490499, 1e-8);
    assert_rel!(out[1].predicted, 101.91555554266073, 1e-8);
    for e in &out {
        let [lo, hi] = e.ci95.unwrap();
        assert!(lo < e.predicted && e.predicted < hi, "{e:?}");
    }
    // Further out, wider.
    let width = |e: &Extrapolation| e.ci95.unwrap()[1] - e.ci95.unwrap()[0];
    assert!(width(&out[1]) > width(&out[0]));
    assert_eq!(run(42), out);
    assert_ne!(run(43), out);
    // No resamples: the prediction alone. Unfittable: nothing.
    let bare = extrapolate(&SAT_SEED_TOKENS, &SAT_SEED_PPL, Law::Power, &[2.0], 0, 1);
    assert_eq!(bare[0].ci95, None);
    assert!(extrapolate(
        &SAT_TOKENS[..3],
        &SAT_PPL[..3],
        Law::Saturation,
        &[2.0],
        100,
        1
    )
    .is_empty());
}

#[test]
fn window_alphas_match_linregress() {
    let windows = window_alphas(&SAT_SEED_TOKENS, &SAT_SEED_PPL, 3);
    let expected = [
        (
            240132.0,
            948524.0,
            -0.39291285587344876,
            0.022496583173207508,
        ),
        (
            473429.0,
            1920992.0,
            -0.2761936750714791,
            0.012230116040989876,
        ),
        (
            948524.0,
            3864746.0,
            -0.1928227597064064,
            0.013129985155303526,
        ),
    ];
    assert_eq!(windows.len(), 3);
    for (w, (first, last, alpha, se)) in windows.iter().zip(expected) {
        assert_eq!((w.first_tokens, w.last_tokens, w.fit.n), (first, last, 6));
        assert_rel!(w.fit.alpha, alpha, 1e-9);
        assert_rel!(w.fit.stderr.unwrap(), se, 1e-9);
    }
    assert_eq!(window_alphas(&SAT_SEED_TOKENS, &SAT_SEED_PPL, 4).len(), 2);
    assert!(window_alphas(&SAT_SEED_TOKENS, &SAT_SEED_PPL, 5).is_empty());
    assert!(window_alphas(&SAT_SEED_TOKENS, &SAT_SEED_PPL, 1).is_empty());
    assert!(window_alphas(&SAT_SEED_TOKENS, &SAT_SEED_PPL[..9], 3).is_empty());
}

#[test]
fn alpha_trend_matches_quadratic_ols() {
    // numpy lstsq on [1, z, z^2], z = ln tokens - mean; scipy.stats.t.sf.
    let t = alpha_trend(&SAT_SEED_TOKENS, &SAT_SEED_PPL).unwrap();
    assert_eq!((t.dof, t.n), (7, 10));
    assert_rel!(t.curvature, 0.0740813420833129, 1e-9);
    assert_rel!(t.stderr, 0.003935102362978686, 1e-9);
    assert_rel!(t.p_value.unwrap(), 2.9653359564913644e-07, 1e-6);
    assert_rel!(t.slope_at_centre, -0.2894675788448485, 1e-9);
    assert_rel!(t.centre_tokens, 956488.9263258816, 1e-9);
    // Diminishing returns there; steepening on the short sweep.
    let r = alpha_trend(&REALISTIC_TOKENS, &REALISTIC_PPL).unwrap();
    assert_eq!(r.dof, 5);
    assert_rel!(r.curvature, -0.0959821706763489, 1e-9);
    assert_rel!(r.stderr, 0.03939617543947192, 1e-9);
    assert_rel!(r.p_value.unwrap(), 0.05891921611144258, 1e-8);
    assert_rel!(r.slope_at_centre, -0.41750451308150965, 1e-9);
    // Fewer than 4 token counts, or unusable runs.
    assert_eq!(
        alpha_trend(&REALISTIC_TOKENS[..6], &REALISTIC_PPL[..6]),
        None
    );
    assert_eq!(alpha_trend(&SAT_TOKENS[..3], &SAT_PPL[..3]), None);
    assert_eq!(alpha_trend(&SAT_TOKENS, &[1.0, 2.0, 0.0, 3.0, 4.0]), None);
}

#[test]
fn results_serialise_without_nan() {
    let c = compare_laws(&SAT_TOKENS, &SAT_PPL).unwrap();
    let json = serde_json::to_value(&c).unwrap();
    let s = &json["saturation"];
    assert_eq!(s["law"], "saturation");
    for key in [
        "e",
        "A",
        "exponent",
        "e_stderr",
        "A_stderr",
        "exponent_stderr",
        "e_ci95",
        "A_ci95",
        "exponent_ci95",
        "sse",
        "n",
        "params",
        "aicc",
        "at_bound",
    ] {
        assert!(s.get(key).is_some(), "missing {key} in {s}");
    }
    assert!(s["aicc"].is_null() && json["delta_aicc"].is_null() && json["better"].is_null());
    assert_eq!(json["power"]["law"], "power");
    let back: LawComparison = serde_json::from_value(json).unwrap();
    assert_eq!(back, c);
    let h = leave_last_out(&SAT_TOKENS, &SAT_PPL, Law::Power).unwrap();
    assert!(serde_json::to_value(&h).unwrap()["observed_sd"].is_null());
}
