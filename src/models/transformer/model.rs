//! GPT-2 decoder over one flat parameter buffer, forward and backward written
//! out by hand (after llm.c's train_gpt2.c):
//!
//! ```text
//! x = wte[tok] + wpe[pos]
//! per layer:  x += c_proj(attn(c_attn(ln_1(x))))      (causal, n_head heads)
//!             x += mlp.c_proj(gelu(mlp.c_fc(ln_2(x))))
//! logits = ln_f(x) wte^T                               (head tied to wte)
//! ```
//!
//! Linear weights are [out, in] (PyTorch / nanoGPT layout), so a Linear is
//! the NT GEMM `y = x W^T + b`. Parameter names follow GPT-2's state_dict.

use super::kernels::{self, AttnShape};
use crate::ops::{self, Mat, Precision, Trans};
use crate::rng::Rng;
use anyhow::{bail, ensure, Result};

/// Model size. The MLP width is `d_ff() = 4 d_model`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransformerDims {
    pub vocab_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub d_model: usize,
    pub block_size: usize,
}

impl TransformerDims {
    pub fn d_ff(&self) -> usize {
        4 * self.d_model
    }

    pub fn validate(&self) -> Result<()> {
        let d = self;
        ensure!(
            d.vocab_size > 0 && d.n_layer > 0 && d.n_head > 0 && d.d_model > 0 && d.block_size > 0,
            "transformer dims must all be positive: {d:?}"
        );
        ensure!(
            d.d_model.is_multiple_of(d.n_head),
            "d_model {} is not divisible by n_head {}",
            d.d_model,
            d.n_head
        );
        Ok(())
    }

    /// Per layer: ln_1, ln_2 (2d each), c_attn (3d^2 + 3d), attn.c_proj
    /// (d^2 + d), mlp.c_fc (4d^2 + 4d), mlp.c_proj (4d^2 + d) = 12d^2 + 13d.
    /// Plus ln_f (2d). The tied head adds nothing.
    pub fn param_count_non_embedding(&self) -> usize {
        let d = self.d_model;
        self.n_layer * (12 * d * d + 13 * d) + 2 * d
    }

    /// Non-embedding + wte (V d) + wpe (block_size d).
    pub fn param_count_total(&self) -> usize {
        self.param_count_non_embedding() + (self.vocab_size + self.block_size) * self.d_model
    }

    /// GEMM FLOPs of one training position (forward + backward = 3 x forward,
    /// since every product has a dX and a dW / dK / dV product of its size):
    /// 3 [n_layer (24 d^2 + 4 block_size d) + 2 d V].
    /// 24 d^2 = 2 (3d^2 + d^2 + 4d^2 + 4d^2) for the four Linears; 4 T d for
    /// QK^T and PV over the full T x T block (computed masked half included)
    /// with T = block_size; 2 d V for the tied head.
    pub fn train_flops_per_token(&self) -> u64 {
        let (d, t, v) = (
            self.d_model as u64,
            self.block_size as u64,
            self.vocab_size as u64,
        );
        3 * (self.n_layer as u64 * (24 * d * d + 4 * t * d) + 2 * d * v)
    }
}

/// One named tensor inside the flat parameter buffer.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
}

/// Offsets of one block's tensors. Each bias directly follows its weight
/// (and each LN bias its gain), so a (weight, bias) gradient pair is one
/// `split_at_mut` of the flat gradient.
#[derive(Clone, Copy, Debug)]
struct LayerOffsets {
    ln_1: usize,
    c_attn: usize,
    attn_proj: usize,
    ln_2: usize,
    c_fc: usize,
    mlp_proj: usize,
}

/// Parameters in GPT-2's state_dict order: wte, wpe, h.0 .. h.{L-1}, ln_f.
pub struct Transformer {
    pub dims: TransformerDims,
    /// GEMM arithmetic (f32 from `new`; `with_precision` to change).
    pub precision: Precision,
    pub params: Vec<f32>,
    tensors: Vec<TensorInfo>,
    wte: usize,
    wpe: usize,
    layers: Vec<LayerOffsets>,
    ln_f: usize,
}

/// Activations of one batch, planned for `max_rows` positions up front;
/// per-layer buffers are [n_layer, max_rows, width]. forward/backward
/// allocate nothing.
pub struct Acts {
    dims: TransformerDims,
    max_rows: usize,
    ln_1: Vec<f32>,
    ln_1_xhat: Vec<f32>,
    ln_1_rstd: Vec<f32>,
    qkv: Vec<f32>,
    /// [n_layer, max_rows n_head block_size]: each window's [n_head, t, t] probabilities.
    att: Vec<f32>,
    atty: Vec<f32>,
    ln_2: Vec<f32>,
    ln_2_xhat: Vec<f32>,
    ln_2_rstd: Vec<f32>,
    fch: Vec<f32>,
    fch_gelu: Vec<f32>,
    residual: Vec<f32>,
    ln_f: Vec<f32>,
    ln_f_xhat: Vec<f32>,
    ln_f_rstd: Vec<f32>,
    /// [max_rows, V]: logits after `forward`; `kernels::cross_entropy` turns them
    /// into their gradient before `backward`.
    pub logits: Vec<f32>,
    // backward scratch
    dresidual: Vec<f32>,
    dx: Vec<f32>,
    dnorm: Vec<f32>,
    dqkv: Vec<f32>,
    datt: Vec<f32>,
    dfch: Vec<f32>,
}

impl Acts {
    /// Float counts of every buffer, in field order (one list, so `new` and
    /// `floats` cannot disagree).
    fn lens(d: &TransformerDims, max_rows: usize) -> [usize; 22] {
        let (n, c, l) = (max_rows, d.d_model, d.n_layer);
        let att = n * d.n_head * d.block_size;
        [
            l * n * c,
            l * n * c,
            l * n,
            l * n * 3 * c,
            l * att,
            l * n * c,
            l * n * c,
            l * n * c,
            l * n,
            l * n * d.d_ff(),
            l * n * d.d_ff(),
            n * c,
            n * c,
            n * c,
            n,
            n * d.vocab_size,
            n * c,
            n * c,
            n * c,
            n * 3 * c,
            n * d.block_size,
            n * d.d_ff(),
        ]
    }

    pub fn floats(d: &TransformerDims, max_rows: usize) -> u64 {
        Self::lens(d, max_rows).iter().map(|&x| x as u64).sum()
    }

    pub fn new(d: &TransformerDims, max_rows: usize) -> Acts {
        // one buffer per entry of `lens`, destructured in field order (the
        // array's length makes a missing or extra name a compile error)
        #[rustfmt::skip]
        let [
            ln_1, ln_1_xhat, ln_1_rstd, qkv, att, atty, ln_2, ln_2_xhat, ln_2_rstd, fch, fch_gelu,
            residual, ln_f, ln_f_xhat, ln_f_rstd, logits,
            dresidual, dx, dnorm, dqkv, datt, dfch,
        ] = Self::lens(d, max_rows).map(|n| vec![0.0f32; n]);
        Acts {
            dims: *d,
            max_rows,
            ln_1,
            ln_1_xhat,
            ln_1_rstd,
            qkv,
            att,
            atty,
            ln_2,
            ln_2_xhat,
            ln_2_rstd,
            fch,
            fch_gelu,
            residual,
            ln_f,
            ln_f_xhat,
            ln_f_rstd,
            logits,
            dresidual,
            dx,
            dnorm,
            dqkv,
            datt,
            dfch,
        }
    }
}

/// Layer `l`'s `rows x width` slice of a per-layer buffer.
fn layer(buf: &[f32], l: usize, max_rows: usize, width: usize, rows: usize) -> &[f32] {
    &buf[l * max_rows * width..l * max_rows * width + rows * width]
}

fn layer_mut(buf: &mut [f32], l: usize, max_rows: usize, width: usize, rows: usize) -> &mut [f32] {
    &mut buf[l * max_rows * width..l * max_rows * width + rows * width]
}

/// `y = x W^T + b`, W [n_out, n_in] at `w` with its bias right after.
#[allow(clippy::too_many_arguments)]
fn linear_forward(
    prec: Precision,
    y: &mut [f32],
    x: &[f32],
    p: &[f32],
    w: usize,
    rows: usize,
    n_in: usize,
    n_out: usize,
) {
    let (wt, b) = p[w..w + n_out * n_in + n_out].split_at(n_out * n_in);
    ops::matmul(
        prec,
        y,
        n_out,
        Mat::new(x, rows, n_in),
        Mat::new(wt, n_out, n_in),
        Trans::NT,
        false,
    );
    ops::add_bias(&mut y[..rows * n_out], b);
}

/// Backward of `linear_forward`: `dx = dy W`, `dW = dy^T x`, `db += sum dy`.
#[allow(clippy::too_many_arguments)]
fn linear_backward(
    prec: Precision,
    dx: &mut [f32],
    grad: &mut [f32],
    dy: &[f32],
    x: &[f32],
    p: &[f32],
    w: usize,
    rows: usize,
    n_in: usize,
    n_out: usize,
) {
    let wt = Mat::new(&p[w..w + n_out * n_in], n_out, n_in);
    let dym = Mat::new(dy, rows, n_out);
    ops::matmul(prec, dx, n_in, dym, wt, Trans::NN, false);
    let (dw, db) = grad[w..w + n_out * n_in + n_out].split_at_mut(n_out * n_in);
    ops::matmul(
        prec,
        dw,
        n_in,
        dym,
        Mat::new(x, rows, n_in),
        Trans::TN,
        false,
    );
    ops::bias_grad(db, &dy[..rows * n_out]);
}

/// LayerNorm of `x` into `y` (gain at `g`, bias right after).
fn norm_forward(
    y: &mut [f32],
    xhat: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    p: &[f32],
    g: usize,
    c: usize,
) {
    y.copy_from_slice(x);
    ops::layernorm_forward(y, &p[g..g + c], &p[g + c..g + 2 * c], xhat, rstd);
}

impl Transformer {
    /// A GPT-2 initialised model (nanoGPT's scheme): N(0, 0.02) for
    /// embeddings and Linear weights, residual projections (attn.c_proj,
    /// mlp.c_proj) N(0, 0.02 / sqrt(2 n_layer)), biases 0, LN gain 1 bias 0.
    pub fn new(dims: TransformerDims, seed: u64) -> Result<Transformer> {
        dims.validate()?;
        let (v, c, f) = (dims.vocab_size, dims.d_model, dims.d_ff());
        let mut tensors: Vec<TensorInfo> = Vec::new();
        let mut add = |name: String, shape: Vec<usize>| {
            let offset = tensors.last().map_or(0, |t| t.offset + t.len);
            let len = shape.iter().product();
            tensors.push(TensorInfo {
                name,
                shape,
                offset,
                len,
            });
            offset
        };
        let wte = add("transformer.wte.weight".into(), vec![v, c]);
        let wpe = add("transformer.wpe.weight".into(), vec![dims.block_size, c]);
        let mut layers = Vec::with_capacity(dims.n_layer);
        for l in 0..dims.n_layer {
            let h = format!("transformer.h.{l}");
            let mut pair = |name: &str, w: Vec<usize>, b: usize| {
                let off = add(format!("{h}.{name}.weight"), w);
                add(format!("{h}.{name}.bias"), vec![b]);
                off
            };
            layers.push(LayerOffsets {
                ln_1: pair("ln_1", vec![c], c),
                c_attn: pair("attn.c_attn", vec![3 * c, c], 3 * c),
                attn_proj: pair("attn.c_proj", vec![c, c], c),
                ln_2: pair("ln_2", vec![c], c),
                c_fc: pair("mlp.c_fc", vec![f, c], f),
                mlp_proj: pair("mlp.c_proj", vec![c, f], c),
            });
        }
        let ln_f = add("transformer.ln_f.weight".into(), vec![c]);
        add("transformer.ln_f.bias".into(), vec![c]);

        let total = tensors.last().map_or(0, |t| t.offset + t.len);
        debug_assert_eq!(total, dims.param_count_total());
        let mut params = vec![0.0f32; total];
        let mut rng = Rng::new(seed);
        let proj_std = 0.02 / (2.0 * dims.n_layer as f64).sqrt();
        for t in &tensors {
            let x = &mut params[t.offset..t.offset + t.len];
            if t.name.ends_with("c_proj.weight") {
                rng.fill_normal(x, proj_std);
            } else if t.name.contains("ln_") {
                if t.name.ends_with(".weight") {
                    x.fill(1.0);
                }
            } else if t.name.ends_with(".weight") {
                rng.fill_normal(x, 0.02);
            }
        }
        Ok(Transformer {
            precision: Precision::F32,
            dims,
            params,
            tensors,
            wte,
            wpe,
            layers,
            ln_f,
        })
    }

    pub fn with_precision(self, precision: Precision) -> Transformer {
        Transformer { precision, ..self }
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// (name, shape, values) of every parameter in GPT-2 state_dict naming
    /// (`lm_head.weight` is `transformer.wte.weight`, so listed once).
    pub fn named_params(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        self.tensors
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.shape.clone(),
                    &self.params[t.offset..t.offset + t.len],
                )
            })
            .collect()
    }

    /// Errors unless `inputs` is `windows x t` valid ids that fit `acts`.
    pub fn check_batch(&self, acts: &Acts, inputs: &[u32], windows: usize, t: usize) -> Result<()> {
        let d = &self.dims;
        ensure!(
            (1..=d.block_size).contains(&t),
            "window length {t} is outside 1..={}",
            d.block_size
        );
        ensure!(windows > 0, "a batch needs at least one window");
        let rows = windows * t;
        ensure!(
            rows <= acts.max_rows,
            "{windows} windows x {t} positions = {rows} exceeds the {} rows the buffers were planned for",
            acts.max_rows
        );
        ensure!(
            acts.dims == *d,
            "activation buffers were planned for {:?}, the model is {d:?}",
            acts.dims
        );
        ensure!(
            inputs.len() == rows,
            "{} input ids for {windows} windows x {t} positions",
            inputs.len()
        );
        if let Some(i) = inputs.iter().position(|&id| id as usize >= d.vocab_size) {
            bail!(
                "input id {} at {i} is outside the vocabulary of {}",
                inputs[i],
                d.vocab_size
            );
        }
        Ok(())
    }

    /// Logits of `windows` contiguous windows of `t` positions into
    /// `acts.logits[..windows t V]`; each window attends within itself only.
    pub fn forward(&self, acts: &mut Acts, inputs: &[u32], windows: usize, t: usize) -> Result<()> {
        self.check_batch(acts, inputs, windows, t)?;
        let d = self.dims;
        let (n, c, f, mr) = (windows * t, d.d_model, d.d_ff(), acts.max_rows);
        let p = &self.params;
        let prec = self.precision;
        let shape = AttnShape {
            windows,
            t,
            n_head: d.n_head,
            c,
        };
        let a = acts;
        let x = &mut a.residual[..n * c];
        kernels::encoder_forward(x, &p[self.wte..], &p[self.wpe..], inputs, t, c);
        for (l, o) in self.layers.iter().enumerate() {
            let ln_1 = layer_mut(&mut a.ln_1, l, mr, c, n);
            norm_forward(
                ln_1,
                layer_mut(&mut a.ln_1_xhat, l, mr, c, n),
                layer_mut(&mut a.ln_1_rstd, l, mr, 1, n),
                x,
                p,
                o.ln_1,
                c,
            );
            let qkv = layer_mut(&mut a.qkv, l, mr, 3 * c, n);
            linear_forward(prec, qkv, ln_1, p, o.c_attn, n, c, 3 * c);
            let atty = layer_mut(&mut a.atty, l, mr, c, n);
            let att = layer_mut(&mut a.att, l, mr, d.n_head * d.block_size, n);
            kernels::attention_forward(prec, atty, att, qkv, shape);
            // residual add fused into the projection GEMM (accumulate)
            let (wt, b) = p[o.attn_proj..o.attn_proj + c * c + c].split_at(c * c);
            ops::matmul(
                prec,
                x,
                c,
                Mat::new(atty, n, c),
                Mat::new(wt, c, c),
                Trans::NT,
                true,
            );
            ops::add_bias(x, b);

            let ln_2 = layer_mut(&mut a.ln_2, l, mr, c, n);
            norm_forward(
                ln_2,
                layer_mut(&mut a.ln_2_xhat, l, mr, c, n),
                layer_mut(&mut a.ln_2_rstd, l, mr, 1, n),
                x,
                p,
                o.ln_2,
                c,
            );
            let fch = layer_mut(&mut a.fch, l, mr, f, n);
            linear_forward(prec, fch, ln_2, p, o.c_fc, n, c, f);
            let fch_gelu = layer_mut(&mut a.fch_gelu, l, mr, f, n);
            kernels::gelu_forward(fch_gelu, fch);
            let (wt, b) = p[o.mlp_proj..o.mlp_proj + c * f + c].split_at(c * f);
            ops::matmul(
                prec,
                x,
                c,
                Mat::new(fch_gelu, n, f),
                Mat::new(wt, c, f),
                Trans::NT,
                true,
            );
            ops::add_bias(x, b);
        }
        let ln_f = &mut a.ln_f[..n * c];
        norm_forward(
            ln_f,
            &mut a.ln_f_xhat[..n * c],
            &mut a.ln_f_rstd[..n],
            x,
            p,
            self.ln_f,
            c,
        );
        let wte = Mat::new(&p[self.wte..self.wte + d.vocab_size * c], d.vocab_size, c);
        ops::matmul(
            prec,
            &mut a.logits,
            d.vocab_size,
            Mat::new(ln_f, n, c),
            wte,
            Trans::NT,
            false,
        );
        Ok(())
    }

    /// After `forward` on the same batch, with `acts.logits` replaced by
    /// dL/dlogits: writes the full gradient into `grad` (its old content is
    /// overwritten, never added to).
    pub fn backward(
        &self,
        acts: &mut Acts,
        inputs: &[u32],
        windows: usize,
        t: usize,
        grad: &mut [f32],
    ) -> Result<()> {
        self.check_batch(acts, inputs, windows, t)?;
        ensure!(
            grad.len() == self.params.len(),
            "gradient buffer holds {} floats, the model {}",
            grad.len(),
            self.params.len()
        );
        let d = self.dims;
        let (n, c, f, v, mr) = (
            windows * t,
            d.d_model,
            d.d_ff(),
            d.vocab_size,
            acts.max_rows,
        );
        let p = &self.params;
        let prec = self.precision;
        let shape = AttnShape {
            windows,
            t,
            n_head: d.n_head,
            c,
        };
        let a = acts;
        // GEMMs write their weight's gradient (each weight is used once per
        // step); biases, LN, wpe and the embedding's rows of wte are added
        // into. So everything after wte is zeroed, and wte (grad[..wpe], it
        // comes first), the largest, is written by the head GEMM instead.
        let (dwte, rest) = grad.split_at_mut(self.wpe);
        rest.fill(0.0);

        // head: dln_f = dlogits wte, dwte = dlogits^T ln_f
        let dlogits = Mat::new(&a.logits, n, v);
        let dnorm = &mut a.dnorm[..n * c];
        ops::matmul(
            prec,
            dnorm,
            c,
            dlogits,
            Mat::new(&p[self.wte..self.wte + v * c], v, c),
            Trans::NN,
            false,
        );
        ops::matmul(
            prec,
            dwte,
            c,
            dlogits,
            Mat::new(&a.ln_f, n, c),
            Trans::TN,
            false,
        );
        let dres = &mut a.dresidual[..n * c];
        let (dg, db) = grad[self.ln_f..self.ln_f + 2 * c].split_at_mut(c);
        ops::layernorm_backward(
            dnorm,
            &a.ln_f_xhat,
            &a.ln_f_rstd,
            &p[self.ln_f..self.ln_f + c],
            dres,
            dg,
            db,
        );

        let dx = &mut a.dx[..n * c];
        for (l, o) in self.layers.iter().enumerate().rev() {
            // MLP: x += mlp_proj(gelu(c_fc(ln_2(x))))
            let dfch = &mut a.dfch[..n * f];
            let fch_gelu = layer(&a.fch_gelu, l, mr, f, n);
            linear_backward(prec, dfch, grad, dres, fch_gelu, p, o.mlp_proj, n, f, c);
            kernels::gelu_backward(dfch, layer(&a.fch, l, mr, f, n));
            linear_backward(
                prec,
                dnorm,
                grad,
                dfch,
                layer(&a.ln_2, l, mr, c, n),
                p,
                o.c_fc,
                n,
                c,
                f,
            );
            let (dg, db) = grad[o.ln_2..o.ln_2 + 2 * c].split_at_mut(c);
            ops::layernorm_backward(
                dnorm,
                layer(&a.ln_2_xhat, l, mr, c, n),
                layer(&a.ln_2_rstd, l, mr, 1, n),
                &p[o.ln_2..o.ln_2 + c],
                dx,
                dg,
                db,
            );
            dres.iter_mut().zip(dx.iter()).for_each(|(r, g)| *r += g);

            // attention: x += attn_proj(attn(c_attn(ln_1(x))))
            linear_backward(
                prec,
                dx,
                grad,
                dres,
                layer(&a.atty, l, mr, c, n),
                p,
                o.attn_proj,
                n,
                c,
                c,
            );
            let dqkv = &mut a.dqkv[..n * 3 * c];
            kernels::attention_backward(
                prec,
                dqkv,
                &mut a.datt,
                dx,
                layer(&a.att, l, mr, d.n_head * d.block_size, n),
                layer(&a.qkv, l, mr, 3 * c, n),
                shape,
            );
            linear_backward(
                prec,
                dnorm,
                grad,
                dqkv,
                layer(&a.ln_1, l, mr, c, n),
                p,
                o.c_attn,
                n,
                c,
                3 * c,
            );
            let (dg, db) = grad[o.ln_1..o.ln_1 + 2 * c].split_at_mut(c);
            ops::layernorm_backward(
                dnorm,
                layer(&a.ln_1_xhat, l, mr, c, n),
                layer(&a.ln_1_rstd, l, mr, 1, n),
                &p[o.ln_1..o.ln_1 + c],
                dx,
                dg,
                db,
            );
            dres.iter_mut().zip(dx.iter()).for_each(|(r, g)| *r += g);
        }
        let (dwte, dwpe) =
            grad[self.wte..self.wpe + d.block_size * c].split_at_mut(self.wpe - self.wte);
        kernels::encoder_backward(dwte, dwpe, dres, inputs, t, c);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
