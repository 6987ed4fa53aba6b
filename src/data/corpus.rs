//! Corpus readers. Every reader yields samples (one conversation or document
//! each) in file order; see the module docs in `data/mod.rs` for the formats.

use anyhow::{bail, Context, Result};
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, GenericListArray, OffsetSizeTrait};
use arrow_schema::DataType;
use flate2::read::GzDecoder;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The default corpus: chitchat-dataset 0.9.0 as gzip'd chat JSONL, made by
/// `scripts/make_chitchat_corpus.py` (licence in `assets/chitchat/LICENSE`).
static EMBEDDED_GZ: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/chitchat/chitchat-0.9.0.jsonl.gz"
));

/// How the embedded corpus is described in results and errors.
pub const EMBEDDED_NAME: &str = "embedded chitchat-dataset 0.9.0";

/// Conversations in the embedded corpus (the package's 7,168, none dropped).
pub const EMBEDDED_SAMPLES: usize = 7168;

/// A line consisting of exactly this (trailing whitespace ignored) separates
/// samples inside one plain-text file.
pub const TEXT_SEPARATOR: &str = "<|endofsample|>";

/// Bumped whenever the text a sample yields changes, so caches keyed on it
/// are rebuilt.
pub const READER_VERSION: &str = "samples v1: chat contents joined by \\n; text split on <|endofsample|> lines, blank samples skipped";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Parquet,
    Jsonl,
    JsonlGz,
    Text,
}

impl Format {
    /// The format a file name implies, if any.
    fn of(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        if name.ends_with(".parquet") {
            Some(Format::Parquet)
        } else if name.ends_with(".jsonl") {
            Some(Format::Jsonl)
        } else if name.ends_with(".jsonl.gz") {
            Some(Format::JsonlGz)
        } else if name.ends_with(".txt") {
            Some(Format::Text)
        } else {
            None
        }
    }
}

/// Where samples come from: the embedded corpus or an ordered list of files
/// that all have one format.
#[derive(Clone, Debug)]
pub enum Source {
    Embedded,
    Files {
        /// The corpus string as the user gave it.
        given: String,
        format: Format,
        files: Vec<PathBuf>,
        /// The corpus string named one file (a .txt is then split on
        /// separator lines) rather than a directory or pattern.
        single_file: bool,
    },
}

impl Source {
    /// Works out which files a corpus string names: "" = embedded; a file; a
    /// directory (its recognised files in name order); or `DIR/prefix*suffix`.
    pub fn resolve(corpus: &str) -> Result<Source> {
        if corpus.is_empty() {
            return Ok(Source::Embedded);
        }
        let path = Path::new(corpus);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.contains('*') {
            return Self::from_pattern(corpus, path, name);
        }
        if !path.exists() {
            bail!(
                "corpus path {corpus} does not exist; give a .parquet, .jsonl, .jsonl.gz or \
                 .txt file, a directory of them, or an empty corpus for the embedded one"
            );
        }
        if path.is_dir() {
            let files = list_dir(path)?;
            return Self::from_files(corpus, files);
        }
        let Some(format) = Format::of(path) else {
            bail!(
                "cannot tell the format of corpus file {corpus} from its name; \
                 name it .parquet, .jsonl, .jsonl.gz or .txt"
            );
        };
        Ok(Source::Files {
            given: corpus.to_string(),
            format,
            files: vec![path.to_path_buf()],
            single_file: true,
        })
    }

    fn from_pattern(corpus: &str, path: &Path, name: &str) -> Result<Source> {
        let Some((prefix, suffix)) = name.split_once('*') else {
            bail!("corpus pattern {corpus} has no '*'");
        };
        if suffix.contains('*') {
            bail!("corpus pattern {corpus} has more than one '*'; use one, e.g. DIR/train_sft-*.parquet");
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            bail!(
                "directory {} of corpus pattern {corpus} does not exist",
                dir.display()
            );
        }
        let files: Vec<PathBuf> = list_dir(dir)?
            .into_iter()
            .filter(|f| {
                let n = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
                n.len() >= prefix.len() + suffix.len()
                    && n.starts_with(prefix)
                    && n.ends_with(suffix)
            })
            .collect();
        if files.is_empty() {
            bail!("corpus pattern {corpus} matches no .parquet, .jsonl, .jsonl.gz or .txt file");
        }
        Self::from_files(corpus, files)
    }

    /// Checks that the (name-ordered) files are one format and one split.
    fn from_files(corpus: &str, files: Vec<PathBuf>) -> Result<Source> {
        if files.is_empty() {
            bail!(
                "corpus directory {corpus} has no .parquet, .jsonl, .jsonl.gz or .txt files; \
                 give a directory holding the corpus files"
            );
        }
        let format = Format::of(&files[0]).context("unrecognised corpus file")?;
        if let Some(other) = files.iter().find(|f| Format::of(f) != Some(format)) {
            bail!(
                "corpus {corpus} mixes file formats ({} and {}); give a single format",
                files[0].display(),
                other.display()
            );
        }
        let mut splits: Vec<String> = files.iter().filter_map(|f| shard_stem(f)).collect();
        splits.sort();
        splits.dedup();
        if splits.len() > 1 {
            bail!(
                "corpus {corpus} holds files of several splits ({}); give one file, a directory \
                 holding one split, or a pattern such as {}/{}-*{}",
                splits.join(", "),
                corpus.trim_end_matches('/'),
                splits
                    .iter()
                    .find(|s| s.contains("train"))
                    .unwrap_or(&splits[0]),
                match format {
                    Format::Parquet => ".parquet",
                    Format::Jsonl => ".jsonl",
                    Format::JsonlGz => ".jsonl.gz",
                    Format::Text => ".txt",
                }
            );
        }
        Ok(Source::Files {
            given: corpus.to_string(),
            format,
            files,
            single_file: false,
        })
    }

    /// Human-readable name recorded with results.
    pub fn describe(&self) -> String {
        match self {
            Source::Embedded => EMBEDDED_NAME.to_string(),
            Source::Files { given, .. } => given.clone(),
        }
    }

    /// Stable identity of the corpus location (not its content); names its
    /// cache file, so a changed source overwrites its own stale cache.
    pub fn identity(&self) -> String {
        match self {
            Source::Embedded => "embedded".to_string(),
            Source::Files { given, .. } => {
                let path = Path::new(given);
                std::fs::canonicalize(path)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| given.clone())
            }
        }
    }

    /// SHA-256 over the source's files (names, lengths, bytes), in order.
    pub fn content_hash(&self) -> Result<[u8; 32]> {
        let mut hasher = Sha256::new();
        match self {
            Source::Embedded => {
                hasher.update(b"embedded\0");
                hasher.update(EMBEDDED_GZ);
            }
            Source::Files { format, files, .. } => {
                hasher.update(format!("{format:?}\0").as_bytes());
                for file in files {
                    let label = file.display();
                    let mut reader = std::fs::File::open(file)
                        .with_context(|| format!("cannot read corpus file {label}"))?;
                    let name = file.file_name().map(|n| n.to_string_lossy().to_string());
                    hasher.update(name.unwrap_or_default().as_bytes());
                    hasher.update([0]);
                    // Streamed, so multi-GB shards are not held in memory.
                    let len = std::io::copy(&mut reader, &mut hasher)
                        .with_context(|| format!("cannot read corpus file {label}"))?;
                    hasher.update(len.to_le_bytes());
                }
            }
        }
        Ok(hasher.finalize().into())
    }

    /// Reads samples in order, stopping once `limit` samples are read
    /// (`None` = all).
    pub fn read(&self, limit: Option<usize>) -> Result<Vec<String>> {
        let limit = limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        for part in self.parts() {
            if out.len() >= limit {
                break;
            }
            self.read_part(part, limit, &mut out)?;
        }
        Ok(out)
    }

    /// The last `k` samples in order, and how many the corpus has. Reads one
    /// file at a time and keeps only the last `k`, so memory is one file's
    /// samples, not the corpus's.
    pub fn read_last(&self, k: usize) -> Result<(Vec<String>, usize)> {
        let (mut last, mut total) = (Vec::new(), 0);
        for part in self.parts() {
            let mut here = Vec::new();
            self.read_part(part, usize::MAX, &mut here)?;
            total += here.len();
            last.append(&mut here);
            let extra = last.len().saturating_sub(k);
            last.drain(..extra);
        }
        Ok((last, total))
    }

    /// The units `read_part` reads: the corpus's files, or the one embedded text.
    fn parts(&self) -> std::ops::Range<usize> {
        match self {
            Source::Embedded => 0..1,
            Source::Files { files, .. } => 0..files.len(),
        }
    }

    /// Appends the samples of part `i` (see `parts`) to `out` until it holds `limit`.
    fn read_part(&self, i: usize, limit: usize, out: &mut Vec<String>) -> Result<()> {
        match self {
            Source::Embedded => {
                let text = gunzip(EMBEDDED_GZ, "the embedded corpus")?;
                let label = "embedded corpus assets/chitchat/chitchat-0.9.0.jsonl.gz";
                read_jsonl(&text, label, limit, out)
            }
            Source::Files {
                format,
                files,
                single_file,
                ..
            } => {
                let file = &files[i];
                match format {
                    Format::Parquet => read_parquet(file, limit, out),
                    Format::Jsonl => {
                        let bytes = read_file(file)?;
                        read_jsonl(&bytes, &file.display().to_string(), limit, out)
                    }
                    Format::JsonlGz => {
                        let label = file.display().to_string();
                        let bytes = gunzip(&read_file(file)?, &label)?;
                        read_jsonl(&bytes, &label, limit, out)
                    }
                    Format::Text if *single_file => read_text_file(file, limit, out),
                    Format::Text => {
                        let text = utf8(&read_file(file)?, &file.display().to_string())?;
                        if !text.trim().is_empty() {
                            out.push(text);
                        }
                        Ok(())
                    }
                }
            }
        }
    }
}

/// All samples of a corpus ("" = the embedded corpus), in order.
pub fn load_samples(corpus: &str) -> Result<Vec<String>> {
    let source = Source::resolve(corpus)?;
    let samples = source.read(None)?;
    if samples.is_empty() {
        bail!(
            "corpus {} is empty (no samples); give a corpus with at least one conversation or document",
            source.describe()
        );
    }
    Ok(samples)
}

/// Regular files of a directory with a recognised corpus extension, in
/// byte-wise name order (zero-padded shard numbers sort correctly).
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list corpus directory {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry =
            entry.with_context(|| format!("cannot list corpus directory {}", dir.display()))?;
        let path = entry.path();
        if path.is_file() && Format::of(&path).is_some() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// For Hugging Face shard names `<split>-00000-of-00003[-hash].ext`, the
/// split name; None for other names.
fn shard_stem(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let of = name.find("-of-")?;
    let head = &name[..of];
    let digits = head.len() - head.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let stem = head[..head.len() - digits].strip_suffix('-')?;
    (digits > 0).then(|| stem.to_string())
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read corpus file {}", path.display()))
}

fn gunzip(bytes: &[u8], label: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .with_context(|| {
            format!("{label}: cannot decompress gzip data (truncated or corrupt file?)")
        })?;
    Ok(out)
}

/// Validates UTF-8, naming the 1-based line of the first bad byte.
fn utf8(bytes: &[u8], label: &str) -> Result<String> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.to_string()),
        Err(e) => {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            bail!("{label}: line {line} is not valid UTF-8; convert the file to UTF-8")
        }
    }
}

/// Chat JSONL: one `{"messages":[{"content":..,"role":..},..]}` per line;
/// blank lines are skipped, other fields ignored.
fn read_jsonl(bytes: &[u8], label: &str, limit: usize, out: &mut Vec<String>) -> Result<()> {
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        if out.len() >= limit {
            break;
        }
        let line_no = i + 1;
        let line = std::str::from_utf8(raw).map_err(|_| {
            anyhow::anyhow!("{label}: line {line_no} is not valid UTF-8; convert the file to UTF-8")
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line).with_context(|| {
            format!("{label}: line {line_no} is not valid JSON (truncated or corrupt file?)")
        })?;
        let Some(messages) = value.get("messages") else {
            bail!(
                "{label}: line {line_no} has no \"messages\" field; each line must be \
                 {{\"messages\":[{{\"content\":..,\"role\":..}},..]}}"
            );
        };
        let Some(messages) = messages.as_array() else {
            bail!("{label}: line {line_no}: \"messages\" is not a list of {{\"content\",\"role\"}} objects");
        };
        let mut parts = Vec::with_capacity(messages.len());
        for (k, message) in messages.iter().enumerate() {
            let Some(content) = message.get("content").and_then(|c| c.as_str()) else {
                bail!("{label}: line {line_no}: message {k} has no string \"content\" field");
            };
            parts.push(content);
        }
        out.push(parts.join("\n"));
    }
    Ok(())
}

/// Parquet in the Hugging Face chat layout: a `messages` column of
/// list<struct<content: string, role: string>>; other columns are not read.
fn read_parquet(path: &Path, limit: usize, out: &mut Vec<String>) -> Result<()> {
    let label = path.display().to_string();
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open corpus file {label}"))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{label}: not a readable parquet file (truncated or corrupt?)"))?;
    let fields = builder.parquet_schema().root_schema().get_fields();
    let Some(index) = fields.iter().position(|f| f.name() == "messages") else {
        let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
        bail!(
            "{label}: no \"messages\" column (columns: {}); expected the Hugging Face chat \
             format, messages: list<struct<content, role>>",
            names.join(", ")
        );
    };
    let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(1024)
        .build()
        .with_context(|| format!("{label}: cannot read the \"messages\" column"))?;
    let mut row = 0;
    for batch in reader {
        if out.len() >= limit {
            break;
        }
        let batch = batch.with_context(|| {
            format!(
                "{label}: cannot read rows from row index {row} on (truncated or corrupt file?)"
            )
        })?;
        let column = batch.column(0);
        let take = (limit - out.len()).min(column.len());
        match column.data_type() {
            DataType::List(_) => chat_rows(column.as_list::<i32>(), take, &label, row, out)?,
            DataType::LargeList(_) => chat_rows(column.as_list::<i64>(), take, &label, row, out)?,
            other => bail!(
                "{label}: \"messages\" column has type {other}, expected list<struct<content: string, role: string>>"
            ),
        }
        row += take;
    }
    Ok(())
}

/// Appends the first `take` rows of one batch of the `messages` column.
fn chat_rows<O: OffsetSizeTrait>(
    list: &GenericListArray<O>,
    take: usize,
    label: &str,
    first_row: usize,
    out: &mut Vec<String>,
) -> Result<()> {
    let Some(messages) = list.values().as_struct_opt() else {
        bail!(
            "{label}: \"messages\" items have type {}, expected struct<content: string, role: string>",
            list.values().data_type()
        );
    };
    let Some(content) = messages.column_by_name("content") else {
        bail!("{label}: \"messages\" items have no \"content\" field");
    };
    if !matches!(
        content.data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        bail!(
            "{label}: \"content\" has type {}, expected string",
            content.data_type()
        );
    }
    let offsets = list.value_offsets();
    for i in 0..take {
        let row = first_row + i;
        if list.is_null(i) {
            bail!("{label}: row index {row}: \"messages\" is null");
        }
        let (start, end) = (offsets[i].as_usize(), offsets[i + 1].as_usize());
        let mut parts = Vec::with_capacity(end - start);
        for j in start..end {
            let Some(text) = string_at(content, j).filter(|_| messages.is_valid(j)) else {
                bail!(
                    "{label}: row index {row}: message {} has no content (null)",
                    j - start
                );
            };
            parts.push(text);
        }
        out.push(parts.join("\n"));
    }
    Ok(())
}

fn string_at(array: &ArrayRef, i: usize) -> Option<&str> {
    if array.is_null(i) {
        return None;
    }
    if let Some(a) = array.as_string_opt::<i32>() {
        return Some(a.value(i));
    }
    if let Some(a) = array.as_string_opt::<i64>() {
        return Some(a.value(i));
    }
    array.as_string_view_opt().map(|a| a.value(i))
}

/// One .txt file: samples separated by `TEXT_SEPARATOR` lines; blank samples
/// (e.g. after a trailing separator) are skipped.
fn read_text_file(path: &Path, limit: usize, out: &mut Vec<String>) -> Result<()> {
    let text = utf8(&read_file(path)?, &path.display().to_string())?;
    let mut current: Vec<&str> = Vec::new();
    let flush = |lines: &mut Vec<&str>, out: &mut Vec<String>| {
        let sample = lines.join("\n");
        if !sample.trim().is_empty() && out.len() < limit {
            out.push(sample);
        }
        lines.clear();
    };
    for line in text.split('\n') {
        if line.trim_end() == TEXT_SEPARATOR {
            flush(&mut current, out);
        } else {
            current.push(line.strip_suffix('\r').unwrap_or(line));
        }
    }
    flush(&mut current, out);
    Ok(())
}
