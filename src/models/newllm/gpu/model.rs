//! model.rs on the device: ContextBlock / TokenBlock layers forward and
//! backward over device buffers, mirroring `models/newllm/model.rs`
//! function for function.

use super::runtime::{Arg, Buf, Dev};
use crate::models::newllm::model::{Block, Layer, Model};
use crate::ops::Trans;
use anyhow::Result;

/// The model parts a stage needs on the device.
pub(crate) struct DevModel {
    pub ctx: GpuBlock,
    pub tv: Buf<f32>,
    pub ek: (usize, usize),
}

impl DevModel {
    pub(crate) fn upload(dev: &Dev, model: &Model) -> Result<DevModel> {
        Ok(DevModel {
            ctx: GpuBlock::upload(dev, &model.context)?,
            tv: dev.upload(&model.token_vectors)?,
            ek: (model.cfg.embed_dim, model.cfg.num_input_tokens),
        })
    }
}

/// A block's parameters on the device, with its layer table.
pub struct GpuBlock {
    pub params: Buf<f32>,
    pub layers: Vec<Layer>,
}

impl GpuBlock {
    pub fn upload(dev: &Dev, block: &Block) -> Result<GpuBlock> {
        Ok(GpuBlock {
            params: dev.upload(&block.params.data)?,
            layers: block.layers.clone(),
        })
    }
    pub(crate) fn p(&self, off: usize) -> u64 {
        self.params.at(off)
    }
}

pub(crate) fn res_in(l: &Layer) -> usize {
    if l.residual_is_a {
        l.in_a
    } else {
        l.in_b
    }
}

/// What a layer keeps for its backward (model::LayerActs on the device).
pub struct LayerBufs {
    pub h: Buf<f32>,
    pub xhat: Buf<f32>,
    pub rstd: Buf<f32>,
    pub y: Buf<f32>,
}

/// model::BlockActs on the device.
pub struct BlockBufs {
    pub cap: usize,
    pub layers: Vec<LayerBufs>,
    d_a: Buf<f32>,
    d_b: Buf<f32>,
    dz: Buf<f32>,
}

impl BlockBufs {
    pub fn new(dev: &Dev, layers: &[Layer], cap: usize) -> Result<BlockBufs> {
        let widest = layers
            .iter()
            .flat_map(|l| [l.out, l.in_a, l.in_b])
            .max()
            .unwrap_or(0);
        let mut ls = Vec::new();
        for l in layers {
            ls.push(LayerBufs {
                h: dev.zeros(cap * l.out)?,
                xhat: dev.zeros(cap * l.out)?,
                rstd: dev.zeros(cap)?,
                y: dev.zeros(cap * l.out)?,
            });
        }
        Ok(BlockBufs {
            cap,
            layers: ls,
            d_a: dev.zeros(cap * widest)?,
            d_b: dev.zeros(cap * widest)?,
            dz: dev.zeros(cap * widest)?,
        })
    }
    pub fn last(&self) -> u64 {
        self.layers[self.layers.len() - 1].y.ptr
    }
}

/// model::layer_forward: GEMMs on cuBLAS, then the fused epilogue.
pub(crate) fn layer_forward(
    dev: &Dev,
    blk: &GpuBlock,
    l: &Layer,
    a: u64,
    b: u64,
    rows: usize,
    acts: &LayerBufs,
) -> Result<()> {
    let (out, it, r) = (l.out, l.in_a + l.in_b, res_in(l));
    dev.gemm(
        acts.h.ptr,
        out,
        a,
        l.in_a,
        blk.p(l.w),
        it,
        Trans::NT,
        (rows, out, l.in_a),
        false,
    )?;
    if l.in_b > 0 {
        dev.gemm(
            acts.h.ptr,
            out,
            b,
            l.in_b,
            blk.p(l.w + l.in_a),
            it,
            Trans::NT,
            (rows, out, l.in_b),
            true,
        )?;
    }
    let res = if l.residual_is_a { a } else { b };
    let pbias = match l.proj {
        Some((pw, pb)) => {
            dev.gemm(
                acts.y.ptr,
                out,
                res,
                r,
                blk.p(pw),
                r,
                Trans::NT,
                (rows, out, r),
                false,
            )?;
            blk.p(pb)
        }
        None => 0,
    };
    ln_fused(dev, blk, l, rows, acts, res, pbias)
}

pub(crate) fn ln_fused(
    dev: &Dev,
    blk: &GpuBlock,
    l: &Layer,
    rows: usize,
    acts: &LayerBufs,
    res: u64,
    pbias: u64,
) -> Result<()> {
    dev.launch_rows(
        "ln_fwd_fused",
        rows,
        &[
            Arg::I(rows as i32),
            Arg::I(l.out as i32),
            Arg::P(acts.h.ptr),
            Arg::P(blk.p(l.b)),
            Arg::P(res),
            Arg::P(pbias),
            Arg::I(i32::from(l.proj.is_some())),
            Arg::P(blk.p(l.ln_g)),
            Arg::P(blk.p(l.ln_b)),
            Arg::P(acts.xhat.ptr),
            Arg::P(acts.rstd.ptr),
            Arg::P(acts.y.ptr),
        ],
    )
}

/// model::layer_backward. `dy` is consumed (becomes dh); `dz` is scratch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_backward(
    dev: &Dev,
    blk: &GpuBlock,
    grad: &Buf<f32>,
    l: &Layer,
    (a, b): (u64, u64),
    rows: usize,
    acts: &LayerBufs,
    dy: u64,
    dz: u64,
    dres: Option<u64>,
) -> Result<()> {
    let (out, it, r) = (l.out, l.in_a + l.in_b, res_in(l));
    // dg, db from dy before ln_bwd overwrites it
    dev.col_reduce(
        rows,
        out,
        dy,
        acts.xhat.ptr,
        grad.at(l.ln_g),
        grad.at(l.ln_b),
    )?;
    dev.launch_rows(
        "ln_bwd",
        rows,
        &[
            Arg::I(rows as i32),
            Arg::I(out as i32),
            Arg::P(dy),
            Arg::P(acts.xhat.ptr),
            Arg::P(acts.rstd.ptr),
            Arg::P(blk.p(l.ln_g)),
            Arg::P(acts.h.ptr),
            Arg::P(dz),
        ],
    )?;
    let dh = dy;
    dev.col_reduce(rows, out, dh, 0, 0, grad.at(l.b))?;
    dev.gemm(
        grad.at(l.w),
        it,
        dh,
        out,
        a,
        l.in_a,
        Trans::TN,
        (out, l.in_a, rows),
        true,
    )?;
    if l.in_b > 0 {
        dev.gemm(
            grad.at(l.w + l.in_a),
            it,
            dh,
            out,
            b,
            l.in_b,
            Trans::TN,
            (out, l.in_b, rows),
            true,
        )?;
    }
    let res = if l.residual_is_a { a } else { b };
    if let Some((pw, pb)) = l.proj {
        dev.gemm(
            grad.at(pw),
            r,
            dz,
            out,
            res,
            r,
            Trans::TN,
            (out, r, rows),
            true,
        )?;
        dev.col_reduce(rows, out, dz, 0, 0, grad.at(pb))?;
    }
    if let Some(dres) = dres {
        match l.proj {
            Some((pw, _)) => dev.gemm(
                dres,
                r,
                dz,
                out,
                blk.p(pw),
                r,
                Trans::NN,
                (rows, r, out),
                false,
            )?,
            None => dev.copy_f32(dres, dz, rows * r)?,
        }
        let start = if l.residual_is_a { 0 } else { l.in_a };
        dev.gemm(
            dres,
            r,
            dh,
            out,
            blk.p(l.w + start),
            it,
            Trans::NN,
            (rows, r, out),
            true,
        )?;
    }
    Ok(())
}

/// Model::context_forward.
pub fn context_forward(
    dev: &Dev,
    blk: &GpuBlock,
    c: u64,
    x: u64,
    rows: usize,
    acts: &BlockBufs,
) -> Result<()> {
    for (i, l) in blk.layers.iter().enumerate() {
        let a = if i == 0 { c } else { acts.layers[i - 1].y.ptr };
        let b = if l.in_b > 0 { x } else { 0 };
        layer_forward(dev, blk, l, a, b, rows, &acts.layers[i])?;
    }
    Ok(())
}

/// Model::context_backward from `dout` (consumed).
pub fn context_backward(
    dev: &Dev,
    blk: &GpuBlock,
    grad: &Buf<f32>,
    (c, x): (u64, u64),
    rows: usize,
    acts: &BlockBufs,
    dout: u64,
) -> Result<()> {
    let n = blk.layers.len();
    // dL/d(layer output) starts as `dout`, then ping-pongs between d_a and
    // d_b on the way down (the k-th layer from the top writes d_a when k is even).
    let bufs = [acts.d_a.ptr, acts.d_b.ptr];
    for (k, i) in (0..n).rev().enumerate() {
        let l = &blk.layers[i];
        let a = if i == 0 { c } else { acts.layers[i - 1].y.ptr };
        let b = if l.in_b > 0 { x } else { 0 };
        let dy = if k == 0 { dout } else { bufs[(k - 1) % 2] };
        layer_backward(
            dev,
            blk,
            grad,
            l,
            (a, b),
            rows,
            &acts.layers[i],
            dy,
            acts.dz.ptr,
            (i > 0).then_some(bufs[k % 2]),
        )?;
    }
    Ok(())
}

/// The TokenBlock + head on the device (offsets of the head in its ParamSet).
pub struct TokenParts {
    pub head_w: usize,
    pub head_b: usize,
    pub vocab: usize,
    pub embed: usize,
}

/// Model::token_forward; logits (rows x V) into `logits`.
#[allow(clippy::too_many_arguments)]
pub fn token_forward(
    dev: &Dev,
    blk: &GpuBlock,
    parts: &TokenParts,
    ctx: &BlockBufs,
    x: u64,
    rows: usize,
    acts: &BlockBufs,
    logits: u64,
) -> Result<()> {
    for (i, l) in blk.layers.iter().enumerate() {
        let b = if i == 0 { x } else { acts.layers[i - 1].y.ptr };
        layer_forward(dev, blk, l, ctx.layers[i].y.ptr, b, rows, &acts.layers[i])?;
    }
    let (v, e) = (parts.vocab, parts.embed);
    dev.gemm(
        logits,
        v,
        acts.last(),
        e,
        blk.p(parts.head_w),
        e,
        Trans::NT,
        (rows, v, e),
        false,
    )?;
    dev.launch_n(
        "add_bias",
        rows * v,
        &[
            Arg::I(rows as i32),
            Arg::I(v as i32),
            Arg::P(logits),
            Arg::P(blk.p(parts.head_b)),
        ],
    )
}

/// Model::token_backward from `dlogits` (rows x V).
#[allow(clippy::too_many_arguments)]
pub fn token_backward(
    dev: &Dev,
    blk: &GpuBlock,
    parts: &TokenParts,
    grad: &Buf<f32>,
    ctx: &BlockBufs,
    x: u64,
    rows: usize,
    acts: &BlockBufs,
    dlogits: u64,
) -> Result<()> {
    let (v, e) = (parts.vocab, parts.embed);
    let n = blk.layers.len();
    dev.gemm(
        grad.at(parts.head_w),
        e,
        dlogits,
        v,
        acts.last(),
        e,
        Trans::TN,
        (v, e, rows),
        true,
    )?;
    dev.col_reduce(rows, v, dlogits, 0, 0, grad.at(parts.head_b))?;
    dev.gemm(
        acts.d_a.ptr,
        e,
        dlogits,
        v,
        blk.p(parts.head_w),
        e,
        Trans::NN,
        (rows, e, v),
        false,
    )?;
    let (mut dy, mut spare) = (acts.d_a.ptr, acts.d_b.ptr);
    for i in (0..n).rev() {
        let l = &blk.layers[i];
        let b = if i == 0 { x } else { acts.layers[i - 1].y.ptr };
        let dres = (i > 0).then_some(spare);
        layer_backward(
            dev,
            blk,
            grad,
            l,
            (ctx.layers[i].y.ptr, b),
            rows,
            &acts.layers[i],
            dy,
            acts.dz.ptr,
            dres,
        )?;
        std::mem::swap(&mut dy, &mut spare);
    }
    Ok(())
}
