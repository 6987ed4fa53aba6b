//! The whole New-LLM model, top to bottom (docs/algorithm.md section 2):
//! embedding + embed_norm -> ContextBlock (ContextLayers) and TokenBlock
//! (TokenLayers reading layer-matched contexts) -> output head.
//! Forward and backward are written out by hand over flat parameter buffers,
//! so one Adam and one clip cover a whole block.

use crate::config::Config;
use crate::ops::{self, Mat, Precision, Trans};
use crate::rng::Rng;
use anyhow::{bail, Result};

/// One named tensor inside a flat parameter buffer (names = the original's state_dict).
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
}

/// All parameters of one trainable group, in one buffer.
#[derive(Clone, Debug, Default)]
pub struct ParamSet {
    pub data: Vec<f32>,
    pub tensors: Vec<TensorInfo>,
}

impl ParamSet {
    fn add(&mut self, name: String, shape: Vec<usize>) -> usize {
        let offset = self.data.len();
        let len = shape.iter().product();
        self.data.resize(offset + len, 0.0);
        self.tensors.push(TensorInfo {
            name,
            shape,
            offset,
            len,
        });
        offset
    }

    pub fn find(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.find(name)
            .map(|t| &self.data[t.offset..t.offset + t.len])
    }
}

/// `LayerNorm(r + ReLU(W [a ; b] + bias))` with r = the residual input
/// (a for ContextLayers, b for TokenLayers) or its projection `P r + p`.
/// Fields are offsets into the block's ParamSet.
#[derive(Clone, Debug)]
pub struct Layer {
    pub in_a: usize,
    pub in_b: usize,
    pub out: usize,
    pub residual_is_a: bool,
    pub w: usize,
    pub b: usize,
    pub proj: Option<(usize, usize)>,
    pub ln_g: usize,
    pub ln_b: usize,
}

impl Layer {
    fn new(
        ps: &mut ParamSet,
        prefix: &str,
        norm: &str,
        in_a: usize,
        in_b: usize,
        out: usize,
        residual_is_a: bool,
    ) -> Layer {
        let res_in = if residual_is_a { in_a } else { in_b };
        let w = ps.add(format!("{prefix}.fnn.0.weight"), vec![out, in_a + in_b]);
        let b = ps.add(format!("{prefix}.fnn.0.bias"), vec![out]);
        let proj = (res_in != out).then(|| {
            let pw = ps.add(format!("{prefix}.residual_proj.weight"), vec![out, res_in]);
            let pb = ps.add(format!("{prefix}.residual_proj.bias"), vec![out]);
            (pw, pb)
        });
        let ln_g = ps.add(format!("{prefix}.{norm}.weight"), vec![out]);
        let ln_b = ps.add(format!("{prefix}.{norm}.bias"), vec![out]);
        Layer {
            in_a,
            in_b,
            out,
            residual_is_a,
            w,
            b,
            proj,
            ln_g,
            ln_b,
        }
    }

    fn res_in(&self) -> usize {
        if self.residual_is_a {
            self.in_a
        } else {
            self.in_b
        }
    }

    fn in_total(&self) -> usize {
        self.in_a + self.in_b
    }
}

/// What a layer keeps from its forward for its backward (sized for `cap` rows).
#[derive(Clone, Debug, Default)]
pub struct LayerActs {
    /// Pre-activation `W [a ; b] + bias`.
    pub h: Vec<f32>,
    pub xhat: Vec<f32>,
    pub rstd: Vec<f32>,
    /// Layer output.
    pub y: Vec<f32>,
}

impl LayerActs {
    fn new(rows: usize, out: usize) -> Self {
        LayerActs {
            h: vec![0.0; rows * out],
            xhat: vec![0.0; rows * out],
            rstd: vec![0.0; rows],
            y: vec![0.0; rows * out],
        }
    }
}

/// The weights a forward reads: the f32 parameters and, where the caller
/// keeps one, their bf16 copy (same layout) for the bf16 one-row products.
#[derive(Clone, Copy)]
struct Weights<'a> {
    prec: Precision,
    p: &'a [f32],
    p16: Option<&'a [u16]>,
}

impl<'a> Weights<'a> {
    /// Columns `start..start + cols` of the `rows x ld` matrix at `offset`.
    fn mat(&self, offset: usize, rows: usize, ld: usize, start: usize, cols: usize) -> Mat<'a> {
        let end = offset + rows * ld;
        Mat::cols_of(&self.p[offset..end], rows, ld, start, cols)
            .with_bf16(self.p16.map(|h| &h[offset + start..end]))
    }
}

/// One layer's forward over `rows` rows: `a` is rows x in_a, `b` rows x in_b.
fn layer_forward(wt: Weights, l: &Layer, a: &[f32], b: &[f32], rows: usize, acts: &mut LayerActs) {
    let (out, it, prec, p) = (l.out, l.in_total(), wt.prec, wt.p);
    let h = &mut acts.h[..rows * out];
    let y = &mut acts.y[..rows * out];
    ops::matmul(
        prec,
        h,
        out,
        Mat::new(&a[..rows * l.in_a], rows, l.in_a),
        wt.mat(l.w, out, it, 0, l.in_a),
        Trans::NT,
        false,
    );
    if l.in_b > 0 {
        let wb = wt.mat(l.w, out, it, l.in_a, l.in_b);
        ops::matmul(
            prec,
            h,
            out,
            Mat::new(&b[..rows * l.in_b], rows, l.in_b),
            wb,
            Trans::NT,
            true,
        );
    }
    let res = if l.residual_is_a { a } else { b };
    let bias = &p[l.b..l.b + out];
    match l.proj {
        Some((pw, pb)) => {
            let r = l.res_in();
            ops::matmul(
                prec,
                y,
                out,
                Mat::new(&res[..rows * r], rows, r),
                wt.mat(pw, out, r, 0, r),
                Trans::NT,
                false,
            );
            let pbias = &p[pb..pb + out];
            for (hr, yr) in h.chunks_exact_mut(out).zip(y.chunks_exact_mut(out)) {
                for i in 0..out {
                    hr[i] += bias[i];
                    yr[i] += pbias[i] + hr[i].max(0.0);
                }
            }
        }
        None => {
            for ((hr, yr), rr) in h
                .chunks_exact_mut(out)
                .zip(y.chunks_exact_mut(out))
                .zip(res.chunks_exact(out))
            {
                for i in 0..out {
                    hr[i] += bias[i];
                    yr[i] = rr[i] + hr[i].max(0.0);
                }
            }
        }
    }
    let (g, beta) = (&p[l.ln_g..l.ln_g + out], &p[l.ln_b..l.ln_b + out]);
    ops::layernorm_forward(
        y,
        g,
        beta,
        &mut acts.xhat[..rows * out],
        &mut acts.rstd[..rows],
    );
}

/// Splits `buf` into disjoint mutable slices at the given (offset, len) pairs,
/// which must be sorted by offset and non-overlapping.
fn disjoint_mut<const N: usize>(
    mut buf: &mut [f32],
    ranges: [(usize, usize); N],
) -> [&mut [f32]; N] {
    let mut consumed = 0;
    ranges.map(|(off, len)| {
        let rest = std::mem::take(&mut buf);
        let (_, tail) = rest.split_at_mut(off - consumed);
        let (mine, after) = tail.split_at_mut(len);
        buf = after;
        consumed = off + len;
        mine
    })
}

/// Backward of `layer_forward`. `dy` (rows x out) holds dL/dy and is used as
/// scratch; `dz` is rows x out scratch. Accumulates parameter gradients into
/// `grad` and, when `dres` is given, writes dL/d(residual input) into it.
#[allow(clippy::too_many_arguments)]
fn layer_backward(
    prec: Precision,
    p: &[f32],
    grad: &mut [f32],
    l: &Layer,
    a: &[f32],
    b: &[f32],
    rows: usize,
    acts: &LayerActs,
    dy: &mut [f32],
    dz: &mut [f32],
    dres: Option<&mut [f32]>,
) {
    let (out, it, r) = (l.out, l.in_total(), l.res_in());
    let dy = &mut dy[..rows * out];
    let dz = &mut dz[..rows * out];
    let (pw, pb) = l.proj.unwrap_or((l.ln_g, l.ln_g));
    let plen = if l.proj.is_some() { out * r } else { 0 };
    let pblen = if l.proj.is_some() { out } else { 0 };
    // Without a projection its two ranges are empty slices at ln_g.
    let [gw, gb, gpw, gpb, gg, gbeta] = disjoint_mut(
        grad,
        [
            (l.w, out * it),
            (l.b, out),
            (pw, plen),
            (pb, pblen),
            (l.ln_g, out),
            (l.ln_b, out),
        ],
    );
    // LayerNorm
    let g = &p[l.ln_g..l.ln_g + out];
    ops::layernorm_backward(
        dy,
        &acts.xhat[..rows * out],
        &acts.rstd[..rows],
        g,
        dz,
        gg,
        gbeta,
    );
    // ReLU: dh = dz * (h > 0), written over dy.
    for ((d, &z), &h) in dy.iter_mut().zip(dz.iter()).zip(&acts.h[..rows * out]) {
        *d = if h > 0.0 { z } else { 0.0 };
    }
    let dh = &*dy;
    ops::bias_grad(gb, dh);
    let dh_m = Mat::new(dh, rows, out);
    ops::matmul(
        prec,
        gw,
        it,
        dh_m,
        Mat::new(&a[..rows * l.in_a], rows, l.in_a),
        Trans::TN,
        true,
    );
    if l.in_b > 0 {
        ops::matmul(
            prec,
            &mut gw[l.in_a..],
            it,
            dh_m,
            Mat::new(&b[..rows * l.in_b], rows, l.in_b),
            Trans::TN,
            true,
        );
    }
    let res = if l.residual_is_a {
        &a[..rows * r]
    } else {
        &b[..rows * r]
    };
    if l.proj.is_some() {
        ops::matmul(
            prec,
            gpw,
            r,
            Mat::new(dz, rows, out),
            Mat::new(res, rows, r),
            Trans::TN,
            true,
        );
        ops::bias_grad(gpb, dz);
    }
    if let Some(dres) = dres {
        let dres = &mut dres[..rows * r];
        match l.proj {
            Some((pw, _)) => ops::matmul(
                prec,
                dres,
                r,
                Mat::new(dz, rows, out),
                Mat::new(&p[pw..pw + out * r], out, r),
                Trans::NN,
                false,
            ),
            None => dres.copy_from_slice(dz),
        }
        let start = if l.residual_is_a { 0 } else { l.in_a };
        let w = Mat::cols_of(&p[l.w..l.w + out * it], out, it, start, r);
        ops::matmul(prec, dres, r, dh_m, w, Trans::NN, true);
    }
}

/// A stack of layers sharing one ParamSet.
#[derive(Clone, Debug, Default)]
pub struct Block {
    pub params: ParamSet,
    pub layers: Vec<Layer>,
}

impl Block {
    /// Lays out one layer per shape as `{prefix}.layers.{i}` (zero weights;
    /// `Model::new` initialises them).
    fn build(shapes: &[LayerShape], prefix: &str, norm: &str, residual_is_a: bool) -> Block {
        let mut block = Block::default();
        for (i, l) in shapes.iter().enumerate() {
            let layer = Layer::new(
                &mut block.params,
                &format!("{prefix}.layers.{i}"),
                norm,
                l.in_a,
                l.in_b,
                l.out,
                residual_is_a,
            );
            block.layers.push(layer);
        }
        block
    }
}

/// Activations of a whole block for up to `cap` rows, plus backward scratch.
pub struct BlockActs {
    pub cap: usize,
    pub layers: Vec<LayerActs>,
    d_a: Vec<f32>,
    d_b: Vec<f32>,
    dz: Vec<f32>,
}

impl BlockActs {
    pub fn new(block: &Block, cap: usize) -> Self {
        let widest = block
            .layers
            .iter()
            .flat_map(|l| [l.out, l.in_a, l.in_b])
            .max()
            .unwrap_or(0);
        BlockActs {
            cap,
            layers: block
                .layers
                .iter()
                .map(|l| LayerActs::new(cap, l.out))
                .collect(),
            d_a: vec![0.0; cap * widest],
            d_b: vec![0.0; cap * widest],
            dz: vec![0.0; cap * widest],
        }
    }

    /// Output of the last layer (rows x out).
    pub fn last(&self) -> &[f32] {
        &self.layers[self.layers.len() - 1].y
    }
}

/// One layer's widths as `Model::new` lays it out: inputs a and b, output,
/// and the residual input (a for ContextLayers, b for TokenLayers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerShape {
    pub in_a: usize,
    pub in_b: usize,
    pub out: usize,
    pub res_in: usize,
}

impl LayerShape {
    /// W [out, in_a + in_b] and bias, the residual projection when the
    /// residual width differs from out, and the LayerNorm.
    pub fn params(&self) -> usize {
        let proj = if self.res_in != self.out {
            self.out * self.res_in + self.out
        } else {
            0
        };
        self.out * (self.in_a + self.in_b) + self.out + proj + 2 * self.out
    }
}

/// Every layer of the ContextBlock and of the TokenBlock, from the config
/// alone, so sizes can be known before anything is allocated.
pub fn layer_shapes(cfg: &Config) -> (Vec<LayerShape>, Vec<LayerShape>) {
    let (ke, cdims) = (cfg.token_input_dim(), cfg.context_dims());
    let context = (0..cfg.num_layers)
        .map(|i| {
            let (in_a, in_b, out) = if cfg.token_input_all_layers {
                (cfg.context_dim, ke, cfg.context_dim)
            } else if i == 0 {
                (cfg.context_dim, ke, cdims[1])
            } else {
                (cdims[i], 0, cdims[i + 1])
            };
            LayerShape {
                in_a,
                in_b,
                out,
                res_in: in_a,
            }
        })
        .collect();
    let (tdims, ctx_out) = (cfg.token_dims(), cfg.context_layer_output_dims());
    let token = (0..cfg.num_layers)
        .map(|i| LayerShape {
            in_a: ctx_out[i],
            in_b: tdims[i],
            out: tdims[i + 1],
            res_in: tdims[i],
        })
        .collect();
    (context, token)
}

/// Parameters of the ContextBlock and of the TokenBlock without its head,
/// from the config alone.
pub fn block_param_counts(cfg: &Config) -> (usize, usize) {
    let (context, token) = layer_shapes(cfg);
    let sum = |v: &[LayerShape]| v.iter().map(LayerShape::params).sum();
    (sum(&context), sum(&token))
}

/// The model. The embedding and embed_norm are frozen in both phases, so the
/// normalised table `token_vectors = embed_norm(embedding)` is computed once
/// and each input row is a gather from it.
pub struct Model {
    pub cfg: Config,
    /// V x E.
    pub embedding: Vec<f32>,
    pub embed_norm_weight: Vec<f32>,
    pub embed_norm_bias: Vec<f32>,
    /// V x E: embed_norm applied to every row of the embedding.
    pub token_vectors: Vec<f32>,
    /// ContextBlock, trained in Phase 1.
    pub context: Block,
    /// TokenBlock + output head, trained in Phase 2.
    pub token: Block,
    head_w: usize,
    head_b: usize,
}

impl Model {
    /// A fresh model from `cfg`, initialised per spec from `cfg.seed`.
    /// `embedding`: a pretrained V x E table, or None for N(0, 0.02).
    pub fn new(cfg: &Config, embedding: Option<Vec<f32>>) -> Result<Model> {
        cfg.validate()?;
        let (v, e) = (cfg.vocab_size, cfg.embed_dim);
        let mut rng = Rng::new(cfg.seed);
        let embedding = match embedding {
            Some(t) => {
                if t.len() != v * e {
                    bail!("pretrained embedding has {} values, expected vocab_size x embed_dim = {v} x {e}", t.len());
                }
                t
            }
            None => {
                let mut t = vec![0.0; v * e];
                rng.fill_normal(&mut t, 0.02);
                t
            }
        };
        let (context_shapes, token_shapes) = layer_shapes(cfg);
        let mut context = Block::build(&context_shapes, "context_block", "context_norm", true);
        let mut token = Block::build(&token_shapes, "token_block", "token_norm", false);
        let head_w = token.params.add("token_output.weight".into(), vec![v, e]);
        let head_b = token.params.add("token_output.bias".into(), vec![v]);
        for block in [&mut context, &mut token] {
            for l in &block.layers {
                let p = &mut block.params.data;
                let win = l.in_total();
                rng.fill_normal(&mut p[l.w..l.w + l.out * win], 0.1);
                rng.fill_normal(&mut p[l.b..l.b + l.out], 0.01);
                if let Some((pw, pb)) = l.proj {
                    rng.fill_normal(&mut p[pw..pw + l.out * l.res_in()], 0.1);
                    rng.fill_normal(&mut p[pb..pb + l.out], 0.01);
                }
                p[l.ln_g..l.ln_g + l.out].fill(1.0);
            }
        }
        // Head starts at zero (original behaviour); tied = starts as the embedding.
        // Token vectors are cached before Phase 2, so training a tied head's copy
        // is exactly what training the shared table did in the original.
        if cfg.use_weight_tying {
            token.params.data[head_w..head_w + v * e].copy_from_slice(&embedding);
        }
        let mut m = Model {
            cfg: cfg.clone(),
            embedding,
            embed_norm_weight: vec![1.0; e],
            embed_norm_bias: vec![0.0; e],
            token_vectors: vec![0.0; v * e],
            context,
            token,
            head_w,
            head_b,
        };
        m.refresh_token_vectors();
        Ok(m)
    }

    /// Recomputes `token_vectors` after the embedding or embed_norm changed.
    pub fn refresh_token_vectors(&mut self) {
        let e = self.cfg.embed_dim;
        self.token_vectors.copy_from_slice(&self.embedding);
        let rows = self.embedding.len() / e;
        let (mut xhat, mut rstd) = (vec![0.0; rows * e], vec![0.0; rows]);
        ops::layernorm_forward(
            &mut self.token_vectors,
            &self.embed_norm_weight,
            &self.embed_norm_bias,
            &mut xhat,
            &mut rstd,
        );
    }

    /// (name, values) of every parameter, in state_dict naming.
    pub fn named_params(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        let (v, e) = (self.cfg.vocab_size, self.cfg.embed_dim);
        let mut out = vec![
            (
                "token_embedding.weight".to_string(),
                vec![v, e],
                &self.embedding[..],
            ),
            (
                "embed_norm.weight".to_string(),
                vec![e],
                &self.embed_norm_weight[..],
            ),
            (
                "embed_norm.bias".to_string(),
                vec![e],
                &self.embed_norm_bias[..],
            ),
        ];
        for ps in [&self.context.params, &self.token.params] {
            for t in &ps.tensors {
                out.push((
                    t.name.clone(),
                    t.shape.clone(),
                    &ps.data[t.offset..t.offset + t.len],
                ));
            }
        }
        out
    }

    /// Sets one parameter by its state_dict name; checks shape and finiteness.
    pub fn set_param(&mut self, name: &str, values: &[f32]) -> Result<()> {
        if let Some(i) = values.iter().position(|x| !x.is_finite()) {
            bail!(
                "parameter {name}: value {} at index {i} is not finite",
                values[i]
            );
        }
        let e = self.cfg.embed_dim;
        let target: &mut [f32] = match name {
            "token_embedding.weight" => &mut self.embedding,
            "embed_norm.weight" => &mut self.embed_norm_weight,
            "embed_norm.bias" => &mut self.embed_norm_bias,
            _ => {
                let ps = if name.starts_with("context_block.") {
                    &mut self.context.params
                } else {
                    &mut self.token.params
                };
                match ps.find(name).cloned() {
                    Some(t) => &mut ps.data[t.offset..t.offset + t.len],
                    None => bail!(
                        "unknown parameter {name} for this config (layers, dims and k must match)"
                    ),
                }
            }
        };
        if target.len() != values.len() {
            bail!("parameter {name}: {} values given, the model's shape holds {} (check embed_dim {e}, context_dim, num_layers, num_input_tokens)", values.len(), target.len());
        }
        target.copy_from_slice(values);
        if name == "token_embedding.weight" || name.starts_with("embed_norm.") {
            self.refresh_token_vectors();
        }
        Ok(())
    }

    /// Parameter counts (context block, token block, head, embedding).
    pub fn param_counts(&self) -> [usize; 4] {
        let (v, e) = (self.cfg.vocab_size, self.cfg.embed_dim);
        [
            self.context.params.data.len(),
            self.token.params.data.len() - v * e - v,
            v * e + v,
            v * e,
        ]
    }

    /// The ContextBlock's parameters in bf16 for a bf16 recurrent pass (the
    /// weights are fixed during a pass, so one copy per pass is current), or
    /// None in f32.
    pub fn context_bf16(&self) -> Option<Vec<u16>> {
        (self.cfg.precision == Precision::Bf16).then(|| {
            let mut h = Vec::new();
            ops::bf16::convert(&mut h, &self.context.params.data);
            h
        })
    }

    /// Writes the token input rows x_j for j in start..start+rows of `ids`
    /// into `out` (rows x kE): the last k token vectors, oldest first,
    /// zero vectors before the stream start.
    pub fn token_input(&self, ids: &[u32], start: usize, rows: usize, out: &mut [f32]) {
        let (e, k) = (self.cfg.embed_dim, self.cfg.num_input_tokens);
        for (r, row) in out[..rows * k * e].chunks_exact_mut(k * e).enumerate() {
            let j = start + r;
            for (slot, dst) in row.chunks_exact_mut(e).enumerate() {
                // slot 0 = oldest token j - (k - 1)
                match (j + slot).checked_sub(k - 1) {
                    Some(t) => {
                        let id = ids[t] as usize;
                        dst.copy_from_slice(&self.token_vectors[id * e..(id + 1) * e]);
                    }
                    None => dst.fill(0.0),
                }
            }
        }
    }

    /// ContextBlock forward over `rows` rows: input contexts `c` (rows x C),
    /// token inputs `x` (rows x kE). Every layer's output lands in `acts`.
    /// `p16`: the block's parameters in bf16 (`context_bf16`), which the
    /// one-row products of a bf16 recurrent pass read.
    pub fn context_forward(
        &self,
        p16: Option<&[u16]>,
        c: &[f32],
        x: &[f32],
        rows: usize,
        acts: &mut BlockActs,
    ) {
        let p = Weights {
            prec: self.cfg.precision,
            p: &self.context.params.data,
            p16,
        };
        for (i, l) in self.context.layers.iter().enumerate() {
            let (before, rest) = acts.layers.split_at_mut(i);
            let a = if i == 0 { c } else { &before[i - 1].y[..] };
            let b = if l.in_b > 0 { x } else { &[][..] };
            layer_forward(p, l, a, b, rows, &mut rest[0]);
        }
    }

    /// ContextBlock backward from `dout` = dL/d(last layer output) (rows x C),
    /// accumulating into `grad` (same layout as `context.params.data`).
    /// `dout` is consumed as scratch.
    pub fn context_backward(
        &self,
        c: &[f32],
        x: &[f32],
        rows: usize,
        acts: &mut BlockActs,
        dout: &mut [f32],
        grad: &mut [f32],
    ) {
        let (prec, p) = (self.cfg.precision, &self.context.params.data);
        let n = self.context.layers.len();
        let BlockActs {
            layers,
            d_a,
            d_b,
            dz,
            ..
        } = acts;
        // dL/d(layer output) starts as `dout`, then ping-pongs between d_a
        // and d_b on the way down (the k-th layer from the top writes d_a
        // when k is even); layer 0 has no input gradient to write.
        for (k, i) in (0..n).rev().enumerate() {
            let l = &self.context.layers[i];
            let a = if i == 0 { c } else { &layers[i - 1].y[..] };
            let b = if l.in_b > 0 { x } else { &[][..] };
            let (dy, dres): (&mut [f32], &mut [f32]) = match k {
                0 => (&mut *dout, &mut *d_a),
                _ if k % 2 == 1 => (&mut *d_a, &mut *d_b),
                _ => (&mut *d_b, &mut *d_a),
            };
            layer_backward(
                prec,
                p,
                grad,
                l,
                a,
                b,
                rows,
                &layers[i],
                dy,
                dz,
                (i > 0).then_some(dres),
            );
        }
    }

    /// TokenBlock + head forward: reads the context block's layer outputs
    /// `ctx` (from `context_forward`) and token inputs `x`; logits (rows x V)
    /// go to `logits`.
    pub fn token_forward(
        &self,
        ctx: &BlockActs,
        x: &[f32],
        rows: usize,
        acts: &mut BlockActs,
        logits: &mut [f32],
    ) {
        let prec = self.cfg.precision;
        let p = &self.token.params.data;
        let wt = Weights { prec, p, p16: None };
        for (i, l) in self.token.layers.iter().enumerate() {
            let (before, rest) = acts.layers.split_at_mut(i);
            let b = if i == 0 { x } else { &before[i - 1].y[..] };
            layer_forward(wt, l, &ctx.layers[i].y, b, rows, &mut rest[0]);
        }
        let (v, e) = (self.cfg.vocab_size, self.cfg.embed_dim);
        let t_last = &acts.layers[self.token.layers.len() - 1].y[..rows * e];
        let logits = &mut logits[..rows * v];
        ops::matmul(
            prec,
            logits,
            v,
            Mat::new(t_last, rows, e),
            Mat::new(&p[self.head_w..self.head_w + v * e], v, e),
            Trans::NT,
            false,
        );
        ops::add_bias(logits, &p[self.head_b..self.head_b + v]);
    }

    /// Backward of `token_forward` from `dlogits` (rows x V), accumulating
    /// into `grad` (layout of `token.params.data`).
    pub fn token_backward(
        &self,
        ctx: &BlockActs,
        x: &[f32],
        rows: usize,
        acts: &mut BlockActs,
        dlogits: &[f32],
        grad: &mut [f32],
    ) {
        let (prec, p) = (self.cfg.precision, &self.token.params.data);
        let (v, e) = (self.cfg.vocab_size, self.cfg.embed_dim);
        let n = self.token.layers.len();
        let BlockActs {
            layers,
            d_a,
            d_b,
            dz,
            ..
        } = acts;
        let dlog = Mat::new(&dlogits[..rows * v], rows, v);
        {
            let [gw, gb] = disjoint_mut(grad, [(self.head_w, v * e), (self.head_b, v)]);
            ops::matmul(
                prec,
                gw,
                e,
                dlog,
                Mat::new(&layers[n - 1].y[..rows * e], rows, e),
                Trans::TN,
                true,
            );
            ops::bias_grad(gb, &dlogits[..rows * v]);
        }
        ops::matmul(
            prec,
            &mut d_a[..rows * e],
            e,
            dlog,
            Mat::new(&p[self.head_w..self.head_w + v * e], v, e),
            Trans::NN,
            false,
        );
        let (mut dy, mut spare): (&mut [f32], &mut [f32]) = (d_a, d_b);
        for i in (0..n).rev() {
            let l = &self.token.layers[i];
            let b = if i == 0 { x } else { &layers[i - 1].y[..] };
            let dres = (i > 0).then_some(&mut *spare);
            layer_backward(
                prec,
                p,
                grad,
                l,
                &ctx.layers[i].y,
                b,
                rows,
                &layers[i],
                dy,
                dz,
                dres,
            );
            std::mem::swap(&mut dy, &mut spare);
        }
    }
}

#[cfg(test)]
mod tests;
