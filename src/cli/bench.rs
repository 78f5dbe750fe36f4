//! `selfsup bench-step` and `selfsup bench-augment`: selfsup's training step and its
//! augmentation next to PyTorch's and torchvision's, measured in one run.

use super::{ConfigArgs, config};
use crate::{augment, data, train, venv};
use anyhow::Result;
use std::path::PathBuf;
use tch::Device;

/// The config `bench-step` measures unless given one.
const DEFAULT_BENCH_PRESET: &str = "presets/fashion-mnist-simclr.toml";

pub fn step(
    cfg: &ConfigArgs,
    opts: train::bench::BenchOptions,
    python: Option<PathBuf>,
    no_pytorch: bool,
    device: Device,
) -> Result<()> {
    let preset = venv::source_file(DEFAULT_BENCH_PRESET);
    let file = cfg.config.clone().unwrap_or(preset);
    let config = config::of_method(Some(&file), cfg)?;
    let ds = data::load(&config.data, config.train.seed)?;
    println!(
        "{}",
        train::bench::describe_step(&config.method, &config.encoder, &config.train, &ds, device)
    );
    let python = match python {
        _ if no_pytorch => Err(anyhow::anyhow!("--no-pytorch")),
        Some(p) => Ok(p),
        None => venv::python(),
    };
    let rows = train::bench::measure(&config, &ds, device, &opts, python)?;
    print!("{}", train::bench::table(&rows));
    print!("{}", train::bench::profile_table(&rows));
    Ok(())
}

pub fn data(opts: &data::bench::BenchDataOptions, python: Option<PathBuf>) -> Result<()> {
    let python = python.map_or_else(venv::python, Ok);
    let rows = data::bench::measure(opts, python)?;
    print!("{}", data::bench::table(&rows));
    Ok(())
}

pub fn augment(images: usize, python: Option<PathBuf>) -> Result<()> {
    let python = python.map_or_else(venv::python, Ok);
    print!("{}", augment::bench::table(images, python)?);
    Ok(())
}
