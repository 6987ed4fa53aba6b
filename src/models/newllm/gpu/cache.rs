//! cache.rs on the device: token and cache-source gathers, and the true
//! recurrent pass (one token at a time, replayed as CUDA graphs).

use super::kernels;
use super::model::{ln_fused, res_in, BlockBufs, GpuBlock};
use super::runtime::{capture, dims, Arg, Buf, Dev};
use anyhow::{anyhow, Result};

/// Token inputs of positions start..start+rows (Model::token_input).
pub fn gather_tokens(
    dev: &Dev,
    (e, k): (usize, usize),
    ids: &Buf<u32>,
    start: usize,
    rows: usize,
    tv: &Buf<f32>,
    x: u64,
) -> Result<()> {
    dev.launch_n(
        "gather_tokens",
        rows * k * e,
        &[
            Arg::I(rows as i32),
            Arg::I(e as i32),
            Arg::I(k as i32),
            Arg::P(ids.ptr),
            Arg::L(start as i64),
            Arg::P(tv.ptr),
            Arg::P(x),
        ],
    )
}

/// Cache input contexts (cache::context_inputs).
pub fn gather_src(
    dev: &Dev,
    c: usize,
    start: usize,
    rows: usize,
    src: &Buf<f32>,
    ctx: u64,
) -> Result<()> {
    dev.launch_n(
        "gather_src",
        rows * c,
        &[
            Arg::I(rows as i32),
            Arg::I(c as i32),
            Arg::L(start as i64),
            Arg::P(src.ptr),
            Arg::P(ctx),
        ],
    )
}

/// Tokens per captured CUDA graph in the recurrent pass.
pub const GRAPH_CHUNK: usize = 64;

/// The true recurrent pass (cache::sequential_pass) over `ids[0..count]`,
/// final-layer outputs into `outs` (count x C).
///
/// Why this is not launch-bound: one token step is 2 + 2L small kernels
/// (token gather; per layer a warp-per-row GEMV over W [c ; x] (and the
/// residual projection), then the fused bias/ReLU/residual/LayerNorm; the
/// store). The position is read from a device counter, so a CUDA graph of
/// GRAPH_CHUNK consecutive steps is captured once and replayed count /
/// GRAPH_CHUNK times: the host submits one graph launch per 64 tokens and
/// the GPU runs the kernels back to back (~1-2 us each). Each step streams
/// the ContextBlock's weights once (61.6 MB for the 6 x 768 seed model in
/// false mode, ~13 us at H200 bandwidth), so the pass should run at roughly
/// 25-40k tokens/s. The remainder (and any failed capture) runs as direct
/// launches of the same kernels.
#[allow(clippy::too_many_arguments)]
pub fn recurrent_pass(
    dev: &Dev,
    blk: &GpuBlock,
    (e, k): (usize, usize),
    tv: &Buf<f32>,
    ids: &Buf<u32>,
    count: usize,
    outs: &Buf<f32>,
    use_graph: bool,
) -> Result<()> {
    if count == 0 {
        return Ok(());
    }
    let c = blk.layers.last().map_or(0, |l| l.out);
    let acts = BlockBufs::new(dev, &blk.layers, 1)?;
    let x = dev.zeros::<f32>(k * e)?;
    let step = dev.zeros::<i64>(1)?;
    let one = |t_off: usize, advance: usize| -> Result<()> {
        dev.launch(
            "gather_tokens_step",
            (dims(k * e).min(64), 1),
            (kernels::ROW_THREADS, 1),
            &[
                Arg::I(e as i32),
                Arg::I(k as i32),
                Arg::P(ids.ptr),
                Arg::P(step.ptr),
                Arg::I(t_off as i32),
                Arg::P(tv.ptr),
                Arg::P(x.ptr),
            ],
        )?;
        let n = blk.layers.len();
        for (i, l) in blk.layers.iter().enumerate() {
            // layer 0 reads the previous token's final output (zero at the start)
            let a = if i == 0 {
                acts.layers[n - 1].y.ptr
            } else {
                acts.layers[i - 1].y.ptr
            };
            let b = if l.in_b > 0 { x.ptr } else { 0 };
            let la = &acts.layers[i];
            let res = if l.residual_is_a { a } else { b };
            let (pw, pb) = match l.proj {
                Some((pw, pb)) => (blk.p(pw), blk.p(pb)),
                None => (0, 0),
            };
            let warps = if l.proj.is_some() { 2 * l.out } else { l.out };
            // 16-byte loads when every row start and vector allows them
            let it = l.in_a + l.in_b;
            let aligned = [blk.p(l.w), a, b, pw, res, blk.p(l.w + l.in_a)]
                .iter()
                .all(|&p| p % 16 == 0)
                && [it, l.in_a, l.in_b, res_in(l)].iter().all(|&d| d % 4 == 0);
            let kernel = if aligned { "gemv_rows4" } else { "gemv_rows" };
            dev.launch_n(
                kernel,
                warps * 32,
                &[
                    Arg::I(l.out as i32),
                    Arg::I(l.in_a as i32),
                    Arg::I(l.in_b as i32),
                    Arg::P(blk.p(l.w)),
                    Arg::P(a),
                    Arg::P(b),
                    Arg::P(la.h.ptr),
                    Arg::P(pw),
                    Arg::I(res_in(l) as i32),
                    Arg::P(res),
                    Arg::P(la.y.ptr),
                ],
            )?;
            ln_fused(dev, blk, l, 1, la, res, pb)?;
        }
        dev.launch(
            "store_step",
            (1, 1),
            (kernels::ROW_THREADS, 1),
            &[
                Arg::I(c as i32),
                Arg::P(acts.last()),
                Arg::P(outs.ptr),
                Arg::P(step.ptr),
                Arg::I(t_off as i32),
                Arg::I(advance as i32),
            ],
        )
    };
    let chunks = count / GRAPH_CHUNK;
    let mut done = 0;
    if use_graph && chunks > 0 {
        match capture(dev, || {
            for t in 0..GRAPH_CHUNK {
                one(t, if t == GRAPH_CHUNK - 1 { GRAPH_CHUNK } else { 0 })?;
            }
            Ok(())
        }) {
            Ok(graph) => {
                for _ in 0..chunks {
                    graph
                        .launch()
                        .map_err(|e| anyhow!("CUDA graph launch: {e:?}"))?;
                }
                done = chunks * GRAPH_CHUNK;
                // let the replays finish before the graph is destroyed
                dev.sync()?;
            }
            Err(e) => eprintln!(
                "  recurrent pass: CUDA graph capture failed ({e:#}); launching kernels directly"
            ),
        }
    }
    while done < count {
        // the counter sits at `done`; advance it one token at a time
        one(0, 1)?;
        done += 1;
    }
    dev.sync()
}
