//! newllm: the New-LLM language model (fixed-point ContextBlock + TokenBlock)
//! and its scaling experiments. See ../shared/spec/ALGORITHM.md for the
//! algorithm; module names follow its sections.

pub mod config;
pub mod data;
pub mod results;
pub mod stats;
pub mod plots;
pub mod report;
