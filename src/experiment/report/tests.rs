//! Report tests on fixtures shaped like the seed document's cells.

use super::compare::{differing_fields, GridShape};
use super::diagnostics::diagnose;
use super::*;
use crate::cell_result::{CellResult, Epoch, NewLlmResult, Timings};
use crate::config::Config;
use crate::experiment::format::{
    civil_date, compare_command, fmt_p, shell_word, sweep_command, thousands,
};
use crate::experiment::results::{analyse, SweepResults};
use crate::experiment::stats::critical_r;
use std::path::{Path, PathBuf};

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
        val_ppl: b.val_ppl,
        val_loss: b.val_loss,
        val_acc: b.val_acc,
        best_epoch: best,
        stop_epoch: epochs.len(),
        early_stopped: epochs.len() < 10,
        seconds: Timings(
            [
                ("data", 1.0),
                ("phase1", 30.0),
                ("train_cache", 5.0),
                ("val_cache", 0.5),
                ("effective_rank", 2.0),
                ("phase2", 60.0),
                ("total", 98.5),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        ),
        epochs,
        threads: 2,
        predicted_peak_bytes: 1 << 30,
        measured_peak_bytes: 1 << 30,
        config: Config::default(),
        newllm: Some(NewLlmResult {
            train_er: er.0,
            val_er: er.1,
            train_er_abs: er.0 * 768.0,
            val_er_abs: er.1 * 768.0,
            phase1_iterations: 12,
            phase1_converged: true,
            phase1_final_convergence_rate: 0.97,
            phase1: Vec::new(),
        }),
        ..CellResult::default()
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
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
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
        device: crate::config::Device::Cuda,
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
    assert!(json.contains("\"A\":") && json.contains("\"alpha_ci95\"") && !json.contains("NaN"));
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
        "alpha = -0.459 (95% CI [-0.579, -0.339]; R^2 = 0.993; p = 0.0037, n = 4 runs): significant at 5%",
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
        "| Effective Rank | r(ER, PPL) = -0.17 (p = 0.83), r(ER, Acc) = 0.03 (p = 0.97) (random embeddings: ER level not comparable with the seed's) | no significant relation with performance at 5% |",
        "`newllm compare --vary token_input_all_layers=false,true`",
        "`newllm sweep --set 'sample_counts=[50, 100, 200, 500, 1000, 2000]'`",
        "| newllm | 500 | 42 | 1.0 | 30.0 | 5.0 | 0.5 | 2.0 | 60.0 | 98.5 | 12 | yes (97.0%) |",
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
        md.contains("n = 2 runs): no p-value or confidence interval with fewer than 3 runs"),
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
    write_compare_report(&dir, &GridShape::default(), &sides).unwrap();
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

/// The seed's cells run twice: replicate 1 shifts val ER by `er_noise`
/// (alternating sign) and Val Acc by `acc_noise`, with seed 43.
fn replicated(er_noise: f64, acc_noise: f64) -> SweepResults {
    let mut runs = seed_cells();
    for (i, c) in seed_cells().into_iter().enumerate() {
        let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
        let mut r = c.clone();
        r.replicate = 1;
        r.config.seed = 43;
        r.val_acc += sign * acc_noise;
        r.val_ppl *= 1.01;
        if let Some(n) = r.newllm.as_mut() {
            n.val_er += sign * er_noise;
        }
        runs.push(r);
    }
    analyse(&Config::default(), &runs)
}

#[test]
fn replicate_spread_gates_er_and_dip_claims() {
    // ER moving 30 points between seeds swamps its 0.5-point spread between
    // cells: no ER relation is evidence, whatever the correlation says.
    let md = render_report(&replicated(0.3, 0.0));
    assert!(
        md.contains("Its differences between cells do not exceed that noise"),
        "{md}"
    );
    assert!(
        md.contains("no evidence: ER differs between cells no more than between seeds"),
        "{md}"
    );
    assert!(md.contains("mean ± sd over 2 seeds per cell"), "{md}");
    assert!(
        md.contains("The fit uses every run: 4 cells x 2 seeds."),
        "{md}"
    );
    // Seeds that agree to 0.01 points: the cells' ER differences are real.
    let md = render_report(&replicated(0.0001, 0.0));
    assert!(
        md.contains("Its differences between cells exceed that noise"),
        "{md}"
    );
    // The 500-sample accuracy dip, against seeds that scatter by 5 points:
    // reported as not distinguishable from seed noise.
    let md = render_report(&replicated(0.0001, 0.05));
    assert!(md.contains("Why accuracy dropped at 500 samples"), "{md}");
    assert!(
        md.contains("**not distinguishable from seed noise**"),
        "{md}"
    );
    // With identical-but-for-PPL seeds the dip stands out of the noise.
    let md = render_report(&replicated(0.0001, 0.0));
    assert!(
        md.contains("The seeds show no spread to test the drop against."),
        "{md}"
    );
}

#[test]
fn compare_pairs_runs_by_seed() {
    // Side B = side A's runs with every PPL 10% lower and seed-matched noise
    // of 1%: a paired test finds B better at every cell.
    let a = replicated(0.0001, 0.0);
    let mut runs_b = a.runs.clone();
    for r in &mut runs_b {
        let wobble = if r.replicate == 0 { 1.0 } else { 1.01 };
        r.val_ppl *= 0.9 * wobble;
    }
    let b = analyse(&Config::default(), &runs_b);
    let md = render_compare_report(
        &GridShape::default(),
        &[("A".into(), a.clone()), ("B".into(), b)],
    );
    assert!(md.contains("## Paired by seed"), "{md}");
    assert!(md.contains("| B vs A, 500 samples | 2 |"), "{md}");
    assert!(md.contains("B beats A (lower PPL)"), "{md}");
    // One seed per side: nothing to pair a test on.
    let single = analyse(&Config::default(), &seed_cells());
    let md = render_compare_report(
        &GridShape::default(),
        &[("A".into(), single.clone()), ("B".into(), single)],
    );
    assert!(md.contains("untestable: needs 2+ seeds"), "{md}");
}

/// ANOVA says ER's differences between cells are seed noise while its cell
/// means correlate perfectly with PPL: no section may claim a relation.
#[test]
fn er_within_seed_noise_is_claimed_nowhere() {
    let mut runs = Vec::new();
    for (r, sign) in [(0usize, 1.0), (1, -1.0)] {
        for mut c in seed_cells() {
            c.replicate = r;
            c.config.seed = 42 + r as u64;
            let mean = 0.2 - c.val_ppl / 20000.0;
            if let Some(n) = c.newllm.as_mut() {
                n.val_er = mean + sign * 0.3;
            }
            runs.push(c);
        }
    }
    let results = analyse(&Config::default(), &runs);
    let pearson = results
        .correlations
        .val_er_vs_val_ppl
        .pearson
        .clone()
        .unwrap();
    assert!(
        pearson.p_value.unwrap() < 0.05,
        "fixture: the correlation is significant"
    );
    let md = render_report(&results);
    for claim in [
        "| significant relation with performance at 5% |",
        "ER shows no significant relation",
        "relates significantly",
        "ER relate significantly",
        "significant at 5% (both coefficients)",
        "significant at 5% by",
    ] {
        assert!(!md.contains(claim), "claims {claim:?}\n{md}");
    }
    assert!(md.contains("not counted as evidence"), "{md}");
    assert!(
        md.contains("no evidence: ER differs between cells no more than between seeds"),
        "{md}"
    );
    assert!(md.contains("token count is the dominant factor"), "{md}");
}

/// Cells like the ChatGPT-style corpus's: PPL rising with data on a
/// held-out set is reported as rising, not as token count dominating.
#[test]
fn a_rising_alpha_is_reported_as_rising() {
    let mut cells = seed_cells();
    for (c, ppl) in cells.iter_mut().zip([672.0, 700.0, 858.0, 972.0]) {
        c.val_ppl = ppl;
        c.config.val_mode = crate::config::ValMode::Heldout;
    }
    let config = Config {
        val_mode: crate::config::ValMode::Heldout,
        ..Config::default()
    };
    let md = render_report(&analyse(&config, &cells));
    assert!(md.contains("PPL **rises** with training tokens"), "{md}");
    assert!(
        md.contains("PPL rises significantly with more training data on one fixed validation set"),
        "{md}"
    );
    assert!(!md.contains("token count is the dominant factor"), "{md}");
    assert!(!md.contains("More tokens:"), "{md}");
    assert!(md.contains("One validation set for every cell"), "{md}");
    assert!(!md.contains("The validation text changes with N"), "{md}");
}

/// Tail validation: the report says the text changes with N, shows the
/// n-gram's PPL per cell, caveats every data-scaling verdict and
/// recommends heldout.
#[test]
fn tail_validation_is_stated_with_the_ngram_as_its_measure() {
    let mut runs = seed_cells();
    for (c, ppl) in seed_cells().iter().zip([585.8, 611.8, 403.9, 241.2]) {
        runs.push(CellResult {
            model: crate::config::ModelKind::Kn,
            newllm: None,
            val_ppl: ppl,
            epochs: Vec::new(),
            ..c.clone()
        });
    }
    let md = render_report(&analyse(&Config::default(), &runs));
    assert!(
        md.contains("**The validation text changes with N.**"),
        "{md}"
    );
    assert!(
        md.contains("its Val PPL per cell, 585.8 (50 samples), 611.8 (100 samples), 403.9 (200 samples), 241.2 (500 samples)"),
        "{md}"
    );
    assert!(md.contains("token count is the dominant factor in this sweep: PPL falls significantly with it, and no significant relation between ER and performance was found. Caution: tail validation"), "{md}");
    assert!(md.contains("`newllm sweep --set val_mode=heldout"), "{md}");
    assert!(md.contains("val_mode = \"tail\""), "{md}");
}

/// Five cells on a saturating curve: windows, both laws, the better one
/// named, the leave-last-out check and marked extrapolations.
#[test]
fn the_scaling_sections_render_windows_laws_and_predictions() {
    let tokens = [240_132usize, 473_429, 948_524, 1_920_992, 3_864_746];
    let ppl = [258.3, 187.6, 150.5, 127.4, 114.8];
    let mut runs = Vec::new();
    for r in 0..2 {
        for (i, (&t, &p)) in tokens.iter().zip(&ppl).enumerate() {
            let mut c = seed_cells()[0].clone();
            c.samples = 200 << i;
            c.train_tokens = t;
            c.val_ppl = p * if r == 0 { 1.005 } else { 0.995 };
            c.replicate = r;
            c.config.seed = 42 + r as u64;
            runs.push(c);
        }
    }
    let config = Config {
        val_mode: crate::config::ValMode::Heldout,
        ..Config::default()
    };
    let results = analyse(&config, &runs);
    let md = render_report(&results);
    assert!(
        md.contains("### Alpha over sliding windows of 3 sample counts"),
        "{md}"
    );
    assert_eq!(results.models[0].analysis.windows.len(), 3);
    assert!(
        md.contains("In plain words: alpha rises towards 0 as data grows, significantly"),
        "{md}"
    );
    assert!(md.contains("The saturation law fits better"), "{md}");
    assert!(md.contains("### Leave-last-out check"), "{md}");
    assert!(md.contains("**Extrapolation:**"), "{md}");
    assert!(
        md.contains("(2x the largest cell)") && md.contains("(10x the largest cell)"),
        "{md}"
    );
}
