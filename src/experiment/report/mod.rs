//! The generated analysis (docs/algorithm.md section 7): the sweep report
//! (`sweep.rs`: conditions, summary, timings, epochs; `analysis.rs`: the
//! seed document's analysis sections; `baselines.rs`: New-LLM against the
//! standard models; `scaling.rs`: the validation design, windows, laws and
//! predictions), the comparison of configs (`compare.rs`), the per-cell
//! diagnostics they draw on (`diagnostics.rs`), every verdict decided once
//! (`verdicts.rs`) and the shared sentences (`wording.rs`).

pub mod analysis;
pub mod baselines;
pub mod compare;
pub mod diagnostics;
pub mod scaling;
pub mod sweep;
pub mod verdicts;
pub mod wording;

#[cfg(test)]
mod tests;

pub use compare::{render_compare_report, write_compare_report};
pub use sweep::{render_report, write_report};
