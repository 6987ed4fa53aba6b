//! `newllm golden` (src/golden.rs) on the CPU: the command that checks GPU
//! parity on a machine without a toolchain must itself pass on the CPU.

use std::path::PathBuf;

#[test]
fn golden_command_passes_every_check_on_cpu() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/golden");
    let checks = newllm::golden::run_all(&dir, "cpu", &newllm::golden::CASES).unwrap();
    let table = newllm::golden::table(&checks);
    assert!(checks.len() > 100, "{table}");
    assert!(checks.iter().all(|c| c.pass), "{table}");
    for case in newllm::golden::CASES {
        assert!(checks.iter().any(|c| c.case == case), "{case} missing");
    }
}

#[test]
fn golden_command_reports_missing_data() {
    let err = newllm::golden::run_all(&PathBuf::from("/nonexistent"), "cpu", &["x"])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("golden data missing"), "{err}");
}
