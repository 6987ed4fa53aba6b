//! Tests of the transformer: every parameter's gradient against finite
//! differences, causality through the positions, names, counts and init.

use super::*;
use crate::ops::tests::{assert_grad_close, fill, numeric_grad};

const TINY: TransformerDims = TransformerDims {
    vocab_size: 11,
    n_layer: 2,
    n_head: 2,
    d_model: 8,
    block_size: 5,
};
const INPUTS: [u32; 10] = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3];
const TARGETS: [u32; 10] = [1, 4, 1, 5, 9, 2, 6, 5, 3, 5];

/// A tiny model with every parameter random in [-0.5, 0.5) (LN gains
/// around 1), so attention is far from uniform and no gradient is ~0.
fn tiny_random() -> Transformer {
    let mut m = Transformer::new(TINY, 1).expect("valid dims");
    fill(&mut m.params, 2);
    m.params.iter_mut().for_each(|p| *p *= 0.5);
    for t in m.tensors.clone() {
        if t.name.contains("ln_") && t.name.ends_with(".weight") {
            m.params[t.offset..t.offset + t.len]
                .iter_mut()
                .for_each(|g| *g += 1.0);
        }
    }
    m
}

/// Mean cross-entropy of the first windows x t positions of INPUTS.
fn mean_loss(m: &Transformer, acts: &mut Acts, windows: usize, t: usize) -> f64 {
    let rows = windows * t;
    m.forward(acts, &INPUTS[..rows], windows, t)
        .expect("valid batch");
    let mut logits = acts.logits[..rows * TINY.vocab_size].to_vec();
    ops::cross_entropy(&mut logits, &TARGETS[..rows], false).0 / rows as f64
}

#[test]
fn names_shapes_counts_and_init() {
    let m = Transformer::new(TINY, 7).expect("valid dims");
    let (v, c, l, b) = (11, 8, 2, 5);
    let total = v * c + b * c + l * (12 * c * c + 13 * c) + 2 * c;
    assert_eq!(m.params.len(), total);
    assert_eq!(TINY.param_count_total(), total);
    assert_eq!(TINY.param_count_non_embedding(), total - v * c - b * c);
    let named = m.named_params();
    assert_eq!(named.len(), 2 + 12 * l + 2);
    assert_eq!(named[0].0, "transformer.wte.weight");
    assert_eq!(named[1].1, vec![b, c]);
    let find = |n: &str| named.iter().find(|x| x.0 == n).expect(n);
    assert_eq!(find("transformer.h.0.attn.c_attn.weight").1, vec![3 * c, c]);
    assert_eq!(find("transformer.h.1.mlp.c_proj.weight").1, vec![c, 4 * c]);
    assert!(find("transformer.h.1.ln_2.weight")
        .2
        .iter()
        .all(|&g| g == 1.0));
    assert!(find("transformer.h.0.mlp.c_fc.bias")
        .2
        .iter()
        .all(|&g| g == 0.0));
    assert!(find("transformer.ln_f.bias").2.iter().all(|&g| g == 0.0));
    // 3 [L (24 d^2 + 4 B d) + 2 d V]
    assert_eq!(
        TINY.train_flops_per_token(),
        3 * (2 * (24 * 64 + 4 * 5 * 8) + 2 * 8 * 11)
    );

    // init std: 0.02, residual projections 0.02 / sqrt(2 L)
    let big = TransformerDims {
        vocab_size: 500,
        n_layer: 8,
        n_head: 4,
        d_model: 64,
        block_size: 16,
    };
    let m = Transformer::new(big, 3).expect("valid dims");
    let std = |n: &str| {
        let x = m.named_params().into_iter().find(|t| t.0 == n).expect(n).2;
        (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    };
    for (n, want) in [
        ("transformer.wte.weight", 0.02),
        ("transformer.wpe.weight", 0.02),
        ("transformer.h.3.mlp.c_fc.weight", 0.02),
        ("transformer.h.3.attn.c_proj.weight", 0.005),
        ("transformer.h.3.mlp.c_proj.weight", 0.005),
    ] {
        assert!((std(n) / want - 1.0).abs() < 0.1, "{n}: std {}", std(n));
    }
    // same seed, same weights
    assert_eq!(
        m.params,
        Transformer::new(big, 3).expect("valid dims").params
    );
}

#[test]
fn bad_shapes_are_errors() {
    assert!(Transformer::new(TransformerDims { n_head: 3, ..TINY }, 1).is_err());
    assert!(Transformer::new(TransformerDims { n_layer: 0, ..TINY }, 1).is_err());
    let m = Transformer::new(TINY, 1).expect("valid dims");
    let mut acts = Acts::new(&TINY, 10);
    assert!(m.forward(&mut acts, &INPUTS, 2, 5).is_ok());
    assert!(m.forward(&mut acts, &INPUTS, 1, 10).is_err()); // t > block_size
    assert!(m.forward(&mut acts, &INPUTS[..9], 2, 5).is_err()); // wrong length
    assert!(m.forward(&mut acts, &[0; 15], 3, 5).is_err()); // more rows than planned
    assert!(m.forward(&mut acts, &[11, 0], 1, 2).is_err()); // id outside vocab
    let mut short = vec![0.0; 3];
    assert!(m.backward(&mut acts, &INPUTS, 2, 5, &mut short).is_err());
}

#[test]
fn every_parameter_gradient_matches_finite_differences() {
    // full windows, and shorter ones (t < block_size, as a stream's last)
    for (windows, t) in [(2, 5), (3, 3)] {
        let rows = windows * t;
        let m = tiny_random();
        let mut acts = Acts::new(&TINY, 10);
        m.forward(&mut acts, &INPUTS[..rows], windows, t)
            .expect("valid batch");
        let (sum, _) = ops::cross_entropy(&mut acts.logits[..rows * 11], &TARGETS[..rows], true);
        assert!(sum > 0.0);
        let mut grad = vec![f32::NAN; m.params.len()]; // backward must overwrite it all
        m.backward(&mut acts, &INPUTS[..rows], windows, t, &mut grad)
            .expect("valid batch");
        let mut probe = Transformer::new(TINY, 1).expect("valid dims");
        let mut params = m.params.clone();
        let num = numeric_grad(&mut params, |p| {
            probe.params.copy_from_slice(p);
            mean_loss(&probe, &mut acts, windows, t)
        });
        for tensor in m.tensors() {
            let r = tensor.offset..tensor.offset + tensor.len;
            let what = format!("{} ({windows} x {t})", tensor.name);
            // measured max error ~5e-4 of the tensor's largest gradient
            assert_grad_close(&grad[r.clone()], &num[r.clone()], 3e-3, &what);
            if tensor.name == "transformer.wpe.weight" {
                // rows past t are unused: exactly zero
                assert!(grad[r.start + t * 8..r.end].iter().all(|&g| g == 0.0));
            } else {
                assert!(
                    grad[r].iter().any(|g| g.abs() > 1e-4),
                    "{what}: gradient ~0"
                );
            }
        }
    }
}

#[test]
fn a_position_sees_only_earlier_positions_of_its_window() {
    let m = tiny_random();
    let v = TINY.vocab_size;
    let mut acts = Acts::new(&TINY, 10);
    let logits = |m: &Transformer, acts: &mut Acts, inputs: &[u32]| {
        m.forward(acts, inputs, 2, 5).expect("valid batch");
        acts.logits[..10 * v].to_vec()
    };
    let base = logits(&m, &mut acts, &INPUTS);
    let row = |l: &[f32], w: usize, s: usize| l[(w * 5 + s) * v..(w * 5 + s + 1) * v].to_vec();
    for s in 0..5 {
        // wpe row s moves positions >= s of every window, and nothing before
        let mut moved = tiny_random();
        let wpe = moved.wpe + s * 8;
        // not a constant shift: LayerNorm would remove that
        let mut noise = [0.0; 8];
        fill(&mut noise, 70 + s as u64);
        moved.params[wpe..wpe + 8]
            .iter_mut()
            .zip(noise)
            .for_each(|(x, d)| *x += d);
        let l = logits(&moved, &mut acts, &INPUTS);
        // token at position s of window 0 moves window 0's positions >= s only
        let mut inputs = INPUTS;
        inputs[s] = (inputs[s] + 1) % v as u32;
        let lt = logits(&m, &mut acts, &inputs);
        for p in 0..5 {
            for w in 0..2 {
                assert_eq!(
                    row(&l, w, p) == row(&base, w, p),
                    p < s,
                    "wpe row {s}, window {w}, position {p}"
                );
            }
            assert_eq!(
                row(&lt, 0, p) == row(&base, 0, p),
                p < s,
                "token {s}, position {p}"
            );
            assert_eq!(
                row(&lt, 1, p),
                row(&base, 1, p),
                "token {s} leaked into window 1"
            );
        }
    }
}
