//! A cell's train/validation split (docs/algorithm.md section 1), in one of two
//! modes:
//! - tail (the seed's): the first N samples as one token stream; its last
//!   `int(len * val_fraction)` tokens are validation. A larger cell is then
//!   scored on other, later text.
//! - heldout: the first N samples are all training; validation is the
//!   corpus's last `val_samples` samples, the same tokens for every N. The
//!   two never overlap: N + val_samples must fit in the corpus.
//!
//! Validation is scored per sample as well (`val_bins`), so the report can
//! resample whole conversations for the validation set's own sampling error.

use super::corpus::Source;
use super::stream::{last_tokens_for, tokens_for, CacheUse, Tokenized};
use anyhow::{bail, Result};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Where validation comes from (the config's `val_mode` with its size).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Validation {
    /// The last fraction of each cell's own stream.
    Tail(f64),
    /// The corpus's last this many samples.
    Heldout(usize),
}

impl Validation {
    pub fn of(cfg: &crate::config::Config) -> Validation {
        match cfg.val_mode {
            crate::config::ValMode::Tail => Validation::Tail(cfg.val_fraction),
            crate::config::ValMode::Heldout => Validation::Heldout(cfg.val_samples),
        }
    }
}

/// A cell's token streams: what it trains on and what it is scored on.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    /// N: samples the cell was cut from.
    pub samples: usize,
    pub train: Vec<u32>,
    pub val: Vec<u32>,
    /// End offset of each of the N samples in the stream they form (tail:
    /// `train ++ val`; heldout: `train`).
    pub sample_ends: Vec<usize>,
    /// End offset in `val` of each validation sample; in tail mode the first
    /// may be the end of a sample that began in training.
    pub val_sample_ends: Vec<usize>,
    /// Where the tokens came from: the corpus path or the embedded corpus name.
    pub source: String,
}

impl Split {
    /// The validation set's identity, a hash of its token ids: results are
    /// compared or fitted together only when theirs are equal.
    pub fn val_set_id(&self) -> String {
        let mut h = Sha256::new();
        for id in &self.val {
            h.update(id.to_le_bytes());
        }
        let digest = h.finalize();
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex} ({} tokens)", self.val.len())
    }

    /// For each validation position p (predicting `val[p + 1]`), the index
    /// of the validation sample holding its target.
    pub fn val_bins(&self) -> Vec<u32> {
        let positions = self.val.len().saturating_sub(1);
        let mut bins = Vec::with_capacity(positions);
        let mut s = 0;
        for p in 0..positions {
            while s + 1 < self.val_sample_ends.len() && self.val_sample_ends[s] <= p + 1 {
                s += 1;
            }
            bins.push(s as u32);
        }
        bins
    }

    /// Validation positions whose target lies in each validation sample.
    pub fn val_positions_per_sample(&self) -> Vec<usize> {
        let mut counts = vec![0; self.val_sample_ends.len()];
        for b in self.val_bins() {
            counts[b as usize] += 1;
        }
        counts
    }
}

/// Number of validation tokens: `int(len * val_fraction)` exactly as the
/// original computes it in Python (f64 product, truncated).
pub fn val_len(len: usize, val_fraction: f64) -> usize {
    (len as f64 * val_fraction) as usize
}

/// Tokenizes the first `samples` samples of `corpus` ("" = embedded) and
/// splits them, reusing the token caches in `cache_dir`.
pub fn load_split(
    corpus: &str,
    samples: usize,
    validation: Validation,
    cache_dir: &Path,
) -> Result<Split> {
    load_split_with_status(corpus, samples, validation, cache_dir).map(|(split, _)| split)
}

/// `load_split`, also saying whether the caches were reused.
pub fn load_split_with_status(
    corpus: &str,
    samples: usize,
    validation: Validation,
    cache_dir: &Path,
) -> Result<(Split, CacheUse)> {
    if let Validation::Tail(f) = validation {
        if !(f > 0.0 && f < 1.0) {
            bail!("val_fraction is {f}; it must be between 0 and 1 (exclusive), e.g. 0.1");
        }
    }
    if samples == 0 {
        bail!("0 samples requested; sample counts must be at least 1");
    }
    let source = Source::resolve(corpus)?;
    let name = source.describe();
    match validation {
        Validation::Tail(fraction) => {
            let (tokens, used) = tokens_for(&source, Some(samples), cache_dir)?;
            if tokens.sample_ends.len() < samples {
                bail!(
                    "corpus {name} has {} samples but {samples} were requested; lower sample_counts or give a larger corpus",
                    tokens.sample_ends.len()
                );
            }
            Ok((cut_tail(&tokens, samples, fraction, &name)?, used))
        }
        Validation::Heldout(k) => {
            let (last, total, used_last) = heldout_tokens(&source, samples, k, cache_dir)?;
            let (tokens, used) = tokens_for(&source, Some(samples), cache_dir)?;
            if tokens.sample_ends.len() < samples {
                bail!("corpus {name} changed while it was read: rerun");
            }
            let split = Split {
                samples,
                train: tokens.ids[..tokens.sample_ends[samples - 1]].to_vec(),
                val: last.ids,
                sample_ends: tokens.sample_ends[..samples].to_vec(),
                val_sample_ends: last.sample_ends,
                source: name.clone(),
            };
            let (n, m) = (split.train.len(), split.val.len());
            if n < 2 || m < 2 {
                bail!(
                    "corpus {name}: {samples} training samples give {n} tokens and its last {k} samples (of {total}) {m} validation tokens; each needs at least 2: use more samples or a larger val_samples"
                );
            }
            let used = match (used, used_last) {
                (CacheUse::Reused, CacheUse::Reused) => CacheUse::Reused,
                _ => CacheUse::Built,
            };
            Ok((split, used))
        }
    }
}

/// The corpus's last `k` samples and its sample count, refused (naming the
/// numbers) when they would overlap the first `largest` training samples.
/// A sweep calls it for its largest cell before writing anything.
fn heldout_tokens(
    source: &Source,
    largest: usize,
    k: usize,
    cache_dir: &Path,
) -> Result<(Tokenized, usize, CacheUse)> {
    let (last, total, used) = last_tokens_for(source, k, cache_dir)?;
    if largest + k > total {
        bail!(
            "corpus {} has {total} samples, too few for {largest} training samples plus a held-out validation set of {k} (val_samples) that never overlaps them: lower sample_counts or val_samples to at most {total} together, or give a larger corpus",
            source.describe()
        );
    }
    Ok((last, total, used))
}

/// Checks that a largest cell of `largest` samples fits beside the held-out
/// validation set of `cfg` (nothing to check in tail mode beyond the cell
/// itself, which its own load reports).
pub fn check_fits(cfg: &crate::config::Config, largest: usize, cache_dir: &Path) -> Result<()> {
    if let Validation::Heldout(k) = Validation::of(cfg) {
        heldout_tokens(&Source::resolve(&cfg.corpus)?, largest, k, cache_dir)?;
    }
    Ok(())
}

/// The tail split of the first `samples` samples from a tokenization that
/// covers at least that many.
fn cut_tail(tokens: &Tokenized, samples: usize, val_fraction: f64, source: &str) -> Result<Split> {
    let sample_ends = tokens.sample_ends[..samples].to_vec();
    let len = sample_ends.last().copied().unwrap_or(0);
    let val_len = val_len(len, val_fraction);
    let train_len = len - val_len;
    let split = Split {
        samples,
        train: tokens.ids[..train_len].to_vec(),
        val: tokens.ids[train_len..len].to_vec(),
        val_sample_ends: sample_ends
            .iter()
            .filter(|&&e| e > train_len)
            .map(|&e| e - train_len)
            .collect(),
        sample_ends,
        source: source.to_string(),
    };
    // Phase 2 needs at least one (input, target) pair on each side.
    if val_len < 2 || train_len < 2 {
        bail!(
            "corpus {source}: {samples} samples give {len} tokens, so train has {train_len} and \
             validation {val_len} (val_fraction {val_fraction}); each needs at least 2: use more \
             samples or another val_fraction"
        );
    }
    Ok(split)
}

/// `newllm data inspect` with the default val_fraction (0.1).
pub fn inspect(corpus: &str, sample_counts: &[usize], cache_dir: &Path) -> Result<String> {
    inspect_with(corpus, sample_counts, 0.1, cache_dir)
}

/// Report on a whole corpus: sample count, tokens per sample
/// (min/median/max), total tokens, and train/val tokens for each N. Tokenizes
/// every sample once and caches it, so later runs on any N reuse that.
pub fn inspect_with(
    corpus: &str,
    sample_counts: &[usize],
    val_fraction: f64,
    cache_dir: &Path,
) -> Result<String> {
    let source = Source::resolve(corpus)?;
    let (tokens, _) = tokens_for(&source, None, cache_dir)?;
    let mut lengths: Vec<usize> = Vec::with_capacity(tokens.sample_ends.len());
    let mut start = 0;
    for &end in &tokens.sample_ends {
        lengths.push(end - start);
        start = end;
    }
    let total = tokens.ids.len();
    let mut sorted = lengths.clone();
    sorted.sort_unstable();
    let n = sorted.len();
    // `tokens_for` never returns an empty corpus, so n >= 1.
    let median = if n % 2 == 1 {
        sorted[n / 2] as f64
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) as f64 / 2.0
    };
    let mut out = String::new();
    out.push_str(&format!("corpus: {}\n", source.describe()));
    out.push_str(&format!("samples: {n}\n"));
    out.push_str(&format!(
        "tokens per sample: min {}, median {median}, max {}\n",
        sorted[0],
        sorted[n - 1]
    ));
    out.push_str(&format!("total tokens: {total}\n"));
    out.push_str(&format!("val_fraction: {val_fraction}\n"));
    for &count in sample_counts {
        if count == 0 || count > n {
            out.push_str(&format!(
                "N = {count}: not possible, the corpus has {n} samples\n"
            ));
            continue;
        }
        let len = tokens.sample_ends[count - 1];
        let val = val_len(len, val_fraction);
        out.push_str(&format!(
            "N = {count}: {len} tokens, train {}, val {val}\n",
            len - val
        ));
    }
    Ok(out)
}
