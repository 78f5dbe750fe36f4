//! `selfsup report`: evaluate a run and write its HTML report.

use crate::report;
use anyhow::Result;
use std::path::Path;
use tch::Device;

pub fn command(run: &Path, points: usize, sets: &[String], device: Device) -> Result<()> {
    print!("{}", report::for_run(run, points, sets, device)?);
    Ok(())
}
