//! The Kneser-Ney n-gram baseline: `model.rs` (counting, discounts,
//! interpolation, scoring) and `cell.rs` (one cell on a given split).

pub mod cell;
pub mod model;
