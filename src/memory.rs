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

/// Free bytes on the filesystem holding `path` (its directory), if known.
pub fn available_disk(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct it is given; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Refuses a cell whose resumable state cannot fit on the disk of `path`:
/// a state of `state_bytes`, written beside the previous one before that
/// one goes (a resumed cell's previous state is already on the disk).
pub fn refuse_if_disk_too_small(path: &std::path::Path, state_bytes: u64) -> Result<()> {
    let existing = std::fs::metadata(path).map_or(0, |m| m.len());
    let needed = (2 * state_bytes).saturating_sub(existing);
    if let Some(free) = available_disk(path) {
        if needed > free {
            bail!(
                "this cell's resume state needs about {} on disk next to {} but only {} is free; free some space, use another --out, or use fewer samples",
                gib(needed),
                path.display(),
                gib(free)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_larger_than_the_free_disk_is_refused_naming_the_place_and_figures() {
        let path = std::env::temp_dir().join("cell-5.state");
        let free = available_disk(&path).expect("statvfs works on the temp directory");
        assert!(free > 0);
        assert!(refuse_if_disk_too_small(&path, free / 4).is_ok());
        let err = refuse_if_disk_too_small(&path, free.saturating_mul(2))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("this cell's resume state needs about ")
                && err.contains(&format!("on disk next to {} but only ", path.display()))
                && err.contains(" GiB is free; free some space"),
            "{err}"
        );
    }
}
