//! Every New-LLM size estimate in one place: what each stage of a cell holds,
//! and the predicted peak of the whole cell, from the config alone, so a run
//! that cannot fit is refused before anything large is allocated.

use super::model::{block_param_counts, layer_shapes, LayerShape};
use crate::config::Config;

/// Bytes of `BlockActs::new` for these layers and `cap` rows: per layer h,
/// xhat, y (out wide) and rstd, plus three backward scratch buffers as wide
/// as the widest layer.
pub fn block_acts_bytes(layers: &[LayerShape], cap: usize) -> u64 {
    let widest = layers
        .iter()
        .flat_map(|l| [l.out, l.in_a, l.in_b])
        .max()
        .unwrap_or(0);
    let per_row: usize = layers.iter().map(|l| 3 * l.out + 1).sum::<usize>() + 3 * widest;
    (per_row * cap * 4) as u64
}

/// Parameters of the ContextBlock, and of the TokenBlock with its head.
pub fn trainable_counts(cfg: &Config) -> (usize, usize) {
    let (ctx, tok) = block_param_counts(cfg);
    (ctx, tok + cfg.vocab_size * cfg.embed_dim + cfg.vocab_size)
}

/// Bytes Phase 1 holds for a stream of `n` tokens: prev and out (n x C),
/// gradient and Adam moments, and one batch of inputs and activations.
pub fn phase1_bytes(cfg: &Config, n: usize) -> u64 {
    let cap = cfg.phase1_batch_size.min(n);
    let p = trainable_counts(cfg).0;
    (4 * (2 * n * cfg.context_dim + 3 * p + cap * (2 * cfg.context_dim + cfg.token_input_dim())))
        as u64
        + block_acts_bytes(&layer_shapes(cfg).0, cap)
}

/// Bytes Phase 2 holds besides the caches: gradient, Adam moments, a copy of
/// the best epoch's weights, one batch of logits, inputs and activations.
pub fn phase2_bytes(cfg: &Config) -> u64 {
    let cap = cfg.phase2_batch_size;
    let p = trainable_counts(cfg).1;
    let (context, token) = layer_shapes(cfg);
    (4 * (4 * p + cap * (cfg.vocab_size + cfg.context_dim + cfg.token_input_dim()))) as u64
        + block_acts_bytes(&context, cap)
        + block_acts_bytes(&token, cap)
}

/// Predicted peak resident bytes of a cell with `n` train and `m` val tokens.
/// Phase 1 holds prev + out (n x C each); Phase 2 holds the two cache sources
/// (C per token) and the head's logits; the model and optimiser state stay.
pub fn predict_peak_bytes(cfg: &Config, n: usize, m: usize) -> u64 {
    let (v, e, c) = (
        cfg.vocab_size as u64,
        cfg.embed_dim as u64,
        cfg.context_dim as u64,
    );
    let (ctx, tok) = trainable_counts(cfg);
    // embedding + its normalised copy, and both blocks
    let model_bytes = 4 * (2 * v * e + ctx as u64 + tok as u64);
    let baseline = 128 << 20; // binary, tokenizer tables, corpus text, allocator slack
    let ids = 4 * (n + m) as u64;
    let phase1 = phase1_bytes(cfg, n);
    // caches + prev (kept until the train cache is built)
    let caches = 4 * c * (n as u64 + m as u64 + n as u64);
    let phase2 = phase2_bytes(cfg) + 4 * c * (n + m) as u64;
    baseline + model_bytes + ids + phase1.max(caches).max(phase2)
}

/// Bytes of the cell's resumable state file at its largest (state.rs):
/// Phase 1's contexts and ContextBlock with its Adam moments, or Phase 2's
/// caches and TokenBlock copies. While it is replaced the old file stays
/// until the new one is complete, so the disk briefly holds two.
pub fn predict_state_bytes(cfg: &Config, n: usize, m: usize) -> u64 {
    let (ctx, tok) = trainable_counts(cfg);
    let (phase1, phase2) = super::resume::state_values(ctx, tok, n, m, cfg.context_dim);
    crate::state::file_bytes(phase1.max(phase2))
}
