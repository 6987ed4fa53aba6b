//! The experiment (ALGORITHM.md section 7), independent of any model's
//! internals: run a cell (`cell.rs`), the sweep and comparisons
//! (`sweep.rs`), the merged results and their analysis (`results.rs`,
//! `stats.rs`), plots and the generated report.

pub mod cell;
pub mod format;
pub mod plots;
pub mod report;
pub mod results;
pub mod stats;
pub mod sweep;
