//! What the CPU and GPU benches share: the report types, the timing and
//! ceiling measurements, the stage inputs, and the printed table.

use crate::config::Config;
use crate::memory::gib;
use crate::models::newllm::memory::trainable_counts;
use crate::models::newllm::model::Model;
use crate::models::newllm::resume::state_values;
use crate::ops::{self, Mat, Precision, Trans};
use crate::rng::Rng;
use crate::state::{self, Fingerprint};
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct StageResult {
    pub stage: String,
    /// The GEMM arithmetic the stage ran at.
    pub precision: Precision,
    /// Best wall time of the repetitions, seconds.
    pub seconds: f64,
    /// GEMM FLOPs issued by the stage.
    pub gemm_flops: u64,
    pub gflops: f64,
    /// gflops / the in-process GEMM peak of the stage's precision.
    pub fraction_of_gemm_peak: f64,
    pub note: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// What ran: the CPU's model name, or the GPU's name with the driver,
    /// cuBLAS, NVRTC and kernel image that were loaded.
    pub device: String,
    pub threads: usize,
    pub gemm_peak_gflops: f64,
    /// The bf16 GEMM's best on large shapes, on the kernel chosen here
    /// (`bf16_kernel`); None on the GPU bench.
    pub bf16_gemm_peak_gflops: Option<f64>,
    pub bf16_kernel: String,
    /// One thread's register-loop rates of `vdpbf16ps` and of the f32 FMA,
    /// which choose the kernel, and the AVX512_BF16 GEMM's best on all
    /// threads whether chosen or not (None without AVX512_BF16).
    pub register_rates_gflops: Option<(f64, f64)>,
    pub avx512_bf16_gemm_peak_gflops: Option<f64>,
    pub read_bandwidth_gbs: f64,
    pub stages: Vec<StageResult>,
    pub sequential_tokens_per_s: f64,
    pub sequential_weight_bytes_per_token: u64,
    pub sequential_fraction_of_bandwidth: f64,
    pub seed_500_cell_predicted_peak_bytes: u64,
    /// Measured on the CPU bench only.
    pub state_write: Option<StateWriteBench>,
}

/// The resume state's write cost: a state written as a cell writes it
/// (streamed, checksummed, flushed to disk, renamed), and what that rate
/// predicts for the seed's 500-sample cell against this bench's Phase-1
/// and Phase-2 rates.
#[derive(Clone, Debug, Serialize)]
pub struct StateWriteBench {
    pub bytes: u64,
    pub seconds: f64,
    pub gb_per_s: f64,
    pub seed_500_phase1_state_bytes: u64,
    pub seed_500_phase1_write_seconds: f64,
    /// The write's share of a Phase-1 iteration plus the write.
    pub seed_500_phase1_write_share: f64,
    pub seed_500_phase2_state_bytes: u64,
    pub seed_500_phase2_write_seconds: f64,
    /// The write's share of a Phase-2 epoch (training positions only) plus the write.
    pub seed_500_phase2_write_share: f64,
}

/// Times a 1 GiB state write into `dir` (best of 2) and predicts the seed
/// 500-sample cell's writes from it; `phase1_tps` / `phase2_tps` are the
/// bench's tokens per second of a Phase-1 iteration and a Phase-2 step.
pub fn state_write(
    dir: &Path,
    cfg: &Config,
    phase1_tps: f64,
    phase2_tps: f64,
) -> Result<StateWriteBench> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("bench-{}.state", std::process::id()));
    // distinct values, so no layer below can compress them away
    let values: Vec<f32> = (0..256u32 << 20).map(|i| i as f32).collect();
    let fingerprint = Fingerprint::new(cfg, &[], &[])?;
    let mut best = f64::INFINITY;
    let mut bytes = 0;
    for _ in 0..2 {
        let t = Instant::now();
        bytes = state::write(
            &path,
            &fingerprint,
            serde_json::json!({}),
            &[("x", &values)],
        )?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    state::remove(&path)?;
    let rate = bytes as f64 / best;
    let (n, m) = SEED_500_CELL_TOKENS;
    let (ctx, tok) = trainable_counts(cfg);
    let (p1, p2) = state_values(ctx, tok, n, m, cfg.context_dim);
    let (p1, p2) = (state::file_bytes(p1), state::file_bytes(p2));
    let (w1, w2) = (p1 as f64 / rate, p2 as f64 / rate);
    let (iteration, epoch) = (n as f64 / phase1_tps, n as f64 / phase2_tps);
    Ok(StateWriteBench {
        bytes,
        seconds: best,
        gb_per_s: rate / 1e9,
        seed_500_phase1_state_bytes: p1,
        seed_500_phase1_write_seconds: w1,
        seed_500_phase1_write_share: w1 / (iteration + w1),
        seed_500_phase2_state_bytes: p2,
        seed_500_phase2_write_seconds: w2,
        seed_500_phase2_write_share: w2 / (epoch + w2),
    })
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

/// The best GFLOP/s of `mul(a, b, c, (m, k, n))` (C = A B, row-major) over
/// a few large shapes, best of 3 after a warm-up each.
fn best_of_shapes(mut mul: impl FnMut(&[f32], &[f32], &mut [f32], (usize, usize, usize))) -> f64 {
    let mut best: f64 = 0.0;
    for (m, k, n) in [(2048, 2048, 2048), (1024, 768, 4096), (4096, 1536, 1408)] {
        let mut rng = Rng::new(1);
        let mut a = vec![0.0f32; m * k];
        let mut b = vec![0.0f32; k * n];
        rng.fill_normal(&mut a, 1.0);
        rng.fill_normal(&mut b, 1.0);
        let mut c = vec![0.0f32; m * n];
        let (s, _) = time_it(3, || mul(&a, &b, &mut c, (m, k, n)));
        best = best.max(2.0 * (m * n * k) as f64 / s / 1e9);
    }
    best
}

/// GEMM throughput at `prec`: the best of a few large shapes, GFLOP/s.
pub fn gemm_peak(prec: Precision) -> f64 {
    best_of_shapes(|a, b, c, (m, k, n)| {
        ops::matmul(
            prec,
            c,
            n,
            Mat::new(a, m, k),
            Mat::new(b, k, n),
            Trans::NN,
            false,
        )
    })
}

/// The AVX512_BF16 GEMM's best on the shapes of `gemm_peak`, called
/// directly (whether or not `bf16::kernel` chose it), GFLOP/s; None
/// without AVX512_BF16.
pub fn avx512_bf16_gemm_peak() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        if !ops::bf16::has_avx512_bf16() {
            return None;
        }
        Some(best_of_shapes(|a, b, c, (m, k, n)| {
            let (av, bv) = ops::bf16_views(Mat::new(a, m, k), Mat::new(b, k, n), Trans::NN);
            // SAFETY: the CPU has AVX512_BF16; the views and C cover the shapes.
            unsafe { ops::bf16::gemm(m, n, k, c.as_mut_ptr(), n, false, av, bv, ops::threads()) }
        }))
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
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

pub fn stage(
    name: &str,
    precision: Precision,
    (seconds, flops): (f64, u64),
    peak: f64,
    note: String,
) -> StageResult {
    let gflops = flops as f64 / seconds / 1e9;
    StageResult {
        stage: name.to_string(),
        precision,
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
        "{}\nthreads {} | f32 GEMM peak {:.1} GFLOP/s | read bandwidth {:.1} GB/s\n",
        r.device, r.threads, r.gemm_peak_gflops, r.read_bandwidth_gbs
    );
    if let Some(p) = r.bf16_gemm_peak_gflops {
        s += &format!(
            "bf16 runs as {}: GEMM peak {p:.1} GFLOP/s ({:.2}x f32)\n",
            r.bf16_kernel,
            p / r.gemm_peak_gflops
        );
    }
    if let (Some((h, f)), Some(g)) = (r.register_rates_gflops, r.avx512_bf16_gemm_peak_gflops) {
        s += &format!(
            "AVX512_BF16: register loop per thread vdpbf16ps {h:.1} vs f32 FMA {f:.1} GFLOP/s ({:.2}x); its GEMM {g:.1} GFLOP/s on all threads ({:.2}x the f32 GEMM peak, {:.0}% of threads x its register rate)\n",
            h / f,
            g / r.gemm_peak_gflops,
            100.0 * g / (h * r.threads as f64)
        );
    }
    s += "\n| stage | precision | seconds | bf16 speed-up | GEMM GFLOP/s | % of its precision's GEMM peak | notes |\n|---|---|---|---|---|---|---|\n";
    for st in &r.stages {
        let speedup = match st.precision {
            Precision::Bf16 => r
                .stages
                .iter()
                .find(|f| f.stage == st.stage && f.precision == Precision::F32)
                .map_or(String::new(), |f| format!("{:.2}x", f.seconds / st.seconds)),
            Precision::F32 => String::new(),
        };
        s += &format!(
            "| {} | {} | {:.4} | {speedup} | {:.1} | {:.0}% | {} |\n",
            st.stage,
            st.precision,
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
    if let Some(w) = &r.state_write {
        s += &format!(
            "resume state: {} written in {:.2}s = {:.2} GB/s (checksummed, flushed to disk); seed 500-sample cell: Phase-1 state {} = {:.1}s per write, {:.1}% of an iteration; Phase-2 state {} = {:.1}s, {:.1}% of an epoch\n",
            gib(w.bytes),
            w.seconds,
            w.gb_per_s,
            gib(w.seed_500_phase1_state_bytes),
            w.seed_500_phase1_write_seconds,
            100.0 * w.seed_500_phase1_write_share,
            gib(w.seed_500_phase2_state_bytes),
            w.seed_500_phase2_write_seconds,
            100.0 * w.seed_500_phase2_write_share
        );
    }
    s
}
