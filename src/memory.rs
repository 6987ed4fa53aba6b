//! The machine's side of memory planning: what is available, what this
//! process has used, and the refusal every model's cell makes before it
//! allocates anything large. Each model predicts its own peak (for New-LLM:
//! `models/newllm/memory.rs`).

use anyhow::{bail, Result};

/// MemAvailable from /proc/meminfo, if readable.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak resident set size of this process so far (VmHWM), if readable.
pub fn peak_rss() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

/// Refuses a run predicted to need more than the machine has available;
/// `advice` says what to change.
pub fn refuse_if_too_big(predicted: u64, advice: &str) -> Result<()> {
    if let Some(avail) = available_memory() {
        if predicted > avail {
            bail!(
                "this cell needs about {} but only {} is available; {advice}",
                gib(predicted),
                gib(avail)
            );
        }
    }
    Ok(())
}
