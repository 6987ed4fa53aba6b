//! newllm: the New-LLM language model (fixed-point ContextBlock + TokenBlock)
//! and its scaling experiments. See docs/algorithm.md for the algorithm.
//!
//! `models/` holds each model top to bottom (`models/newllm/`); `experiment/`
//! runs cells, sweeps and comparisons and writes the analysis without knowing
//! any model's internals; `data/` reads corpora into token streams. Shared by
//! all: `ops` (the numeric kernels), `train_loop` (epochs and early stopping),
//! `cell_result` (what a cell records), `config`, `memory`, `io`, `rng`,
//! `progress`; `bench` times the stages.

pub mod bench;
pub mod cell_result;
pub mod claim;
pub mod config;
pub mod data;
pub mod experiment;
pub mod io;
pub mod memory;
pub mod models;
pub mod ops;
pub mod progress;
pub mod rng;
#[cfg(test)]
pub(crate) mod scratch;
pub mod state;
pub mod stop;
pub mod train_loop;
