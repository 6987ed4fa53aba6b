//! Writing results so that a crash or a full disk never leaves a half-written
//! file in place of a good one: atomic replace, and flushed log appends.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically (temp file + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// Appends one JSON line to a log file and flushes it, so a crash keeps it.
pub fn log_line(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot write log {}", path.display()))?;
    writeln!(f, "{value}")?;
    Ok(())
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
