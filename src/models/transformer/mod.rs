//! The transformer baseline: a GPT-2-style decoder-only transformer with
//! forward and backward written out by hand (as llm.c) over one flat
//! parameter buffer, so one `ops::Adam` and one global-norm clip cover it.
//!
//! - `model`: dims, parameters (GPT-2 names and init), activations planned
//!   up front, forward / backward, parameter and FLOP counts.
//! - `kernels`: embedding, GELU and causal attention with their backwards.
//! - `train`: cutting a token stream into windows, the Adam train step,
//!   evaluation and the memory estimate.
//! - `cell`: one cell on a given split with New-LLM's Phase-2 protocol.

pub mod cell;
pub mod kernels;
pub mod model;
pub mod train;
