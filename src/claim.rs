//! Claims: one live process per cell run. A process holds an exclusive
//! file lock (flock) on `<cell>.claim` while it computes the cell, and
//! writes who it is into the file. A second process is refused with the
//! owner's name; a claim whose owner has stopped (killed, preempted, node
//! lost) has no lock any more and is taken over. On a shared filesystem the
//! locks must reach every node (NFS does; Lustre needs its `flock` mount option).

use anyhow::{bail, Context, Result};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A held claim; dropping it releases the lock (the file stays until `release`).
pub struct Claim {
    file: std::fs::File,
    path: PathBuf,
}

/// Who holds a claim, as written into the claim file.
fn owner_line() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown host".into());
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let job = std::env::var("SLURM_JOB_ID")
        .map(|j| format!(", Slurm job {j}"))
        .unwrap_or_default();
    format!(
        "pid {} on {host}{job}, since unix time {since}",
        std::process::id()
    )
}

impl Claim {
    /// Claims `path` for this process, or refuses naming the live owner.
    /// `what` names the cell run in messages.
    pub fn take(path: &Path, what: &str) -> Result<Claim> {
        loop {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .with_context(|| format!("cannot open claim {}", path.display()))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    let mut owner = String::new();
                    let _ = file.read_to_string(&mut owner);
                    bail!(
                        "{what} is being computed by another process ({}); claim {}. Wait for it, or stop it and rerun",
                        owner.trim(),
                        path.display()
                    );
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| {
                        format!(
                            "cannot lock claim {}: this filesystem may not support file locks (on Lustre, mount with -o flock)",
                            path.display()
                        )
                    })
                }
            }
            // The file may have been released and removed between open and
            // lock: then the lock is on a dead inode; try again.
            let same = std::fs::metadata(path)
                .map(|m| m.ino() == file.metadata().map(|f| f.ino()).unwrap_or(0))
                .unwrap_or(false);
            if !same {
                continue;
            }
            let mut old = String::new();
            let _ = file.read_to_string(&mut old);
            if !old.trim().is_empty() {
                eprintln!(
                    "taking over {what} from a process that has stopped ({})",
                    old.trim()
                );
            }
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", owner_line())
                .with_context(|| format!("cannot write claim {}", path.display()))?;
            return Ok(Claim {
                file,
                path: path.to_path_buf(),
            });
        }
    }

    /// Removes the claim file once the run's result is written.
    pub fn release(self) {
        let _ = std::fs::remove_file(&self.path);
        drop(self.file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_is_refused_naming_the_owner_and_a_released_one_is_taken() {
        let dir = std::env::temp_dir().join(format!("newllm-claim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cell-5.claim");
        let first = Claim::take(&path, "cell 5").unwrap();
        // flock is per open file, so a second open in this process conflicts too
        let err = Claim::take(&path, "cell 5").err().unwrap().to_string();
        assert!(
            err.starts_with("cell 5 is being computed by another process (pid "),
            "{err}"
        );
        assert!(
            err.contains(&format!("pid {} on ", std::process::id())),
            "{err}"
        );
        // an owner that stopped without releasing: the lock is gone, the file stays
        drop(first);
        assert!(path.exists());
        let second = Claim::take(&path, "cell 5").unwrap();
        second.release();
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
