//! New-LLM (docs/algorithm.md): a ContextBlock trained to fixed-point contexts
//! (Phase 1), then a TokenBlock + head trained for next-token prediction on
//! the frozen contexts (Phase 2).
//!
//! `model.rs` (the network, forward and backward) -> `phase1.rs` ->
//! `cache.rs` (recurrent passes, Phase-2 caches) -> `phase2.rs` ->
//! `metrics.rs` (Effective Rank); `cell.rs` runs one cell through the
//! `engine.rs` device boundary (CPU, or `gpu/` with the cuda feature);
//! `memory.rs` predicts sizes; `checkpoint.rs`, `generate.rs`, `golden.rs`
//! (the checks against the original's numbers) with `golden_hooks.rs`.

pub mod cache;
pub mod cell;
pub mod checkpoint;
pub mod engine;
pub mod generate;
pub mod golden;
pub mod golden_hooks;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod loss;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod phase1;
pub mod phase2;
pub mod resume;
