//! Context passes and the Phase-2 context caches (ALGORITHM.md section 4).
//!
//! Every ContextBlock layer output of position j is a deterministic function
//! of (input context of j, x_j), so a cache stores only the C-wide *source*
//! of the input contexts: input(j) = 0 for j = 0, else `src[j - 1]`. Phase 2
//! recomputes c_1..c_L per batch from it (identical numbers, a tenth of the
//! memory of keeping every layer's output).

use super::model::{BlockActs, Model};
use crate::config::TrainCache;

/// Input contexts of positions `start..start + rows` of a stream into `out`
/// (rows x C): row j is zero for j = 0, else `src[j - 1]`.
pub fn context_inputs(src: &[f32], c: usize, start: usize, rows: usize, out: &mut [f32]) {
    for (r, row) in out[..rows * c].chunks_exact_mut(c).enumerate() {
        let j = start + r;
        if j == 0 {
            row.fill(0.0);
        } else {
            row.copy_from_slice(&src[(j - 1) * c..j * c]);
        }
    }
}

/// The true recurrent pass over `ids[0..count]` from a zero context:
/// c^(j) = ContextBlock(c^(j-1), x_j). Returns the final-layer outputs
/// c^(0)..c^(count-1) (count x C). Inherently one token at a time.
pub fn sequential_pass(model: &Model, ids: &[u32], count: usize) -> Vec<f32> {
    let c = model.cfg.context_dim;
    let ke = model.cfg.token_input_dim();
    let mut outs = vec![0.0f32; count * c];
    let mut acts = BlockActs::new(&model.context, 1);
    let mut ctx = vec![0.0f32; c];
    let mut x = vec![0.0f32; ke];
    let bar = crate::progress::bar(count as u64, "recurrent pass (tokens)");
    for j in 0..count {
        if j % 256 == 0 {
            bar.set_position(j as u64);
        }
        model.token_input(ids, j, 1, &mut x);
        model.context_forward(&ctx, &x, 1, &mut acts);
        ctx.copy_from_slice(&acts.last()[..c]);
        outs[j * c..(j + 1) * c].copy_from_slice(&ctx);
    }
    bar.finish_and_clear();
    outs
}

/// The Phase-2 training cache source for positions 0..n-2 (n = train length).
/// `prev` = the final Phase-1 contexts (used by the shifted variant).
pub fn train_cache(
    model: &Model,
    train_ids: &[u32],
    prev: &[f32],
    variant: TrainCache,
) -> Vec<f32> {
    let c = model.cfg.context_dim;
    let rows = train_ids.len() - 1;
    match variant {
        TrainCache::Sequential => sequential_pass(model, train_ids, rows),
        // input(j) = prev[j - 1]: the source is prev itself, rows 0..n-2.
        TrainCache::Shifted => prev[..rows * c].to_vec(),
    }
}

/// Recomputes every ContextBlock layer output for positions
/// `start..start + rows` from a cache source into `acts`; `ctx_in` and `x`
/// are caller buffers (rows x C, rows x kE) that end up holding the inputs.
#[allow(clippy::too_many_arguments)]
pub fn recompute_layers(
    model: &Model,
    ids: &[u32],
    src: &[f32],
    start: usize,
    rows: usize,
    ctx_in: &mut [f32],
    x: &mut [f32],
    acts: &mut BlockActs,
) {
    context_inputs(src, model.cfg.context_dim, start, rows, ctx_in);
    model.token_input(ids, start, rows, x);
    model.context_forward(ctx_in, x, rows, acts);
}
