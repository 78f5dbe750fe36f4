//! Subcommands. Parsing (clap) is kept apart from the validated settings (`Config`).

use crate::config::Config;
use crate::data::{DataOptions, DataSpec, inspect};
use crate::train::{self, Model, checkpoint};
use crate::{eval, methods, nets};
use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::Device;

#[derive(Parser, Debug)]
#[command(
    name = "selfsup",
    version,
    about = "Self-supervised visual representation learning on libtorch",
    long_about = "Self-supervised visual representation learning on libtorch.\n\n\
        Pretrain an encoder without labels (`pretrain`), then measure its frozen features with a \
        linear probe and a kNN classifier (`eval`). Runs are described by one flat config: \
        defaults, then an optional TOML file (--config), then --set key=value overrides. \
        The default data is Fashion-MNIST from Debian's dataset-fashion-mnist package.",
    after_help = "Example:\n  selfsup pretrain --method denoising-autoencoder --set epochs=5 --out runs/dae\n  selfsup eval --run runs/dae\n  selfsup eval --baseline raw"
)]
pub struct Cli {
    /// Compute device: auto (CUDA when libtorch sees a GPU, else CPU), cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "auto")]
    pub device: String,
    /// Threads for libtorch and the data pipeline (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// TOML file with config keys (see `selfsup config` for every key and its default).
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Override one config key, e.g. --set epochs=5 --set cnn_widths=[32,64]. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Data set, as the `data` key: fashion-mnist (default), fashion-mnist:DIR, mnist:DIR,
    /// cifar10:DIR, cifar100:DIR, stl10:DIR, folder:DIR.
    #[arg(long, value_name = "KIND:PATH")]
    pub data: Option<String>,
}

impl ConfigArgs {
    /// The `--set` overrides, preceded by `data=...` when `--data` is given.
    pub fn overrides(&self) -> Vec<String> {
        let data = self.data.iter().map(|d| {
            let quoted = toml::Value::String(d.clone()).to_string();
            format!("data={quoted}")
        });
        data.chain(self.sets.iter().cloned()).collect()
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pretrain an encoder with a self-supervised method; writes checkpoints and metrics to --out.
    Pretrain {
        /// Method name (see `selfsup methods`).
        #[arg(long)]
        method: Option<String>,
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Run folder: receives config.toml, metrics.jsonl and checkpoint.safetensors.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Continue the run in --out from its last checkpoint (its saved config is used;
        /// --set may still change keys such as epochs).
        #[arg(long)]
        resume: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Evaluate frozen features: linear probe (top-1/top-5) and kNN (top-1).
    Eval {
        /// A run folder written by `pretrain`.
        #[arg(
            long,
            value_name = "DIR",
            conflicts_with = "baseline",
            required_unless_present = "baseline"
        )]
        run: Option<PathBuf>,
        /// A baseline instead of a run: `raw` (pixels) or `random` (randomly initialised encoder).
        #[arg(long, value_parser = ["raw", "random"])]
        baseline: Option<String>,
        /// Config for a baseline, or eval-key overrides (probe_epochs, knn_k, ...) for a run.
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Export a run's encoder for PyTorch: safetensors with torchvision-style names
    /// (see src/nets/export.rs for the differences from torchvision's resnet18).
    Export {
        /// A run folder written by `pretrain`.
        #[arg(long, value_name = "DIR")]
        run: PathBuf,
        /// Output file (.safetensors).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Write a run's encoder features of one split as NumPy files (embeddings_SPLIT.npy
    /// [N, D] float32, labels_SPLIT.npy [N] int64).
    Embed {
        #[arg(long, value_name = "DIR")]
        run: PathBuf,
        #[arg(long, value_parser = ["train", "test"], default_value = "test")]
        split: String,
        /// Output folder.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Nearest-neighbour picture: each row a test image and its k nearest training images
    /// in the representation space (cosine), framed green when the label matches.
    Neighbors {
        #[arg(long, value_name = "DIR")]
        run: PathBuf,
        /// Number of query images (rows), chosen with --seed.
        #[arg(long, default_value_t = 8)]
        queries: usize,
        #[arg(long, default_value_t = 8)]
        k: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// PNG to write (default: RUN/neighbors.png).
        #[arg(long, value_name = "FILE.png")]
        out: Option<PathBuf>,
    },
    /// Evaluate a run and write a report into its folder: metrics.json, loss.png,
    /// embedding.png (t-SNE of test embeddings coloured by class), neighbors.png and
    /// index.html, a static page showing them with the config.
    Report {
        /// A run folder written by `pretrain`.
        #[arg(long, value_name = "DIR")]
        run: PathBuf,
        /// Test images in the t-SNE map (a random sample seeded by the run's seed).
        #[arg(long, default_value_t = 2000)]
        points: usize,
        /// Eval-key overrides (probe_epochs, knn_k, ...), as for `eval --run`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Compare methods in one table (Markdown and CSV): linear top-1/top-5, kNN top-1,
    /// pretraining time and parameters, always with the raw-pixel, random-init and
    /// supervised baselines. Either over existing --runs, or training --methods here.
    Compare {
        /// Run folders to compare, comma-separated.
        #[arg(long, value_delimiter = ',', value_name = "DIR,...")]
        runs: Vec<PathBuf>,
        /// Methods to pretrain and evaluate here, comma-separated; runs go to OUT/METHOD
        /// (a finished run there is reused, an unfinished one resumed).
        #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
        methods: Vec<String>,
        /// With --methods: take presets/PRESET-METHOD.toml where it exists, e.g. --preset fashion-mnist.
        #[arg(long)]
        preset: Option<String>,
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Output folder for compare.md, compare.csv and the runs trained here.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
    },
    /// List the pretraining methods.
    Methods,
    /// Benchmark: augmentation throughput (two SimCLR views per image) at 28x28 gray, 32x32
    /// and 96x96 RGB, on 1 thread and on all threads, next to torchvision's in the setup venv.
    BenchAugment {
        /// Images per measurement.
        #[arg(long, default_value_t = 2000)]
        images: usize,
        /// Python with torch and torchvision (default: the setup venv).
        #[arg(long)]
        python: Option<PathBuf>,
    },
    /// Print the effective config as TOML (defaults, --config file, --set overrides).
    Config {
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Data set tools.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Load a data set; print its counts, image shape, channels and class histogram, and
    /// write a PNG grid of sample images (one row per class when there are at most 10).
    Inspect {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Where to write the PNG grid of samples.
        #[arg(long, value_name = "FILE.png", default_value = "data-inspect.png")]
        out: PathBuf,
    },
}

/// Resolves `--device`.
pub fn parse_device(s: &str) -> Result<Device> {
    let cuda_n = tch::Cuda::device_count();
    let need = |i: i64| -> Result<Device> {
        if i < cuda_n {
            Ok(Device::Cuda(i as usize))
        } else if cuda_n == 0 {
            bail!(
                "--device {s}: libtorch sees no CUDA device on this machine; use --device cpu or auto"
            )
        } else {
            bail!(
                "--device {s}: only {cuda_n} CUDA device(s), numbered 0..{}",
                cuda_n - 1
            )
        }
    };
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => need(0),
        _ => match s.strip_prefix("cuda:").map(|n| n.parse::<i64>()) {
            Some(Ok(i)) if i >= 0 => need(i),
            _ => bail!("--device '{s}' is not one of auto, cpu, cuda, cuda:N"),
        },
    }
}

fn build_config(args: &ConfigArgs, base: Config) -> Result<Config> {
    let base = match &args.config {
        Some(p) => Config::from_toml_file(p)?,
        None => base,
    };
    let cfg = base.with_overrides(&args.overrides())?;
    cfg.validate()?;
    Ok(cfg)
}

fn load_data(cfg: &Config) -> Result<crate::data::Dataset> {
    let spec = DataSpec::parse(&cfg.data).context("option data")?;
    spec.load(&DataOptions::from_config(cfg))
}

fn data_inspect(args: &ConfigArgs, out: &Path) -> Result<()> {
    let cfg = build_config(args, Config::default())?;
    let ds = load_data(&cfg)?;
    print!("{}", inspect::describe(&ds));
    inspect::write_grid(&ds, out)?;
    println!("sample grid -> {}", out.display());
    Ok(())
}

fn pct(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

pub fn run(cli: Cli) -> Result<()> {
    let device = parse_device(&cli.device)?;
    if let Some(n) = cli.threads {
        if n == 0 || n > 1024 {
            bail!("--threads {n}: must be between 1 and 1024");
        }
        tch::set_num_threads(n as i32);
        // Ignore the error if a pool already exists (only in tests).
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    match cli.command {
        Command::Methods => {
            for m in methods::REGISTRY {
                println!("{:<24} {}", m.name, m.summary);
            }
            Ok(())
        }
        Command::Export { run, out } => export(&run, &out, device),
        Command::Compare {
            runs,
            methods,
            preset,
            cfg,
            out,
            quiet,
        } => compare(
            &runs,
            &methods,
            preset.as_deref(),
            &cfg,
            &out,
            quiet,
            device,
        ),
        Command::Embed { run, split, out } => embed(&run, &split, &out, device),
        Command::Neighbors {
            run,
            queries,
            k,
            seed,
            out,
        } => neighbors(&run, queries, k, seed, out, device),
        Command::Report { run, points, sets } => report_run(&run, points, &sets, device),
        Command::BenchAugment { images, python } => bench_augment(images, python),
        Command::Config { cfg } => {
            print!(
                "{}",
                toml::to_string(&build_config(&cfg, Config::default())?)?
            );
            Ok(())
        }
        Command::Pretrain {
            method,
            cfg,
            out,
            resume,
            quiet,
        } => pretrain(method, &cfg, &out, resume, quiet, device),
        Command::Data {
            command: DataCommand::Inspect { cfg, out },
        } => data_inspect(&cfg, &out),
        Command::Eval { run, baseline, cfg } => match (run, baseline) {
            (Some(run), None) => eval_run(&run, &cfg, device),
            (None, Some(b)) => eval_baseline(&b, &cfg, device),
            _ => bail!("eval needs exactly one of --run DIR or --baseline raw|random"),
        },
    }
}

fn pretrain(
    method: Option<String>,
    args: &ConfigArgs,
    out: &Path,
    resume: bool,
    quiet: bool,
    device: Device,
) -> Result<()> {
    let cfg = if resume {
        let saved = checkpoint::load(out).context("--resume")?.meta.config;
        if let Some(m) = &method {
            if *m != saved.method {
                bail!(
                    "--method {m} differs from the method '{}' of the run in {}",
                    saved.method,
                    out.display()
                );
            }
        }
        let cfg = saved.with_overrides(&args.overrides())?;
        cfg.validate()?;
        cfg
    } else {
        // --method wins; otherwise the method named in the --config file.
        let mut sets: Vec<String> = method.iter().map(|m| format!("method=\"{m}\"")).collect();
        sets.extend(args.overrides());
        let cfg = build_config(
            &ConfigArgs {
                config: args.config.clone(),
                sets,
                data: None,
            },
            Config::default(),
        )?;
        if cfg.method.is_empty() {
            bail!(
                "pretrain needs --method NAME (see `selfsup methods`) or a --config file that sets method"
            );
        }
        methods::find(&cfg.method)?;
        cfg
    };
    let ds = load_data(&cfg)?;
    eprintln!(
        "pretrain {} on {} ({} images{}), encoder {}, {} epochs, device {:?}",
        cfg.method,
        ds.name,
        ds.pretrain_split().len().min(if cfg.train_subset == 0 {
            usize::MAX
        } else {
            cfg.train_subset
        }),
        if cfg.train_subset == 0 {
            ""
        } else {
            ", subset"
        },
        cfg.encoder,
        cfg.epochs,
        device
    );
    let opts = train::TrainOptions {
        resume,
        quiet,
        stop_after_epochs: None,
    };
    let s = train::pretrain(&cfg, &ds, out, &opts, device)?;
    println!("{}", s.describe(&cfg.method, out));
    Ok(())
}

/// Keys that may be changed when evaluating a saved run.
const EVAL_KEYS: &[&str] = &[
    "probe_epochs",
    "probe_lr",
    "probe_batch_size",
    "probe_weight_decay",
    "knn_k",
    "knn_temperature",
];

/// Fails unless every `--set` names one of the `EVAL_KEYS`.
fn check_eval_sets(sets: &[String]) -> Result<()> {
    for s in sets {
        let key = s.split_once('=').map(|(k, _)| k.trim()).unwrap_or(s);
        if !EVAL_KEYS.contains(&key) {
            bail!("--set {s}: only the eval keys {EVAL_KEYS:?} can change when evaluating a run");
        }
    }
    Ok(())
}

fn run_label(cfg: &Config, meta: &checkpoint::Meta) -> String {
    format!("{} ({} epochs)", cfg.method, meta.epoch)
}

fn eval_run(run: &Path, args: &ConfigArgs, device: Device) -> Result<()> {
    if args.config.is_some() {
        bail!(
            "eval --run takes its config from the run; use --set for the eval keys {EVAL_KEYS:?}"
        );
    }
    if args.data.is_some() {
        bail!(
            "eval --run evaluates on the data of the run; --data applies to pretrain and --baseline"
        );
    }
    check_eval_sets(&args.sets)?;
    let LoadedRun {
        cfg,
        meta,
        ds,
        model,
    } = load_run(run, &args.sets, device)?;
    ds.require_labels()?;
    let t0 = Instant::now();
    let scores = eval::evaluate_method(model.method.as_ref(), &ds, &cfg, device);
    report(
        &run_label(&cfg, &meta),
        &ds,
        &scores,
        t0.elapsed().as_secs_f64(),
    );
    let params = nets::parameter_count(&model.vs, "encoder.");
    let json = crate::report::run_json(&cfg, &meta, params, &scores);
    std::fs::write(run.join("eval.json"), serde_json::to_string_pretty(&json)?)?;
    Ok(())
}

fn report_run(run: &Path, points: usize, sets: &[String], device: Device) -> Result<()> {
    if !(1..=10_000).contains(&points) {
        bail!("--points {points}: must be in 1..=10000 (t-SNE takes O(N²) memory and time)");
    }
    check_eval_sets(sets)?;
    let LoadedRun {
        cfg,
        meta,
        ds,
        model,
    } = load_run(run, sets, device)?;
    let opts = crate::report::Options {
        points,
        queries: 8,
        k: 8,
        seed: cfg.seed,
    };
    let r = crate::report::write(run, &cfg, &meta, &ds, &model, &opts, device)?;
    report(&run_label(&cfg, &meta), &ds, &r.scores, r.eval_seconds);
    println!(
        "  neighbours     {}/{} share the query's label",
        r.neighbors.same_label, r.neighbors.total
    );
    println!(
        "  t-SNE map of {} test images ({:.1}s)",
        r.embedded_points, r.tsne_seconds
    );
    if let Some(s) = &r.summary {
        println!("  {}", s.describe(&cfg.method, run));
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    println!("report -> {}", run.join(crate::report::HTML_FILE).display());
    Ok(())
}

fn eval_baseline(which: &str, args: &ConfigArgs, device: Device) -> Result<()> {
    let cfg = build_config(args, Config::default())?;
    let ds = load_data(&cfg)?;
    ds.require_labels()?;
    let t0 = Instant::now();
    let scores = baseline_scores(which, &cfg, &ds, device)?;
    report(
        &baseline_label(which, &cfg),
        &ds,
        &scores,
        t0.elapsed().as_secs_f64(),
    );
    Ok(())
}

fn baseline_label(which: &str, cfg: &Config) -> String {
    if which == "raw" {
        "raw pixels".to_string()
    } else {
        format!("random-init {}", cfg.encoder)
    }
}

/// Scores of raw pixels or of a randomly initialised encoder (seeded by `cfg.seed`).
fn baseline_scores(
    which: &str,
    cfg: &Config,
    ds: &crate::data::Dataset,
    device: Device,
) -> Result<eval::Scores> {
    Ok(match which {
        "raw" => {
            let (tr, te) = (Arc::new(ds.train.clone()), Arc::new(ds.test.clone()));
            let ftr = eval::pixel_features(&tr, device);
            let fte = eval::pixel_features(&te, device);
            eval::score(&ftr, &fte, ds.num_classes as i64, cfg)
        }
        "random" => random_encoder_scores(cfg, ds, device)?.0,
        other => bail!("--baseline '{other}' is not one of raw, random"),
    })
}

/// Scores and parameter count of a randomly initialised encoder.
fn random_encoder_scores(
    cfg: &Config,
    ds: &crate::data::Dataset,
    device: Device,
) -> Result<(eval::Scores, i64)> {
    tch::manual_seed(cfg.seed as i64);
    let vs = tch::nn::VarStore::new(device);
    let enc = nets::build_encoder(&(vs.root() / "encoder"), cfg, ds.train.shape[0] as i64)?;
    Ok((
        eval::evaluate_encoder(&enc, ds, cfg, device),
        nets::parameter_count(&vs, "encoder."),
    ))
}

/// presets/PRESET-METHOD.toml, looked up in ./presets and then in the source tree.
fn preset_path(preset: &str, method: &str) -> Option<PathBuf> {
    let name = format!("{preset}-{method}.toml");
    [
        PathBuf::from("presets"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("presets"),
    ]
    .into_iter()
    .map(|d| d.join(&name))
    .find(|f| f.is_file())
}

/// The config of `method` for `compare --methods`: presets/PRESET-METHOD.toml when it
/// exists, else --config or the defaults; then --data/--set.
fn method_config(method: &str, preset: Option<&str>, args: &ConfigArgs) -> Result<Config> {
    let mut base = match &args.config {
        Some(p) => Config::from_toml_file(p)?,
        None => Config::default(),
    };
    if let Some(path) = preset.and_then(|p| preset_path(p, method)) {
        base = Config::from_toml_file(&path)?;
    }
    let mut sets = vec![format!("method=\"{method}\"")];
    sets.extend(args.overrides());
    let cfg = base.with_overrides(&sets)?;
    cfg.validate()?;
    Ok(cfg)
}

/// Pretrains `cfg` into `dir` unless a finished run is there; resumes an unfinished one.
fn ensure_trained(cfg: &Config, dir: &Path, quiet: bool, device: Device) -> Result<()> {
    let resume = match checkpoint::load(dir) {
        Ok(ck) if ck.meta.config.method == cfg.method && ck.meta.epoch >= cfg.epochs => {
            return Ok(());
        }
        Ok(ck) if ck.meta.config.method != cfg.method => {
            bail!(
                "{} holds a {} run, not {}",
                dir.display(),
                ck.meta.config.method,
                cfg.method
            )
        }
        Ok(_) => true,
        Err(_) => false,
    };
    let ds = load_data(cfg)?;
    eprintln!("compare: pretraining {} into {}", cfg.method, dir.display());
    let opts = train::TrainOptions {
        resume,
        quiet,
        stop_after_epochs: None,
    };
    train::pretrain(cfg, &ds, dir, &opts, device)?;
    Ok(())
}

fn compare(
    runs: &[PathBuf],
    methods: &[String],
    preset: Option<&str>,
    args: &ConfigArgs,
    out: &Path,
    quiet: bool,
    device: Device,
) -> Result<()> {
    if runs.is_empty() == methods.is_empty() {
        bail!("compare needs either --runs DIR,... or --methods NAME,...");
    }
    for m in methods {
        methods::find(m)?;
    }
    if let Some(p) = preset {
        if !methods.iter().any(|m| preset_path(p, m).is_some()) {
            bail!(
                "--preset {p}: none of presets/{p}-METHOD.toml exists for the methods {methods:?}"
            );
        }
    }
    let mut run_dirs: Vec<PathBuf> = runs.to_vec();
    let mut trained: Vec<(String, Config)> = methods
        .iter()
        .map(|m| Ok((m.clone(), method_config(m, preset, args)?)))
        .collect::<Result<_>>()?;
    // The supervised upper bound, with the config of the first method or run.
    let has_supervised = methods.iter().any(|m| m == "supervised")
        || runs
            .iter()
            .any(|r| checkpoint::load(r).is_ok_and(|c| c.meta.config.method == "supervised"));
    let first = match trained.first() {
        Some((_, c)) => c.clone(),
        None => checkpoint::load(&runs[0])?.meta.config,
    };
    if !has_supervised {
        trained.push((
            "supervised".into(),
            Config {
                method: "supervised".into(),
                ..first.clone()
            },
        ));
    }
    for (m, cfg) in &trained {
        let dir = out.join(m);
        ensure_trained(cfg, &dir, quiet, device)?;
        run_dirs.push(dir);
    }
    let ds = load_data(&first)?;
    ds.require_labels()?;
    let mut rows = vec![eval::compare::Row {
        method: "raw pixels".into(),
        scores: baseline_scores("raw", &first, &ds, device)?,
        pretrain_seconds: None,
        parameters: 0,
    }];
    let (scores, parameters) = random_encoder_scores(&first, &ds, device)?;
    rows.push(eval::compare::Row {
        method: baseline_label("random", &first),
        scores,
        pretrain_seconds: None,
        parameters,
    });
    for dir in &run_dirs {
        let LoadedRun {
            cfg,
            meta,
            ds,
            model,
        } = load_run(dir, &[], device)?;
        ds.require_labels()?;
        eprintln!("compare: evaluating {} ({})", cfg.method, dir.display());
        let scores = eval::evaluate_method(model.method.as_ref(), &ds, &cfg, device);
        rows.push(eval::compare::Row {
            method: cfg.method.clone(),
            scores,
            pretrain_seconds: Some(meta.wall_seconds),
            parameters: nets::parameter_count(&model.vs, "encoder."),
        });
    }
    eval::compare::write(out, &rows)?;
    print!("{}", eval::compare::markdown(&rows));
    println!(
        "-> {} and {}",
        out.join("compare.md").display(),
        out.join("compare.csv").display()
    );
    Ok(())
}

/// A saved run rebuilt: its config (with `sets` applied), its data, and its model holding
/// the checkpoint's weights.
struct LoadedRun {
    cfg: Config,
    meta: checkpoint::Meta,
    ds: crate::data::Dataset,
    model: Model,
}

fn load_run(run: &Path, sets: &[String], device: Device) -> Result<LoadedRun> {
    let ck = checkpoint::load(run)?;
    let cfg = ck.meta.config.with_overrides(sets)?;
    cfg.validate()?;
    let ds = load_data(&cfg)?;
    let model = Model::build(&cfg, &train::data_info(&ds), device)?;
    checkpoint::load_into(&model.vs, &ck.model)
        .with_context(|| format!("{}", run.join(checkpoint::FILE_NAME).display()))?;
    Ok(LoadedRun {
        cfg,
        meta: ck.meta,
        ds,
        model,
    })
}

fn export(run: &Path, out: &Path, device: Device) -> Result<()> {
    let LoadedRun { cfg, ds, model, .. } = load_run(run, &[], device)?;
    nets::export::write_encoder(out, &model.vs.variables(), &cfg, ds.train.shape[0] as i64)?;
    println!(
        "wrote the {} encoder of {} ({} parameters) to {}",
        cfg.encoder,
        run.display(),
        nets::parameter_count(&model.vs, "encoder."),
        out.display()
    );
    Ok(())
}

fn embed(run: &Path, split: &str, out: &Path, device: Device) -> Result<()> {
    let LoadedRun { ds, model, .. } = load_run(run, &[], device)?;
    let data = Arc::new(match split {
        "train" => ds.train.clone(),
        "test" => ds.test.clone(),
        other => bail!("--split '{other}' is not one of train, test"),
    });
    if data.is_empty() {
        bail!("the {split} split of {} is empty", ds.name);
    }
    let (f, l) = eval::method_features(model.method.as_ref(), &data, 512, device);
    let (fp, lp) = eval::embed::write_embeddings(out, split, &f, &l)?;
    println!(
        "wrote {} x {} embeddings to {} and labels to {}",
        f.size()[0],
        f.size()[1],
        fp.display(),
        lp.display()
    );
    Ok(())
}

fn neighbors(
    run: &Path,
    queries: usize,
    k: usize,
    seed: u64,
    out: Option<PathBuf>,
    device: Device,
) -> Result<()> {
    if queries == 0 || k == 0 || queries > 1000 || k > 100 {
        bail!("--queries {queries} and --k {k} must be in 1..=1000 and 1..=100");
    }
    let LoadedRun { ds, model, .. } = load_run(run, &[], device)?;
    ds.require_labels()?;
    let f = eval::SplitFeatures::of_method(model.method.as_ref(), &ds, device);
    let out = out.unwrap_or_else(|| run.join(eval::neighbors::FILE_NAME));
    let (train, test) = (&ds.train, &ds.test);
    let found =
        eval::neighbors::write_picture(train, test, &f.train.0, &f.test.0, queries, k, seed, &out)?;
    for line in found.lines(train, test, &ds.class_names) {
        println!("{line}");
    }
    println!(
        "{}/{} neighbours share the query's label; grid (query framed blue, same label green, other red) -> {}",
        found.same_label,
        found.total,
        out.display()
    );
    Ok(())
}

fn bench_augment(images: usize, python: Option<PathBuf>) -> Result<()> {
    use crate::augment::bench;
    if images == 0 {
        bail!("--images must be at least 1");
    }
    let all = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads: Vec<usize> = if all > 1 { vec![1, all] } else { vec![1] };
    // 28x28 gray is the default data (Fashion-MNIST); 32x32 and 96x96 are CIFAR and STL-10.
    let shapes =
        [(1, 28), (3, 32), (3, 96)].map(|(channels, size)| bench::Shape { channels, size });
    let home = std::env::var("HOME").unwrap_or_default();
    let python = python
        .unwrap_or_else(|| PathBuf::from(format!("{home}/.cache/selfsup/torch-2.11.0/bin/python")));
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_augment_torchvision.py");
    let tv = match bench::torchvision_throughput(&python, &script, images, &threads, &shapes) {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("torchvision comparison skipped: {e:#}");
            Vec::new()
        }
    };
    println!(
        "{:>10} {:>7} {:>15} {:>18} {:>7}",
        "shape", "threads", "selfsup img/s", "torchvision img/s", "ratio"
    );
    for &shape in &shapes {
        for &t in &threads {
            let ours = bench::selfsup_throughput(shape, images, t)?;
            let theirs = tv
                .iter()
                .find(|r| r.shape == shape && r.threads == t)
                .map(|r| r.images_per_sec);
            let (tv_s, ratio) = match theirs {
                Some(x) => (format!("{x:.0}"), format!("{:.2}x", ours / x)),
                None => ("-".into(), "-".into()),
            };
            let name = match shape.channels {
                1 => format!("{0}x{0} gray", shape.size),
                _ => format!("{0}x{0}", shape.size),
            };
            println!("{name:>10} {t:>7} {ours:>15.0} {tv_s:>18} {ratio:>7}");
        }
    }
    Ok(())
}

/// Prints scores the way `selfsup eval` does.
pub fn report(label: &str, ds: &crate::data::Dataset, s: &eval::Scores, secs: f64) {
    println!(
        "eval {label} on {}: {} train / {} test images, {}-d features ({secs:.1}s)",
        ds.name,
        ds.train.len(),
        ds.test.len(),
        s.feature_dim
    );
    println!(
        "  linear probe   top-1 {:>7}   top-5 {:>7}",
        pct(s.linear_top1),
        pct(s.linear_top5)
    );
    println!("  kNN            top-1 {:>7}", pct(s.knn_top1));
}
