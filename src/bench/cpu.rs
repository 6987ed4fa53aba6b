//! The CPU bench: a Phase-2 step, a Phase-1 iteration in both modes, the
//! sequential pass, a transformer-baseline training step and a Kneser-Ney
//! cell, each against the in-process GEMM peak or read bandwidth.

use super::common::{
    avx512_bf16_gemm_peak, gemm_peak, phase1_input, phase1_stage_name, random_ids, read_bandwidth,
    stage, state_write, time_it, BenchReport, StageResult, SEED_500_CELL_TOKENS,
};
use crate::config::Config;
use crate::memory::gib;
use crate::models::kn::model::KneserNey;
use crate::models::newllm::cache::sequential_pass;
use crate::models::newllm::memory::predict_peak_bytes;
use crate::models::newllm::model::Model;
use crate::models::newllm::phase1::Phase1;
use crate::models::newllm::phase2::{Phase2, Stream};
use crate::models::transformer::{self, model::Transformer, train::Trainer};
use crate::ops::{self, Precision};
use crate::rng::Rng;
use anyhow::Result;
use std::path::Path;

/// Runs every stage for `base` (the seed preset by default): the GEMM
/// stages at f32 and at bf16, each against its own in-process peak.
pub fn run(
    base: &Config,
    phase2_batch: usize,
    seq_tokens: usize,
    state_dir: &Path,
) -> Result<BenchReport> {
    let threads = ops::set_threads(base.threads);
    eprintln!("bench: {threads} threads; measuring the GEMM peaks and read bandwidth ...");
    let peak = gemm_peak(Precision::F32);
    let bf16_peak = gemm_peak(Precision::Bf16);
    let register = ops::bf16::register_rates().map(|(h, f)| (h / 1e9, f / 1e9));
    let avx512_bf16_peak = avx512_bf16_gemm_peak();
    let context_params = Model::new(base, None)?.context.params.data.len();
    let bw = read_bandwidth(4 * context_params);
    let mut stages = Vec::new();
    let mut rates = Vec::new();
    for (prec, peak) in [(Precision::F32, peak), (Precision::Bf16, bf16_peak)] {
        eprintln!("bench: stages at {}", prec.describe());
        let cfg = Config {
            precision: prec,
            ..base.clone()
        };
        rates.push(gemm_stages(
            &cfg,
            peak,
            phase2_batch,
            seq_tokens,
            bw,
            &mut stages,
        )?);
    }
    let f32_rates = rates[0];
    let cfg = Config {
        phase2_batch_size: phase2_batch,
        ..base.clone()
    };

    // Kneser-Ney: build and evaluate a cell of the seed's 500-sample size
    // (529,173 / 58,797 tokens) on log-uniform ids (many distinct n-grams).
    let (n500, m500) = SEED_500_CELL_TOKENS;
    let mut rng = Rng::new(10);
    let mut zipf = |n: usize| -> Vec<u32> {
        (0..n)
            .map(|_| {
                ((cfg.vocab_size as f64).powf(rng.uniform()) as usize - 1).min(cfg.vocab_size - 1)
                    as u32
            })
            .collect()
    };
    let (kn_train, kn_val) = (zipf(n500), zipf(m500));
    let t0 = std::time::Instant::now();
    let lm = KneserNey::train(&kn_train, cfg.kn_order, cfg.vocab_size)?;
    let build = t0.elapsed().as_secs_f64();
    let eval = lm.evaluate(&kn_val, &[])?;
    let kn_seconds = t0.elapsed().as_secs_f64();
    stages.push(stage(
        "kn_cell_529k",
        Precision::F32,
        (kn_seconds, 0),
        peak,
        format!(
            "order {}: build {build:.2}s + evaluate {:.2}s of 529,173 / 58,797 tokens (val PPL {:.0} on random ids)",
            cfg.kn_order,
            kn_seconds - build,
            eval.ppl()
        ),
    ));
    drop(lm);

    let predicted = predict_peak_bytes(base, n500, m500);
    eprintln!(
        "bench: timing a resume-state write in {} ...",
        state_dir.display()
    );
    let state_write = state_write(state_dir, base, f32_rates.phase1_tps, f32_rates.phase2_tps)?;
    eprintln!(
        "seed 500-sample cell (529,173 / 58,797 tokens): predicted peak {}",
        gib(predicted)
    );
    Ok(BenchReport {
        device: cpu_model(),
        threads,
        gemm_peak_gflops: peak,
        bf16_gemm_peak_gflops: Some(bf16_peak),
        register_rates_gflops: register,
        avx512_bf16_gemm_peak_gflops: avx512_bf16_peak,
        bf16_kernel: ops::bf16::kernel().describe().into(),
        read_bandwidth_gbs: bw,
        stages,
        sequential_tokens_per_s: f32_rates.seq_tps,
        sequential_weight_bytes_per_token: 4 * context_params as u64,
        sequential_fraction_of_bandwidth: f32_rates.seq_frac,
        seed_500_cell_predicted_peak_bytes: predicted,
        state_write: Some(state_write),
    })
}

/// The CPU's model name from /proc/cpuinfo ("cpu" where there is none).
fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = info
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    format!("cpu: {}", name.unwrap_or_else(|| "model unknown".into()))
}

/// Throughputs of one precision's stages.
#[derive(Clone, Copy)]
struct Rates {
    phase1_tps: f64,
    phase2_tps: f64,
    seq_tps: f64,
    seq_frac: f64,
}

/// The GEMM stages at `base.precision` against `peak` (that precision's
/// GEMM peak): a Phase-2 step, a Phase-1 iteration in both modes, the
/// sequential pass (against read bandwidth `bw`) and a transformer step.
fn gemm_stages(
    base: &Config,
    peak: f64,
    phase2_batch: usize,
    seq_tokens: usize,
    bw: f64,
    stages: &mut Vec<StageResult>,
) -> Result<Rates> {
    let prec = base.precision;
    // Phase 2: one training step (forward, backward, clip, Adam) on a full batch.
    let cfg = Config {
        phase2_batch_size: phase2_batch,
        ..base.clone()
    };
    let mut model = Model::new(&cfg, None)?;
    // a non-zero head so the step does its real work
    let head = model
        .token
        .params
        .find("token_output.weight")
        .map(|t| (t.offset, t.len))
        .unwrap_or((0, 0));
    Rng::new(3).fill_normal(&mut model.token.params.data[head.0..head.0 + head.1], 0.02);
    let ids = random_ids(phase2_batch + 1, cfg.vocab_size, 4);
    let mut src = vec![0.0f32; phase2_batch * cfg.context_dim];
    Rng::new(5).fill_normal(&mut src, 1.0);
    let s = Stream {
        ids: &ids,
        src: &src,
        bins: &[],
    };
    let mut p2 = Phase2::new(&model);
    let t = time_it(3, || {
        p2.forward(&model, &s, 0, phase2_batch);
        p2.backward(&model, &s, 0, phase2_batch);
        p2.step(&mut model);
    });
    let phase2_tps = phase2_batch as f64 / t.0;
    stages.push(stage(
        "phase2_step",
        prec,
        t,
        peak,
        format!(
            "batch {phase2_batch}, head {} x {}, {:.0} tokens/s",
            cfg.embed_dim, cfg.vocab_size, phase2_tps
        ),
    ));
    drop(p2);

    // Phase 1: one full iteration over one batch of rows, both modes.
    let mut phase1_tps = 0.0;
    for all_layers in [false, true] {
        let (model, ids, prev) = phase1_input(base, all_layers)?;
        let n = ids.len();
        let mut p1 = Phase1::new(&model, &ids, Some(prev));
        let t = time_it(2, || {
            p1.accumulate(&model, &ids);
        });
        stages.push(stage(
            phase1_stage_name(all_layers),
            prec,
            t,
            peak,
            format!("{n} rows, {:.0} tokens/s", n as f64 / t.0),
        ));
        if all_layers == base.token_input_all_layers {
            phase1_tps = n as f64 / t.0;
        }
    }

    // Sequential recurrent pass: bandwidth-bound (each token reads every
    // weight: 4 bytes each in f32, its bf16 copy's 2 in bf16).
    let model = Model::new(base, None)?;
    let bytes_per_weight = match prec {
        Precision::F32 => 4,
        Precision::Bf16 => 2,
    };
    let weight_bytes = bytes_per_weight * model.context.params.data.len() as u64;
    let ids = random_ids(seq_tokens, base.vocab_size, 8);
    let t = time_it(1, || {
        std::hint::black_box(sequential_pass(&model, &ids, seq_tokens));
    });
    let seq_tps = seq_tokens as f64 / t.0;
    let seq_frac = weight_bytes as f64 * seq_tps / 1e9 / bw;
    stages.push(stage(
        "sequential_pass",
        prec,
        t,
        peak,
        format!(
            "{seq_tokens} tokens, {seq_tps:.0} tokens/s, {:.1} MB weights/token, {:.0}% of read bandwidth",
            weight_bytes as f64 / 1e6,
            100.0 * seq_frac
        ),
    ));

    // Transformer baseline: one training step at the size rule's width on
    // the same positions per batch (forward, backward, clip, Adam).
    let dims = transformer::cell::dims_for(&cfg);
    let mut tf = Transformer::new(dims, cfg.seed)?.with_precision(prec);
    let wpb = (phase2_batch / dims.block_size).max(1);
    let mut trainer = Trainer::new(
        &tf,
        wpb * dims.block_size,
        cfg.phase2_learning_rate,
        cfg.phase2_gradient_clip,
    )?;
    let tf_ids = random_ids(wpb * dims.block_size + 1, cfg.vocab_size, 9);
    let mut step_result = Ok(());
    let t = time_it(3, || {
        if let Err(e) = trainer.train_step(
            &mut tf,
            &tf_ids[..wpb * dims.block_size],
            &tf_ids[1..],
            wpb,
            dims.block_size,
        ) {
            step_result = Err(e);
        }
    });
    step_result?;
    stages.push(stage(
        "transformer_step",
        prec,
        t,
        peak,
        format!(
            "{} layers x d_model {}, {} heads, {wpb} windows x {}, {:.0} tokens/s",
            dims.n_layer,
            dims.d_model,
            dims.n_head,
            dims.block_size,
            (wpb * dims.block_size) as f64 / t.0
        ),
    ));
    Ok(Rates {
        phase1_tps,
        phase2_tps,
        seq_tps,
        seq_frac,
    })
}
