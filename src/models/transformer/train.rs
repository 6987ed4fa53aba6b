//! Training and evaluation on contiguous windows of a token stream, in the
//! shape of the project's Phase 2: a fixed number of positions per batch,
//! Adam (PyTorch defaults) at a given learning rate, global-norm gradient
//! clipping, mean cross-entropy.

use super::model::{Acts, Transformer, TransformerDims};
use crate::ops::{self, Adam};
use anyhow::{bail, ensure, Result};

/// `windows` consecutive windows of `t` positions: `inputs[w t + s]`
/// predicts `targets[w t + s]`, the next token of the stream.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    pub inputs: &'a [u32],
    pub targets: &'a [u32],
    pub windows: usize,
    pub t: usize,
}

/// Cuts `ids` into contiguous, non-overlapping windows of `block_size`
/// positions: window j reads ids[j B .. j B + B] and predicts
/// ids[j B + 1 .. j B + B + 1]. Full windows are grouped up to
/// `windows_per_batch` per batch; a last partial window (shorter t) forms a
/// batch of its own, so every position 0..len-2 is predicted exactly once.
/// Attention never crosses a window boundary, so the first tokens of each
/// window see less context (position s sees s + 1 tokens), unlike a sliding
/// window; the loss is an average over context lengths 1..=B.
pub fn batches(ids: &[u32], block_size: usize, windows_per_batch: usize) -> Result<Vec<Batch<'_>>> {
    ensure!(
        block_size > 0 && windows_per_batch > 0,
        "block_size ({block_size}) and windows per batch ({windows_per_batch}) must be positive"
    );
    let positions = ids.len().saturating_sub(1);
    let (full, rest) = (positions / block_size, positions % block_size);
    let mut out = Vec::with_capacity(full.div_ceil(windows_per_batch) + 1);
    let mut push = |start: usize, windows: usize, t: usize| {
        out.push(Batch {
            inputs: &ids[start..start + windows * t],
            targets: &ids[start + 1..start + 1 + windows * t],
            windows,
            t,
        })
    };
    for w0 in (0..full).step_by(windows_per_batch) {
        push(
            w0 * block_size,
            windows_per_batch.min(full - w0),
            block_size,
        );
    }
    if rest > 0 {
        push(full * block_size, 1, rest);
    }
    Ok(out)
}

/// Everything a training run holds besides the model: gradient, Adam
/// state and the activation buffers for `batch_positions` rows.
pub struct Trainer {
    pub grad: Vec<f32>,
    pub adam: Adam,
    pub clip: f64,
    pub acts: Acts,
}

impl Trainer {
    /// `batch_positions` = the most windows x t a batch may hold (e.g. 512 =
    /// 8 windows of 64).
    pub fn new(model: &Transformer, batch_positions: usize, lr: f64, clip: f64) -> Result<Trainer> {
        ensure!(batch_positions > 0, "batch_positions must be positive");
        ensure!(
            lr > 0.0 && clip > 0.0,
            "learning rate ({lr}) and gradient clip ({clip}) must be positive"
        );
        let p = model.params.len();
        Ok(Trainer {
            grad: vec![0.0; p],
            adam: Adam::new(p, lr),
            clip,
            acts: Acts::new(&model.dims, batch_positions),
        })
    }

    /// Bytes held while training: parameters, gradient, Adam m and v, and
    /// the activations of `max_rows` positions.
    pub fn bytes(dims: &TransformerDims, max_rows: usize) -> u64 {
        4 * (4 * dims.param_count_total() as u64 + Acts::floats(dims, max_rows))
    }

    /// One step on a batch: forward, mean cross-entropy, backward, clip, Adam.
    /// Returns (mean loss, gradient norm before clipping). Errors (and leaves
    /// the weights untouched) if the loss or gradient is not finite.
    pub fn train_step(
        &mut self,
        model: &mut Transformer,
        inputs: &[u32],
        targets: &[u32],
        windows: usize,
        t: usize,
    ) -> Result<(f64, f64)> {
        check_targets(model, targets, inputs.len())?;
        model.forward(&mut self.acts, inputs, windows, t)?;
        let rows = windows * t;
        let logits = &mut self.acts.logits[..rows * model.dims.vocab_size];
        let (sum, _) = ops::cross_entropy(logits, targets, true);
        model.backward(&mut self.acts, inputs, windows, t, &mut self.grad)?;
        let norm = ops::clip_grad_norm(&mut self.grad, self.clip);
        let loss = sum / rows as f64;
        if !loss.is_finite() || !norm.is_finite() {
            bail!(
                "training diverged: loss {loss}, gradient norm {norm}; try a lower learning rate"
            );
        }
        self.adam.step(&mut model.params, &self.grad);
        Ok((loss, norm))
    }

    /// (sum of per-position losses, positions whose argmax is the target);
    /// row r's loss is also added to `sample_losses[bins[r]]` when `bins`
    /// (one per row) is not empty.
    pub fn evaluate(
        &mut self,
        model: &Transformer,
        b: Batch,
        bins: &[u32],
        sample_losses: &mut [f64],
    ) -> Result<(f64, usize)> {
        check_targets(model, b.targets, b.inputs.len())?;
        model.forward(&mut self.acts, b.inputs, b.windows, b.t)?;
        let logits = &mut self.acts.logits[..b.windows * b.t * model.dims.vocab_size];
        Ok(if bins.is_empty() {
            ops::cross_entropy(logits, b.targets, false)
        } else {
            ops::cross_entropy_binned(logits, b.targets, bins, sample_losses)
        })
    }
}

fn check_targets(model: &Transformer, targets: &[u32], rows: usize) -> Result<()> {
    ensure!(
        targets.len() == rows,
        "{} targets for {rows} input positions",
        targets.len()
    );
    let v = model.dims.vocab_size;
    if let Some(i) = targets.iter().position(|&id| id as usize >= v) {
        bail!(
            "target id {} at {i} is outside the vocabulary of {v}",
            targets[i]
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_predict_every_position_once_with_the_next_token() {
        for len in [0usize, 1, 2, 5, 6, 7, 21, 23, 40] {
            // ids = positions, so an id says where it came from
            let ids: Vec<u32> = (0..len as u32).map(|i| i * 3 + 1).collect();
            let bs = batches(&ids, 5, 2).expect("valid sizes");
            let mut seen = vec![0; len.saturating_sub(1)];
            for (i, b) in bs.iter().enumerate() {
                assert_eq!(b.inputs.len(), b.windows * b.t);
                assert_eq!(b.targets.len(), b.inputs.len());
                assert!(b.windows <= 2 && b.t <= 5);
                // only the last batch may be a short window
                assert!(b.t == 5 || (i + 1 == bs.len() && b.windows == 1));
                for (x, y) in b.inputs.iter().zip(b.targets) {
                    let pos = (*x as usize - 1) / 3;
                    assert_eq!(*y, ids[pos + 1]);
                    seen[pos] += 1;
                }
                // windows are contiguous pieces of the stream
                let start = (b.inputs[0] as usize - 1) / 3;
                assert_eq!(b.inputs, &ids[start..start + b.inputs.len()]);
            }
            assert!(seen.iter().all(|&n| n == 1), "len {len}: {seen:?}");
        }
        let ids: Vec<u32> = (0..23).collect();
        let shape: Vec<(u32, usize, usize)> = batches(&ids, 5, 2)
            .expect("valid sizes")
            .iter()
            .map(|b| (b.inputs[0], b.windows, b.t))
            .collect();
        assert_eq!(shape, vec![(0, 2, 5), (10, 2, 5), (20, 1, 2)]);
        assert!(batches(&ids, 0, 2).is_err());
    }

    fn overfit(seed: u64) -> (Vec<f64>, Vec<f64>, Vec<f32>) {
        let dims = TransformerDims {
            vocab_size: 13,
            n_layer: 2,
            n_head: 2,
            d_model: 16,
            block_size: 8,
        };
        let mut model = Transformer::new(dims, seed).expect("valid dims");
        let mut tr = Trainer::new(&model, 16, 1e-2, 1.0).expect("valid settings");
        let ids: Vec<u32> = (0..17u32).map(|i| (i * 7 + i / 3) % 13).collect();
        let b = batches(&ids, 8, 2).expect("valid sizes")[0];
        assert_eq!((b.windows, b.t), (2, 8));
        let (mut losses, mut norms) = (Vec::new(), Vec::new());
        for _ in 0..50 {
            let (l, n) = tr
                .train_step(&mut model, b.inputs, b.targets, b.windows, b.t)
                .expect("finite");
            losses.push(l);
            norms.push(n);
        }
        let (sum, correct) = tr.evaluate(&model, b, &[], &mut []).expect("valid");
        losses.push(sum / 16.0);
        assert!(correct <= 16);
        (losses, norms, model.params)
    }

    #[test]
    fn train_step_overfits_a_batch_reproducibly() {
        let (losses, norms, params) = overfit(5);
        let first = losses[0];
        assert!(
            (first - 13f64.ln()).abs() < 0.1,
            "initial loss {first} should be ~ln 13"
        );
        let last = *losses.last().expect("51 losses");
        assert!(last < 0.5 * first, "loss {first} -> {last}");
        assert!(norms.iter().all(|n| n.is_finite() && *n > 0.0));
        let (losses2, norms2, params2) = overfit(5);
        // weights and gradient norms bit-identical; the loss sum's order of
        // f64 additions follows rayon's split, so only nearly identical
        assert!(params
            .iter()
            .zip(&params2)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        assert_eq!(norms, norms2);
        assert!(losses
            .iter()
            .zip(&losses2)
            .all(|(a, b)| (a - b).abs() <= 1e-12 * a));
        assert_ne!(overfit(6).2, params, "another seed, other weights");
    }

    #[test]
    fn bad_batches_are_errors_and_leave_weights_alone() {
        let dims = TransformerDims {
            vocab_size: 5,
            n_layer: 1,
            n_head: 1,
            d_model: 4,
            block_size: 4,
        };
        let mut model = Transformer::new(dims, 1).expect("valid dims");
        let before = model.params.clone();
        let mut tr = Trainer::new(&model, 8, 1e-3, 1.0).expect("valid settings");
        assert!(tr
            .train_step(&mut model, &[0, 1, 2, 3], &[1, 2, 3, 5], 1, 4)
            .is_err()); // target 5
        assert!(tr
            .train_step(&mut model, &[0, 1, 2, 3], &[1, 2, 3], 1, 4)
            .is_err()); // length
        assert!(tr.train_step(&mut model, &[0; 12], &[0; 12], 3, 4).is_err()); // > 8 rows
        assert!(tr
            .evaluate(
                &model,
                Batch {
                    inputs: &[0, 1],
                    targets: &[1, 7],
                    windows: 1,
                    t: 2
                },
                &[],
                &mut []
            )
            .is_err());
        assert_eq!(model.params, before);
        assert!(Trainer::new(&model, 0, 1e-3, 1.0).is_err());
        // estimate = 16 bytes per parameter + the planned activations
        let acts: u64 = 4 * Acts::floats(&dims, 8);
        assert_eq!(
            Trainer::bytes(&dims, 8),
            16 * model.params.len() as u64 + acts
        );
    }
}
