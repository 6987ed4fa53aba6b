//! `newllm bench`: each training stage timed in-process next to this
//! machine's own ceilings measured in the same process (f32 GEMM throughput,
//! memory read bandwidth), so every figure is a ratio that machine noise
//! mostly cancels out of. `cpu.rs` and `cuda.rs` time the stages on each
//! device; `common.rs` holds what they share.

pub mod common;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

pub use common::{table, BenchReport};

use crate::config::{Config, Device};
use anyhow::Result;
use std::path::Path;

/// Runs every stage for `base` (the seed preset by default) on its device;
/// the CPU bench times a resume-state write in `state_dir`.
pub fn run(
    base: &Config,
    phase2_batch: usize,
    seq_tokens: usize,
    state_dir: &Path,
) -> Result<BenchReport> {
    match base.device {
        Device::Cuda => run_cuda(base, phase2_batch, seq_tokens),
        Device::Cpu => cpu::run(base, phase2_batch, seq_tokens, state_dir),
    }
}

#[cfg(feature = "cuda")]
fn run_cuda(base: &Config, phase2_batch: usize, seq_tokens: usize) -> Result<BenchReport> {
    cuda::run(base, phase2_batch, seq_tokens)
}

#[cfg(not(feature = "cuda"))]
fn run_cuda(_base: &Config, _phase2_batch: usize, _seq_tokens: usize) -> Result<BenchReport> {
    Err(crate::models::newllm::engine::no_cuda_feature())
}
