//! The training loop: schedule, optimizer, progress bar, metrics.jsonl, a checkpoint every
//! epoch, and `--resume`.

pub mod checkpoint;
pub mod optim;
pub mod schedule;

use crate::config::Config;
use crate::data::{self, Dataset, Loader};
use crate::methods::{self, DataInfo, Method, StepCtx};
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, nn};

/// A method with its variables, built from a config for a data set.
pub struct Model {
    pub vs: nn::VarStore,
    pub method: Box<dyn Method>,
}

impl Model {
    /// Builds the method named in `cfg.method`; initialisation is seeded by `cfg.seed`.
    pub fn build(cfg: &Config, info: &DataInfo, device: Device) -> Result<Model> {
        let spec = methods::find(&cfg.method)?;
        tch::manual_seed(cfg.seed as i64);
        let vs = nn::VarStore::new(device);
        let method = (spec.build)(&vs.root(), cfg, info)?;
        Ok(Model { vs, method })
    }
}

pub fn data_info(ds: &Dataset) -> DataInfo {
    let [c, h, w] = ds.train.shape.map(|d| d as i64);
    DataInfo { shape: [c, h, w], num_classes: ds.num_classes as i64 }
}

/// What a finished pretraining run reports.
#[derive(Debug, Clone)]
pub struct Summary {
    pub epochs: usize,
    pub steps: usize,
    pub final_loss: f64,
    /// Training throughput over this invocation (not counting resumed epochs).
    pub images_per_sec: f64,
    pub wall_seconds: f64,
}

/// Steps per epoch for a training set of `n` images (the last partial batch is dropped).
pub fn steps_per_epoch(n: usize, batch_size: usize) -> usize {
    n / batch_size
}

/// Pretrains `cfg.method` on `ds`, writing metrics and checkpoints into `out`.
/// With `resume`, continues from the checkpoint in `out` (its config is used).
pub fn pretrain(cfg: &Config, ds: &Dataset, out: &Path, resume: bool, device: Device, quiet: bool) -> Result<Summary> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create run folder {}", out.display()))?;
    let ckpt_path = out.join(checkpoint::FILE_NAME);
    let train = Arc::new(ds.train.subset(cfg.train_subset, cfg.seed));
    let spe = steps_per_epoch(train.len(), cfg.batch_size);
    if spe == 0 {
        bail!("batch_size = {} is larger than the {} training images", cfg.batch_size, train.len());
    }
    let total_steps = spe * cfg.epochs;
    let warmup = (cfg.warmup_epochs * spe as f64).round() as usize;

    let mut model = Model::build(cfg, &data_info(ds), device)?;
    let mut opt = optim::Optimizer::new(&model.vs, &cfg.optimizer, cfg.momentum, cfg.weight_decay)?;
    let (mut epoch, mut step, mut wall_before) = (0usize, 0usize, 0f64);
    if resume {
        let ck = checkpoint::load(out)?;
        checkpoint::load_into(&model.vs, &ck.model).with_context(|| format!("{}", ckpt_path.display()))?;
        opt.load_state(ck.optim).with_context(|| format!("{}", ckpt_path.display()))?;
        (epoch, step, wall_before) = (ck.meta.epoch, ck.meta.step, ck.meta.wall_seconds);
        if step != epoch * spe {
            bail!("{}: step {} does not match epoch {epoch} x {spe} steps per epoch; was the data or batch size changed?", ckpt_path.display(), step);
        }
    } else if ckpt_path.exists() {
        bail!("{} already holds a run; pass --resume to continue it or choose another --out", out.display());
    }
    std::fs::write(out.join("config.toml"), toml::to_string(cfg)?)?;

    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join("metrics.jsonl"))
        .with_context(|| format!("cannot open {}", out.join("metrics.jsonl").display()))?;
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(total_steps as u64) };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    bar.set_position(step as u64);
    let started = Instant::now();
    let (mut images_seen, mut final_loss) = (0usize, f64::NAN);
    while epoch < cfg.epochs {
        bar.set_prefix(format!("epoch {}/{}", epoch + 1, cfg.epochs));
        let order = data::epoch_order(train.len(), cfg.seed, epoch);
        let loader = Loader::new(train.clone(), order, cfg.batch_size, true, cfg.prefetch, device);
        let (mut loss_sum, mut loss_n) = (0f64, 0usize);
        let epoch_start = Instant::now();
        let mut window = (Instant::now(), 0usize);
        for batch in loader {
            let ctx = StepCtx { epoch, step, total_steps };
            let lr = schedule::cosine_with_warmup(step, total_steps, warmup, cfg.lr, cfg.min_lr);
            tch::manual_seed(checkpoint::step_seed(cfg.seed, step));
            opt.zero_grad();
            let loss = model.method.loss(&batch.images, &batch.labels, &ctx);
            loss.backward();
            opt.step(lr);
            tch::no_grad(|| model.method.after_step(&ctx));
            let l = loss.double_value(&[]);
            if !l.is_finite() {
                bail!("loss became {l} at step {step} (epoch {}); try a lower lr", epoch + 1);
            }
            let b = batch.indices.len();
            (loss_sum, loss_n, images_seen) = (loss_sum + l, loss_n + 1, images_seen + b);
            window.1 += b;
            step += 1;
            final_loss = l;
            let ips = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("loss {l:.4} lr {lr:.2e} {ips:.0} img/s"));
            bar.inc(1);
            if step % cfg.log_every == 0 {
                let rec = json!({"kind": "step", "epoch": epoch + 1, "step": step, "loss": l, "lr": lr, "images_per_sec": ips,
                                 "time": wall_before + started.elapsed().as_secs_f64()});
                writeln!(metrics, "{rec}")?;
                window = (Instant::now(), 0);
            }
        }
        epoch += 1;
        let secs = epoch_start.elapsed().as_secs_f64();
        let mean_loss = loss_sum / loss_n.max(1) as f64;
        let wall = wall_before + started.elapsed().as_secs_f64();
        let rec = json!({"kind": "epoch", "epoch": epoch, "step": step, "loss": mean_loss,
                         "images_per_sec": (loss_n * cfg.batch_size) as f64 / secs, "epoch_seconds": secs, "time": wall});
        writeln!(metrics, "{rec}")?;
        metrics.flush()?;
        checkpoint::save(out, &model.vs, &opt.state_tensors(), &checkpoint::Meta::new(cfg, epoch, step, wall))?;
        if !quiet {
            bar.println(format!(
                "epoch {epoch}/{}: mean loss {mean_loss:.5}, {:.0} img/s, {secs:.1}s; checkpoint saved",
                cfg.epochs,
                (loss_n * cfg.batch_size) as f64 / secs
            ));
        }
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    Ok(Summary {
        epochs: epoch,
        steps: step,
        final_loss,
        images_per_sec: images_seen as f64 / secs.max(1e-9),
        wall_seconds: wall_before + secs,
    })
}
