//! `selfsup data`: data set tools.

use super::{ConfigArgs, config};
use crate::data;
use anyhow::Result;
use std::path::Path;

/// `data inspect`: counts, image shape, classes and a grid of samples.
pub fn inspect(cfg: &ConfigArgs, out: &Path) -> Result<()> {
    let plain = config::plain(cfg)?;
    let ds = data::load(&plain.data, plain.train.seed)?;
    print!("{}", data::inspect::describe(&ds));
    data::inspect::write_grid(&ds, out)?;
    println!("sample grid -> {}", out.display());
    Ok(())
}
