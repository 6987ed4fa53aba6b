//! Corpora, tokenizer, token streams and their caches, and the train/validation
//! split (docs/algorithm.md section 1).
//!
//! # Corpus strings
//! - `""`: the embedded corpus, chitchat-dataset 0.9.0 (MIT, real human
//!   chats, 7,168 conversations in the package's `dataset.json` order), built
//!   by `scripts/make_chitchat_corpus.py`; licence in `assets/chitchat/`.
//! - a `.parquet` file, a directory of them or a pattern `DIR/prefix*suffix`:
//!   Hugging Face chat format as UltraChat 200k ships it (`messages`:
//!   list<struct<content, role>>). Files are read in byte-wise name order
//!   (`train_sft-00000-of-00003...` first). A directory holding several
//!   splits (`test_sft-*`, `train_sft-*`) is refused: name one split.
//! - a `.jsonl` (or `.jsonl.gz`) file or directory: the same fields, one
//!   `{"messages":[{"content":..,"role":..},..]}` per line.
//! - a `.txt` file: samples separated by lines that are exactly
//!   `<|endofsample|>` (the newline before the separator belongs to it); a
//!   directory of `.txt` files: one sample per file. Blank samples are skipped.
//!
//! One sample = one conversation (its message contents joined with `"\n"`,
//! roles dropped) or one document.

pub mod corpus;
pub mod embeddings;
pub mod split;
pub mod stream;
pub mod tokenizer;

pub use corpus::{load_samples, Source, EMBEDDED_NAME, EMBEDDED_SAMPLES, TEXT_SEPARATOR};
pub use embeddings::load_pretrained_embeddings;
pub use split::{
    check_fits, inspect, inspect_with, load_split, load_split_with_status, val_len, Split,
    Validation,
};
pub use stream::CacheUse;
pub use tokenizer::{Tokenizer, GPT2_VOCAB};

#[cfg(test)]
mod tests;
