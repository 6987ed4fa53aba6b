//! Corpora, tokenizer, token stream and train/validation split (ALGORITHM.md section 1).
