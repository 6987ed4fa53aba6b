//! Writing results so that a crash or a full disk never leaves a half-written
//! file in place of a good one: atomic replace, flushed log appends, and
//! errors that name the file.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// This machine's name, for claims and temporary files.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

/// A tag no other writer shares, even on another node of a shared
/// filesystem: host, pid and a count within the process.
pub fn unique_tag() -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{}-{n}", hostname(), std::process::id())
}

/// The temporary file `path` is written to before the rename.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", unique_tag()));
    path.with_file_name(name)
}

/// Removes temporary files a killed writer of `path` left behind.
pub fn remove_tmp_files(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!("{}.tmp", name.to_string_lossy());
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The error for a failed write of `path`, saying so when the disk is full.
fn write_error(e: std::io::Error, path: &Path) -> anyhow::Error {
    let full = e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded;
    let hint = if full {
        "; the disk is full: free some space (or use another --out) and rerun; earlier files are intact"
    } else {
        "; earlier files are intact"
    };
    anyhow::anyhow!("cannot write {}: {e}{hint}", path.display())
}

/// Writes `path` atomically: `fill` writes a temporary file, which is
/// flushed to disk and renamed over `path`; on any failure the temporary
/// file is removed and `path` keeps its old contents. Returns the bytes written.
pub fn write_file_atomic(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<u64> {
    let tmp = tmp_path(path);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        fill(&mut f)?;
        f.sync_all()?;
        f.metadata().map(|m| m.len())
    })();
    let bytes = match written {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(write_error(e, path));
        }
    };
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        write_error(e, path)
    })?;
    // The rename itself survives a power loss only once the folder is flushed.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(bytes)
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file_atomic(path, |f| f.write_all(bytes)).map(drop)
}

/// Appends one JSON line to a log file and flushes it, so a crash keeps it.
pub fn log_line(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| write_error(e, path))?;
    writeln!(f, "{value}").map_err(|e| write_error(e, path))
}

/// Replaces a log file with these lines (a resumed cell's log so far).
pub fn rewrite_log(path: &Path, lines: &[serde_json::Value]) -> Result<()> {
    let mut text = String::new();
    for l in lines {
        text.push_str(&l.to_string());
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

/// Writes named f32 tensors (name, shape, values) and string metadata as a
/// safetensors file, atomically.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, &[f32])],
    metadata: std::collections::HashMap<String, String>,
) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            // SAFETY: f32 has no padding and any bit pattern is a valid u8;
            // safetensors is little-endian like x86.
            let bytes = unsafe {
                std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(*data))
            };
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| anyhow::anyhow!("{}: tensor {name}: {e:?}", path.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, &Some(metadata))
        .with_context(|| format!("serialising {}", path.display()))?;
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_names_the_file_and_keeps_the_old_one() {
        let dir = crate::scratch::scratch("io");
        let path = dir.join("result.json");
        write_atomic(&path, b"old").unwrap();
        let err = write_file_atomic(&path, |f| {
            f.write_all(b"half")?;
            Err(std::io::Error::from(std::io::ErrorKind::StorageFull))
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(&format!("cannot write {}", path.display())),
            "{err}"
        );
        assert!(err.contains("the disk is full"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "the temporary file is removed");
        // a temporary file from a killed writer is cleaned up
        std::fs::write(tmp_path(&path), b"x").unwrap();
        std::fs::write(dir.join("result.json.tmp-otherhost-1-0"), b"x").unwrap();
        remove_tmp_files(&path);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }
}
