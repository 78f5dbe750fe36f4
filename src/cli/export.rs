//! `selfsup export`: a run's encoder with PyTorch's names, as safetensors.

use super::RunArgs;
use crate::nets;
use crate::run::LoadedRun;
use anyhow::Result;
use std::path::Path;
use tch::Device;

pub fn command(run: &RunArgs, out: &Path, device: Device) -> Result<()> {
    let r = LoadedRun::load(&run.run, run.checkpoint.as_deref(), &[], device)?;
    let encoder = r.model.method.encoder();
    nets::export::write_encoder(
        out,
        &r.model.vs.variables(),
        &r.cfg.method,
        &r.cfg.encoder,
        encoder,
    )?;
    println!(
        "wrote the {} encoder of {} ({} parameters, input {:?}) to {}",
        r.cfg.encoder.kind,
        run.run.display(),
        r.encoder_parameters(),
        encoder.input,
        out.display()
    );
    Ok(())
}
