//! `selfsup segment`: segmentation transfer of a run's encoder (`--run`) or of the random
//! one (`--baseline random`).

use super::{SegmentArgs, config};
use crate::eval::segment;
use anyhow::{Result, bail};
use tch::Device;

pub fn command(args: SegmentArgs, device: Device) -> Result<()> {
    let SegmentArgs {
        run,
        baseline,
        protocol,
        seg_data,
        mut cfg,
        out,
        quiet,
    } = args;
    let protocols = segment::Protocol::parse(&protocol)?;
    if let Some(d) = seg_data {
        let quoted = toml::Value::String(d).to_string();
        cfg.sets.insert(0, format!("seg_data={quoted}"));
    }
    let text = match (run, baseline) {
        (Some(run), None) => {
            if cfg.config.is_some() || cfg.data.is_some() {
                bail!(
                    "segment --run uses the run's own config; --config and --data apply to --baseline (use --set for the seg_* keys)"
                );
            }
            segment::for_run(
                &run,
                None,
                &cfg.sets,
                &protocols,
                out.as_deref(),
                device,
                quiet,
            )?
        }
        (None, Some(_)) => {
            let out = out.expect("clap requires --out with --baseline");
            segment::for_random(&config::plain(&cfg)?, &protocols, &out, device, quiet)?
        }
        _ => bail!("segment needs exactly one of --run DIR or --baseline random"),
    };
    print!("{text}");
    Ok(())
}
