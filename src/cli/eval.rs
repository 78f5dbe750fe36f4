//! `selfsup eval`: a run's frozen features (`--run`), or a baseline's (`--baseline`),
//! scored by the linear probe and the kNN classifier.

use super::{ConfigArgs, config};
use crate::data;
use crate::eval::{self, baselines::Baseline};
use anyhow::{Result, bail};
use std::path::PathBuf;
use std::time::Instant;
use tch::Device;

pub fn command(
    run: Option<PathBuf>,
    checkpoint: Option<PathBuf>,
    baseline: Option<String>,
    cfg: ConfigArgs,
    device: Device,
) -> Result<()> {
    match (run, baseline) {
        (Some(run), None) => {
            if cfg.config.is_some() || cfg.data.is_some() {
                bail!(
                    "eval --run evaluates the run's own config and data; --config and --data apply to --baseline (use --set for the eval keys)"
                );
            }
            println!(
                "{}",
                eval::for_run(&run, checkpoint.as_deref(), &cfg.sets, device)?
            );
        }
        (None, Some(b)) => {
            let config = config::plain(&cfg)?;
            let ds = data::load(&config.data, config.train.seed)?;
            ds.require_labels()?;
            let b = Baseline::parse(&b)?;
            let t0 = Instant::now();
            let (scores, _) = b.evaluate(&config, &ds, device)?;
            let secs = t0.elapsed().as_secs_f64();
            let label = b.label(config.encoder.kind);
            println!("{}", eval::describe(&label, &ds, &scores, secs));
        }
        _ => bail!("eval needs exactly one of --run DIR or --baseline raw|random"),
    }
    Ok(())
}
