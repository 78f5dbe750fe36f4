//! `selfsup embed`: a run's features of one split as NumPy files.

use super::RunArgs;
use crate::eval;
use anyhow::Result;
use std::path::Path;
use tch::Device;

pub fn command(run: &RunArgs, split: &str, out: &Path, device: Device) -> Result<()> {
    let ck = run.checkpoint.as_deref();
    println!(
        "{}",
        eval::embed::for_run(&run.run, ck, split, out, device)?
    );
    Ok(())
}
