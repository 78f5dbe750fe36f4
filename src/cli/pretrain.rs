//! `selfsup pretrain`: the config (new or resumed), the data, the training loop, then the
//! run's pictures; also "train unless already trained", for `compare`.

use super::{PretrainArgs, config, device};
use crate::config::Config;
use crate::data;
use crate::dist::DistEnv;
use crate::report;
use crate::run::{RunDir, checkpoint, lock::RunLock};
use crate::train::{self, TrainOptions};
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::time::Duration;
use tch::Device;

pub fn command(
    args: PretrainArgs,
    device_arg: &str,
    threads: Option<usize>,
    device: Device,
) -> Result<()> {
    let out = args.out;
    // Under a launcher (torchrun, Slurm, `selfsup launch`): one rank of several.
    let dist = DistEnv::from_env().context("the launcher's variables")?;
    let device = match &dist {
        Some(env) => device::rank_device(device_arg, device, env)?,
        None => device,
    };
    if dist.is_some() && threads.is_none() {
        device::follow_omp_num_threads();
    }
    let writer = dist.as_ref().is_none_or(|env| env.rank == 0);
    if writer {
        // Fail at once when another process is training into `out`.
        RunLock::check_free(&out)?;
    }
    let checkpoint = args.checkpoint.map(|f| RunDir::new(&out).resolve(&f));
    let pc = config::pretrain_config(
        args.method.as_deref(),
        args.cfg.config.as_deref(),
        &args.cfg.overrides(),
        &out,
        args.resume,
        checkpoint.as_deref(),
    )?;
    let cfg = pc.cfg;
    if writer {
        config::warn(&pc.warnings);
    }
    let ds = data::load(&cfg.data, cfg.train.seed)?;
    if writer {
        let ranks = dist.as_ref().map_or(String::new(), |env| {
            format!(
                ", {} processes (rank 0 writes the run folder)",
                env.world_size
            )
        });
        eprintln!(
            "pretrain {} on {} ({} images), encoder {}, {} epochs, device {device:?}{ranks}",
            cfg.method,
            ds.name,
            ds.pretrain_split().subset_len(cfg.data.train_subset),
            cfg.encoder.kind,
            cfg.train.epochs,
        );
    }
    let opts = TrainOptions {
        resume: pc.resume,
        checkpoint,
        quiet: args.quiet,
        stop_after_epochs: None,
        dist,
        dist_timeout: args.dist_timeout,
        init_encoder: None,
    };
    let done = train::pretrain(&cfg, &ds, &out, &opts, device)?;
    if done.writer {
        report::pretraining_pictures(
            &RunDir::new(&out),
            &done.model,
            &ds.name,
            &done.first_images,
            done.finished,
            device,
        )?;
        println!("{}", done.summary.describe(&cfg.method, &out));
    }
    Ok(())
}

/// Pretrains `cfg` into `dir` unless a finished run of its method is there; resumes an
/// unfinished one. A new run's encoder starts from `init`'s when given (fine-tuning).
pub fn ensure_trained(
    cfg: &Config,
    dir: &Path,
    quiet: bool,
    device: Device,
    init: Option<&Path>,
) -> Result<()> {
    let resume = match checkpoint::load(dir) {
        Ok(ck) if ck.meta.config.method != cfg.method => bail!(
            "{} holds a {} run, not {}",
            dir.display(),
            ck.meta.config.method,
            cfg.method
        ),
        Ok(ck) if ck.meta.epoch >= cfg.train.epochs => return Ok(()),
        Ok(_) => true,
        Err(_) => false,
    };
    let ds = data::load(&cfg.data, cfg.train.seed)?;
    eprintln!("training {} into {}", cfg.method, dir.display());
    let opts = TrainOptions {
        resume,
        quiet,
        init_encoder: init.map(Path::to_path_buf),
        ..Default::default()
    };
    let done = train::pretrain(cfg, &ds, dir, &opts, device)?;
    report::pretraining_pictures(
        &RunDir::new(dir),
        &done.model,
        &ds.name,
        &done.first_images,
        done.finished,
        device,
    )
}

/// `--dist-timeout`: a positive time such as 90s, 5m or 1h.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    crate::config::parse_seconds(s)
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s:?} is not a positive time such as 90s, 5m or 1h"))
}
