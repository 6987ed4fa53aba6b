//! Token streams and the on-disk token caches (docs/algorithm.md section 1).
//!
//! Prefix cache: one file per corpus location, `<cache_dir>/tokens-<id>.bin`,
//! holding the tokenization of the corpus's first K samples plus a key
//! (SHA-256 of the source's content, the tokenizer and the reader version).
//! A request for N <= K samples reuses the prefix, so a sweep over N =
//! 50..500 tokenizes once; a larger N, a changed source or changed settings
//! rebuild it. The split is cut at load time (split.rs).
//!
//! Held-out cache: `<cache_dir>/tokens-<id>-last<k>.bin`, the tokenization
//! of the corpus's last k samples and its sample count, so a held-out
//! validation set is read and tokenized once.

use super::corpus::{Source, READER_VERSION};
use super::tokenizer::{Tokenizer, TOKENIZER_NAME};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// What `load_split` did with the token caches (tests and logs use it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheUse {
    /// Caches covering the request were reused; nothing was tokenized.
    Reused,
    /// The corpus was tokenized and a cache (re)written.
    Built,
}

/// Tokenization of some of a corpus's samples (its first ones, or its last).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Tokenized {
    pub ids: Vec<u32>,
    pub sample_ends: Vec<usize>,
    /// True when these are all the corpus's samples.
    pub complete: bool,
}

/// Tokens of the first `want` samples (None = all), from the cache when it
/// covers them. May hold more samples than asked, or fewer when the corpus is
/// shorter (the caller reports that).
pub(crate) fn tokens_for(
    source: &Source,
    want: Option<usize>,
    cache_dir: &Path,
) -> Result<(Tokenized, CacheUse)> {
    let key = cache_key(source)?;
    let path = cache_path(source, cache_dir);
    if let Some(cached) = read_prefix_cache(&path, &key) {
        let covers = match want {
            Some(n) => cached.sample_ends.len() >= n || cached.complete,
            None => cached.complete,
        };
        if covers {
            return Ok((cached, CacheUse::Reused));
        }
    }
    let samples = source.read(want)?;
    let complete = want.is_none_or(|n| samples.len() < n);
    let tokens = tokenize_into(
        source,
        &samples,
        complete,
        (&path, MAGIC, &key),
        &[u8::from(complete)],
    )?;
    Ok((tokens, CacheUse::Built))
}

/// Tokenizes samples in parallel and concatenates them in order.
pub(crate) fn tokenize_all(samples: &[String]) -> Result<(Vec<u32>, Vec<usize>)> {
    let tok = Tokenizer::gpt2()?;
    let pieces: Vec<Vec<u32>> = samples.par_iter().map(|s| tok.encode(s)).collect();
    let total = pieces.iter().map(Vec::len).sum();
    let mut ids = Vec::with_capacity(total);
    let mut sample_ends = Vec::with_capacity(pieces.len());
    for piece in pieces {
        ids.extend_from_slice(&piece);
        sample_ends.push(ids.len());
    }
    Ok((ids, sample_ends))
}

/// Tokens of the corpus's last `k` samples (all of them when it has fewer)
/// and its sample count, from the held-out cache when it has them.
pub(crate) fn last_tokens_for(
    source: &Source,
    k: usize,
    cache_dir: &Path,
) -> Result<(Tokenized, usize, CacheUse)> {
    let key = last_cache_key(source, k)?;
    let path = last_cache_path(source, k, cache_dir);
    if let Some((extra, sample_ends, ids)) = read_cache(&path, LAST_MAGIC, &key, 8) {
        let total = <[u8; 8]>::try_from(extra.as_slice())
            .ok()
            .and_then(|b| usize::try_from(u64::from_le_bytes(b)).ok());
        if let Some(total) = total {
            let tokens = Tokenized {
                ids,
                sample_ends,
                complete: false,
            };
            return Ok((tokens, total, CacheUse::Reused));
        }
    }
    let (samples, total) = source.read_last(k)?;
    let header = (total as u64).to_le_bytes();
    let tokens = tokenize_into(source, &samples, false, (&path, LAST_MAGIC, &key), &header)?;
    Ok((tokens, total, CacheUse::Built))
}

/// Tokenizes read samples (refusing an empty corpus) and writes them to the
/// cache file `(path, magic, key)` with `header`.
fn tokenize_into(
    source: &Source,
    samples: &[String],
    complete: bool,
    (path, magic, key): (&Path, &[u8; 8], &[u8; 32]),
    header: &[u8],
) -> Result<Tokenized> {
    if samples.is_empty() {
        bail!(
            "corpus {} is empty (no samples); give a corpus with at least one conversation or document",
            source.describe()
        );
    }
    let (ids, sample_ends) = tokenize_all(samples)?;
    write_cache(path, magic, key, header, &sample_ends, &ids)?;
    Ok(Tokenized {
        ids,
        sample_ends,
        complete,
    })
}

// ---- cache files
//
// Layout (little endian): magic [8], key [32], a header (prefix cache:
// complete u8; held-out cache: the corpus's sample count u64), samples u64,
// tokens u64, sample_ends [samples] u64, ids [tokens] u16 (GPT-2 ids fit),
// then SHA-256 of everything before it, so a damaged file is rebuilt.

const MAGIC: &[u8; 8] = b"NLTOKv1\0";
const LAST_MAGIC: &[u8; 8] = b"NLLASTv1";

fn cache_key(source: &Source) -> Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    hasher.update(source.content_hash()?);
    hasher.update(TOKENIZER_NAME.as_bytes());
    hasher.update([0]);
    hasher.update(READER_VERSION.as_bytes());
    Ok(hasher.finalize().into())
}

fn last_cache_key(source: &Source, k: usize) -> Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    hasher.update(cache_key(source)?);
    hasher.update(b"last");
    hasher.update((k as u64).to_le_bytes());
    Ok(hasher.finalize().into())
}

fn cache_stem(source: &Source) -> String {
    let id = Sha256::digest(source.identity().as_bytes());
    let hex: String = id[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("tokens-{hex}")
}

fn cache_path(source: &Source, cache_dir: &Path) -> PathBuf {
    cache_dir.join(format!("{}.bin", cache_stem(source)))
}

fn last_cache_path(source: &Source, k: usize, cache_dir: &Path) -> PathBuf {
    cache_dir.join(format!("{}-last{k}.bin", cache_stem(source)))
}

/// The cached prefix tokenization if the file exists, is intact and has this key.
fn read_prefix_cache(path: &Path, key: &[u8; 32]) -> Option<Tokenized> {
    let (extra, sample_ends, ids) = read_cache(path, MAGIC, key, 1)?;
    Some(Tokenized {
        ids,
        sample_ends,
        complete: extra[0] == 1,
    })
}

/// A cache file's header bytes (`extra` of them), sample ends and ids, if
/// the file exists, is intact and has this magic and key.
fn read_cache(
    path: &Path,
    magic: &[u8; 8],
    key: &[u8; 32],
    extra: usize,
) -> Option<(Vec<u8>, Vec<usize>, Vec<u32>)> {
    let bytes = std::fs::read(path).ok()?;
    let body_len = bytes.len().checked_sub(32)?;
    let (body, digest) = bytes.split_at(body_len);
    if Sha256::digest(body).as_slice() != digest {
        return None;
    }
    let mut r = Reader {
        bytes: body,
        pos: 0,
    };
    if r.take(8)? != magic || r.take(32)? != key {
        return None;
    }
    let header = r.take(extra)?.to_vec();
    let samples = usize::try_from(r.u64()?).ok()?;
    let tokens = usize::try_from(r.u64()?).ok()?;
    let mut sample_ends = Vec::with_capacity(samples.min(body.len() / 8));
    for _ in 0..samples {
        sample_ends.push(usize::try_from(r.u64()?).ok()?);
    }
    let raw = r.take(tokens.checked_mul(2)?)?;
    let ids = raw
        .chunks_exact(2)
        .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
        .collect();
    if r.pos != body.len() || sample_ends.last().copied().unwrap_or(0) != tokens {
        return None;
    }
    Some((header, sample_ends, ids))
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }
}

fn write_cache(
    path: &Path,
    magic: &[u8; 8],
    key: &[u8; 32],
    header: &[u8],
    sample_ends: &[usize],
    ids: &[u32],
) -> Result<()> {
    let mut body =
        Vec::with_capacity(8 + 32 + header.len() + 16 + sample_ends.len() * 8 + ids.len() * 2 + 32);
    body.extend_from_slice(magic);
    body.extend_from_slice(key);
    body.extend_from_slice(header);
    body.extend_from_slice(&(sample_ends.len() as u64).to_le_bytes());
    body.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    for &end in sample_ends {
        body.extend_from_slice(&(end as u64).to_le_bytes());
    }
    for &id in ids {
        let Ok(id) = u16::try_from(id) else {
            bail!("token id {id} does not fit the cache's 16-bit ids (GPT-2 ids are < 50257)");
        };
        body.extend_from_slice(&id.to_le_bytes());
    }
    let digest = Sha256::digest(&body);
    body.extend_from_slice(&digest);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create token cache directory {}; choose a writable one",
            dir.display()
        )
    })?;
    // Write then rename, so a crash never leaves a half-written cache behind.
    // Unique per host, process and call: parallel sweep cells may write at once.
    let tmp = path.with_extension(format!("tmp-{}", crate::io::unique_tag()));
    std::fs::write(&tmp, &body).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!(
            "cannot write token cache {}: {e}; choose a writable cache directory with free space",
            tmp.display()
        )
    })?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move token cache into place at {}", path.display()))?;
    Ok(())
}
