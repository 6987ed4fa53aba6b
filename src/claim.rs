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
    let host = crate::io::hostname();
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

/// The host named in an owner line.
fn owner_host(owner: &str) -> Option<&str> {
    let rest = owner.split_once(" on ")?.1;
    rest.split(", ").next()
}

/// How long a claim held from another host is waited for: a node that died
/// holding it keeps its lock on NFS until its lease ends (90 s by default
/// on NFSv4).
const OTHER_HOST_WAIT: std::time::Duration = std::time::Duration::from_secs(150);

impl Claim {
    /// Claims `path` for this process, or refuses naming the live owner.
    /// `what` names the cell run in messages.
    pub fn take(path: &Path, what: &str) -> Result<Claim> {
        let start = std::time::Instant::now();
        let mut waiting = false;
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
                    let elsewhere =
                        owner_host(owner.trim()).is_some_and(|h| h != crate::io::hostname());
                    if elsewhere && start.elapsed() < OTHER_HOST_WAIT {
                        if !waiting {
                            eprintln!(
                                "{what} is claimed from another host ({}); waiting up to {} s in case that node died holding the lock",
                                owner.trim(),
                                OTHER_HOST_WAIT.as_secs()
                            );
                            waiting = true;
                        }
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        continue;
                    }
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
            file.set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| writeln!(file, "{}", owner_line()))
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
        let dir = crate::scratch::scratch("claim");
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
    }

    #[test]
    fn the_owner_host_is_read_from_the_claim_line() {
        assert_eq!(
            owner_host("pid 12 on node-3.cluster, Slurm job 77, since unix time 5"),
            Some("node-3.cluster")
        );
        assert_eq!(
            owner_host("pid 12 on laptop, since unix time 5"),
            Some("laptop")
        );
        assert_eq!(owner_host(""), None);
    }
}
