//! `selfsup finetune`: a run's encoder (or the random one) fine-tuned on each fraction of
//! the labels, then scored on the test split.

use super::{FinetuneArgs, config, pretrain};
use crate::config::Config;
use crate::data::{self, Dataset};
use crate::eval::finetune::{self, Outcome};
use crate::methods;
use crate::nets::EncoderInput;
use crate::run::{LoadedRun, RunDir};
use anyhow::{Result, bail};
use std::path::Path;
use tch::Device;

pub fn command(args: FinetuneArgs, device: Device) -> Result<()> {
    let fractions: Vec<f64> = args
        .labels
        .iter()
        .map(|l| finetune::parse_labels(l))
        .collect::<Result<_>>()?;
    // The config to fine-tune from, its data, the encoder to start from, where results go.
    let (base, ds, init, dir, subject) = match (&args.run, &args.baseline) {
        (Some(run), None) => {
            if args.cfg.config.is_some() || args.cfg.data.is_some() {
                bail!(
                    "finetune --run fine-tunes the run's own encoder on its data; --config and --data apply to --baseline (use --set for the finetune_* keys)"
                );
            }
            let r = LoadedRun::load(run, None, &args.cfg.sets, device)?;
            if r.model.method.encoder().input != EncoderInput::Image {
                bail!(
                    "the encoder of {} ({}) sees {:?}, not whole images: fine-tuning takes encoders of images",
                    run.display(),
                    r.cfg.method,
                    r.model.method.encoder().input
                );
            }
            let init = RunDir::new(run).file(RunDir::CHECKPOINT);
            let subject = format!("{} ({} epochs)", r.cfg.method, r.meta.epoch);
            (r.cfg, r.ds, Some(init), run.clone(), subject)
        }
        (None, Some(_)) => {
            let cfg = config::plain(&args.cfg)?;
            let ds = data::load(&cfg.data, cfg.train.seed)?;
            let dir = args
                .out
                .clone()
                .expect("clap requires --out with --baseline");
            let subject = format!("random-init {}", cfg.encoder.kind);
            (cfg, ds, None, dir, subject)
        }
        _ => bail!("finetune needs exactly one of --run DIR or --baseline random"),
    };
    for (name, o) in finetune_into(
        &base,
        &ds,
        init.as_deref(),
        &dir,
        &fractions,
        args.quiet,
        device,
    )? {
        println!(
            "finetune {subject} on {name} of the labels ({} images, {} epochs, {:.0}s): test top-1 {:.2}%  top-5 {:.2}%",
            o.images,
            o.epochs,
            o.seconds,
            100.0 * o.top1,
            100.0 * o.top5
        );
    }
    println!("-> {}", dir.join(RunDir::FINETUNE).display());
    Ok(())
}

/// Fine-tunes `base`'s encoder (from `init`, or its random initialisation) on each of
/// `fractions` of `ds`'s labels into `dir/finetune-10pct`, ... (a finished one reused, an
/// unfinished one resumed), scores each on the test split and records it in `dir`'s
/// finetune.json. `compare --finetune` fine-tunes its rows the same way.
pub fn finetune_into(
    base: &Config,
    ds: &Dataset,
    init: Option<&Path>,
    dir: &Path,
    fractions: &[f64],
    quiet: bool,
    device: Device,
) -> Result<Vec<(String, Outcome)>> {
    ds.require_labels()?;
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    for &f in fractions {
        let name = finetune::label_name(f);
        let labeled = finetune::labeled_images(ds, f, base.finetune.finetune_seed)?;
        let cfg = finetune::finetune_config(base, f, labeled);
        methods::check_config(&cfg, &[])?;
        let run = dir.join(format!("finetune-{}", name.replace('%', "pct")));
        pretrain::ensure_trained(&cfg, &run, quiet, device, init)?;
        let r = LoadedRun::load(&run, None, &[], device)?;
        let (top1, top5) = finetune::test_accuracy(
            r.model.method.as_ref(),
            &r.ds,
            device,
            r.cfg.train.precision,
        )?;
        let outcome = Outcome {
            images: labeled,
            top1,
            top5,
            epochs: r.meta.epoch,
            seconds: r.meta.wall_seconds,
            run: run.display().to_string(),
        };
        finetune::record(dir, &name, &outcome)?;
        out.push((name, outcome));
    }
    Ok(out)
}
