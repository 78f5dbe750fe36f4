//! `selfsup data`: data set tools.

use super::{ConfigArgs, config};
use crate::data;
use anyhow::Result;
use std::path::Path;
use std::time::Instant;

/// `data inspect`: counts, image shape, classes and a grid of samples.
pub fn inspect(cfg: &ConfigArgs, out: &Path) -> Result<()> {
    let plain = config::plain(cfg)?;
    let ds = data::load(&plain.data, plain.train.seed)?;
    print!("{}", data::inspect::describe(&ds)?);
    data::inspect::write_grid(&ds, out)?;
    println!("sample grid -> {}", out.display());
    Ok(())
}

/// `data pack`: the data set as WebDataset shards.
pub fn pack(cfg: &ConfigArgs, out: &Path, max_side: u32, shard_size: &str) -> Result<()> {
    let plain = config::plain(cfg)?;
    let ds = data::load(&plain.data, plain.train.seed)?;
    let opts = data::pack::PackOptions {
        max_side,
        shard_bytes: data::pack::parse_bytes(shard_size)?,
        seed: plain.train.seed,
    };
    let t0 = Instant::now();
    let p = data::pack::pack(&ds, out, &opts)?;
    println!(
        "packed {} samples of {} into {} shards ({:.1} MB; {} images re-encoded) in {:.1}s -> {}",
        p.samples,
        ds.name,
        p.shards.len(),
        p.bytes as f64 / 1e6,
        p.reencoded,
        t0.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}
