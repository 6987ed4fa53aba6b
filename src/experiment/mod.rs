//! The experiment (docs/algorithm.md section 7), independent of any model's
//! internals: run a cell (`cell.rs`), the sweep (`sweep.rs`), grids of
//! configs (`grid.rs`), the merged results and their analysis
//! (`results.rs`; `stats.rs` and `laws.rs`: pure maths), plots and the
//! generated report.

pub mod cell;
pub mod format;
pub mod grid;
pub mod laws;
pub mod plots;
pub mod report;
pub mod results;
pub mod stats;
pub mod sweep;
