//! GPT-2 byte-level BPE (tiktoken's `r50k_base`, 50,257 tokens).

use anyhow::{anyhow, Result};
use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;

/// Vocabulary size of GPT-2's BPE (ids 0..=50256).
pub const GPT2_VOCAB: usize = 50257;

/// Name recorded in cache keys, so a different tokenizer never reuses ids.
pub const TOKENIZER_NAME: &str = "tiktoken r50k_base (GPT-2)";

/// Building the BPE tables takes ~0.1 s, so one copy is shared by all callers.
static GPT2: OnceLock<CoreBPE> = OnceLock::new();

/// GPT-2 tokenizer. Cheap to create after the first call.
#[derive(Clone, Copy)]
pub struct Tokenizer {
    bpe: &'static CoreBPE,
}

impl Tokenizer {
    pub fn gpt2() -> Result<Self> {
        if GPT2.get().is_none() {
            let bpe = tiktoken_rs::r50k_base()
                .map_err(|e| anyhow!("cannot build the GPT-2 (r50k_base) tokenizer: {e}"))?;
            // Another thread may have won the race; either copy is identical.
            let _ = GPT2.set(bpe);
        }
        let bpe = GPT2
            .get()
            .ok_or_else(|| anyhow!("GPT-2 tokenizer was not initialised"))?;
        Ok(Tokenizer { bpe })
    }

    /// Encodes text with no special tokens: a literal `<|endoftext|>` in the
    /// text is tokenized as ordinary characters (docs/algorithm.md: no special
    /// tokens are added between samples).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.bpe.encode_ordinary(text)
    }

    /// Decodes ids back to text. Fails on an id outside the vocabulary or when
    /// the ids cut a multi-byte character in half.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.bpe
            .decode(ids)
            .map_err(|e| anyhow!("cannot decode {} token ids: {e}", ids.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_encodes_reference_sentence() {
        let tok = Tokenizer::gpt2().unwrap();
        let text = "Hello world, this is a test.";
        let ids = tok.encode(text);
        assert_eq!(ids, vec![15496, 995, 11, 428, 318, 257, 1332, 13]);
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }

    #[test]
    fn decode_round_trips_unicode_and_whitespace() {
        let tok = Tokenizer::gpt2().unwrap();
        let text = "Grüße 👋\n\n  tabs\tand   spaces\n<|endoftext|> literal";
        let ids = tok.encode(text);
        assert!(ids.iter().all(|&id| (id as usize) < GPT2_VOCAB));
        // The literal special-token text is not mapped to id 50256.
        assert!(!ids.contains(&50256));
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }

    #[test]
    fn decode_rejects_unknown_id() {
        let tok = Tokenizer::gpt2().unwrap();
        let err = tok.decode(&[15496, 60000]).unwrap_err().to_string();
        assert!(err.contains("cannot decode 2 token ids"), "{err}");
    }
}
