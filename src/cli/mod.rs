//! The command line: the clap types of every command and the dispatch. Each command has
//! its own file here, which turns its arguments into a config (`config.rs`, the one place
//! where configs are assembled), calls the library's steps in order and prints; the steps
//! themselves live in the library, with their tests.

mod bench;
mod compare;
mod config;
mod data;
mod device;
mod embed;
mod eval;
mod export;
mod finetune;
mod launch;
mod neighbors;
mod pretrain;
mod report;
mod segment;

pub use device::parse_device;

use crate::train::bench::BenchOptions;
use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

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
    /// cifar10:DIR, cifar100:DIR, stl10:DIR, folder:DIR, wds:PATH, parquet:PATH.
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

#[derive(Args, Debug)]
pub struct PretrainArgs {
    /// Method name (see `selfsup methods`).
    #[arg(long)]
    pub method: Option<String>,
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Run folder: receives config.toml, metrics.jsonl and checkpoint.safetensors.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Continue the run in --out from its last checkpoint (its saved config is used;
    /// --set may still change keys such as epochs).
    #[arg(long)]
    pub resume: bool,
    /// With --resume: continue from this checkpoint instead of the last one, e.g. a kept
    /// checkpoint-epoch3.safetensors (a bare name is looked up in --out).
    #[arg(long, value_name = "FILE", requires = "resume")]
    pub checkpoint: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Data-parallel runs: how long a rank waits for the others in a collective before
    /// the run fails naming the ranks it lost, e.g. 90s, 10m (default: 5m).
    #[arg(long, value_name = "TIME", value_parser = pretrain::parse_timeout)]
    pub dist_timeout: Option<Duration>,
}

#[derive(Args, Debug)]
pub struct SegmentArgs {
    /// A run folder written by `pretrain`.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "baseline",
        required_unless_present = "baseline"
    )]
    pub run: Option<PathBuf>,
    /// A baseline instead of a run: `random` (the randomly initialised encoder).
    #[arg(long, value_parser = ["random"], requires = "out")]
    pub baseline: Option<String>,
    /// `frozen` (only the head is trained), `finetune` (the encoder too) or `both`.
    #[arg(long, value_parser = ["frozen", "finetune", "both"], default_value = "both")]
    pub protocol: String,
    /// Segmentation data, as the `seg_data` key: fashion-scenes (default),
    /// fashion-scenes:DIR, seg-folder:DIR (images/ and masks/, or PASCAL VOC).
    #[arg(long, value_name = "KIND:PATH")]
    pub seg_data: Option<String>,
    /// Config for a baseline, or eval-key overrides (seg_frozen_epochs, seg_head, ...) for a run.
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Folder for segment.json and segmentation.png (default: the run folder).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// No per-epoch lines.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Run folders to compare, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "DIR,...")]
    pub runs: Vec<PathBuf>,
    /// Methods to pretrain and evaluate here, comma-separated; runs go to OUT/METHOD
    /// (a finished run there is reused, an unfinished one resumed).
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub methods: Vec<String>,
    /// With --methods: take presets/PRESET-METHOD.toml where it exists, e.g. --preset fashion-mnist.
    #[arg(long)]
    pub preset: Option<String>,
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// The baselines to add as rows: raw pixels, the random-init encoder, and the
    /// supervised encoder (trained here with the first method's or run's config).
    #[arg(long, value_delimiter = ',', value_name = "NAME,...",
          value_parser = ["raw", "random", "supervised"], default_value = "raw,random,supervised")]
    pub baselines: Vec<String>,
    /// Output folder for compare.md, compare.csv and the runs trained here.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Add fine-tuned test top-1 columns, one per percentage of the labels (e.g. 1,10,100):
    /// each run's encoder, and the random one, fine-tuned as `selfsup finetune` does
    /// (results in each run's finetune.json are reused).
    #[arg(long, value_delimiter = ',', value_name = "PCT,...")]
    pub finetune: Vec<String>,
    /// Add segmentation mIoU columns (frozen and fine-tuned, with their wall times), as
    /// `selfsup segment` with the seg_* keys; results in a run's segment.json whose
    /// settings match are reused.
    #[arg(long)]
    pub segmentation: bool,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// A run folder written by `pretrain`: its encoder is fine-tuned (results in its
    /// finetune.json, runs in RUN/finetune-10pct, ...).
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "baseline",
        required_unless_present = "baseline"
    )]
    pub run: Option<PathBuf>,
    /// Fractions of the training labels, comma-separated: 1%, 10%, 100%.
    #[arg(long, value_delimiter = ',', value_name = "PCT,...", required = true)]
    pub labels: Vec<String>,
    /// A baseline instead of a run: `random`, the same architecture trained from its random
    /// initialisation on the same images with the same budget (the supervised baseline).
    #[arg(long, value_parser = ["random"], requires = "out")]
    pub baseline: Option<String>,
    /// Config for a baseline, or finetune_* overrides (finetune_epochs, finetune_lr, ...)
    /// for a run.
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Folder for a baseline's fine-tuning runs and finetune.json.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pretrain an encoder with a self-supervised method; writes checkpoints and metrics to --out.
    Pretrain(PretrainArgs),
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
    /// Fine-tune a run's encoder (or a randomly initialised one) with a linear head, end to
    /// end, on a class-balanced fraction of the training labels; test top-1/top-5 into
    /// finetune.json. A finished fine-tuning is reused, an unfinished one resumed.
    #[command(
        after_help = "Example:\n  selfsup finetune --run runs/simclr --labels 1%,10%,100%\n  selfsup finetune --baseline random --labels 1% --out runs/scratch"
    )]
    Finetune(FinetuneArgs),
    /// Export a run's encoder for PyTorch: safetensors with torchvision's and timm's names
    /// (see src/nets/export.rs for the differences from torchvision's resnet18), or an ONNX
    /// model made by the installed torch's exporter (SELFSUP_PYTHON, with onnx and onnxscript).
    Export {
        #[command(flatten)]
        run: RunArgs,
        /// Output file (.safetensors, or .onnx).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// `safetensors` or `onnx` (default: onnx when --out ends in .onnx).
        #[arg(long, value_parser = ["safetensors", "onnx"])]
        format: Option<String>,
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
    Segment(SegmentArgs),
    /// Compare methods in one table (Markdown and CSV): linear top-1/top-5, kNN top-1,
    /// pretraining time and parameters, always with the raw-pixel, random-init and
    /// supervised baselines. Either over existing --runs, or training --methods here.
    Compare(CompareArgs),
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
    /// augmentation (end to end), next to the same step in PyTorch in the setup venv, eager
    /// and through torch.compile (its compilation timed apart), in both memory layouts.
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
        /// Leave out PyTorch's compiled rows (torch.compile takes tens of seconds to
        /// compile each of its four setups).
        #[arg(long)]
        no_compile: bool,
        /// selfsup's rows alone, without PyTorch's.
        #[arg(long, conflicts_with = "python")]
        no_pytorch: bool,
        /// After the rounds, profile `--steps` more compute-only steps of each setup
        /// (selfsup's operators timed by libtorch's RecordFunction hooks, PyTorch's by
        /// torch.profiler) and print where each step's time goes, by kind of operator (CPU).
        #[arg(long)]
        profile: bool,
        /// Python with torch (default: the setup venv).
        #[arg(long)]
        python: Option<PathBuf>,
    },
    /// Benchmark: SimCLR's two-view pipeline streamed from an image folder (and from its
    /// packed WebDataset shards) next to torchvision's ImageFolder + DataLoader with as
    /// many workers, in interleaved rounds, with JPEG decoding alone as the reference.
    /// Make a folder with scripts/make_image_folder.py.
    BenchData {
        /// An image folder with class subfolders.
        #[arg(long, value_name = "DIR")]
        folder: PathBuf,
        /// The same images packed as WebDataset shards, e.g. wds:DIR (`selfsup data pack`).
        #[arg(long, value_name = "wds:PATH")]
        shards: Option<String>,
        /// View sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "96,224")]
        sizes: Vec<usize>,
        /// Images per measurement.
        #[arg(long, default_value_t = 2000)]
        images: usize,
        /// Rounds of measurements; the best of each setup counts.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
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
    /// Write a data set as WebDataset shards (train-000000.tar, ..., test-000000.tar; each
    /// sample KEY.jpg and, when labeled, KEY.cls), images scaled down to --max-side and
    /// re-encoded where larger: a large collection then reads fast and in order.
    Pack {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// An empty folder for the shards.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Images larger than this (either side) are scaled down to it.
        #[arg(long, default_value_t = 256)]
        max_side: u32,
        /// A new shard starts once one holds this much, e.g. 512MB, 1GB.
        #[arg(long, default_value = "512MB")]
        shard_size: String,
    },
}

pub fn run(cli: Cli) -> Result<()> {
    let device = parse_device(&cli.device)?;
    if let Some(n) = cli.threads {
        device::set_threads(n)?;
    }
    if let Command::Launch {
        nproc_per_node,
        master_port,
        command,
    } = &cli.command
    {
        return launch::command(&cli, *nproc_per_node, *master_port, command);
    }
    match cli.command {
        Command::Launch { .. } => unreachable!("handled above"),
        Command::Methods => {
            for m in crate::methods::REGISTRY {
                println!("{:<24} {}", m.name, m.summary);
            }
            Ok(())
        }
        Command::Config { cfg } => config::command(&cfg),
        Command::Data {
            command: DataCommand::Inspect { cfg, out },
        } => data::inspect(&cfg, &out),
        Command::Data {
            command:
                DataCommand::Pack {
                    cfg,
                    out,
                    max_side,
                    shard_size,
                },
        } => data::pack(&cfg, &out, max_side, &shard_size),
        Command::Pretrain(args) => pretrain::command(args, &cli.device, cli.threads, device),
        Command::Eval {
            run,
            checkpoint,
            baseline,
            cfg,
        } => eval::command(run, checkpoint, baseline, cfg, device),
        Command::Segment(args) => segment::command(args, device),
        Command::Report { run, points, sets } => report::command(&run, points, &sets, device),
        Command::Compare(args) => compare::command(args, device),
        Command::Export { run, out, format } => {
            export::command(&run, &out, format.as_deref(), device)
        }
        Command::Finetune(args) => finetune::command(args, device),
        Command::Embed { run, split, out } => embed::command(&run, &split, &out, device),
        Command::Neighbors {
            run,
            queries,
            k,
            seed,
            out,
        } => neighbors::command(&run, queries, k, seed, out, device),
        Command::BenchStep {
            cfg,
            steps,
            warmup,
            rounds,
            no_compile,
            no_pytorch,
            profile,
            python,
        } => {
            let opts = BenchOptions {
                steps,
                warmup,
                rounds,
                compile: !no_compile,
                profile,
            };
            bench::step(&cfg, opts, python, no_pytorch, device)
        }
        Command::BenchAugment { images, python } => bench::augment(images, python),
        Command::BenchData {
            folder,
            shards,
            sizes,
            images,
            rounds,
            batch_size,
            python,
        } => {
            let opts = crate::data::bench::BenchDataOptions {
                folder,
                shards,
                sizes,
                images,
                rounds,
                batch_size,
            };
            bench::data(&opts, python)
        }
    }
}
