//! newllm: the New-LLM language model (fixed-point ContextBlock + TokenBlock)
//! and its scaling experiments. See ../shared/spec/ALGORITHM.md for the
//! algorithm; module names follow its sections.

pub mod bench;
pub mod cache;
pub mod cell;
pub mod config;
pub mod data;
pub mod engine;
pub mod generate;
pub mod golden;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod phase1;
pub mod phase2;
pub mod plots;
pub mod progress;
pub mod report;
pub mod results;
pub mod rng;
pub mod stats;
pub mod sweep;
