//! `newllm bench --set device=cuda`: the same stages as bench.rs, timed on
//! the GPU (each stage synchronised), against the cuBLAS f32 GEMM peak and
//! the device-to-device copy bandwidth measured in the same process.
//! GEMM FLOPs are counted from the layer shapes (2 x rows x weights per
//! forward, twice that per backward), as the CPU counter would count them.

use super::common::{
    phase1_input, phase1_stage_name, random_ids, stage, BenchReport, SEED_500_CELL_TOKENS,
};
use crate::config::Config;
use crate::memory::gib;
use crate::models::newllm::gpu::cache::recurrent_pass;
use crate::models::newllm::gpu::model::DevModel;
use crate::models::newllm::gpu::phase1::GpuPhase1;
use crate::models::newllm::gpu::phase2::GpuPhase2;
use crate::models::newllm::gpu::runtime::Dev;
use crate::models::newllm::gpu::GpuEngine;
use crate::models::newllm::memory::predict_peak_bytes;
use crate::models::newllm::model::{Block, Model};
use crate::models::newllm::phase2::Stream;
use crate::ops::{Precision, Trans};
use crate::rng::Rng;
use anyhow::Result;
use std::time::Instant;

/// Best-of-`reps` seconds of `f` (after a warm-up call), synchronised.
fn time_it(dev: &Dev, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    dev.sync()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        dev.sync()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Weights that take part in GEMMs (W and projections) of a block's layers.
fn matrix_weights(b: &Block) -> u64 {
    b.layers
        .iter()
        .map(|l| {
            let proj = if l.proj.is_some() {
                l.out * if l.residual_is_a { l.in_a } else { l.in_b }
            } else {
                0
            };
            (l.out * (l.in_a + l.in_b) + proj) as u64
        })
        .sum()
}

pub fn run(base: &Config, phase2_batch: usize, seq_tokens: usize) -> Result<BenchReport> {
    let eng = GpuEngine::new(base)?;
    let dev = &eng.dev;
    eprintln!(
        "bench: {} (TF32 {}); measuring the cuBLAS GEMM peak and copy bandwidth ...",
        dev.name,
        if base.cuda_allow_tf32 { "on" } else { "off" }
    );

    // cuBLAS f32 GEMM peak on a large square product.
    let s = 4096;
    let a = dev.zeros::<f32>(s * s)?;
    let b = dev.zeros::<f32>(s * s)?;
    let c = dev.zeros::<f32>(s * s)?;
    let secs = time_it(dev, 5, || {
        dev.gemm(c.ptr, s, a.ptr, s, b.ptr, s, Trans::NN, (s, s, s), false)
    })?;
    let peak = 2.0 * (s * s * s) as f64 / secs / 1e9;
    // Copy bandwidth: a device-to-device copy reads and writes every byte.
    let bytes = 1usize << 30;
    let src = dev.zeros::<f32>(bytes / 4)?;
    let dst = dev.zeros::<f32>(bytes / 4)?;
    let secs = time_it(dev, 5, || dev.copy_f32(dst.ptr, src.ptr, bytes / 4))?;
    let bw = 2.0 * bytes as f64 / secs / 1e9;
    drop((a, b, c, src, dst));

    let mut stages = Vec::new();
    // Phase 2: one training step on a full batch.
    let cfg = Config {
        phase2_batch_size: phase2_batch,
        ..base.clone()
    };
    let mut model = Model::new(&cfg, None)?;
    if let Some(t) = model.token.params.find("token_output.weight").cloned() {
        Rng::new(3).fill_normal(
            &mut model.token.params.data[t.offset..t.offset + t.len],
            0.02,
        );
    }
    let ids = random_ids(phase2_batch + 1, cfg.vocab_size, 4);
    let mut src_h = vec![0.0f32; phase2_batch * cfg.context_dim];
    Rng::new(5).fill_normal(&mut src_h, 1.0);
    let st = Stream {
        ids: &ids,
        src: &src_h,
        bins: &[],
    };
    {
        let mut p2 = GpuPhase2::new(dev, &model)?;
        p2.use_stream(dev, &st)?;
        let secs = time_it(dev, 3, || {
            p2.forward(dev, &cfg, 0, phase2_batch)?;
            p2.backward(dev, 0, phase2_batch)?;
            p2.step(dev, 1.0)?;
            Ok(())
        })?;
        let (v, e) = (cfg.vocab_size as u64, cfg.embed_dim as u64);
        let rows = phase2_batch as u64;
        let flops = 2 * rows * matrix_weights(&model.context)
            + 6 * rows * (matrix_weights(&model.token) + v * e);
        dev.sample_memory();
        stages.push(stage(
            "phase2_step",
            Precision::F32,
            (secs, flops),
            peak,
            format!(
                "batch {phase2_batch}, {:.0} tokens/s",
                phase2_batch as f64 / secs
            ),
        ));
    }

    // Phase 1: one iteration over one batch of rows, both modes.
    for all_layers in [false, true] {
        let (model, ids, prev) = phase1_input(base, all_layers)?;
        let (cfg, n) = (&model.cfg, ids.len());
        let dm = DevModel::upload(dev, &model)?;
        let mut p1 = GpuPhase1::new(dev, &dm, &model, &ids, Some(prev), true)?;
        let secs = time_it(dev, 2, || p1.accumulate(dev, &dm, cfg).map(|_| ()))?;
        dev.sample_memory();
        let flops = 6 * n as u64 * matrix_weights(&model.context);
        stages.push(stage(
            phase1_stage_name(all_layers),
            Precision::F32,
            (secs, flops),
            peak,
            format!("{n} rows, {:.0} tokens/s", n as f64 / secs),
        ));
    }

    // The recurrent pass, with and without the captured graphs.
    let model = Model::new(base, None)?;
    let dm = DevModel::upload(dev, &model)?;
    let weight_bytes = 4 * model.context.params.data.len() as u64;
    let ids = random_ids(seq_tokens, base.vocab_size, 8);
    let idb = dev.upload(&ids)?;
    let outs = dev.zeros::<f32>(seq_tokens * base.context_dim)?;
    let flops = 2 * seq_tokens as u64 * matrix_weights(&model.context);
    let mut tps = 0.0;
    for graphs in [true, false] {
        let secs = time_it(dev, 1, || {
            recurrent_pass(dev, &dm.ctx, dm.ek, &dm.tv, &idb, seq_tokens, &outs, graphs)
        })?;
        let t = seq_tokens as f64 / secs;
        if graphs {
            tps = t;
        }
        stages.push(stage(
            if graphs {
                "sequential_pass"
            } else {
                "sequential_pass_no_graph"
            },
            Precision::F32,
            (secs, flops),
            peak,
            format!(
                "{seq_tokens} tokens, {t:.0} tokens/s, {:.0}% of copy bandwidth",
                100.0 * weight_bytes as f64 * t / 1e9 / bw
            ),
        ));
    }
    dev.sample_memory();
    eprintln!("bench: peak GPU memory in use {}", gib(dev.peak_bytes()));
    let (n500, m500) = SEED_500_CELL_TOKENS;
    let predicted = predict_peak_bytes(&model.cfg, n500, m500);
    Ok(BenchReport {
        device: format!("{}: {}", dev.name, dev.loaded),
        threads: 0,
        gemm_peak_gflops: peak,
        bf16_gemm_peak_gflops: None,
        register_rates_gflops: None,
        avx512_bf16_gemm_peak_gflops: None,
        bf16_kernel: "n/a (GPU bench: f32)".into(),
        read_bandwidth_gbs: bw,
        stages,
        sequential_tokens_per_s: tps,
        sequential_weight_bytes_per_token: weight_bytes,
        sequential_fraction_of_bandwidth: weight_bytes as f64 * tps / 1e9 / bw,
        seed_500_cell_predicted_peak_bytes: predicted,
        state_write: None,
    })
}
