//! Every New-LLM size estimate in one place: what each stage of a cell holds,
//! and the predicted peak of the whole cell, checked against the machine
//! before anything large is allocated.

use super::model::{Block, Model};

/// Bytes of `BlockActs::new(block, cap)`: per layer h, xhat, y (out wide) and
/// rstd, plus three backward scratch buffers as wide as the widest layer.
pub fn block_acts_bytes(block: &Block, cap: usize) -> u64 {
    let widest = block
        .layers
        .iter()
        .flat_map(|l| [l.out, l.in_a, l.in_b])
        .max()
        .unwrap_or(0);
    let per_row: usize = block.layers.iter().map(|l| 3 * l.out + 1).sum::<usize>() + 3 * widest;
    (per_row * cap * 4) as u64
}

/// Bytes Phase 1 holds for a stream of `n` tokens: prev and out (n x C),
/// gradient and Adam moments, and one batch of inputs and activations.
pub fn phase1_bytes(model: &Model, n: usize) -> u64 {
    let cfg = &model.cfg;
    let cap = cfg.phase1_batch_size.min(n);
    let p = model.context.params.data.len();
    (4 * (2 * n * cfg.context_dim + 3 * p + cap * (2 * cfg.context_dim + cfg.token_input_dim())))
        as u64
        + block_acts_bytes(&model.context, cap)
}

/// Bytes Phase 2 holds besides the caches: gradient, Adam moments, a copy of
/// the best epoch's weights, one batch of logits, inputs and activations.
pub fn phase2_bytes(model: &Model) -> u64 {
    let cfg = &model.cfg;
    let cap = cfg.phase2_batch_size;
    let p = model.token.params.data.len();
    (4 * (4 * p + cap * (cfg.vocab_size + cfg.context_dim + cfg.token_input_dim()))) as u64
        + block_acts_bytes(&model.context, cap)
        + block_acts_bytes(&model.token, cap)
}

/// Predicted peak resident bytes of a cell with `n` train and `m` val tokens.
/// Phase 1 holds prev + out (n x C each); Phase 2 holds the two cache sources
/// (C per token) and the head's logits; the model and optimiser state stay.
pub fn predict_peak_bytes(model: &Model, n: usize, m: usize) -> u64 {
    let cfg = &model.cfg;
    let (v, e, c) = (
        cfg.vocab_size as u64,
        cfg.embed_dim as u64,
        cfg.context_dim as u64,
    );
    let model_bytes = 4
        * (2 * v * e
            + model.context.params.data.len() as u64
            + model.token.params.data.len() as u64);
    let baseline = 128 << 20; // binary, tokenizer tables, corpus text, allocator slack
    let ids = 4 * (n + m) as u64;
    let phase1 = phase1_bytes(model, n);
    // caches + prev (kept until the train cache is built)
    let caches = 4 * c * (n as u64 + m as u64 + n as u64);
    let phase2 = phase2_bytes(model) + 4 * c * (n + m) as u64;
    baseline + model_bytes + ids + phase1.max(caches).max(phase2)
}
