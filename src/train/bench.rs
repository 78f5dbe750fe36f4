//! `selfsup bench-step`: the training step of a config, timed in fp32 and bf16, on random
//! input (compute only) and through the data pipeline (loader and augmentation, as
//! `pretrain` runs it), next to the same step in PyTorch (`scripts/bench_step_torch.py`,
//! run with the setup venv's Python and selfsup's allocator settings) in both of PyTorch's
//! memory layouts, eager and through `torch.compile` (whose compilation is timed apart):
//! selfsup is compared with the fastest of them, PyTorch's best.

use super::{Model, data_info, epoch_loader, optim::Optimizer, train_step};
use crate::config::{Config, EncoderKind, EncoderSpec, MethodConfig, Precision, TrainSpec};
use crate::data::Dataset;
use crate::methods::StepCtx;
use crate::venv;
use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// How long to measure, and what.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Timed steps of each measurement.
    pub steps: usize,
    /// Untimed steps before them (allocator, oneDNN's kernel choice, the loader's queue).
    pub warmup: usize,
    /// Measurements of each setup, interleaved; the best counts.
    pub rounds: usize,
    /// PyTorch through `torch.compile` too (its compilation takes tens of seconds per setup).
    pub compile: bool,
    /// After the rounds, `steps` more compute-only steps of each setup with every operator
    /// timed (selfsup's by the native op profiler, PyTorch's by `torch.profiler`): where
    /// the step's time goes (`profile_table`).
    pub profile: bool,
}

/// Where one setup's compute-only step spends its time: its operators' self times over
/// `steps` steps and the wall time of those steps (with the profiler's own cost in both).
#[derive(Debug, Clone, PartialEq)]
pub struct StepProfile {
    pub steps: usize,
    pub wall_secs: f64,
    pub ops: Vec<crate::native::OpTime>,
}

impl StepProfile {
    /// Seconds of the run in milliseconds per step.
    fn per_step_ms(&self, secs: f64) -> f64 {
        1e3 * secs / self.steps.max(1) as f64
    }

    /// The self seconds of the operators in `category` (`op_category`); None where none is.
    fn secs_in(&self, category: &str) -> Option<f64> {
        let mut ops = (self.ops.iter())
            .filter(|o| op_category(&o.name) == category)
            .peekable();
        ops.peek()?;
        Some(ops.map(|o| o.self_secs).sum())
    }
}

/// One measurement: images per second (each image gives the method its views).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub system: &'static str,
    pub precision: Precision,
    /// The activations' memory layout: selfsup's batches are channels-last; PyTorch is
    /// measured in "contiguous" (its default, NCHW) and "channels-last".
    pub layout: &'static str,
    /// PyTorch's step as written ("eager") or through `torch.compile` ("compiled");
    /// selfsup's "-".
    pub mode: &'static str,
    /// Random input of the batch's shape, the step alone; 0 where `failed`.
    pub compute: f64,
    /// Through the loader (augmentation included); `None` where not measured.
    pub end_to_end: Option<f64>,
    /// Seconds `torch.compile` took to compile the step (apart from `compute`).
    pub compile_secs: Option<f64>,
    /// Why the setup could not be measured (a compiled step where inductor cannot build
    /// kernels); such a row has no speed and no ratio is taken against it.
    pub failed: Option<String>,
    /// Its step's operators, where `BenchOptions::profile` asked for them.
    pub profile: Option<StepProfile>,
}

impl Row {
    /// The same setup (precision, layout, mode) as `other`, in another round.
    fn same_setup(&self, other: &Row) -> bool {
        (self.precision, self.layout, self.mode) == (other.precision, other.layout, other.mode)
    }
}

/// The step's input for random data: B images' views in the loader's layout (`Batch::images`).
fn random_batch(
    model: &Model,
    train: &TrainSpec,
    ds: &Dataset,
    device: Device,
) -> crate::data::Batch {
    let groups = crate::data::loader::size_groups(
        ds.pretrain_split().shape,
        model.method.views().as_deref(),
    );
    let b = train.batch_size;
    tch::manual_seed(train.seed as i64);
    let numel: usize = groups.iter().map(|(n, [c, h, w])| n * b * c * h * w).sum();
    let nhwc = Tensor::rand([numel as i64], (Kind::Float, device)); // [numel]
    crate::data::Batch {
        images: crate::data::loader::pack(&nhwc, &groups),
        labels: Tensor::zeros([b as i64], (Kind::Int64, device)),
        indices: (0..b).collect(),
    }
}

/// Where a measured step takes its batches from.
enum Input {
    /// The same random batch every step: the step alone.
    Random(crate::data::Batch),
    /// The loader with its views, epoch after epoch, as `pretrain` runs it; each round
    /// starts a fresh loader (an empty queue, as at an epoch's start) at the next epoch.
    Data {
        train: Arc<crate::data::Split>,
        views: Option<Arc<crate::augment::Views>>,
        epoch: usize,
    },
}

/// One of the measured steps: selfsup's model of `cfg` (in its precision) and its input.
struct Setup {
    cfg: Config,
    model: Model,
    opt: Optimizer,
    input: Input,
}

impl Setup {
    /// Owns its copy of the config: `precision` replaces the config's.
    fn new(
        mut cfg: Config,
        ds: &Dataset,
        precision: Precision,
        data: bool,
        device: Device,
    ) -> Result<Setup> {
        cfg.train.precision = precision;
        let model = Model::build(&cfg, &data_info(ds), device)?;
        let opt = Optimizer::new(
            &model.vs,
            cfg.train.optimizer,
            cfg.train.momentum,
            cfg.train.weight_decay,
        );
        let input = if data {
            let train = Arc::new(ds.pretrain_split().clone());
            if super::steps_per_epoch(train.len(), cfg.train.batch_size) == 0 {
                bail!(
                    "batch_size = {} is larger than the {} training images",
                    cfg.train.batch_size,
                    train.len()
                );
            }
            let views = model.method.views();
            Input::Data {
                train,
                views,
                epoch: 0,
            }
        } else {
            Input::Random(random_batch(&model, &cfg.train, ds, device))
        };
        Ok(Setup {
            cfg,
            model,
            opt,
            input,
        })
    }

    /// One round: `warmup` untimed steps, then `steps` timed ones; images per second.
    fn round(&mut self, opts: &BenchOptions) -> Result<f64> {
        let device = self.model.vs.device();
        let cfg = &self.cfg;
        let mut loader = match &mut self.input {
            Input::Random(_) => None,
            Input::Data {
                train,
                views,
                epoch,
            } => {
                *epoch += 1;
                Some(epoch_loader(
                    &cfg.train,
                    train,
                    views,
                    *epoch,
                    0,
                    device,
                    (1, 0),
                ))
            }
        };
        let total = opts.warmup + opts.steps;
        // On a GPU the clock reads after the queued work is done, not when it is launched.
        let sync = || {
            if let Device::Cuda(i) = device {
                tch::Cuda::synchronize(i as i64);
            }
        };
        let mut start = Instant::now();
        // The losses read (checked) and the GPU's queue drained at the end of the warm-up
        // and of the timed steps only.
        let mut pending = super::PendingLosses::default();
        for step in 0..total {
            if step == opts.warmup {
                pending.read()?;
                sync();
                start = Instant::now();
            }
            let batch = match (&mut self.input, &mut loader) {
                (Input::Random(b), _) => crate::data::Batch {
                    images: b.images.iter().map(Tensor::shallow_clone).collect(),
                    labels: b.labels.shallow_clone(),
                    indices: b.indices.clone(),
                },
                (
                    Input::Data {
                        train,
                        views,
                        epoch,
                    },
                    Some(l),
                ) => match l.next() {
                    Some(b) => b?,
                    None => {
                        *epoch += 1;
                        *l = epoch_loader(&cfg.train, train, views, *epoch, 0, device, (1, 0));
                        l.next().context("an epoch without batches")??
                    }
                },
                (Input::Data { .. }, None) => unreachable!("a data input has its loader"),
            };
            let ctx = StepCtx {
                epoch: 0,
                step,
                total_steps: total,
            };
            let loss = train_step(
                &mut self.model,
                None,
                &mut self.opt,
                &batch,
                &ctx,
                cfg.train.lr,
                cfg.train.seed,
            )?;
            pending.push(&ctx, loss);
        }
        pending.read()?;
        sync();
        Ok((opts.steps * cfg.train.batch_size) as f64 / start.elapsed().as_secs_f64())
    }

    /// `opts.steps` steps with every operator timed, after `opts.warmup` untimed ones.
    fn profile(&mut self, opts: &BenchOptions) -> Result<StepProfile> {
        self.round(&BenchOptions {
            steps: opts.warmup.max(1),
            warmup: 0,
            ..opts.clone()
        })?;
        let timed = BenchOptions {
            warmup: 0,
            ..opts.clone()
        };
        let start = Instant::now();
        let (ips, ops) = crate::native::profile(|| self.round(&timed))?;
        ips?;
        Ok(StepProfile {
            steps: opts.steps,
            wall_secs: start.elapsed().as_secs_f64(),
            ops,
        })
    }
}

/// The arguments of `scripts/bench_step_torch.py` that build the step of `method` with
/// `m` and `train`, to be served one round at a time (`--serve`).
fn torch_args(
    method: &str,
    m: MethodConfig,
    train: &TrainSpec,
    ds: &Dataset,
    opts: &BenchOptions,
    device: Device,
) -> Result<Vec<String>> {
    if method != "simclr" {
        bail!("the PyTorch step is SimCLR's; {method} has no PyTorch counterpart here");
    }
    let [c, h, w] = ds.pretrain_split().shape;
    let (h, w) = match (m.aug.aug_crop_size, h, w) {
        (0, h, w) => (h, w),
        (s, _, _) => (s, s),
    };
    let mut a: Vec<String> = vec![
        "--encoder".into(),
        m.encoder.kind.to_string(),
        "--shape".into(),
        c.to_string(),
        h.to_string(),
        w.to_string(),
        "--cnn-widths".into(),
    ];
    a.extend(m.encoder.cnn_widths.iter().map(|w| w.to_string()));
    let device = match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => bail!("the PyTorch step runs on CPU or CUDA, not {other:?}"),
    };
    for (k, v) in [
        ("--cnn-pool", m.encoder.cnn_pool.to_string()),
        ("--resnet-width", m.encoder.resnet_width.to_string()),
        ("--proj-hidden-dim", m.keys.proj_hidden_dim.to_string()),
        ("--proj-dim", m.keys.proj_dim.to_string()),
        ("--temperature", m.keys.temperature.to_string()),
        ("--batch-size", train.batch_size.to_string()),
        ("--optimizer", train.optimizer.to_string()),
        ("--lr", train.lr.to_string()),
        ("--momentum", train.momentum.to_string()),
        ("--weight-decay", train.weight_decay.to_string()),
        ("--steps", opts.steps.to_string()),
        ("--warmup", opts.warmup.to_string()),
        ("--threads", tch::get_num_threads().to_string()),
        ("--device", device),
    ] {
        a.extend([k.to_string(), v]);
    }
    a.extend(["--precision", "fp32", "bf16"].map(String::from));
    a.extend(["--memory-format", CONTIGUOUS, CHANNELS_LAST].map(String::from));
    a.extend(["--mode", EAGER].map(String::from));
    if opts.compile {
        a.push(COMPILED.into());
    }
    // One round per request: `measure` interleaves PyTorch's rounds with selfsup's.
    a.push("--serve".into());
    Ok(a)
}

const CONTIGUOUS: &str = "contiguous";
const CHANNELS_LAST: &str = "channels-last";
const EAGER: &str = "eager";
const COMPILED: &str = "compiled";

/// One of PyTorch's rows of one round, as `scripts/bench_step_torch.py` prints it: its
/// speed in images/s, or why it could not run (an "error" in place of images_per_sec).
fn torch_row(v: &serde_json::Value) -> Result<Row> {
    let line = v.to_string();
    let precision = match v["precision"].as_str() {
        Some("fp32") => Precision::Fp32,
        Some("bf16") => Precision::Bf16,
        _ => bail!("no precision in '{line}'"),
    };
    let layout = match v["memory_format"].as_str() {
        Some(CONTIGUOUS) => CONTIGUOUS,
        Some(CHANNELS_LAST) => CHANNELS_LAST,
        _ => bail!("no memory_format in '{line}'"),
    };
    let mode = match v["mode"].as_str() {
        Some(EAGER) => EAGER,
        Some(COMPILED) => COMPILED,
        _ => bail!("no mode in '{line}'"),
    };
    let (compute, failed) = match v["error"].as_str() {
        Some(why) => (0.0, Some(why.to_string())),
        None => {
            let ips = v["images_per_sec"]
                .as_f64()
                .with_context(|| format!("no images_per_sec in '{line}'"))?;
            (ips, None)
        }
    };
    let profile = match v.get("profile") {
        None => None,
        Some(p) => Some(torch_profile(p).with_context(|| format!("the profile in '{line}'"))?),
    };
    Ok(Row {
        system: "PyTorch",
        precision,
        layout,
        mode,
        compute,
        end_to_end: None,
        compile_secs: v["compile_seconds"].as_f64(),
        failed,
        profile,
    })
}

/// A profile as the PyTorch script prints it: `{"steps": N, "wall_seconds": S, "ops":
/// {name: [calls, self seconds]}}` (from `torch.profiler`'s key averages).
fn torch_profile(p: &serde_json::Value) -> Result<StepProfile> {
    let ops = p["ops"].as_object().context("no ops")?;
    let mut ops = ops
        .iter()
        .map(|(name, v)| {
            let (calls, secs) = (v[0].as_u64(), v[1].as_f64());
            let (Some(calls), Some(self_secs)) = (calls, secs) else {
                bail!("{name}: expected [calls, seconds], got {v}");
            };
            Ok(crate::native::OpTime {
                name: name.clone(),
                calls,
                self_secs,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    ops.sort_by(|a, b| b.self_secs.total_cmp(&a.self_secs));
    Ok(StepProfile {
        steps: p["steps"].as_u64().context("no steps")? as usize,
        wall_secs: p["wall_seconds"].as_f64().context("no wall_seconds")?,
        ops,
    })
}

/// Adds one round of PyTorch's rows to the best so far: the faster figure of each setup
/// counts; a setup that failed in any round stays failed, with its reason.
fn keep_best(best: &mut Vec<Row>, round: Vec<Row>) {
    for r in round {
        match best.iter_mut().find(|b| b.same_setup(&r)) {
            None => best.push(r),
            Some(b) if b.failed.is_some() => {}
            Some(b) if r.failed.is_some() => *b = r,
            Some(b) => b.compute = b.compute.max(r.compute),
        }
    }
}

/// `scripts/bench_step_torch.py --serve`, started and ready: its setups built (and
/// compiled) before selfsup measures anything, so that the compilation does not share the
/// machine with selfsup's rounds.
struct TorchSteps(venv::Server);

impl TorchSteps {
    fn start(python: &Path, args: &[String]) -> Result<TorchSteps> {
        let script = venv::source_file("scripts/bench_step_torch.py");
        let mut server = venv::Server::start(python, &script, args)?;
        server.request(None, |v| v["ready"] == true)?;
        Ok(TorchSteps(server))
    }

    /// One round of every PyTorch setup: `request` "round", or "profile" for a round
    /// under `torch.profiler` (each row with its profile).
    fn round(&mut self, request: &str) -> Result<Vec<Row>> {
        let lines = self
            .0
            .request(Some(request), |v| v["end_of_round"] == true)?;
        lines[..lines.len() - 1].iter().map(torch_row).collect()
    }
}

/// Every measurement of `cfg`'s step: selfsup in fp32 and bf16 (compute only and end to
/// end), then PyTorch in both, in both memory layouts, eager and (`opts.compile`) compiled
/// (compute only; left out, with a note on stderr, when it cannot run: no Python, or a
/// method other than SimCLR; a compiled setup that cannot run is a row saying why).
pub fn measure(
    cfg: &Config,
    ds: &Dataset,
    device: Device,
    opts: &BenchOptions,
    python: Result<PathBuf>,
) -> Result<Vec<Row>> {
    for (option, value) in [("--steps", opts.steps), ("--rounds", opts.rounds)] {
        if value == 0 {
            bail!("{option} must be at least 1");
        }
    }
    // Every setup measured once per round, selfsup's and PyTorch's in turn, the rounds one
    // after the other: a burst of other work or a drift in the machine's speed lowers one
    // round of each system alike, and the best round of each setup counts.
    let mut setups = Vec::new();
    for precision in Precision::ALL {
        for data in [false, true] {
            setups.push((Setup::new(cfg.clone(), ds, *precision, data, device)?, 0f64));
        }
    }
    // PyTorch: started once, its setups built and compiled before the first round; where
    // it cannot run, a note and selfsup alone.
    let skipped = |e: anyhow::Error| eprintln!("PyTorch comparison skipped: {e:#}");
    let mut torch = python
        .and_then(|py| {
            let args = torch_args(&cfg.method, cfg.method_view(), &cfg.train, ds, opts, device)?;
            TorchSteps::start(&py, &args)
        })
        .map_err(skipped)
        .ok();
    let mut torch_best: Vec<Row> = Vec::new();
    for _ in 0..opts.rounds {
        for (setup, best) in &mut setups {
            *best = best.max(setup.round(opts)?);
        }
        let Some(steps) = &mut torch else { continue };
        match steps.round("round") {
            Ok(round) => keep_best(&mut torch_best, round),
            Err(e) => {
                skipped(e);
                torch = None;
                torch_best.clear();
            }
        }
    }
    let mut rows = Vec::new();
    for pair in setups.chunks_mut(2) {
        let profile = match opts.profile {
            true => Some(pair[0].0.profile(opts)?),
            false => None,
        };
        rows.push(Row {
            system: "selfsup",
            precision: pair[0].0.cfg.train.precision,
            layout: CHANNELS_LAST,
            mode: "-",
            compute: pair[0].1,
            end_to_end: Some(pair[1].1),
            compile_secs: None,
            failed: None,
            profile,
        });
    }
    if let (true, Some(steps)) = (opts.profile, &mut torch) {
        let profiled = steps.round("profile").context("profiling PyTorch's step")?;
        for p in profiled {
            if let Some(b) = torch_best.iter_mut().find(|b| b.same_setup(&p)) {
                b.profile = p.profile;
            }
        }
    }
    rows.extend(torch_best);
    Ok(rows)
}

/// What the step is, in one line: method, encoder, batch and input, threads, device.
pub fn describe_step(
    method: &str,
    encoder: &EncoderSpec,
    train: &TrainSpec,
    ds: &Dataset,
    device: Device,
) -> String {
    let [c, h, w] = ds.pretrain_split().shape;
    let encoder = match encoder.kind {
        EncoderKind::Cnn => format!("cnn {:?} pool {}", encoder.cnn_widths, encoder.cnn_pool),
        EncoderKind::Resnet18 => format!("resnet18 x{}", encoder.resnet_width),
        EncoderKind::Vit => format!(
            "vit patch {} depth {} width {} heads {}",
            encoder.vit_patch, encoder.vit_depth, encoder.vit_width, encoder.vit_heads
        ),
    };
    format!(
        "{} on {} ({c}x{h}x{w}), {encoder}, batch {}, {:?}, {} threads, device {device:?}",
        method,
        ds.name,
        train.batch_size,
        train.optimizer,
        tch::get_num_threads()
    )
}

/// The table `selfsup bench-step` prints: images/s of each row (and the compilation's
/// seconds, or why a setup could not run) and, under it, the ratios of selfsup's figures
/// to PyTorch's best compute-only one at the same precision (the fastest of its layouts
/// and modes that ran).
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<8} {:<9} {:<13} {:<8} {:>13} {:>16} {:>9}\n",
        "system", "precision", "layout", "mode", "compute img/s", "end-to-end img/s", "compile s"
    );
    for r in rows {
        let head = format!(
            "{:<8} {:<9} {:<13} {:<8}",
            r.system, r.precision, r.layout, r.mode
        );
        if let Some(why) = &r.failed {
            let _ = writeln!(out, "{head} failed: {why}");
            continue;
        }
        let e2e = r.end_to_end.map_or("-".into(), |x| format!("{x:.0}"));
        let compile = r.compile_secs.map_or("-".into(), |x| format!("{x:.1}"));
        let _ = writeln!(out, "{head} {:>13.0} {e2e:>16} {compile:>9}", r.compute);
    }
    for p in Precision::ALL {
        if let (Some(ours), Some(torch)) = (best(rows, "selfsup", *p), best(rows, "PyTorch", *p)) {
            let _ = write!(
                out,
                "{p}: selfsup / PyTorch's best ({}, {}) compute-only: compute {:.2}x",
                torch.mode,
                torch.layout,
                ours.compute / torch.compute
            );
            if let Some(e2e) = ours.end_to_end {
                let _ = write!(out, ", end-to-end {:.2}x", e2e / torch.compute);
            }
            out.push('\n');
        }
    }
    if let (Some(f), Some(b)) = (
        best(rows, "selfsup", Precision::Fp32),
        best(rows, "selfsup", Precision::Bf16),
    ) {
        let _ = write!(
            out,
            "selfsup bf16 / fp32: compute {:.2}x",
            b.compute / f.compute
        );
        if let (Some(fe), Some(be)) = (f.end_to_end, b.end_to_end) {
            let _ = write!(out, ", end-to-end {:.2}x", be / fe);
        }
        out.push('\n');
    }
    out
}

/// The part of a training step an operator belongs to, by its name (libtorch's operators
/// and autograd nodes, and the regions `torch.compile` runs its own kernels in, are named
/// alike by both profilers): the columns of `profile_table`.
pub fn op_category(name: &str) -> &'static str {
    let n = name.to_ascii_lowercase();
    let has = |parts: &[&str]| parts.iter().any(|p| n.contains(p));
    if has(&["convolution_backward", "convolutionbackward"]) {
        "conv bwd"
    } else if has(&["convolution", "conv2d"]) {
        "conv fwd"
    } else if has(&["batch_norm", "batchnorm", "selfsup::bn_relu"]) {
        // (selfsup's fused training batch norm + ReLU counts here: its ReLU costs no pass)
        "batch norm"
    } else if has(&["relu", "threshold_backward", "clamp_min"]) {
        // (libtorch's relu runs as clamp_min(0), where the time is; nothing else in a step
        // clamps more than a norm's few values)
        "relu"
    } else if has(&["compiled", "inductor"]) || n.starts_with("## ") {
        "inductor"
    } else if [
        "aten::mm",
        "aten::addmm",
        "aten::bmm",
        "aten::matmul",
        "aten::linear",
    ]
    .contains(&n.as_str())
        || has(&["mmbackward"])
    {
        "matmul"
    } else if has(&[
        "adam",
        "sgd",
        "_foreach_",
        "optimizer",
        "zero_grad",
        "clear_grads",
    ]) {
        "optimizer"
    } else {
        "other ops"
    }
}

const CATEGORIES: [&str; 8] = [
    "conv fwd",
    "conv bwd",
    "batch norm",
    "relu",
    "matmul",
    "optimizer",
    "inductor",
    "other ops",
];

/// Where each profiled row's step goes, in milliseconds per step: its operators' self
/// times by `op_category`, the time outside every operator ("outside": the host's own
/// work between them) and the whole step; empty where no row has a profile.
pub fn profile_table(rows: &[Row]) -> String {
    let profiled: Vec<(&Row, &StepProfile)> = rows
        .iter()
        .filter_map(|r| r.profile.as_ref().map(|p| (r, p)))
        .collect();
    if profiled.is_empty() {
        return String::new();
    }
    let mut out =
        "where the compute-only step's time goes, ms per step (self time of the operators; \
        profiled, so slower than above)\n"
            .to_string();
    let _ = write!(
        out,
        "{:<8} {:<9} {:<13} {:<8}",
        "system", "precision", "layout", "mode"
    );
    for c in CATEGORIES.iter().chain(&["outside", "step"]) {
        let _ = write!(out, " {c:>10}");
    }
    out.push('\n');
    for &(r, p) in &profiled {
        let _ = write!(
            out,
            "{:<8} {:<9} {:<13} {:<8}",
            r.system, r.precision, r.layout, r.mode
        );
        let mut inside = 0.0;
        for c in CATEGORIES {
            match p.secs_in(c) {
                None => {
                    let _ = write!(out, " {:>10}", "-");
                }
                Some(t) => {
                    inside += t;
                    let _ = write!(out, " {:>10.1}", p.per_step_ms(t));
                }
            }
        }
        let outside = (p.wall_secs - inside).max(0.0);
        let _ = writeln!(
            out,
            " {:>10.1} {:>10.1}",
            p.per_step_ms(outside),
            p.per_step_ms(p.wall_secs)
        );
    }
    // What "other ops" holds: each row's largest few (`ops` is sorted slowest first).
    out.push_str("largest other ops, ms per step:\n");
    for (r, p) in profiled {
        let top: Vec<String> = (p.ops.iter())
            .filter(|o| op_category(&o.name) == "other ops")
            .take(5)
            .map(|o| format!("{} {:.1}", o.name, p.per_step_ms(o.self_secs)))
            .collect();
        let _ = writeln!(
            out,
            "  {} {} {} {}: {}",
            r.system,
            r.precision,
            r.layout,
            r.mode,
            top.join(", ")
        );
    }
    out
}

/// The fastest compute-only row of `system` at `precision` that ran.
fn best<'a>(rows: &'a [Row], system: &str, precision: Precision) -> Option<&'a Row> {
    rows.iter()
        .filter(|r| r.system == system && r.precision == precision && r.failed.is_none())
        .max_by(|a, b| a.compute.total_cmp(&b.compute))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_simclr() -> Config {
        let mut c = super::super::tests::tiny_config("simclr");
        c.keys.proj_hidden_dim = 16;
        c.keys.proj_dim = 8;
        c.aug.aug_crop_scale = [0.5, 1.0];
        c
    }

    /// The PyTorch script's arguments for `tiny_simclr` on the tiny data set, compiled rows
    /// included.
    fn tiny_torch_args(steps: usize, warmup: usize) -> Vec<String> {
        let ds = super::super::tests::tiny_dataset();
        let cfg = tiny_simclr();
        let opts = BenchOptions {
            steps,
            warmup,
            rounds: 1,
            compile: true,
            profile: false,
        };
        let m = cfg.method_view();
        torch_args(&cfg.method, m, &cfg.train, &ds, &opts, Device::Cpu).unwrap()
    }

    #[test]
    fn bench_step_runs_a_tiny_simclr_step_in_selfsup_and_pytorch() {
        let _rng = crate::torch_rng_lock();
        let ds = super::super::tests::tiny_dataset();
        let opts = BenchOptions {
            steps: 2,
            warmup: 1,
            rounds: 2,
            compile: false,
            profile: true,
        };
        let rows = measure(&tiny_simclr(), &ds, Device::Cpu, &opts, venv::python()).unwrap();
        let got: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.system,
                    r.precision,
                    r.layout,
                    r.mode,
                    r.end_to_end.is_some(),
                )
            })
            .collect();
        let (f, b) = (Precision::Fp32, Precision::Bf16);
        assert_eq!(
            got,
            vec![
                ("selfsup", f, CHANNELS_LAST, "-", true),
                ("selfsup", b, CHANNELS_LAST, "-", true),
                ("PyTorch", f, CONTIGUOUS, EAGER, false),
                ("PyTorch", b, CONTIGUOUS, EAGER, false),
                ("PyTorch", f, CHANNELS_LAST, EAGER, false),
                ("PyTorch", b, CHANNELS_LAST, EAGER, false),
            ]
        );
        for r in &rows {
            assert!(r.compute.is_finite() && r.compute > 0.0, "{r:?}");
            assert!(r.failed.is_none() && r.compile_secs.is_none(), "{r:?}");
        }
        let t = table(&rows);
        assert!(t.contains("bf16: selfsup / PyTorch's best (eager, "), "{t}");
        assert!(t.contains("selfsup bf16 / fp32"), "{t}");
        // Every row profiled: both systems' convolutions forward and backward found by name,
        // the operators' self times within the steps' wall time.
        for r in &rows {
            let p = r
                .profile
                .as_ref()
                .unwrap_or_else(|| panic!("no profile: {r:?}"));
            assert_eq!(p.steps, opts.steps);
            let time = |c| p.secs_in(c).unwrap_or(0.0);
            assert!(time("conv fwd") > 0.0 && time("conv bwd") > 0.0, "{r:?}");
            assert!(time("batch norm") > 0.0 && time("optimizer") > 0.0, "{r:?}");
            let inside: f64 = p.ops.iter().map(|o| o.self_secs).sum();
            assert!(inside > 0.0 && inside <= p.wall_secs, "{r:?}");
        }
        let pt = profile_table(&rows);
        assert_eq!(pt.lines().count(), 3 + 2 * rows.len(), "{pt}");
        assert!(pt.contains("conv bwd") && pt.contains("outside"), "{pt}");
    }

    /// Operators of either profiler land in the part of the step they belong to.
    #[test]
    fn operators_are_sorted_into_the_parts_of_the_step() {
        for (name, want) in [
            ("aten::mkldnn_convolution", "conv fwd"),
            ("aten::convolution_backward", "conv bwd"),
            ("ConvolutionBackward0", "conv bwd"),
            ("aten::native_batch_norm", "batch norm"),
            ("aten::native_batch_norm_backward", "batch norm"),
            ("selfsup::bn_relu_forward", "batch norm"),
            ("selfsup::bn_relu_backward", "batch norm"),
            ("aten::relu_", "relu"),
            ("aten::clamp_min", "relu"),
            ("aten::threshold_backward", "relu"),
            ("aten::addmm", "matmul"),
            ("AddmmBackward0", "matmul"),
            ("aten::_fused_adamw_", "optimizer"),
            ("aten::_foreach_mul_", "optimizer"),
            ("Optimizer.step#AdamW.step", "optimizer"),
            ("Torch-Compiled Region: 0/0", "inductor"),
            ("CompiledFunction", "inductor"),
            ("aten::cat", "other ops"),
            ("aten::mm_like_but_not", "other ops"),
        ] {
            assert_eq!(op_category(name), want, "{name}");
        }
    }

    /// The PyTorch script, served as `measure` drives it, with one compiled setup: it is
    /// compiled before the first round, its compilation timed apart from its speed.
    #[test]
    fn a_compiled_pytorch_step_reports_its_compilation_apart() {
        let mut args = tiny_torch_args(2, 1);
        // Only fp32 channels-last, eager and compiled: one compilation keeps the test short.
        let only = |args: &mut Vec<String>, option: &str, value: &str| {
            let i = args.iter().position(|a| a == option).unwrap();
            let end = (i + 1..args.len())
                .find(|&j| args[j].starts_with("--"))
                .unwrap_or(args.len());
            args.splice(i + 1..end, [value.to_string()]);
        };
        only(&mut args, "--precision", "fp32");
        only(&mut args, "--memory-format", CHANNELS_LAST);
        let mut steps = TorchSteps::start(&venv::python().unwrap(), &args).unwrap();
        for _ in 0..2 {
            let rows = steps.round("round").unwrap();
            let modes: Vec<_> = rows.iter().map(|r| r.mode).collect();
            assert_eq!(modes, [EAGER, COMPILED]);
            let [eager, compiled] = &rows[..] else {
                unreachable!()
            };
            assert!(
                eager.compile_secs.is_none() && eager.compute > 0.0,
                "{eager:?}"
            );
            // The machines of the tests have a C++ compiler (scripts/setup.sh installs g++).
            assert!(compiled.failed.is_none(), "{compiled:?}");
            assert!(compiled.compute.is_finite() && compiled.compute > 0.0);
            assert!(
                compiled.compile_secs.is_some_and(|s| s > 0.0),
                "{compiled:?}"
            );
        }
    }

    /// Without a C++ compiler inductor cannot build CPU kernels: the compiled setups are
    /// rows saying so, found before any compilation, and the eager ones still run.
    #[test]
    fn a_compiled_step_without_a_compiler_is_a_row_saying_why() {
        let args = tiny_torch_args(1, 0);
        let args = &args[..args.len() - 1]; // all rounds in one call, not served
        assert!(!args.contains(&"--serve".to_string()));
        let script = venv::source_file("scripts/bench_step_torch.py");
        let start = Instant::now();
        let out = std::process::Command::new(venv::python().unwrap())
            .arg(script)
            .args(args)
            .args(["--rounds", "1"])
            .env("CXX", "/nonexistent/g++")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let rows: Vec<Row> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| torch_row(&serde_json::from_str(l).unwrap()).unwrap())
            .collect();
        assert_eq!(rows.len(), 8, "{rows:?}");
        for r in &rows {
            match r.mode {
                EAGER => assert!(r.failed.is_none() && r.compute > 0.0, "{r:?}"),
                _ => {
                    let why = r.failed.as_deref().unwrap_or_default();
                    assert!(why.contains("no C++ compiler"), "{r:?}");
                    assert!(why.contains("/nonexistent/g++"), "{r:?}");
                }
            }
        }
        // Found before compiling, not by a compilation failing minutes later.
        assert!(start.elapsed().as_secs() < 60, "{:?}", start.elapsed());
        let t = table(&rows);
        assert!(
            t.contains("PyTorch  bf16      channels-last compiled failed: no C++ compiler"),
            "{t}"
        );
    }

    fn row(
        system: &'static str,
        precision: Precision,
        layout: &'static str,
        mode: &'static str,
        compute: f64,
    ) -> Row {
        Row {
            system,
            precision,
            layout,
            mode,
            compute,
            end_to_end: None,
            compile_secs: (mode == COMPILED).then_some(30.0),
            failed: None,
            profile: None,
        }
    }

    #[test]
    fn ratios_are_against_pytorchs_fastest_row_that_ran() {
        let (f, b) = (Precision::Fp32, Precision::Bf16);
        let ours = |p, compute, e2e| Row {
            end_to_end: Some(e2e),
            ..row("selfsup", p, CHANNELS_LAST, "-", compute)
        };
        let failed = |p, layout| Row {
            failed: Some("no C++ compiler".into()),
            compile_secs: None,
            ..row("PyTorch", p, layout, COMPILED, 0.0)
        };
        let t = table(&[
            ours(f, 500.0, 400.0),
            ours(b, 1000.0, 900.0),
            row("PyTorch", f, CONTIGUOUS, EAGER, 250.0),
            row("PyTorch", b, CONTIGUOUS, EAGER, 500.0),
            row("PyTorch", f, CHANNELS_LAST, EAGER, 200.0),
            row("PyTorch", b, CHANNELS_LAST, EAGER, 800.0),
            failed(f, CONTIGUOUS),
            row("PyTorch", b, CONTIGUOUS, COMPILED, 400.0),
            failed(f, CHANNELS_LAST),
            row("PyTorch", b, CHANNELS_LAST, COMPILED, 1250.0),
        ]);
        for line in [
            "fp32: selfsup / PyTorch's best (eager, contiguous) compute-only: compute 2.00x, end-to-end 1.60x",
            "bf16: selfsup / PyTorch's best (compiled, channels-last) compute-only: compute 0.80x, end-to-end 0.72x",
            "selfsup bf16 / fp32: compute 2.00x, end-to-end 2.25x",
            "PyTorch  bf16      channels-last compiled          1250                -      30.0",
            "PyTorch  fp32      contiguous    compiled failed: no C++ compiler",
            "selfsup  bf16      channels-last -                 1000              900         -",
        ] {
            assert!(t.contains(line), "{line}\nnot in\n{t}");
        }
    }

    #[test]
    fn pytorch_lines_parse_into_rows_and_the_best_round_counts() {
        let line = |s: &str| torch_row(&serde_json::from_str(s).unwrap());
        let fast = line(
            r#"{"precision": "bf16", "memory_format": "channels-last", "mode": "compiled",
                "images_per_sec": 900.5, "compile_seconds": 31.25, "threads": 2}"#,
        )
        .unwrap();
        assert_eq!(
            (fast.system, fast.precision, fast.layout, fast.mode),
            ("PyTorch", Precision::Bf16, CHANNELS_LAST, COMPILED)
        );
        assert_eq!((fast.compute, fast.compile_secs), (900.5, Some(31.25)));
        let eager = line(
            r#"{"precision": "fp32", "memory_format": "contiguous", "mode": "eager",
                "images_per_sec": 300.0, "compile_seconds": null}"#,
        )
        .unwrap();
        assert_eq!((eager.mode, eager.compile_secs), (EAGER, None));
        let failed = line(
            r#"{"precision": "fp32", "memory_format": "contiguous", "mode": "compiled",
                "error": "no C++ compiler for inductor's CPU kernels"}"#,
        )
        .unwrap();
        assert_eq!(
            failed.failed.as_deref(),
            Some("no C++ compiler for inductor's CPU kernels")
        );
        for bad in [
            r#"{"precision": "fp16", "memory_format": "contiguous", "mode": "eager", "images_per_sec": 1}"#,
            r#"{"precision": "fp32", "memory_format": "contiguous", "images_per_sec": 1}"#,
            r#"{"precision": "fp32", "memory_format": "contiguous", "mode": "eager"}"#,
        ] {
            assert!(line(bad).is_err(), "{bad}");
        }
        // Rounds: the faster figure counts; a failure stays.
        let slower = Row {
            compute: 700.0,
            ..fast.clone()
        };
        let mut best = Vec::new();
        keep_best(&mut best, vec![slower, eager.clone()]);
        keep_best(&mut best, vec![fast.clone(), eager.clone(), failed.clone()]);
        keep_best(&mut best, vec![eager.clone(), failed.clone()]);
        assert_eq!(best, [fast, eager, failed]);
    }

    #[test]
    fn pytorch_arguments_follow_the_config_and_refuse_other_methods() {
        let ds = super::super::tests::tiny_dataset();
        let cfg = {
            let mut c = super::super::tests::tiny_config("simclr");
            c.aug.aug_crop_size = 6;
            c.encoder.cnn_pool = 2;
            c
        };
        // Any number of rounds: the script serves one per request, between selfsup's rounds.
        let mut opts = BenchOptions {
            steps: 5,
            warmup: 2,
            rounds: 4,
            compile: true,
            profile: false,
        };
        let args = |opts: &BenchOptions| {
            torch_args(
                &cfg.method,
                cfg.method_view(),
                &cfg.train,
                &ds,
                opts,
                Device::Cpu,
            )
            .unwrap()
            .join(" ")
        };
        let a = args(&opts);
        for part in [
            "--shape 1 6 6",
            "--cnn-widths 4 8 --cnn-pool 2",
            "--batch-size 16",
            "--steps 5 --warmup 2 ",
            "--optimizer adamw",
            "--memory-format contiguous channels-last",
            "--mode eager compiled --serve",
        ] {
            assert!(a.contains(part), "{part} not in {a}");
        }
        assert!(!a.contains("--rounds"), "{a}");
        opts.compile = false;
        let a = args(&opts);
        assert!(a.ends_with("--mode eager --serve"), "{a}");
        let byol = super::super::tests::tiny_config("byol");
        let e = torch_args(
            &byol.method,
            byol.method_view(),
            &byol.train,
            &ds,
            &opts,
            Device::Cpu,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("byol"), "{e}");
    }
}
