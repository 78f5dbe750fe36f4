//! `selfsup neighbors`: test images and their nearest training images.

use super::RunArgs;
use crate::eval;
use anyhow::Result;
use std::path::PathBuf;
use tch::Device;

pub fn command(
    run: &RunArgs,
    queries: usize,
    k: usize,
    seed: u64,
    out: Option<PathBuf>,
    device: Device,
) -> Result<()> {
    let ck = run.checkpoint.as_deref();
    let text = eval::neighbors::for_run(&run.run, ck, queries, k, seed, out, device)?;
    print!("{text}");
    Ok(())
}
