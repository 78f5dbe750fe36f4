//! Subcommands. Parsing (clap) is kept apart from the validated settings (`Config`).

use crate::config::Config;
use crate::data::DataSpec;
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
    /// List the pretraining methods.
    Methods,
    /// Print the effective config as TOML (defaults, --config file, --set overrides).
    Config {
        #[command(flatten)]
        cfg: ConfigArgs,
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
    let cfg = base.with_overrides(&args.sets)?;
    cfg.validate()?;
    Ok(cfg)
}

fn load_data(cfg: &Config) -> Result<crate::data::Dataset> {
    let spec = DataSpec::parse(&cfg.data).context("option data")?;
    spec.load()
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
        let cfg = saved.with_overrides(&args.sets)?;
        cfg.validate()?;
        cfg
    } else {
        let Some(method) = method else {
            bail!("pretrain needs --method NAME (see `selfsup methods`)")
        };
        methods::find(&method)?;
        let mut sets = vec![format!("method=\"{method}\"")];
        sets.extend(args.sets.iter().cloned());
        build_config(
            &ConfigArgs {
                config: args.config.clone(),
                sets,
            },
            Config::default(),
        )?
    };
    let ds = load_data(&cfg)?;
    eprintln!(
        "pretrain {} on {} ({} train images{}), encoder {}, {} epochs, device {:?}",
        cfg.method,
        ds.name,
        ds.train.len().min(if cfg.train_subset == 0 {
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
    println!(
        "pretrained {}: {} epochs, {} steps, final loss {:.5}, {:.0} images/s, wall {:.1}s -> {}",
        cfg.method,
        s.epochs,
        s.steps,
        s.final_loss,
        s.images_per_sec,
        s.wall_seconds,
        out.display()
    );
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

fn eval_run(run: &Path, args: &ConfigArgs, device: Device) -> Result<()> {
    if args.config.is_some() {
        bail!(
            "eval --run takes its config from the run; use --set for the eval keys {EVAL_KEYS:?}"
        );
    }
    for s in &args.sets {
        let key = s.split_once('=').map(|(k, _)| k.trim()).unwrap_or(s);
        if !EVAL_KEYS.contains(&key) {
            bail!("--set {s}: only the eval keys {EVAL_KEYS:?} can change when evaluating a run");
        }
    }
    let ck = checkpoint::load(run)?;
    let cfg = ck.meta.config.with_overrides(&args.sets)?;
    cfg.validate()?;
    let ds = load_data(&cfg)?;
    let model = Model::build(&cfg, &train::data_info(&ds), device)?;
    checkpoint::load_into(&model.vs, &ck.model)
        .with_context(|| format!("{}", run.join(checkpoint::FILE_NAME).display()))?;
    let t0 = Instant::now();
    let scores = eval::evaluate_method(model.method.as_ref(), &ds, &cfg, device);
    let label = format!("{} ({} epochs)", cfg.method, ck.meta.epoch);
    report(&label, &ds, &scores, t0.elapsed().as_secs_f64());
    let json = serde_json::json!({
        "method": cfg.method, "data": cfg.data, "epochs": ck.meta.epoch, "pretrain_seconds": ck.meta.wall_seconds,
        "encoder_parameters": nets::parameter_count(&model.vs, "encoder."), "scores": scores,
    });
    std::fs::write(run.join("eval.json"), serde_json::to_string_pretty(&json)?)?;
    Ok(())
}

fn eval_baseline(which: &str, args: &ConfigArgs, device: Device) -> Result<()> {
    let cfg = build_config(args, Config::default())?;
    let ds = load_data(&cfg)?;
    let t0 = Instant::now();
    let scores = match which {
        "raw" => {
            let (tr, te) = (Arc::new(ds.train.clone()), Arc::new(ds.test.clone()));
            let ftr = eval::pixel_features(&tr, device);
            let fte = eval::pixel_features(&te, device);
            eval::score(&ftr, &fte, ds.num_classes as i64, &cfg)
        }
        "random" => {
            tch::manual_seed(cfg.seed as i64);
            let vs = tch::nn::VarStore::new(device);
            let enc =
                nets::build_encoder(&(vs.root() / "encoder"), &cfg, ds.train.shape[0] as i64)?;
            eval::evaluate_encoder(&enc, &ds, &cfg, device)
        }
        other => bail!("--baseline '{other}' is not one of raw, random"),
    };
    let label = if which == "raw" {
        "raw pixels".to_string()
    } else {
        format!("random-init {}", cfg.encoder)
    };
    report(&label, &ds, &scores, t0.elapsed().as_secs_f64());
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
