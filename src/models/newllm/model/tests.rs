//! Tests of the New-LLM model: parameter layout and counts, and every
//! backward against finite differences.

use super::*;
use crate::ops::tests::{assert_grad_close, fill, numeric_grad};

fn tiny(all_layers: bool, k: usize) -> Config {
    Config {
        vocab_size: 11,
        embed_dim: 4,
        context_dim: 5,
        num_layers: 3,
        num_input_tokens: k,
        token_input_all_layers: all_layers,
        ..Config::default()
    }
}

/// The memory module's activation size, from the config alone, is what
/// `BlockActs::new` allocates.
#[test]
fn activation_bytes_from_the_config_match_the_buffers() {
    for (all_layers, k) in [(false, 1), (true, 1), (false, 2), (true, 2)] {
        let cfg = tiny(all_layers, k);
        let m = Model::new(&cfg, None).unwrap();
        let (ctx, tok) = layer_shapes(&cfg);
        for (block, shapes) in [(&m.context, ctx), (&m.token, tok)] {
            let a = BlockActs::new(block, 7);
            let floats: usize = a
                .layers
                .iter()
                .map(|l| l.h.len() + l.xhat.len() + l.rstd.len() + l.y.len())
                .sum::<usize>()
                + a.d_a.len()
                + a.d_b.len()
                + a.dz.len();
            let predicted = crate::models::newllm::memory::block_acts_bytes(&shapes, 7);
            assert_eq!(predicted, 4 * floats as u64, "{all_layers} {k}");
        }
    }
}

#[test]
fn seed_parameter_counts() {
    let m = Model::new(&Config::default(), None).unwrap();
    assert_eq!(
        m.param_counts(),
        [15_394_304, 8_566_272, 38_647_633, 38_597_376]
    );
    assert_eq!(block_param_counts(&m.cfg), (15_394_304, 8_566_272));
    // The config-only count follows every layout: true mode, k = 2, small dims.
    for (all_layers, k) in [(true, 1), (false, 2), (true, 2)] {
        let cfg = tiny(all_layers, k);
        let m = Model::new(&cfg, None).unwrap();
        let [ctx, tok, ..] = m.param_counts();
        assert_eq!(block_param_counts(&cfg), (ctx, tok), "{all_layers} {k}");
    }
    let c = m
        .context
        .params
        .find("context_block.layers.0.fnn.0.weight")
        .unwrap();
    assert_eq!(c.shape, vec![1408, 1536]);
    assert_eq!(
        m.token
            .params
            .get("token_output.weight")
            .unwrap()
            .iter()
            .filter(|&&x| x != 0.0)
            .count(),
        0
    );
}

#[test]
fn token_input_concatenates_oldest_first_with_zero_padding() {
    let m = Model::new(&tiny(false, 2), None).unwrap();
    let ids = [3u32, 7, 1];
    let mut x = vec![9.0; 3 * 8];
    m.token_input(&ids, 0, 3, &mut x);
    assert!(x[..4].iter().all(|&v| v == 0.0));
    assert_eq!(&x[4..8], &m.token_vectors[12..16]);
    assert_eq!(&x[8..12], &m.token_vectors[12..16]);
    assert_eq!(&x[12..16], &m.token_vectors[28..32]);
    assert_eq!(&x[20..24], &m.token_vectors[4..8]);
}

/// Scalar loss over the context block output for FD checks: sum(w * c_L).
fn context_loss(m: &Model, c: &[f32], x: &[f32], rows: usize, wts: &[f32]) -> f64 {
    let mut acts = BlockActs::new(&m.context, rows);
    m.context_forward(None, c, x, rows, &mut acts);
    acts.last()[..wts.len()]
        .iter()
        .zip(wts)
        .map(|(a, b)| (a * b) as f64)
        .sum()
}

#[test]
fn context_block_backward_matches_finite_differences() {
    for all in [false, true] {
        for k in [1, 2] {
            let cfg = tiny(all, k);
            let mut m = Model::new(&cfg, None).unwrap();
            let rows = 3;
            let mut c = vec![0.0; rows * cfg.context_dim];
            fill(&mut c, 11);
            let mut x = vec![0.0; rows * cfg.token_input_dim()];
            m.token_input(&[1, 2, 3], 0, rows, &mut x);
            let mut wts = vec![0.0; rows * cfg.context_dim];
            fill(&mut wts, 12);
            let mut acts = BlockActs::new(&m.context, rows);
            m.context_forward(None, &c, &x, rows, &mut acts);
            let mut grad = vec![0.0; m.context.params.data.len()];
            let mut dout = wts.clone();
            m.context_backward(&c, &x, rows, &mut acts, &mut dout, &mut grad);
            let mut params = m.context.params.data.clone();
            let num = numeric_grad(&mut params, |p| {
                m.context.params.data.copy_from_slice(p);
                context_loss(&m, &c, &x, rows, &wts)
            });
            assert_grad_close(&grad, &num, 2e-2, &format!("context all={all} k={k}"));
        }
    }
}

#[test]
fn token_block_backward_matches_finite_differences() {
    for (all, k) in [(false, 1), (false, 2), (true, 1)] {
        let mut cfg = tiny(all, k);
        cfg.vocab_size = 7;
        let mut m = Model::new(&cfg, None).unwrap();
        // nonzero head so every TokenBlock gradient is exercised
        let hw = m.head_w;
        fill(&mut m.token.params.data[hw..], 13);
        let rows = 3;
        let mut c = vec![0.0; rows * cfg.context_dim];
        fill(&mut c, 14);
        let mut x = vec![0.0; rows * cfg.token_input_dim()];
        m.token_input(&[1, 2, 3], 0, rows, &mut x);
        let targets = [4u32, 0, 6];
        let mut ctx = BlockActs::new(&m.context, rows);
        m.context_forward(None, &c, &x, rows, &mut ctx);
        let loss = |m: &Model| {
            let mut acts = BlockActs::new(&m.token, rows);
            let mut logits = vec![0.0; rows * cfg.vocab_size];
            m.token_forward(&ctx, &x, rows, &mut acts, &mut logits);
            ops::cross_entropy(&mut logits, &targets, false).0 / rows as f64
        };
        let mut acts = BlockActs::new(&m.token, rows);
        let mut logits = vec![0.0; rows * cfg.vocab_size];
        m.token_forward(&ctx, &x, rows, &mut acts, &mut logits);
        ops::cross_entropy(&mut logits, &targets, true);
        let mut grad = vec![0.0; m.token.params.data.len()];
        m.token_backward(&ctx, &x, rows, &mut acts, &logits, &mut grad);
        let mut params = m.token.params.data.clone();
        let num = numeric_grad(&mut params, |p| {
            m.token.params.data.copy_from_slice(p);
            loss(&m)
        });
        assert_grad_close(&grad, &num, 2e-2, &format!("token all={all} k={k}"));
    }
}
