//! A cell's resumable state on disk: what an exact continuation of an
//! interrupted cell needs (weights, Adam moments, Phase-1 contexts, caches,
//! RNG states, logs so far), in one file per cell that is replaced
//! atomically at every safe point and removed when the cell's result is
//! written.
//!
//! Layout (all little-endian):
//!   b"NEWLLM-STATE-v1\n"      16 bytes
//!   u64                       header length H
//!   H bytes                   header JSON (`Header`)
//!   f32 arrays                in the order `Header::arrays` lists them
//!   u32                       CRC-32 of every byte before it
//! Not safetensors: it has no checksum, and its reader parses one buffer
//! holding the whole file, which at 529k tokens (1.7-2.4 GiB of state)
//! would double the memory a resume needs; this format streams both ways
//! through its CRC.

use crate::config::Config;
use crate::io::write_file_atomic;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 16] = b"NEWLLM-STATE-v1\n";

/// What a state must match to be continued: the run's config (the fields
/// that change results), the program that wrote it and the data it ran on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub config: Config,
    /// Package version and a CRC of the executable: another build may
    /// compute other numbers.
    pub code: String,
    /// CRC of the cell's training and validation ids.
    pub data: String,
}

impl Fingerprint {
    pub fn new(cfg: &Config, train: &[u32], val: &[u32]) -> Result<Fingerprint> {
        let mut h = crc32fast::Hasher::new();
        for ids in [train, val] {
            h.update(&(ids.len() as u64).to_le_bytes());
            for id in ids {
                h.update(&id.to_le_bytes());
            }
        }
        Ok(Fingerprint {
            // The run's identity (a thread-count change is warned about on
            // load), but with its device: a state holds what that device
            // kept (the GPU saves at the caches only).
            config: Config {
                device: cfg.device,
                ..cfg.identity()
            },
            code: code_id()?,
            data: format!("{:08x} ({} + {} ids)", h.finalize(), train.len(), val.len()),
        })
    }

    /// The differences from `other`, one "field: A in the state, B now" each.
    fn differences(&self, other: &Fingerprint) -> Result<Vec<String>> {
        let mut diff = Vec::new();
        let (a, b) = (
            serde_json::to_value(&self.config)?,
            serde_json::to_value(&other.config)?,
        );
        for (k, v) in a.as_object().into_iter().flatten() {
            let now = b.get(k.as_str()).unwrap_or(&serde_json::Value::Null);
            if now != v {
                diff.push(format!("config {k}: {v} in the state, {now} now"));
            }
        }
        if self.code != other.code {
            diff.push(format!(
                "program: {} in the state, {} now (another build of newllm)",
                self.code, other.code
            ));
        }
        if self.data != other.data {
            diff.push(format!(
                "data: {} in the state, {} now (another corpus, tokenizer or split)",
                self.data, other.data
            ));
        }
        Ok(diff)
    }
}

/// The running program's identity, computed once (the commands that train
/// compute it at start, before the binary can be rebuilt under them).
pub fn code_id() -> Result<String> {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(id) = ID.get() {
        return Ok(id.clone());
    }
    // The running image, even if its file was replaced since.
    let bytes = std::fs::read("/proc/self/exe")
        .or_else(|_| std::fs::read(std::env::current_exe()?))
        .context("cannot read the running executable")?;
    let id = format!(
        "newllm {} build {:08x}",
        env!("CARGO_PKG_VERSION"),
        crc32fast::hash(&bytes)
    );
    Ok(ID.get_or_init(|| id).clone())
}

/// The header: who wrote the state, for what, and the model's own part
/// (`meta`: stage, logs, counters, RNG states).
#[derive(Serialize, Deserialize)]
struct Header {
    fingerprint: Fingerprint,
    threads: usize,
    meta: serde_json::Value,
    /// (name, number of f32 values), in file order.
    arrays: Vec<(String, usize)>,
}

/// A state read back: the model's meta and its arrays by name.
pub struct Loaded {
    pub meta: serde_json::Value,
    pub arrays: BTreeMap<String, Vec<f32>>,
    pub threads: usize,
}

impl Loaded {
    /// Takes array `name` out, checking its length.
    pub fn take(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let v = self
            .arrays
            .remove(name)
            .with_context(|| format!("the state has no array {name:?}"))?;
        if v.len() != len {
            bail!(
                "state array {name:?} has {} values, expected {len}",
                v.len()
            );
        }
        Ok(v)
    }

    /// The meta decoded as the model's own type.
    pub fn meta<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.meta.clone()).context("the state's meta is not this model's")
    }
}

/// Bytes a state with these arrays takes on disk (the header aside).
pub fn file_bytes(values: u64) -> u64 {
    MAGIC.len() as u64 + 8 + 4 + 4 * values + (64 << 10)
}

/// Writes a state atomically: a temporary file, flushed to disk, renamed
/// over the previous state (which stays intact if anything fails).
pub fn write(
    path: &Path,
    fingerprint: &Fingerprint,
    meta: serde_json::Value,
    arrays: &[(&str, &[f32])],
) -> Result<u64> {
    let header = Header {
        fingerprint: fingerprint.clone(),
        threads: crate::ops::threads(),
        meta,
        arrays: arrays
            .iter()
            .map(|(n, a)| (n.to_string(), a.len()))
            .collect(),
    };
    let header = serde_json::to_vec(&header)?;
    write_file_atomic(path, |file| {
        let mut w = Crc(
            BufWriter::with_capacity(1 << 20, file),
            crc32fast::Hasher::new(),
        );
        w.write_all(MAGIC)?;
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        for (_, a) in arrays {
            w.write_all(f32_bytes(a))?;
        }
        let crc = w.1.clone().finalize();
        w.0.write_all(&crc.to_le_bytes())?;
        w.0.flush()?;
        Ok(())
    })
}

/// What reading a state found.
pub enum Found {
    None,
    /// Readable and written for this run.
    State(Loaded),
    /// Unreadable or failing its checksum; the reason (the file is removed).
    Damaged(String),
}

/// Reads the state at `path` for a run with `want`. A state written for
/// another config, program or data is an error saying how to start over
/// (the file is kept); only a damaged one is removed.
pub fn read(path: &Path, want: &Fingerprint) -> Result<Found> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let foreign = |why: String| {
        anyhow::anyhow!(
            "{} holds a cell's state this build of newllm cannot read ({why}); rerun with the newllm that wrote it to continue it, or delete it to start this cell over",
            path.display()
        )
    };
    let (header, arrays) =
        match read_checked(file).with_context(|| format!("cannot read {}", path.display()))? {
            Checked::Intact(header, arrays) => (header, arrays),
            Checked::Foreign(why) => return Err(foreign(why)),
            Checked::Damaged(why) => {
                std::fs::remove_file(path)
                    .with_context(|| format!("cannot remove damaged state {}", path.display()))?;
                return Ok(Found::Damaged(why));
            }
        };
    let header: Header = serde_json::from_value(header).map_err(|e| foreign(e.to_string()))?;
    let diff = header.fingerprint.differences(want)?;
    if !diff.is_empty() {
        bail!(
            "{} holds a cell's state from a different run ({}); rerun with the settings, program and data it was written with to continue it, or delete it to start this cell over",
            path.display(),
            diff.join("; ")
        );
    }
    Ok(Found::State(Loaded {
        meta: header.meta,
        arrays,
        threads: header.threads,
    }))
}

/// What the bytes of a state file turned out to be.
enum Checked {
    /// Its checksum holds: the header (as JSON) and the arrays.
    Intact(serde_json::Value, BTreeMap<String, Vec<f32>>),
    /// Its checksum holds, but it is laid out by another version.
    Foreign(String),
    /// Short, or failing its checksum.
    Damaged(String),
}

/// Reads a whole state, checking the magic, the lengths and the checksum.
/// I/O errors other than running out of bytes are errors, not damage.
fn read_checked(file: std::fs::File) -> std::io::Result<Checked> {
    let len = file.metadata()?.len();
    let mut r = Crc(
        BufReader::with_capacity(1 << 20, file),
        crc32fast::Hasher::new(),
    );
    let damaged = |why: String| Ok(Checked::Damaged(why));
    if len < (MAGIC.len() + 8 + 4) as u64 {
        return damaged(format!("{len} bytes, shorter than any state"));
    }
    let mut magic = [0u8; 16];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        if magic.starts_with(b"NEWLLM-STATE-") {
            let version = String::from_utf8_lossy(&magic[13..]).trim().to_string();
            return Ok(Checked::Foreign(format!("state format {version}")));
        }
        return damaged("not a newllm state file (bad magic)".into());
    }
    let mut n = [0u8; 8];
    r.read_exact(&mut n)?;
    let hlen = u64::from_le_bytes(n);
    let body = len - 16 - 8 - 4;
    if hlen > body {
        return damaged(format!(
            "header length {hlen} exceeds the file's {len} bytes"
        ));
    }
    let mut hbytes = vec![0u8; hlen as usize];
    r.read_exact(&mut hbytes)?;
    // The layout, if this version can read it and it matches the length.
    let header: Option<serde_json::Value> = serde_json::from_slice(&hbytes).ok();
    let layout: Option<Vec<(String, usize)>> = header
        .as_ref()
        .and_then(|h| serde_json::from_value(h["arrays"].clone()).ok())
        .filter(|l: &Vec<(String, usize)>| {
            l.iter().map(|(_, n)| 4 * *n as u64).sum::<u64>() == body - hlen
        });
    let mut arrays = BTreeMap::new();
    match &layout {
        Some(list) => {
            for (name, l) in list {
                let mut v = vec![0f32; *l];
                // SAFETY: any bit pattern is a valid f32; the file is little-endian like x86.
                let bytes = unsafe {
                    std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, 4 * v.len())
                };
                r.read_exact(bytes)?;
                arrays.insert(name.clone(), v);
            }
        }
        // Only the checksum can tell damage from another version.
        None => {
            std::io::copy(&mut (&mut r).take(body - hlen), &mut std::io::sink())?;
        }
    }
    let computed = r.1.clone().finalize();
    let mut stored = [0u8; 4];
    r.0.read_exact(&mut stored)?;
    let stored = u32::from_le_bytes(stored);
    if stored != computed {
        return damaged(format!(
            "checksum mismatch (stored {stored:08x}, computed {computed:08x})"
        ));
    }
    match (header, layout) {
        (Some(h), Some(_)) => Ok(Checked::Intact(h, arrays)),
        _ => Ok(Checked::Foreign(
            "a header this version does not understand".into(),
        )),
    }
}

fn f32_bytes(a: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding; little-endian like x86.
    unsafe { std::slice::from_raw_parts(a.as_ptr() as *const u8, std::mem::size_of_val(a)) }
}

/// A reader or writer that hashes what passes through it.
struct Crc<T>(T, crc32fast::Hasher);

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(buf)?;
        self.1.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<R: Read> Read for Crc<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        self.1.update(&buf[..n]);
        Ok(n)
    }
}

/// The share of a run's time state writes may take by default.
pub const WRITE_SHARE: f64 = 0.05;

/// Whether a safe point writes, `since` seconds after the last write, which
/// took `last_cost` seconds: with `interval` 0, whenever writing keeps
/// within `WRITE_SHARE` of the time (every safe point where steps are long
/// against a write, the seed's case); with `interval` T > 0, once T seconds
/// have passed.
pub fn write_due(interval: f64, since: f64, last_cost: f64) -> bool {
    if interval > 0.0 {
        since >= interval
    } else {
        last_cost <= WRITE_SHARE * (since + last_cost)
    }
}

/// Where a cell's state goes, and the policy of when it is written
/// (`write_due`, from `state_interval_seconds`); always when a stop was
/// asked for.
pub struct Saver {
    pub path: PathBuf,
    pub fingerprint: Fingerprint,
    interval: f64,
    last: std::time::Instant,
    last_cost: f64,
    /// Seconds spent writing, and bytes of the last write.
    pub seconds: f64,
    pub last_bytes: u64,
    pub writes: usize,
}

impl Saver {
    pub fn new(path: PathBuf, fingerprint: Fingerprint, cfg: &Config) -> Saver {
        Saver {
            path,
            fingerprint,
            interval: cfg.state_interval_seconds,
            last: std::time::Instant::now(),
            last_cost: 0.0,
            seconds: 0.0,
            last_bytes: 0,
            writes: 0,
        }
    }

    /// The state this run left, if any: a damaged one is reported (and
    /// removed; the cell starts over), a different thread count warned of.
    pub fn load(&self) -> Result<Option<Loaded>> {
        match read(&self.path, &self.fingerprint)? {
            Found::None => Ok(None),
            Found::Damaged(why) => {
                eprintln!(
                    "  {} was damaged ({why}); it is removed and the cell starts over",
                    self.path.display()
                );
                Ok(None)
            }
            Found::State(l) => {
                let now = crate::ops::threads();
                if l.threads != now {
                    eprintln!(
                        "  the state was written with {} threads and this run has {now}: its numbers may differ in the last bits from an uninterrupted run",
                        l.threads
                    );
                }
                Ok(Some(l))
            }
        }
    }

    /// Whether the next safe point writes.
    pub fn due(&self) -> bool {
        crate::stop::requested().is_some()
            || write_due(
                self.interval,
                self.last.elapsed().as_secs_f64(),
                self.last_cost,
            )
    }

    /// A safe point named `point`: writes the state when due, and always
    /// when a signal asked for a stop, which then ends the run with
    /// `stop::Stopped`.
    pub fn safe_point(
        &mut self,
        point: &str,
        meta: impl Fn() -> Result<serde_json::Value>,
        arrays: &[(&str, &[f32])],
    ) -> Result<()> {
        crate::stop::test_hook(point);
        let wrote = self.due();
        if wrote {
            self.write(meta()?, arrays)?;
        }
        if crate::stop::requested().is_some() {
            // a signal that came after the check above
            if !wrote {
                self.write(meta()?, arrays)?;
            }
            return crate::stop::check(|| crate::stop::saved_in(&self.path));
        }
        Ok(())
    }

    /// A safe point where the device gives no snapshot (the GPU inside a
    /// phase): a stop still stops, continuing later from the last state.
    pub fn safe_point_without_state(&mut self, point: &str) -> Result<()> {
        crate::stop::test_hook(point);
        crate::stop::check(|| {
            format!(
                "the GPU keeps no state inside Phase 1 or 2, so the cell continues from its last state ({}) if it has one, else from the start",
                self.path.display()
            )
        })
    }

    fn write(&mut self, meta: serde_json::Value, arrays: &[(&str, &[f32])]) -> Result<()> {
        let t = std::time::Instant::now();
        self.last_bytes = write(&self.path, &self.fingerprint, meta, arrays)?;
        self.last_cost = t.elapsed().as_secs_f64();
        self.seconds += self.last_cost;
        self.writes += 1;
        self.last = std::time::Instant::now();
        Ok(())
    }
}

/// Removes a cell's state once its result is written.
pub fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
