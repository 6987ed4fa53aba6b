//! What the CPU and GPU benches share: the report types, the timing and
//! ceiling measurements, the stage inputs, and the printed table.

use crate::config::Config;
use crate::memory::gib;
use crate::models::newllm::model::Model;
use crate::ops::{self, Mat, Trans};
use crate::rng::Rng;
use anyhow::Result;
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct StageResult {
    pub stage: String,
    /// Best wall time of the repetitions, seconds.
    pub seconds: f64,
    /// GEMM FLOPs issued by the stage.
    pub gemm_flops: u64,
    pub gflops: f64,
    /// gflops / the in-process GEMM peak.
    pub fraction_of_gemm_peak: f64,
    pub note: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub threads: usize,
    pub gemm_peak_gflops: f64,
    pub read_bandwidth_gbs: f64,
    pub stages: Vec<StageResult>,
    pub sequential_tokens_per_s: f64,
    pub sequential_weight_bytes_per_token: u64,
    pub sequential_fraction_of_bandwidth: f64,
    pub seed_500_cell_predicted_peak_bytes: u64,
}

/// The seed preset's 500-sample cell on UltraChat (train, validation tokens),
/// for the memory prediction both benches print.
pub const SEED_500_CELL_TOKENS: (usize, usize) = (529_173, 58_797);

/// Best-of-`reps` wall time of `f` (after one warm-up call) and the GEMM
/// FLOPs one call issues.
pub fn time_it(reps: usize, mut f: impl FnMut()) -> (f64, u64) {
    f();
    let mut best = f64::INFINITY;
    let mut flops = 0;
    for _ in 0..reps {
        let f0 = ops::gemm_flops();
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        flops = ops::gemm_flops() - f0;
    }
    (best, flops)
}

/// f32 GEMM throughput: the best of a few large shapes, GFLOP/s.
pub fn gemm_peak() -> f64 {
    let mut best: f64 = 0.0;
    for (m, k, n) in [(2048, 2048, 2048), (1024, 768, 4096), (4096, 1536, 1408)] {
        let mut rng = Rng::new(1);
        let mut a = vec![0.0f32; m * k];
        let mut b = vec![0.0f32; k * n];
        rng.fill_normal(&mut a, 1.0);
        rng.fill_normal(&mut b, 1.0);
        let mut c = vec![0.0f32; m * n];
        let (s, fl) = time_it(3, || {
            ops::matmul(
                &mut c,
                n,
                Mat::new(&a, m, k),
                Mat::new(&b, k, n),
                Trans::NN,
                false,
            )
        });
        best = best.max(fl as f64 / s / 1e9);
    }
    best
}

/// Memory read bandwidth for a buffer of `bytes`, all threads, GB/s.
pub fn read_bandwidth(bytes: usize) -> f64 {
    use rayon::prelude::*;
    let v = vec![1.0f32; bytes / 4];
    let (s, _) = time_it(5, || {
        // 16 independent lanes so the loop vectorises and is load-bound, not add-bound
        let sum: f32 = v
            .par_chunks(1 << 16)
            .map(|c| {
                let mut acc = [0.0f32; 16];
                for block in c.chunks_exact(16) {
                    for (a, x) in acc.iter_mut().zip(block) {
                        *a += x;
                    }
                }
                acc.iter().sum::<f32>()
            })
            .sum();
        std::hint::black_box(sum);
    });
    bytes as f64 / s / 1e9
}

pub fn stage(name: &str, (seconds, flops): (f64, u64), peak: f64, note: String) -> StageResult {
    let gflops = flops as f64 / seconds / 1e9;
    StageResult {
        stage: name.to_string(),
        seconds,
        gemm_flops: flops,
        gflops,
        fraction_of_gemm_peak: gflops / peak,
        note,
    }
}

pub fn random_ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.below(vocab) as u32).collect()
}

/// The Phase-1 bench input: the model in the given mode, one
/// `phase1_batch_size` batch of random ids and random previous contexts.
pub fn phase1_input(base: &Config, all_layers: bool) -> Result<(Model, Vec<u32>, Vec<f32>)> {
    let cfg = Config {
        token_input_all_layers: all_layers,
        ..base.clone()
    };
    let model = Model::new(&cfg, None)?;
    let n = cfg.phase1_batch_size;
    let ids = random_ids(n, cfg.vocab_size, 6);
    let mut prev = vec![0.0f32; n * cfg.context_dim];
    Rng::new(7).fill_normal(&mut prev, 0.1);
    Ok((model, ids, prev))
}

pub fn phase1_stage_name(all_layers: bool) -> &'static str {
    if all_layers {
        "phase1_iteration_true"
    } else {
        "phase1_iteration_false"
    }
}

/// The table `newllm bench` prints.
pub fn table(r: &BenchReport) -> String {
    let mut s = format!(
        "threads {} | f32 GEMM peak {:.1} GFLOP/s | read bandwidth {:.1} GB/s\n\n| stage | seconds | GEMM GFLOP/s | % of GEMM peak | notes |\n|---|---|---|---|---|\n",
        r.threads, r.gemm_peak_gflops, r.read_bandwidth_gbs
    );
    for st in &r.stages {
        s += &format!(
            "| {} | {:.4} | {:.1} | {:.0}% | {} |\n",
            st.stage,
            st.seconds,
            st.gflops,
            100.0 * st.fraction_of_gemm_peak,
            st.note
        );
    }
    s += &format!(
        "\nsequential pass: {:.0} tokens/s x {:.1} MB of weights per token = {:.1} GB/s, {:.0}% of the measured read bandwidth\n",
        r.sequential_tokens_per_s,
        r.sequential_weight_bytes_per_token as f64 / 1e6,
        r.sequential_tokens_per_s * r.sequential_weight_bytes_per_token as f64 / 1e9,
        100.0 * r.sequential_fraction_of_bandwidth
    );
    s += &format!(
        "seed 500-sample cell: predicted peak memory {}\n",
        gib(r.seed_500_cell_predicted_peak_bytes)
    );
    s
}
