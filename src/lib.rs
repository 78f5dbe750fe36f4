//! selfsup: self-supervised visual representation learning on libtorch.
//!
//! data -> method (one file each, behind `methods::Method`) -> training loop -> evaluation.

pub mod augment;
pub mod cli;
pub mod config;
pub mod data;
pub mod eval;
pub mod losses;
pub mod methods;
pub mod nets;
pub mod train;
