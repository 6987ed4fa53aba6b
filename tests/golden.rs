//! Golden tests: our f32 implementation against the original PyTorch
//! implementation's float64 reference numbers (tests/golden/README.md),
//! within the float32 tolerances recommended there. The checks live in
//! src/models/newllm/golden.rs so the same code also runs as `newllm golden` on a machine
//! that has only the release binary (the GPU check).

use std::path::PathBuf;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn run_case(case: &str) {
    let checks = newllm::models::newllm::golden::run_all(
        &golden_dir(),
        newllm::config::Device::Cpu,
        &[case],
    )
    .unwrap();
    let table = newllm::models::newllm::golden::table(&checks);
    // every quantity of the README: initial forward, Phase-1 gradients and
    // per-iteration figures, final weights, caches, ER, Phase-2 batches,
    // epoch-1 weights, per-epoch metrics and decisions
    assert!(
        checks.len() >= 90,
        "only {} checks ran:\n{table}",
        checks.len()
    );
    for prefix in [
        "phase1.first_step_grad.",
        "phase1.final.",
        "cache.train.layer",
        "cache.val.layer",
        "phase2.first_batch_grad.",
        "phase2.epoch1.",
    ] {
        assert!(
            checks.iter().any(|c| c.quantity.starts_with(prefix)),
            "no {prefix} check:\n{table}"
        );
    }
    let failed: Vec<_> = checks.iter().filter(|c| !c.pass).collect();
    assert!(
        failed.is_empty(),
        "{} of {} checks failed:\n{table}",
        failed.len(),
        checks.len()
    );
}

#[test]
fn golden_false_k1_seq() {
    run_case("false_k1_seq");
}

#[test]
fn golden_true_k1_seq() {
    run_case("true_k1_seq");
}

#[test]
fn golden_false_k2_rand_shift() {
    run_case("false_k2_rand_shift");
}

#[test]
fn golden_true_k1_rand_shift() {
    run_case("true_k1_rand_shift");
}

#[test]
fn missing_golden_data_is_a_clear_error() {
    let err = newllm::models::newllm::golden::run_all(
        &PathBuf::from("/nonexistent"),
        newllm::config::Device::Cpu,
        &["x"],
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("golden data missing"), "{err}");
}
