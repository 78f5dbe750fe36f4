//! `selfsup bench-step`: the training step of a config, timed in fp32 and bf16, on random
//! input (compute only) and through the data pipeline (loader and augmentation, as
//! `pretrain` runs it), next to the same step in PyTorch (`scripts/bench_step_torch.py`,
//! run with the setup venv's Python and selfsup's allocator settings) in both of PyTorch's
//! memory layouts: selfsup is compared with the faster of the two, PyTorch's best.

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

/// How long to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Timed steps of each measurement.
    pub steps: usize,
    /// Untimed steps before them (allocator, oneDNN's kernel choice, the loader's queue).
    pub warmup: usize,
    /// Measurements of each setup, interleaved; the best counts.
    pub rounds: usize,
}

/// One measurement: images per second (each image gives the method its views).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub system: &'static str,
    pub precision: Precision,
    /// The activations' memory layout: selfsup's batches are channels-last; PyTorch is
    /// measured in "contiguous" (its default, NCHW) and "channels-last".
    pub layout: &'static str,
    /// Random input of the batch's shape, the step alone.
    pub compute: f64,
    /// Through the loader (augmentation included); `None` where not measured.
    pub end_to_end: Option<f64>,
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
        let mut start = Instant::now();
        for step in 0..total {
            if step == opts.warmup {
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
            train_step(
                &mut self.model,
                None,
                &mut self.opt,
                &batch,
                &ctx,
                cfg.train.lr,
                cfg.train.seed,
            )?;
        }
        Ok((opts.steps * cfg.train.batch_size) as f64 / start.elapsed().as_secs_f64())
    }
}

/// The arguments of `scripts/bench_step_torch.py` that build the step of `method` with
/// `m` and `train`.
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
        // One round per call: `measure` interleaves PyTorch's rounds with selfsup's.
        ("--rounds", "1".to_string()),
        ("--threads", tch::get_num_threads().to_string()),
        ("--device", device),
    ] {
        a.extend([k.to_string(), v]);
    }
    a.extend(["--precision", "fp32", "bf16"].map(String::from));
    a.extend(["--memory-format", CONTIGUOUS, CHANNELS_LAST].map(String::from));
    Ok(a)
}

const CONTIGUOUS: &str = "contiguous";
const CHANNELS_LAST: &str = "channels-last";

/// Runs the PyTorch step with `python`; (precision, layout, images/s) of each line it prints.
fn measure_torch(python: &Path, args: &[String]) -> Result<Vec<(Precision, &'static str, f64)>> {
    let script = venv::source_file("scripts/bench_step_torch.py");
    let mut rows = Vec::new();
    for v in venv::run_json_lines(python, &script, args)? {
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
        let ips = v["images_per_sec"]
            .as_f64()
            .with_context(|| format!("no images_per_sec in '{line}'"))?;
        rows.push((precision, layout, ips));
    }
    Ok(rows)
}

/// Every measurement of `cfg`'s step: selfsup in fp32 and bf16 (compute only and end to
/// end), then PyTorch in both, in both memory layouts (compute only; left out, with a note
/// on stderr, when it cannot run: no Python, or a method other than SimCLR).
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
    // PyTorch: its arguments checked once; where it cannot run, a note and selfsup alone.
    let mut torch = python
        .and_then(|py| {
            Ok((
                py,
                torch_args(&cfg.method, cfg.method_view(), &cfg.train, ds, opts, device)?,
            ))
        })
        .map_err(|e| eprintln!("PyTorch comparison skipped: {e:#}"))
        .ok();
    let mut torch_best: Vec<(Precision, &'static str, f64)> = Vec::new();
    for _ in 0..opts.rounds {
        for (setup, best) in &mut setups {
            *best = best.max(setup.round(opts)?);
        }
        let Some((py, args)) = &torch else { continue };
        match measure_torch(py, args) {
            Ok(round) => {
                for (precision, layout, ips) in round {
                    match torch_best
                        .iter_mut()
                        .find(|(p, l, _)| *p == precision && *l == layout)
                    {
                        Some(best) => best.2 = best.2.max(ips),
                        None => torch_best.push((precision, layout, ips)),
                    }
                }
            }
            Err(e) => {
                eprintln!("PyTorch comparison skipped: {e:#}");
                torch = None;
                torch_best.clear();
            }
        }
    }
    let mut rows = Vec::new();
    for pair in setups.chunks(2) {
        rows.push(Row {
            system: "selfsup",
            precision: pair[0].0.cfg.train.precision,
            layout: CHANNELS_LAST,
            compute: pair[0].1,
            end_to_end: Some(pair[1].1),
        });
    }
    rows.extend(
        torch_best
            .into_iter()
            .map(|(precision, layout, compute)| Row {
                system: "PyTorch",
                precision,
                layout,
                compute,
                end_to_end: None,
            }),
    );
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

/// The table `selfsup bench-step` prints: images/s of each row and, under it, the ratios of
/// selfsup's figures to PyTorch's best compute-only one at the same precision (the faster
/// of its layouts).
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<8} {:<9} {:<13} {:>13} {:>16}\n",
        "system", "precision", "layout", "compute img/s", "end-to-end img/s"
    );
    for r in rows {
        let e2e = r.end_to_end.map_or("-".into(), |x| format!("{x:.0}"));
        let _ = writeln!(
            out,
            "{:<8} {:<9} {:<13} {:>13.0} {:>16}",
            r.system, r.precision, r.layout, r.compute, e2e
        );
    }
    let best = |system, precision| {
        rows.iter()
            .filter(|r| r.system == system && r.precision == precision)
            .max_by(|a, b| a.compute.total_cmp(&b.compute))
    };
    for p in Precision::ALL {
        if let (Some(ours), Some(torch)) = (best("selfsup", *p), best("PyTorch", *p)) {
            let _ = write!(
                out,
                "{p}: selfsup / PyTorch's best ({}) compute-only: compute {:.2}x",
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
        best("selfsup", Precision::Fp32),
        best("selfsup", Precision::Bf16),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_step_runs_a_tiny_simclr_step_in_selfsup_and_pytorch() {
        let _rng = crate::torch_rng_lock();
        let ds = super::super::tests::tiny_dataset();
        let cfg = {
            let mut c = super::super::tests::tiny_config("simclr");
            c.keys.proj_hidden_dim = 16;
            c.keys.proj_dim = 8;
            c.aug.aug_crop_scale = [0.5, 1.0];
            c
        };
        let opts = BenchOptions {
            steps: 2,
            warmup: 1,
            rounds: 2,
        };
        let rows = measure(&cfg, &ds, Device::Cpu, &opts, crate::venv::python()).unwrap();
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r.system, r.precision, r.layout, r.end_to_end.is_some()))
            .collect();
        let (f, b) = (Precision::Fp32, Precision::Bf16);
        assert_eq!(
            got,
            vec![
                ("selfsup", f, CHANNELS_LAST, true),
                ("selfsup", b, CHANNELS_LAST, true),
                ("PyTorch", f, CONTIGUOUS, false),
                ("PyTorch", b, CONTIGUOUS, false),
                ("PyTorch", f, CHANNELS_LAST, false),
                ("PyTorch", b, CHANNELS_LAST, false),
            ]
        );
        for r in &rows {
            assert!(r.compute.is_finite() && r.compute > 0.0, "{r:?}");
        }
        let t = table(&rows);
        assert!(t.contains("bf16: selfsup / PyTorch's best ("), "{t}");
        assert!(t.contains("selfsup bf16 / fp32"), "{t}");
    }

    #[test]
    fn ratios_are_against_pytorchs_faster_layout() {
        let row = |system, precision, layout, compute, end_to_end| Row {
            system,
            precision,
            layout,
            compute,
            end_to_end,
        };
        let (f, b) = (Precision::Fp32, Precision::Bf16);
        let t = table(&[
            row("selfsup", f, CHANNELS_LAST, 500.0, Some(400.0)),
            row("selfsup", b, CHANNELS_LAST, 1000.0, Some(900.0)),
            row("PyTorch", f, CONTIGUOUS, 250.0, None),
            row("PyTorch", b, CONTIGUOUS, 500.0, None),
            row("PyTorch", f, CHANNELS_LAST, 200.0, None),
            row("PyTorch", b, CHANNELS_LAST, 800.0, None),
        ]);
        for line in [
            "fp32: selfsup / PyTorch's best (contiguous) compute-only: compute 2.00x, end-to-end 1.60x",
            "bf16: selfsup / PyTorch's best (channels-last) compute-only: compute 1.25x, end-to-end 1.12x",
            "selfsup bf16 / fp32: compute 2.00x, end-to-end 2.25x",
        ] {
            assert!(t.contains(line), "{line}\nnot in\n{t}");
        }
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
        // Any number of rounds: each PyTorch call measures one, between selfsup's rounds.
        let opts = BenchOptions {
            steps: 5,
            warmup: 2,
            rounds: 4,
        };
        let a = torch_args(
            &cfg.method,
            cfg.method_view(),
            &cfg.train,
            &ds,
            &opts,
            Device::Cpu,
        )
        .unwrap()
        .join(" ");
        for part in [
            "--shape 1 6 6",
            "--cnn-widths 4 8 --cnn-pool 2",
            "--batch-size 16",
            "--steps 5 --warmup 2 --rounds 1 ",
            "--optimizer adamw",
            "--memory-format contiguous channels-last",
        ] {
            assert!(a.contains(part), "{part} not in {a}");
        }
        let byol = tiny_byol();
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

    fn tiny_byol() -> Config {
        super::super::tests::tiny_config("byol")
    }
}
