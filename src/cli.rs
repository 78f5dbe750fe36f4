//! The command line: argument parsing (clap) and printing. The work is done by the
//! library modules each command calls.

use crate::config::Config;
use crate::dist::DistEnv;
use crate::eval::{self, baselines::Baseline, compare, segment};
use crate::train::{self, run::LoadedRun};
use crate::{augment, data, launch, methods, nets, report, venv};
use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
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

/// A saved run, at its last checkpoint or an earlier one.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// A run folder written by `pretrain`.
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Use this checkpoint instead of the run's last one, e.g. checkpoint-epoch3.safetensors
    /// (kept with keep_checkpoints; a bare name is looked up in the run folder).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
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
        /// With --resume: continue from this checkpoint instead of the last one, e.g. a kept
        /// checkpoint-epoch3.safetensors (a bare name is looked up in --out).
        #[arg(long, value_name = "FILE", requires = "resume")]
        checkpoint: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Data-parallel runs: how long a rank waits for the others in a collective before
        /// the run fails naming the ranks it lost, e.g. 90s, 10m (default: 5m).
        #[arg(long, value_name = "TIME", value_parser = parse_timeout)]
        dist_timeout: Option<Duration>,
    },
    /// Run `selfsup pretrain` data-parallel as N processes on this machine (torchrun's
    /// variables for each; rank 0 keeps the terminal, the others' output is prefixed).
    #[command(
        after_help = "Example:\n  selfsup launch --nproc-per-node 2 -- pretrain --config presets/fashion-mnist-simclr.toml --out runs/ddp\n\n\
                      torchrun works too: torchrun --nproc-per-node 2 --no-python selfsup pretrain ..."
    )]
    Launch {
        /// Processes (ranks) to start; the global batch_size is split among them.
        #[arg(long, value_name = "N")]
        nproc_per_node: usize,
        /// Port of the rendezvous on 127.0.0.1 (default: a free one).
        #[arg(long, value_name = "PORT")]
        master_port: Option<u16>,
        /// The command each rank runs: `pretrain ...` (global options such as --device given
        /// to launch apply to every rank).
        #[arg(last = true, required = true, value_name = "pretrain ARGS")]
        command: Vec<String>,
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
        /// With --run: evaluate this checkpoint instead of the run's last one, e.g.
        /// checkpoint-epoch3.safetensors (a bare name is looked up in the run folder); the
        /// scores go to eval-CHECKPOINT.json.
        #[arg(long, value_name = "FILE", requires = "run")]
        checkpoint: Option<PathBuf>,
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
        #[command(flatten)]
        run: RunArgs,
        /// Output file (.safetensors).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Write a run's encoder features of one split as NumPy files (embeddings_SPLIT.npy
    /// [N, D] float32, labels_SPLIT.npy [N] int64).
    Embed {
        #[command(flatten)]
        run: RunArgs,
        #[arg(long, value_parser = ["train", "test"], default_value = "test")]
        split: String,
        /// Output folder.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Nearest-neighbour picture: each row a test image and its k nearest training images
    /// in the representation space (cosine), framed green when the label matches.
    Neighbors {
        #[command(flatten)]
        run: RunArgs,
        /// Number of query images (rows), chosen with --seed.
        #[arg(long, default_value_t = 8)]
        queries: usize,
        #[arg(long, default_value_t = 8)]
        k: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// PNG to write (default: RUN/neighbors.png, with --checkpoint
        /// RUN/neighbors-CHECKPOINT.png).
        #[arg(long, value_name = "FILE.png")]
        out: Option<PathBuf>,
    },
    /// Evaluate a run and write a report into its folder: eval.json, loss.png,
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
    /// Segmentation transfer: train a head on an encoder's feature maps, frozen and
    /// fine-tuned, and score pixel accuracy, per-class IoU and mean IoU on the test split;
    /// writes segment.json and segmentation.png (test images, true and predicted masks).
    Segment {
        /// A run folder written by `pretrain`.
        #[arg(
            long,
            value_name = "DIR",
            conflicts_with = "baseline",
            required_unless_present = "baseline"
        )]
        run: Option<PathBuf>,
        /// A baseline instead of a run: `random` (the randomly initialised encoder).
        #[arg(long, value_parser = ["random"], requires = "out")]
        baseline: Option<String>,
        /// `frozen` (only the head is trained), `finetune` (the encoder too) or `both`.
        #[arg(long, value_parser = ["frozen", "finetune", "both"], default_value = "both")]
        protocol: String,
        /// Segmentation data, as the `seg_data` key: fashion-scenes (default),
        /// fashion-scenes:DIR, seg-folder:DIR (images/ and masks/, or PASCAL VOC).
        #[arg(long, value_name = "KIND:PATH")]
        seg_data: Option<String>,
        /// Config for a baseline, or eval-key overrides (seg_frozen_epochs, seg_head, ...) for a run.
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Folder for segment.json and segmentation.png (default: the run folder).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// No per-epoch lines.
        #[arg(long)]
        quiet: bool,
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
        /// The baselines to add as rows: raw pixels, the random-init encoder, and the
        /// supervised encoder (trained here with the first method's or run's config).
        #[arg(long, value_delimiter = ',', value_name = "NAME,...",
              value_parser = ["raw", "random", "supervised"], default_value = "raw,random,supervised")]
        baselines: Vec<String>,
        /// Output folder for compare.md, compare.csv and the runs trained here.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Add segmentation mIoU columns (frozen and fine-tuned, with their wall times), as
        /// `selfsup segment` with the seg_* keys; results in a run's segment.json whose
        /// settings match are reused.
        #[arg(long)]
        segmentation: bool,
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
    /// Benchmark: one config's training step (default: presets/fashion-mnist-simclr.toml)
    /// in fp32 and bf16, on random input (compute only) and through the loader with its
    /// augmentation (end to end), next to the same step in PyTorch in the setup venv.
    BenchStep {
        /// The config to measure (--config, --set, --data); its `precision` is ignored: both
        /// are measured.
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Timed steps per measurement.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Untimed steps before each measurement.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Rounds of measurements, one of each setup per round; the best round counts
        /// (other work on the machine slows some rounds down).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Python with torch (default: the setup venv).
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

/// The config `bench-step` measures unless given one.
const DEFAULT_BENCH_PRESET: &str = "presets/fashion-mnist-simclr.toml";

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

fn parse_timeout(s: &str) -> Result<Duration, String> {
    crate::config::parse_seconds(s)
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s:?} is not a positive time such as 90s, 5m or 1h"))
}

/// The device of a data-parallel rank: the CPU, or the GPU of its LOCAL_RANK.
fn rank_device(device_arg: &str, device: Device, env: &DistEnv) -> Result<Device> {
    if !device.is_cuda() {
        return Ok(device);
    }
    if device_arg.starts_with("cuda:") {
        bail!(
            "--device {device_arg}: under a launcher each rank takes the GPU of its LOCAL_RANK; pass --device cuda (or auto)"
        );
    }
    parse_device(&format!("cuda:{}", env.local_rank))
        .with_context(|| format!("LOCAL_RANK={}", env.local_rank))
}

/// A rank started by a launcher shares the machine with the others: its data pipeline
/// (rayon) takes as many threads as libtorch, `OMP_NUM_THREADS` (which torchrun sets to 1
/// and `selfsup launch` to cores / N), unless `RAYON_NUM_THREADS` says otherwise.
fn follow_omp_num_threads() {
    let omp = std::env::var("OMP_NUM_THREADS").ok();
    if let Some(n) = omp.and_then(|v| v.trim().parse::<usize>().ok())
        && n > 0
        && std::env::var_os("RAYON_NUM_THREADS").is_none()
    {
        // Ignore the error if a pool already exists (only in tests).
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
}

/// The forwarded arguments of `launch`, checked: a `pretrain` command.
fn launch_args(cli: &Cli, command: &[String]) -> Result<Vec<String>> {
    // The global options given to launch itself (--device's default, auto, goes without
    // saying), so that the command after `--` may carry its own.
    let mut args = Vec::new();
    if cli.device != "auto" {
        args.extend(["--device".to_string(), cli.device.clone()]);
    }
    if let Some(n) = cli.threads {
        args.extend(["--threads".to_string(), n.to_string()]);
    }
    args.extend(command.iter().cloned());
    let parsed = Cli::try_parse_from(std::iter::once("selfsup".to_string()).chain(args.clone()));
    match parsed.map(|c| c.command) {
        Ok(Command::Pretrain { .. }) => Ok(args),
        Ok(_) => bail!(
            "launch runs `selfsup pretrain` on every rank: selfsup launch --nproc-per-node N -- pretrain ..."
        ),
        Err(e) => bail!("the command after `--`: {e}"),
    }
}

/// The config of a command without a run: defaults, `--config`, `--data` and `--set`.
fn plain_config(args: &ConfigArgs) -> Result<Config> {
    let (cfg, _) = Config::assemble(Config::default(), args.config.as_deref(), &args.overrides())?;
    cfg.validate()?;
    Ok(cfg)
}

fn warn(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
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
    if let Command::Launch {
        nproc_per_node,
        master_port,
        command,
    } = &cli.command
    {
        let args = launch_args(&cli, command)?;
        let program = std::env::current_exe().context("the path of this selfsup binary")?;
        return launch::run(&program, &args, *nproc_per_node, *master_port);
    }
    match cli.command {
        Command::Launch { .. } => unreachable!("handled above"),
        Command::Methods => {
            for m in methods::REGISTRY {
                println!("{:<24} {}", m.name, m.summary);
            }
        }
        Command::Config { cfg } => print!("{}", toml::to_string(&plain_config(&cfg)?)?),
        Command::Data {
            command: DataCommand::Inspect { cfg, out },
        } => {
            let ds = data::load(&plain_config(&cfg)?)?;
            print!("{}", data::inspect::describe(&ds));
            data::inspect::write_grid(&ds, &out)?;
            println!("sample grid -> {}", out.display());
        }
        Command::Pretrain {
            method,
            cfg,
            out,
            resume,
            checkpoint,
            quiet,
            dist_timeout,
        } => {
            // Under a launcher (torchrun, Slurm, `selfsup launch`): one rank of several.
            let dist = DistEnv::from_env().context("the launcher's variables")?;
            let device = match &dist {
                Some(env) => rank_device(&cli.device, device, env)?,
                None => device,
            };
            if dist.is_some() && cli.threads.is_none() {
                follow_omp_num_threads();
            }
            let writer = dist.as_ref().is_none_or(|env| env.rank == 0);
            if writer {
                // Fail at once when another process is training into `out`.
                train::lock::RunLock::check_free(&out)?;
            }
            let checkpoint = checkpoint.map(|f| train::checkpoint::resolve(&out, &f));
            let (config, warnings) = train::run::pretrain_config(
                method.as_deref(),
                cfg.config.as_deref(),
                &cfg.overrides(),
                &out,
                resume,
                checkpoint.as_deref(),
            )?;
            if writer {
                warn(&warnings);
            }
            let ds = data::load(&config)?;
            if writer {
                let ranks = dist.as_ref().map_or(String::new(), |env| {
                    format!(
                        ", {} processes (rank 0 writes the run folder)",
                        env.world_size
                    )
                });
                eprintln!(
                    "pretrain {} on {} ({} images), encoder {}, {} epochs, device {device:?}{ranks}",
                    config.method,
                    ds.name,
                    ds.pretrain_split().subset_len(config.train_subset),
                    config.encoder,
                    config.epochs,
                );
            }
            let opts = train::TrainOptions {
                resume,
                checkpoint,
                quiet,
                stop_after_epochs: None,
                dist,
                dist_timeout,
            };
            let s = train::pretrain(&config, &ds, &out, &opts, device)?;
            if writer {
                println!("{}", s.describe(&config.method, &out));
            }
        }
        Command::Eval {
            run,
            checkpoint,
            baseline,
            cfg,
        } => match (run, baseline) {
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
                let config = plain_config(&cfg)?;
                let ds = data::load(&config)?;
                ds.require_labels()?;
                let b = Baseline::parse(&b)?;
                let t0 = Instant::now();
                let (scores, _) = b.evaluate(&config, &ds, device)?;
                let secs = t0.elapsed().as_secs_f64();
                println!("{}", eval::describe(&b.label(&config), &ds, &scores, secs));
            }
            _ => bail!("eval needs exactly one of --run DIR or --baseline raw|random"),
        },
        Command::Segment {
            run,
            baseline,
            protocol,
            seg_data,
            mut cfg,
            out,
            quiet,
        } => {
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
                    segment::for_random(&plain_config(&cfg)?, &protocols, &out, device, quiet)?
                }
                _ => bail!("segment needs exactly one of --run DIR or --baseline random"),
            };
            print!("{text}");
        }
        Command::Report { run, points, sets } => {
            print!("{}", report::for_run(&run, points, &sets, device)?)
        }
        Command::Compare {
            runs,
            methods,
            preset,
            cfg,
            baselines,
            out,
            segmentation,
            quiet,
        } => {
            let plan = compare::Plan {
                runs,
                methods,
                preset,
                config: cfg.config.clone(),
                sets: cfg.overrides(),
                baselines: (baselines.iter().filter(|b| *b != "supervised"))
                    .map(|b| Baseline::parse(b))
                    .collect::<Result<_>>()?,
                supervised: baselines.iter().any(|b| b == "supervised"),
                out,
                segmentation,
                quiet,
            };
            let rows = compare::run(&plan, device)?;
            print!("{}", compare::markdown(&rows));
            let (md, csv) = (plan.out.join("compare.md"), plan.out.join("compare.csv"));
            println!("-> {} and {}", md.display(), csv.display());
        }
        Command::Export { run, out } => {
            let r = LoadedRun::load(&run.run, run.checkpoint.as_deref(), &[], device)?;
            let encoder = r.model.method.encoder();
            nets::export::write_encoder(&out, &r.model.vs.variables(), &r.cfg, encoder)?;
            println!(
                "wrote the {} encoder of {} ({} parameters, input {:?}) to {}",
                r.cfg.encoder,
                run.run.display(),
                r.encoder_parameters(),
                encoder.input,
                out.display()
            );
        }
        Command::Embed { run, split, out } => {
            let ck = run.checkpoint.as_deref();
            println!(
                "{}",
                eval::embed::for_run(&run.run, ck, &split, &out, device)?
            )
        }
        Command::Neighbors {
            run,
            queries,
            k,
            seed,
            out,
        } => print!(
            "{}",
            eval::neighbors::for_run(
                &run.run,
                run.checkpoint.as_deref(),
                queries,
                k,
                seed,
                out,
                device
            )?
        ),
        Command::BenchStep {
            cfg,
            steps,
            warmup,
            rounds,
            python,
        } => {
            let preset = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_BENCH_PRESET);
            let file = cfg.config.clone().unwrap_or(preset);
            let (config, given) =
                Config::assemble(Config::default(), Some(&file), &cfg.overrides())?;
            warn(&methods::check_config(&config, &given)?);
            let ds = data::load(&config)?;
            println!("{}", train::bench::describe_step(&config, &ds, device));
            let opts = train::bench::BenchOptions {
                steps,
                warmup,
                rounds,
            };
            let python = python.map_or_else(venv::python, Ok);
            let rows = train::bench::measure(&config, &ds, device, &opts, python)?;
            print!("{}", train::bench::table(&rows));
        }
        Command::BenchAugment { images, python } => {
            let python = python.map_or_else(venv::python, Ok);
            print!("{}", augment::bench::table(images, python)?);
        }
    }
    Ok(())
}
