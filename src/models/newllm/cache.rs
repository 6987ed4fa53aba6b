//! Context passes and the Phase-2 context caches (docs/algorithm.md section 4).
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
    let p16 = model.context_bf16();
    let bar = crate::progress::bar(count as u64, "recurrent pass (tokens)");
    for j in 0..count {
        if j % 256 == 0 {
            bar.set_position(j as u64);
        }
        model.token_input(ids, j, 1, &mut x);
        model.context_forward(p16.as_deref(), &ctx, &x, 1, &mut acts);
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
    model.context_forward(None, ctx_in, x, rows, acts);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::models::newllm::phase1::Phase1;
    use crate::ops::tests::fill;

    fn tiny(all_layers: bool, k: usize) -> Config {
        Config {
            vocab_size: 50,
            embed_dim: 8,
            context_dim: 8,
            num_layers: 2,
            num_input_tokens: k,
            token_input_all_layers: all_layers,
            threads: 1,
            ..Config::default()
        }
    }

    fn ids(n: usize) -> Vec<u32> {
        (0..n).map(|i| ((i * 7 + i / 3) % 50) as u32).collect()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
    }

    #[test]
    fn context_inputs_are_zero_then_the_previous_source_row() {
        let c = 3;
        let src: Vec<f32> = (0..5 * c).map(|v| v as f32 + 1.0).collect();
        let mut out = vec![f32::NAN; 4 * c];
        context_inputs(&src, c, 0, 4, &mut out);
        assert_eq!(&out[..c], &[0.0; 3]);
        assert_eq!(&out[c..], &src[..3 * c]);
        // a later batch: positions 2 and 3 read rows 1 and 2; the rest untouched
        let mut out = vec![f32::NAN; 4 * c];
        context_inputs(&src, c, 2, 2, &mut out);
        assert_eq!(&out[..2 * c], &src[c..3 * c]);
        assert!(out[2 * c..].iter().all(|v| v.is_nan()));
    }

    /// The recurrence written out: one token at a time from a zero context.
    fn by_hand(model: &Model, ids: &[u32], count: usize) -> Vec<f32> {
        let c = model.cfg.context_dim;
        let mut acts = BlockActs::new(&model.context, 1);
        let mut x = vec![0.0; model.cfg.token_input_dim()];
        let mut ctx = vec![0.0; c];
        let mut outs = Vec::new();
        for j in 0..count {
            model.token_input(ids, j, 1, &mut x);
            model.context_forward(None, &ctx, &x, 1, &mut acts);
            ctx = acts.last()[..c].to_vec();
            outs.extend_from_slice(&ctx);
        }
        outs
    }

    #[test]
    fn sequential_pass_is_the_recurrence_one_token_at_a_time() {
        for (all, k) in [(false, 1), (true, 2)] {
            let cfg = tiny(all, k);
            let model = Model::new(&cfg, None).unwrap();
            let ids = ids(40);
            let got = sequential_pass(&model, &ids, 37);
            assert_eq!(got.len(), 37 * cfg.context_dim);
            assert_eq!(got, by_hand(&model, &ids, 37), "all={all} k={k}");
        }
    }

    #[test]
    fn train_cache_variants() {
        let cfg = tiny(false, 1);
        let model = Model::new(&cfg, None).unwrap();
        let (n, c) = (30, cfg.context_dim);
        let ids = ids(n);
        let mut prev = vec![0.0; n * c];
        fill(&mut prev, 21);
        // shifted: input(j) = prev[j - 1], so the source is prev rows 0..n-2
        let shifted = train_cache(&model, &ids, &prev, TrainCache::Shifted);
        assert_eq!(shifted, prev[..(n - 1) * c]);
        // sequential: the recurrent pass over positions 0..n-2, prev unused
        let seq = train_cache(&model, &ids, &prev, TrainCache::Sequential);
        assert_eq!(seq, by_hand(&model, &ids, n - 1));
    }

    #[test]
    fn recomputed_layers_reproduce_the_sequential_pass() {
        // The cache-source identity: from src = the sequential pass, position
        // j's recomputed last layer is src[j] itself.
        for (all, k) in [(false, 1), (true, 2)] {
            let cfg = tiny(all, k);
            let model = Model::new(&cfg, None).unwrap();
            let (n, c) = (40, cfg.context_dim);
            let ids = ids(n);
            let src = sequential_pass(&model, &ids, n - 1);
            let cap = 12;
            let mut acts = BlockActs::new(&model.context, cap);
            let mut ctx_in = vec![0.0; cap * c];
            let mut x = vec![0.0; cap * cfg.token_input_dim()];
            for (start, rows) in [(0, 12), (5, 9), (n - 1 - 4, 4)] {
                recompute_layers(
                    &model,
                    &ids,
                    &src,
                    start,
                    rows,
                    &mut ctx_in,
                    &mut x,
                    &mut acts,
                );
                let want = &src[start * c..(start + rows) * c];
                let d = max_diff(&acts.last()[..rows * c], want);
                assert!(d < 1e-5, "all={all} k={k} start={start}: {d}");
            }
        }
    }

    #[test]
    fn recomputed_layers_from_the_shifted_source_match_phase1_outputs() {
        // Shifted cache: position j >= 1 has input prev[j - 1] and token x_j,
        // exactly the noise-free Phase-1 forward of row j.
        let cfg = Config {
            phase1_context_noise: 0.0,
            phase1_batch_size: 64,
            ..tiny(false, 1)
        };
        let model = Model::new(&cfg, None).unwrap();
        let (n, c) = (100, cfg.context_dim);
        let ids = ids(n);
        let mut p1 = Phase1::new(&model, &ids, None);
        p1.accumulate(&model, &ids);
        let src = train_cache(&model, &ids, &p1.prev, TrainCache::Shifted);
        let rows = n - 1;
        let mut acts = BlockActs::new(&model.context, rows);
        let (mut ctx_in, mut x) = (vec![0.0; rows * c], vec![0.0; rows * c]);
        recompute_layers(&model, &ids, &src, 0, rows, &mut ctx_in, &mut x, &mut acts);
        let d = max_diff(&acts.last()[c..rows * c], &p1.out[c..rows * c]);
        assert!(d < 1e-5, "{d}");
        // row 0 starts from a zero context, not Phase 1's wrap-around
        assert!(ctx_in[..c].iter().all(|&v| v == 0.0));
        assert!(max_diff(&acts.last()[..c], &p1.out[..c]) > 1e-3);
    }
}
