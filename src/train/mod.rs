//! The training loop: schedule, optimizer, progress bar, metrics.jsonl, a checkpoint every
//! epoch and every `checkpoint_every`, and `--resume` from any of them (mid-epoch too).

pub mod bench;
pub mod data_parallel;

use crate::augment::Views;
use crate::config::{Config, TrainSpec};
use crate::data::{self, Batch, Dataset, Loader, loader::ViewSpec};
use crate::dist::DistEnv;
use crate::methods::StepCtx;
use crate::metrics::{self, Summary};
use crate::optim;
use crate::run::checkpoint::{self, EpochSums};
use crate::run::{Model, RunDir, data_info, lock};
use crate::{faults, precision, schedule};
use anyhow::{Context, Result, bail};
use data_parallel::DataParallel;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// Steps between two step records of metrics.jsonl: `log_every`, or fewer in runs shorter
/// than 100 x `log_every` steps, so that every loss curve has about 100 points.
pub fn log_interval(log_every: usize, total_steps: usize) -> usize {
    log_every.min(total_steps / 100).max(1)
}

/// Steps per epoch for a training set of `n` images (the last partial batch is dropped).
pub fn steps_per_epoch(n: usize, batch_size: usize) -> usize {
    n / batch_size
}

/// How one invocation of the training loop behaves (the run itself is the `Config`).
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from the checkpoint in the run folder.
    pub resume: bool,
    /// With `resume`: continue from this checkpoint file instead of the run's last one (a
    /// kept `checkpoint-epochE.safetensors`).
    pub checkpoint: Option<PathBuf>,
    /// No progress bar or per-epoch lines.
    pub quiet: bool,
    /// Stop (after checkpointing) once this many epochs of the run are complete, leaving the
    /// rest for a later `resume`.
    pub stop_after_epochs: Option<usize>,
    /// This process's place in a data-parallel run (from the launcher's variables,
    /// `DistEnv::from_env`); None: one process.
    pub dist: Option<DistEnv>,
    /// How long a collective waits for the other ranks before the run fails (default
    /// `data_parallel::DEFAULT_TIMEOUT`).
    pub dist_timeout: Option<Duration>,
    /// A new run's encoder starts from the `encoder.*` variables of this checkpoint (a
    /// pretrained run's, for fine-tuning) instead of its random initialisation.
    pub init_encoder: Option<PathBuf>,
}

/// The data order of `epoch` without its first `skip` batches (done before a resume).
fn epoch_order_from(n: usize, cfg: &TrainSpec, epoch: usize, skip: usize) -> Vec<usize> {
    let mut order = data::epoch_order(n, cfg.seed, epoch);
    order.drain(..(skip * cfg.batch_size).min(n));
    order
}

/// The batches of `epoch` of `train` without the first `skip`, with the method's `views`
/// made as they come (the last partial batch is dropped): with `(world, rank)` ranks, this
/// rank's slice of each global batch (`(1, 0)`: one process, the whole batch).
pub fn epoch_loader(
    cfg: &TrainSpec,
    train: &Arc<data::Split>,
    views: &Option<Arc<Views>>,
    epoch: usize,
    skip: usize,
    device: Device,
    (world, rank): (usize, usize),
) -> Loader {
    let order = epoch_order_from(train.len(), cfg, epoch, skip);
    let order = data_parallel::rank_order(&order, cfg.batch_size, world, rank);
    let spec = views.as_ref().map(|v| ViewSpec {
        views: v.clone(),
        seed: cfg.seed,
        epoch,
    });
    Loader::with_views(
        train.clone(),
        order,
        cfg.batch_size / world,
        true,
        cfg.prefetch,
        device,
        spec,
    )
}

/// One optimizer step of `model` on `batch` with learning rate `lr`: libtorch's RNG seeded
/// for the step (so that a resumed run draws the same), the loss, its gradients, the update
/// and the method's after-step hook (momentum targets, queues). Returns the loss `[]` as
/// float64 on the device, unread: the host reads losses a window at a time
/// (`PendingLosses`), so that a GPU step never waits for its own result. Data-parallel
/// (`dist`), `batch` is this rank's slice of the global batch, the forward pass runs with
/// the group current, the gradients are averaged over the ranks during the backward pass
/// (buckets all-reduced as they fill, as in PyTorch's DDP), and the loss returned is the
/// global batch's (all-reduced on the device). The forward
/// pass and the loss run in the model's precision (the methods compute their losses in
/// float32, `precision::in_fp32`); the backward pass outside the autocast scope, as in
/// PyTorch, gives float32 gradients of the float32 weights.
pub fn train_step(
    model: &mut Model,
    dist: Option<&DataParallel>,
    opt: &mut optim::Optimizer,
    batch: &Batch,
    ctx: &StepCtx,
    lr: f64,
    seed: u64,
) -> Result<Tensor> {
    let rank = dist.map_or(0, DataParallel::rank);
    tch::manual_seed(data_parallel::rank_seed(
        checkpoint::step_seed(seed, ctx.step),
        rank,
    ));
    opt.zero_grad();
    let loss = {
        let _autocast = precision::scope(model.precision, batch.labels.device())?;
        let mut forward = || model.method.loss(&batch.images, &batch.labels, ctx);
        match dist {
            Some(dp) => dp.forward(forward)?,
            None => forward(),
        }
    };
    match dist {
        Some(dp) => dp.backward(&loss, &model.vs)?,
        None => loss.backward(),
    }
    opt.step(lr)?;
    tch::no_grad(|| model.method.after_step(ctx));
    let loss = loss.detach().to_kind(Kind::Double); // []
    match dist {
        Some(dp) => dp.mean(&loss),
        None => Ok(loss),
    }
}

/// The losses of the steps since the host last read them, each still on the device: read
/// together (one host read) where the loop needs them (a log line, a checkpoint, an epoch's
/// end), and checked there, before anything is written, for a non-finite value.
#[derive(Default)]
pub struct PendingLosses {
    /// (step, epoch, loss `[]`) of each step not yet read.
    steps: Vec<(usize, usize, Tensor)>,
}

impl PendingLosses {
    pub fn push(&mut self, ctx: &StepCtx, loss: Tensor) {
        self.steps.push((ctx.step, ctx.epoch, loss));
    }

    /// The pending losses in step order (emptied), or an error naming the first step whose
    /// loss is not finite.
    pub fn read(&mut self) -> Result<Vec<f64>> {
        if self.steps.is_empty() {
            return Ok(Vec::new());
        }
        let on_device: Vec<&Tensor> = self.steps.iter().map(|(.., l)| l).collect();
        let values = Vec::<f64>::try_from(Tensor::stack(&on_device, 0))?; // one host read
        for ((step, epoch, _), l) in self.steps.iter().zip(&values) {
            if !l.is_finite() {
                bail!(
                    "loss became {l} at step {step} (epoch {}); try a lower lr",
                    epoch + 1
                );
            }
        }
        self.steps.clear();
        Ok(values)
    }

    /// `read`, the losses added to the epoch's `sums` and the last one kept as `last`.
    fn read_into(&mut self, sums: &mut EpochSums, last: &mut f64) -> Result<()> {
        for l in self.read()? {
            (sums.loss_sum, *last) = (sums.loss_sum + l, l);
        }
        Ok(())
    }
}

/// Pretrains `cfg.method` on `ds`, writing metrics and checkpoints into `out`.
///
/// Data-parallel (`opts.dist`): every rank calls this with the same config; `batch_size` is
/// the global batch. Rank 0 alone writes the run folder (and holds its lock); every rank
/// reads the checkpoint to resume, so the folder must be visible to all. The checkpoint
/// holds global state only (model, optimizer, step), so a run resumes on any number of
/// ranks, and the data order is the global one.
pub fn pretrain(
    cfg: &Config,
    ds: &Dataset,
    out: &Path,
    opts: &TrainOptions,
    device: Device,
) -> Result<Pretrained> {
    let (resume, quiet) = (opts.resume, opts.quiet);
    let stop_at = opts
        .stop_after_epochs
        .unwrap_or(cfg.train.epochs)
        .min(cfg.train.epochs);
    // Joined first: a rank that fails after this is seen by the others at once.
    let timeout = opts.dist_timeout.unwrap_or(data_parallel::DEFAULT_TIMEOUT);
    let dp = (opts.dist.as_ref())
        .map(|env| DataParallel::join(env, device, timeout, cfg.train.sync_bn))
        .transpose()?;
    let (rank, world) = dp.as_ref().map_or((0, 1), |d| (d.rank(), d.world_size()));
    let writer = rank == 0;
    data_parallel::check_batch(cfg.train.batch_size, world)?;
    // Built first, so that a method refusing the data (colorization on grey images) leaves
    // no run folder behind.
    let mut model = Model::build(cfg, &data_info(ds), device)?;
    model.method.check_world_size(world)?;
    // Held until training ends: one writer per run folder.
    let _lock = match writer {
        true => {
            std::fs::create_dir_all(out)
                .with_context(|| format!("cannot create run folder {}", out.display()))?;
            let lock = lock::RunLock::acquire(out)?;
            checkpoint::remove_temp_files(out)?;
            Some(lock)
        }
        false => None,
    };
    let ckpt_path = out.join(RunDir::CHECKPOINT);
    // Self-supervised methods train on the pretraining split (which may be unlabeled);
    // the supervised baseline needs the labelled training split.
    // Methods trained with labels take `finetune_labels` of them (all by default).
    let source = if model.spec.uses_labels {
        ds.require_labels()?;
        let f = &cfg.finetune;
        ds.train
            .balanced_subset(f.finetune_labels, f.finetune_seed, &ds.class_names)?
    } else {
        ds.pretrain_split().clone()
    };
    let train = Arc::new(source.subset(cfg.data.train_subset, cfg.train.seed));
    let spe = steps_per_epoch(train.len(), cfg.train.batch_size);
    if spe == 0 {
        bail!(
            "batch_size = {} is larger than the {} training images",
            cfg.train.batch_size,
            train.len()
        );
    }
    let total_steps = spe * cfg.train.epochs;
    let warmup = (cfg.train.warmup_epochs * spe as f64).round() as usize;
    let log_every = log_interval(cfg.train.log_every, total_steps);

    let views = model.method.views();
    if let Some(v) = &views {
        v.validate(train.shape[1], train.shape[2])
            .context("augmentation options")?;
    }
    let mut opt = optim::Optimizer::new(
        &model.vs,
        cfg.train.optimizer,
        cfg.train.momentum,
        cfg.train.weight_decay,
    );
    let (mut epoch, mut step, mut wall_before) = (0usize, 0usize, 0f64);
    // The batches of the first epoch already done, and that epoch's sums so far.
    let (mut skip, mut sums) = (0usize, EpochSums::default());
    if resume {
        let path = opts.checkpoint.clone().unwrap_or_else(|| ckpt_path.clone());
        let ck = checkpoint::load_file(&path)?;
        checkpoint::load_into(&model.vs, &ck.model)
            .with_context(|| format!("{}", path.display()))?;
        opt.load_state(ck.optim)
            .with_context(|| format!("{}", path.display()))?;
        (epoch, step, wall_before) = (ck.meta.epoch, ck.meta.step, ck.meta.wall_seconds);
        skip = ck
            .meta
            .batches_done(spe)
            .with_context(|| format!("{}", path.display()))?;
        sums = ck.meta.in_epoch;
    } else if writer && ckpt_path.exists() {
        bail!(
            "{} already holds a run; pass --resume to continue it or choose another --out",
            out.display()
        );
    }
    if !resume && let Some(init) = &opts.init_encoder {
        let ck = checkpoint::load_file(init)?;
        checkpoint::load_prefix_into(&model.vs, &ck.model, "encoder.")
            .with_context(|| format!("the encoder of {}", init.display()))?;
    }
    if let Some(dp) = &dp {
        dp.broadcast_model(&model.vs)?;
    }
    let mut log = match writer {
        true => {
            // The keys the method reads; the checkpoint carries the whole config.
            std::fs::write(
                out.join(RunDir::CONFIG),
                cfg.to_toml_with(&model.spec.keys_read())?,
            )?;
            let (log, note) = metrics::Log::open(&out.join(RunDir::METRICS), !resume)?;
            if let Some(n) = note {
                eprintln!("note: {n}");
            }
            Some(log)
        }
        false => None,
    };
    let bar = if quiet || !writer {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total_steps as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    bar.set_position(step as u64);
    let started = Instant::now();
    let mut interval = checkpoint::Interval::new(cfg.train.checkpoint_every);
    let (mut images_seen, mut final_loss) = (0usize, f64::NAN);
    // `max_steps`: the run ends after that step, checkpointed as at an epoch's end.
    let limit = match cfg.train.max_steps {
        0 => usize::MAX,
        n => n,
    };
    let mut stopped_mid_epoch = false;
    let mut pending = PendingLosses::default();
    while epoch < stop_at && step < limit {
        bar.set_prefix(format!("epoch {}/{}", epoch + 1, cfg.train.epochs));
        let loader = epoch_loader(
            &cfg.train,
            &train,
            &views,
            epoch,
            skip,
            device,
            (world, rank),
        );
        let epoch_start = Instant::now();
        let epoch_seconds = |sums: &EpochSums| sums.seconds + epoch_start.elapsed().as_secs_f64();
        let mut window = (Instant::now(), 0usize);
        for batch in loader {
            let batch = batch?;
            let ctx = StepCtx {
                epoch,
                step,
                total_steps,
            };
            let lr = schedule::cosine_with_warmup(
                step,
                total_steps,
                warmup,
                cfg.train.lr,
                cfg.train.min_lr,
            );
            let loss = train_step(
                &mut model,
                dp.as_ref(),
                &mut opt,
                &batch,
                &ctx,
                lr,
                cfg.train.seed,
            )?;
            pending.push(&ctx, loss);
            let b = batch.indices.len() * world; // the global batch
            images_seen += b;
            window.1 += b;
            step += 1;
            bar.inc(1);
            // The epoch's end writes its own checkpoint below; `max_steps` ends the run here.
            let stop = step >= limit && step % spe != 0;
            let save =
                log.is_some() && step % spe != 0 && (stop || interval.due(step, Instant::now()));
            // The losses are read where they are needed (every rank reads at the log steps,
            // so that each finds a non-finite loss as soon as rank 0 does).
            if step % log_every == 0 || save || stop {
                pending.read_into(&mut sums, &mut final_loss)?;
                let ips = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!("loss {final_loss:.4} lr {lr:.2e} {ips:.0} img/s"));
                if let Some(log) = log.as_mut()
                    && step % log_every == 0
                {
                    let wall = wall_before + started.elapsed().as_secs_f64();
                    log.record(&json!({"kind": "step", "epoch": epoch + 1, "step": step,
                        "loss": final_loss, "lr": lr, "images_per_sec": ips, "time": wall}))?;
                    window = (Instant::now(), 0);
                }
            }
            if let Some(log) = log.as_mut()
                && save
            {
                let wall = wall_before + started.elapsed().as_secs_f64();
                let now_sums = EpochSums {
                    seconds: epoch_seconds(&sums),
                    ..sums
                };
                log.sync()?;
                checkpoint::save(
                    out,
                    &model.vs,
                    &opt.state_tensors(),
                    &checkpoint::Meta::new(cfg.clone(), epoch, step, wall, now_sums),
                )?;
                interval.saved(Instant::now());
            }
            faults::point("step");
            if stop {
                stopped_mid_epoch = true;
                break;
            }
        }
        if stopped_mid_epoch {
            break;
        }
        pending.read_into(&mut sums, &mut final_loss)?;
        epoch += 1;
        let secs = epoch_seconds(&sums);
        let mean_loss = sums.loss_sum / spe as f64;
        let ips = (spe * cfg.train.batch_size) as f64 / secs;
        let wall = wall_before + started.elapsed().as_secs_f64();
        if let Some(log) = log.as_mut() {
            log.record(
                &json!({"kind": "epoch", "epoch": epoch, "step": step, "loss": mean_loss,
                               "images_per_sec": ips, "epoch_seconds": secs, "time": wall}),
            )?;
            log.sync()?;
            let meta = checkpoint::Meta::new(cfg.clone(), epoch, step, wall, EpochSums::default());
            checkpoint::save_epoch(
                out,
                &model.vs,
                &opt.state_tensors(),
                &meta,
                cfg.train.keep_checkpoints,
            )?;
        }
        interval.saved(Instant::now());
        (skip, sums) = (0, EpochSums::default());
        if !quiet && writer {
            let line = format!(
                "epoch {epoch}/{}: mean loss {mean_loss:.5}, {ips:.0} img/s, {secs:.1}s; checkpoint saved",
                cfg.train.epochs,
            );
            // Without a terminal (a log file, the Python API's pipe) the bar is hidden and
            // so would be its lines: the epoch lines are the progress there.
            match bar.is_hidden() {
                true => eprintln!("{line}"),
                false => bar.println(line),
            }
        }
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    // Every rank waits for rank 0's last writes, then all leave the group together.
    if let Some(dp) = dp {
        dp.shutdown()?;
    }
    let summary = Summary {
        epochs: epoch,
        steps: step,
        final_loss,
        images_per_sec: images_seen as f64 / secs.max(1e-9),
        wall_seconds: wall_before + secs,
    };
    let first: Vec<usize> = (0..train.len().min(8)).collect();
    Ok(Pretrained {
        summary,
        model,
        first_images: train.select(&first),
        finished: epoch == cfg.train.epochs || step >= limit,
        writer,
    })
}

/// What `pretrain` leaves besides its run folder: the trained model, and what the command
/// needs to draw the run's pictures (the training loop does not draw).
pub struct Pretrained {
    pub summary: Summary,
    pub model: Model,
    /// The first images trained on, for `Method::examples`' picture.
    pub first_images: data::Split,
    /// Every epoch of the run is done, or its `max_steps` (not stopped by `stop_after_epochs`).
    pub finished: bool,
    /// This process wrote the run folder (rank 0, or the one process).
    pub writer: bool,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{EncoderKind, Precision};
    use crate::data::Split;
    use crate::methods;
    use tch::{Kind, Tensor, nn};

    /// 96 tiny 1x8x8 images: bright squares at a few positions, with labels.
    pub(crate) fn tiny_dataset() -> Dataset {
        let make = |n: usize, off: usize| {
            let mut imgs = vec![0u8; n * 64];
            let mut labels = Vec::new();
            for i in 0..n {
                let k = (i + off) % 4;
                let (r, c) = [(0, 0), (0, 4), (4, 0), (4, 4)][k];
                for y in r..r + 4 {
                    for x in c..c + 4 {
                        imgs[i * 64 + y * 8 + x] = 200 + ((i * 7) % 50) as u8;
                    }
                }
                labels.push(k as i64);
            }
            Split::new(imgs, labels, [1, 8, 8]).unwrap()
        };
        Dataset {
            name: "tiny".into(),
            train: make(96, 0),
            test: make(32, 1),
            unlabeled: None,
            num_classes: 4,
            class_names: vec![],
        }
    }

    pub(crate) fn tiny_config(method: &str) -> Config {
        {
            let mut c = Config {
                method: method.into(),
                ..Config::default()
            };
            c.encoder.cnn_widths = vec![4, 8];
            c.keys.decoder_widths = vec![8, 4];
            c.train.batch_size = 16;
            c.train.epochs = 4;
            c.train.warmup_epochs = 1.0;
            c.train.lr = 1e-2;
            c.train.log_every = 1;
            c
        }
    }

    /// Pretrains `cfg` on `ds` quietly in a temporary folder; returns the epoch losses.
    pub(crate) fn train_losses(cfg: &Config, ds: &Dataset) -> Vec<f64> {
        let dir = tempfile::tempdir().unwrap();
        pretrain(cfg, ds, dir.path(), &quiet(), Device::Cpu).unwrap();
        epoch_losses(dir.path())
    }

    pub(crate) fn epoch_losses(out: &Path) -> Vec<f64> {
        let m = metrics::Metrics::read(&out.join(RunDir::METRICS)).unwrap();
        m.epochs.iter().map(|e| e.loss).collect()
    }

    fn vars(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
        let mut v: Vec<_> = vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub(crate) fn quiet() -> TrainOptions {
        TrainOptions {
            quiet: true,
            ..Default::default()
        }
    }

    #[test]
    fn autoencoder_loss_decreases() {
        let _rng = crate::torch_rng_lock();
        let dir = tempfile::tempdir().unwrap();
        let cfg = {
            let mut c = tiny_config("autoencoder");
            c.train.epochs = 12;
            c
        };
        let s = pretrain(&cfg, &tiny_dataset(), dir.path(), &quiet(), Device::Cpu)
            .unwrap()
            .summary;
        assert_eq!((s.epochs, s.steps), (12, 12 * 6));
        let l = epoch_losses(dir.path());
        assert_eq!(l.len(), 12);
        assert!(l[11] < 0.5 * l[0], "losses {l:?}");
    }

    #[test]
    fn checkpoint_round_trip_gives_equal_weights() {
        let _rng = crate::torch_rng_lock();
        let dir = tempfile::tempdir().unwrap();
        let ds = tiny_dataset();
        let cfg = {
            let mut c = tiny_config("denoising-autoencoder");
            c.train.epochs = 1;
            c
        };
        pretrain(&cfg, &ds, dir.path(), &quiet(), Device::Cpu).unwrap();
        let ck = checkpoint::load(dir.path()).unwrap();
        assert_eq!(ck.meta.config, cfg);
        assert_eq!((ck.meta.epoch, ck.meta.step), (1, 6));
        // A model built with another seed differs until the checkpoint is loaded.
        let other = Model::build(
            &{
                let mut c = cfg.clone();
                c.train.seed = 99;
                c
            },
            &data_info(&ds),
            Device::Cpu,
        )
        .unwrap();
        let before = vars(&other.vs);
        let saved = ck
            .model
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect::<Vec<_>>();
        assert!(
            before
                .iter()
                .zip(&saved)
                .any(|((_, a), (_, b))| !a.equal(b))
        );
        checkpoint::load_into(&other.vs, &ck.model).unwrap();
        let after = vars(&other.vs);
        assert_eq!(after.len(), saved.len());
        for ((ka, a), (kb, b)) in after.iter().zip(&saved) {
            assert_eq!(ka, kb);
            assert!(a.equal(b), "{ka} differs after loading");
        }
        // Optimizer state travelled too: AdamW moments for every trainable parameter.
        let n_trainable = before.iter().filter(|(_, t)| t.requires_grad()).count();
        assert_eq!(ck.optim.len(), 2 * n_trainable + 1);
        // No temporary file is left behind; the lock file is empty once training ended.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(RunDir::LOCK)).unwrap(),
            ""
        );
    }

    #[test]
    fn checkpoint_rejects_mismatched_models_and_garbage() {
        let _rng = crate::torch_rng_lock();
        let dir = tempfile::tempdir().unwrap();
        let ds = tiny_dataset();
        let cfg = {
            let mut c = tiny_config("autoencoder");
            c.train.epochs = 1;
            c
        };
        pretrain(&cfg, &ds, dir.path(), &quiet(), Device::Cpu).unwrap();
        let ck = checkpoint::load(dir.path()).unwrap();
        let wider = Model::build(
            &{
                let mut c = cfg.clone();
                c.encoder.cnn_widths = vec![4, 16];
                c
            },
            &data_info(&ds),
            Device::Cpu,
        )
        .unwrap();
        let e = checkpoint::load_into(&wider.vs, &ck.model)
            .unwrap_err()
            .to_string();
        assert!(e.contains("shape"), "{e}");
        std::fs::write(dir.path().join(RunDir::CHECKPOINT), b"not a checkpoint").unwrap();
        let e = format!("{:#}", checkpoint::load(dir.path()).err().unwrap());
        assert!(
            e.contains("checkpoint.safetensors") && e.contains("not a valid safetensors"),
            "{e}"
        );
        // An existing run is not overwritten without --resume.
        let e = pretrain(&cfg, &ds, dir.path(), &quiet(), Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--resume"), "{e}");
    }

    /// Trains `cfg` (4 epochs of 6 steps) straight through and again stopped after 2 epochs
    /// and resumed: the two end with the same variables (method state included) and
    /// optimizer state. Returns the two run folders.
    fn assert_resume_is_exact(cfg: &Config) -> (tempfile::TempDir, tempfile::TempDir) {
        let ds = tiny_dataset();
        let full = tempfile::tempdir().unwrap();
        pretrain(cfg, &ds, full.path(), &quiet(), Device::Cpu).unwrap();
        let split = tempfile::tempdir().unwrap();
        let first = TrainOptions {
            stop_after_epochs: Some(2),
            ..quiet()
        };
        let s1 = pretrain(cfg, &ds, split.path(), &first, Device::Cpu)
            .unwrap()
            .summary;
        assert_eq!((s1.epochs, s1.steps), (2, 12));
        let s2 = pretrain(
            cfg,
            &ds,
            split.path(),
            &TrainOptions {
                resume: true,
                ..quiet()
            },
            Device::Cpu,
        )
        .unwrap()
        .summary;
        assert_eq!((s2.epochs, s2.steps), (4, 24));

        assert_same_checkpoints(full.path(), split.path());
        (full, split)
    }

    #[test]
    fn resume_continues_steps_schedule_and_state_exactly() {
        let _rng = crate::torch_rng_lock();
        let (full, split) = assert_resume_is_exact(&tiny_config("denoising-autoencoder"));
        // The step records continue where they stopped, with the same learning rates.
        let recs = |d: &Path| -> Vec<(u64, f64)> {
            std::fs::read_to_string(d.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .filter(|v| v["kind"] == "step")
                .map(|v| (v["step"].as_u64().unwrap(), v["lr"].as_f64().unwrap()))
                .collect()
        };
        assert_eq!(recs(split.path()), recs(full.path()));
        assert_eq!(
            recs(split.path()).iter().map(|r| r.0).collect::<Vec<_>>(),
            (1..=24).collect::<Vec<_>>()
        );
    }

    /// The methods whose state lives outside the parameters resume exactly: SwAV's queue
    /// (filled after 2 steps) and frozen prototypes, DINO's centre, teacher and teacher
    /// temperature warm-up.
    #[test]
    fn stateful_methods_resume_exactly() {
        let _rng = crate::torch_rng_lock();
        let swav = {
            let mut c = small_heads("swav");
            c.keys.swav_queue = 32;
            c.keys.swav_freeze_epochs = 1;
            c
        };
        let (run, _) = assert_resume_is_exact(&swav);
        let ck = checkpoint::load(run.path()).unwrap();
        let queue = ck.model.iter().find(|(k, _)| k == "queue").unwrap();
        let rows = queue
            .1
            .abs()
            .sum_dim_intlist(&[2i64][..], false, tch::Kind::Float);
        assert!(
            rows.min().double_value(&[]) > 0.0,
            "the queue is full: {rows}"
        );
        let dino = {
            let mut c = small_heads("dino");
            c.keys.dino_warmup_teacher_temp = 0.02;
            c.keys.dino_warmup_teacher_epochs = 3;
            c
        };
        let (run, _) = assert_resume_is_exact(&dino);
        let ck = checkpoint::load(run.path()).unwrap();
        let center = ck.model.iter().find(|(k, _)| k == "center").unwrap();
        assert!(
            center.1.abs().sum(tch::Kind::Float).double_value(&[]) > 0.0,
            "the centre moved"
        );
    }

    /// Multi-crop beyond SwAV and DINO: SimCLR (NT-Xent with every crop of an image as a
    /// positive) and BYOL (every crop predicts the targets of the global crops) learn from 2
    /// global and 2 local 4x4 crops, and resume exactly.
    #[test]
    fn multi_crop_simclr_and_byol_learn_and_resume_exactly() {
        let _rng = crate::torch_rng_lock();
        for method in ["simclr", "byol"] {
            let cfg = {
                let mut c = small_heads(method);
                c.aug.multicrop_local = 2;
                c.aug.multicrop_local_size = 4;
                c.aug.multicrop_local_scale = [0.2, 0.5];
                c.aug.aug_crop_scale = [0.5, 1.0];
                c
            };
            let views = Model::build(&cfg, &data_info(&tiny_dataset()), Device::Cpu)
                .unwrap()
                .method
                .views()
                .unwrap();
            assert_eq!(
                views.sizes(8, 8),
                [(8, 8), (8, 8), (4, 4), (4, 4)],
                "{method}"
            );
            let (run, _) = assert_resume_is_exact(&cfg);
            let l = epoch_losses(run.path());
            let fall = match method {
                // Starts near -log(3 / 63) = log 21 = 3.04: 3 positives among the other 63
                // crops of a batch of 16 (one positive would start near log 63 = 4.14).
                "simclr" => {
                    assert!(l[0] > 2.8 && l[0] < 3.3, "{method}: {l:?}");
                    0.2
                }
                _ => 0.5,
            };
            assert!(l[3] < l[0] - fall, "{method}: {l:?}");
        }
    }

    /// `tiny_config` with every method's heads, queues, patches and crops small enough for
    /// 8x8 images and a fast test.
    fn small_heads(method: &str) -> Config {
        {
            let mut c = tiny_config(method);
            c.keys.proj_hidden_dim = 16;
            c.keys.pred_hidden_dim = 8;
            c.keys.proj_dim = 8;
            c.keys.moco_queue = 32;
            c.keys.nnclr_queue = 32;
            c.keys.shuffle_bn_groups = 2;
            c.keys.cpc_negatives = 16;
            c.keys.cpc_patch = 4;
            c.keys.cpc_stride = 2;
            c.keys.tile_size = 2;
            c.aug.multicrop_local = 2;
            c.keys.swav_prototypes = 10;
            c.keys.dino_out_dim = 16;
            match methods::find(method).is_ok_and(|s| !s.encoders.contains(&EncoderKind::Cnn)) {
                true => c.with_tiny_vit(),
                false => c,
            }
        }
    }

    /// The ViT encoder serves every method (tiles, patch grids, lightness and local crops
    /// included): one epoch each on 8x8 colour images with 2x2 patches.
    #[test]
    fn every_registered_method_trains_with_the_vit_encoder() {
        let _rng = crate::torch_rng_lock();
        let ds = crate::methods::colorization::tests::tiny_colour_dataset();
        for spec in methods::REGISTRY {
            let cfg = {
                let mut c = small_heads(spec.name);
                c.train.epochs = 1;
                c.encoder.kind = crate::config::EncoderKind::Vit;
                c.encoder.vit_patch = 2;
                c.encoder.vit_depth = 1;
                c.encoder.vit_width = 8;
                c.encoder.vit_heads = 2;
                c.encoder.vit_image_size = 8;
                c.aug.multicrop_local_size = 4;
                c
            };
            let dir = tempfile::tempdir().unwrap();
            let s = pretrain(&cfg, &ds, dir.path(), &quiet(), Device::Cpu)
                .unwrap_or_else(|e| panic!("{} with vit: {e:#}", spec.name))
                .summary;
            assert!(s.final_loss.is_finite(), "{} with vit", spec.name);
        }
    }

    /// Every tensor of the checkpoint in `a` equals the one in `b` (model and optimizer).
    fn assert_same_checkpoints(a: &Path, b: &Path) {
        let (a, b) = (checkpoint::load(a).unwrap(), checkpoint::load(b).unwrap());
        assert_eq!((a.meta.epoch, a.meta.step), (b.meta.epoch, b.meta.step));
        let (ta, tb) = (
            a.model.iter().chain(&a.optim),
            b.model.iter().chain(&b.optim),
        );
        assert_eq!(ta.clone().count(), tb.clone().count());
        for ((ka, x), (kb, y)) in ta.zip(tb) {
            assert_eq!(ka, kb);
            assert!(x.equal(y), "{ka} differs");
        }
    }

    #[test]
    fn bf16_training_lowers_the_loss_keeps_fp32_state_and_resumes_exactly_across_precisions() {
        let _rng = crate::torch_rng_lock();
        let ds = tiny_dataset();
        let fp32 = {
            let mut c = tiny_config("simclr");
            c.train.epochs = 6;
            c.keys.proj_hidden_dim = 16;
            c.keys.proj_dim = 8;
            c.aug.aug_crop_scale = [0.5, 1.0];
            c
        };
        let bf16 = {
            let mut c = fp32.clone();
            c.train.precision = Precision::Bf16;
            c
        };
        let run = |cfg: &Config, dir: &Path, resume: bool, stop: Option<usize>| {
            let opts = TrainOptions {
                resume,
                stop_after_epochs: stop,
                ..quiet()
            };
            pretrain(cfg, &ds, dir, &opts, Device::Cpu).unwrap().summary
        };
        let straight = tempfile::tempdir().unwrap();
        run(&bf16, straight.path(), false, None);
        let l = epoch_losses(straight.path());
        // NT-Xent starts near log(2N - 1) = log(31) = 3.43 and must come down.
        assert!(l[0] > 3.0 && l[0] < 4.0 && l[5] < l[0] - 0.4, "{l:?}");
        // It ran in bf16: close to the fp32 run of the same seed, but not the same.
        let reference = tempfile::tempdir().unwrap();
        run(&fp32, reference.path(), false, None);
        let lf = epoch_losses(reference.path());
        assert!(lf != l && (lf[0] - l[0]).abs() < 0.05, "{lf:?} vs {l:?}");
        // Master weights and optimizer state stay float32 (the step count is an integer).
        let ck = checkpoint::load(straight.path()).unwrap();
        for (k, t) in ck.model.iter().chain(&ck.optim) {
            let want = if k == "steps_taken" {
                Kind::Int64
            } else {
                Kind::Float
            };
            assert_eq!(t.kind(), want, "{k}");
        }
        // bf16 stopped and resumed: the same run, bit for bit.
        let split = tempfile::tempdir().unwrap();
        run(&bf16, split.path(), false, Some(2));
        run(&bf16, split.path(), true, None);
        assert_same_checkpoints(straight.path(), split.path());
        // fp32 for 2 epochs, then bf16: a checkpoint of either precision resumes in the
        // other, and resuming the mixed run once more changes nothing.
        let (once, twice) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for dir in [once.path(), twice.path()] {
            run(&fp32, dir, false, Some(2));
        }
        run(&bf16, once.path(), true, None);
        run(&bf16, twice.path(), true, Some(4));
        run(&bf16, twice.path(), true, None);
        assert_same_checkpoints(once.path(), twice.path());
        let back = tempfile::tempdir().unwrap();
        run(&bf16, back.path(), false, Some(2));
        let s = run(&fp32, back.path(), true, None);
        assert!(
            s.final_loss.is_finite() && s.final_loss < l[0],
            "{}",
            s.final_loss
        );
    }

    /// No method's training step makes the host wait for the device (a host read), after a
    /// first step that may read once what it then keeps on the host (queue pointers); the
    /// loop reads the losses a window at a time. Each read is a stall on a GPU.
    #[test]
    fn no_step_reads_from_the_device() {
        let _rng = crate::torch_rng_lock();
        let ds = crate::methods::colorization::tests::tiny_colour_dataset();
        // Every method, and the paths its defaults leave out: SwAV's queue, the CNN's
        // pooling grid (every Fashion-MNIST preset), SGD.
        let mut cfgs: Vec<(String, Config)> = (methods::REGISTRY.iter())
            .map(|spec| (spec.name.to_string(), small_heads(spec.name)))
            .collect();
        let mut swav = small_heads("swav");
        swav.keys.swav_queue = 32;
        let mut grid = small_heads("simclr");
        (grid.encoder.cnn_pool, grid.train.optimizer) = (3, crate::config::OptimizerKind::Sgd);
        cfgs.extend([
            ("swav with a queue".into(), swav),
            ("simclr, pool 3, sgd".into(), grid),
        ]);
        for (name, cfg) in &cfgs {
            let mut model = Model::build(cfg, &data_info(&ds), Device::Cpu).unwrap();
            let mut opt = optim::Optimizer::new(
                &model.vs,
                cfg.train.optimizer,
                cfg.train.momentum,
                cfg.train.weight_decay,
            );
            let train = Arc::new(ds.train.clone());
            let views = model.method.views();
            // Made before counting: the loader's threads are not the step's.
            let batches: Vec<Batch> =
                epoch_loader(&cfg.train, &train, &views, 0, 0, Device::Cpu, (1, 0))
                    .take(3)
                    .collect::<Result<_>>()
                    .unwrap();
            let mut pending = PendingLosses::default();
            let mut reads = Vec::new();
            for (step, batch) in batches.iter().enumerate() {
                let ctx = StepCtx {
                    epoch: 1,
                    step,
                    total_steps: 10,
                };
                let before = crate::native::host_reads();
                let loss = train_step(&mut model, None, &mut opt, batch, &ctx, 1e-3, 0).unwrap();
                reads.push(crate::native::host_reads() - before);
                pending.push(&ctx, loss);
            }
            assert_eq!(&reads[1..], [0, 0], "{name}: host reads per step {reads:?}");
            assert!(reads[0] <= 1, "{name}: host reads per step {reads:?}");
            let losses = pending.read().unwrap();
            assert!(
                losses.len() == 3 && losses.iter().all(|l| l.is_finite()),
                "{losses:?}"
            );
        }
    }

    /// The window gives its losses in step order, names the first step whose loss is not
    /// finite, and is empty after a read.
    #[test]
    fn pending_losses_read_in_order_and_name_the_first_bad_step() {
        let mut p = PendingLosses::default();
        let ctx = |step| StepCtx {
            epoch: 2,
            step,
            total_steps: 100,
        };
        for (s, v) in [(7, 1.5), (8, 0.25)] {
            p.push(&ctx(s), Tensor::from(v));
        }
        assert_eq!(p.read().unwrap(), vec![1.5, 0.25]);
        assert_eq!(p.read().unwrap(), Vec::<f64>::new());
        for (s, v) in [(9, 1.0), (10, f64::NAN), (11, f64::INFINITY)] {
            p.push(&ctx(s), Tensor::from(v));
        }
        let e = p.read().unwrap_err().to_string();
        assert_eq!(e, "loss became NaN at step 10 (epoch 3); try a lower lr");
    }

    #[test]
    fn every_registered_method_trains_checkpoints_and_resumes() {
        let _rng = crate::torch_rng_lock();
        // Colour images, which every method takes (colorization needs them).
        let ds = crate::methods::colorization::tests::tiny_colour_dataset();
        for spec in methods::REGISTRY {
            let cfg = {
                let mut c = small_heads(spec.name);
                c.train.epochs = 2;
                c
            };
            let dir = tempfile::tempdir().unwrap();
            let first = TrainOptions {
                stop_after_epochs: Some(1),
                ..quiet()
            };
            let s = pretrain(&cfg, &ds, dir.path(), &first, Device::Cpu)
                .unwrap_or_else(|e| panic!("{}: {e:#}", spec.name))
                .summary;
            assert!(s.final_loss.is_finite(), "{}", spec.name);
            // Resumed in bf16: every method's forward pass runs under autocast too.
            let bf16 = {
                let mut c = cfg.clone();
                c.train.precision = Precision::Bf16;
                c
            };
            let s = pretrain(
                &bf16,
                &ds,
                dir.path(),
                &TrainOptions {
                    resume: true,
                    ..quiet()
                },
                Device::Cpu,
            )
            .unwrap_or_else(|e| panic!("{} resume in bf16: {e:#}", spec.name))
            .summary;
            assert!(s.final_loss.is_finite(), "{} in bf16", spec.name);
            // 64 images in batches of 16, 2 epochs (the supervised baseline too).
            assert_eq!(s.steps, 8, "{}", spec.name);
            let model = Model::build(&cfg, &data_info(&ds), Device::Cpu).unwrap();
            checkpoint::load_into(&model.vs, &checkpoint::load(dir.path()).unwrap().model).unwrap();
            let x = Tensor::rand([3, 3, 8, 8], (tch::Kind::Float, Device::Cpu));
            let f = tch::no_grad(|| model.method.encoder().forward_t(&x, false));
            assert_eq!(
                f.size(),
                vec![3, model.method.encoder().dim],
                "{}",
                spec.name
            );
        }
    }
}
