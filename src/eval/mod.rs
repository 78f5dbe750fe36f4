//! Evaluation of frozen representations: feature extraction, a linear probe and a
//! kNN classifier. The same code scores the baselines (raw pixels, a random encoder).

pub mod baselines;
pub mod compare;
pub mod embed;
pub mod finetune;
pub mod knn;
pub mod linear;
pub mod neighbors;
pub mod segment;
pub mod tsne;

use crate::config::{EvalView, Precision};
use crate::data::{Dataset, Loader, Split};
use crate::methods::Method;
use crate::nets::Encoder;
use crate::precision;
use crate::run::LoadedRun;
use crate::run::checkpoint;
use crate::rundir::RunDir;
use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Features of every image of `split`, in order: `[N, D]` float32 on `device`. The encoder
/// runs in evaluation mode (BatchNorm uses its running statistics) without gradients, its
/// forward pass in `precision` (a run's own: what it was trained in).
pub fn encoder_features(
    encoder: &Encoder,
    split: &Arc<Split>,
    batch_size: usize,
    device: Device,
    precision: Precision,
) -> Result<(Tensor, Tensor)> {
    features_with(split, batch_size, device, precision, |x| {
        encoder.forward_t(x, false)
    })
}

/// Raw pixels in [0, 1] as features: `[N, C*H*W]`.
pub fn pixel_features(split: &Arc<Split>, device: Device) -> Result<(Tensor, Tensor)> {
    collect_features(split, 1024, device, |x| x.flatten(1, -1))
}

/// Runs `f` over the split in order, in `precision`; returns (features `[N, D]` float32,
/// labels `[N]`).
pub fn features_with(
    split: &Arc<Split>,
    batch_size: usize,
    device: Device,
    precision: Precision,
    f: impl Fn(&Tensor) -> Tensor,
) -> Result<(Tensor, Tensor)> {
    // One scope for all batches: the weights are cast to the lower precision once.
    let _autocast = precision::scope(precision, device)?;
    collect_features(split, batch_size, device, f)
}

/// Runs `f` over the split in order, without gradients; (features `[N, D]` float32, labels `[N]`).
fn collect_features(
    split: &Arc<Split>,
    batch_size: usize,
    device: Device,
    f: impl Fn(&Tensor) -> Tensor,
) -> Result<(Tensor, Tensor)> {
    let order: Vec<usize> = (0..split.len()).collect();
    let (mut feats, mut labels) = (Vec::new(), Vec::new());
    tch::no_grad(|| -> Result<()> {
        for b in Loader::new(split.clone(), order, batch_size, false, 2, device) {
            let b = b?;
            feats.push(f(b.plain()).to_kind(Kind::Float));
            labels.push(b.labels);
        }
        Ok(())
    })?;
    Ok((Tensor::cat(&feats, 0), Tensor::cat(&labels, 0)))
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Scores {
    pub linear_top1: f64,
    pub linear_top5: f64,
    pub knn_top1: f64,
    pub feature_dim: i64,
}

impl std::fmt::Display for Scores {
    /// The two lines `selfsup eval` prints under its header.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |x: f64| format!("{:.2}%", 100.0 * x);
        writeln!(
            f,
            "  linear probe   top-1 {:>7}   top-5 {:>7}",
            pct(self.linear_top1),
            pct(self.linear_top5)
        )?;
        write!(f, "  kNN            top-1 {:>7}", pct(self.knn_top1))
    }
}

/// What `selfsup eval` prints: a header naming what was evaluated (`label`) on which data,
/// then the scores.
pub fn describe(label: &str, ds: &Dataset, scores: &Scores, seconds: f64) -> String {
    format!(
        "eval {label} on {}: {} train / {} test images, {}-d features ({seconds:.1}s)\n{scores}",
        ds.name,
        ds.train.len(),
        ds.test.len(),
        scores.feature_dim
    )
}

/// The evaluation record of a run, as `eval.json` holds it.
pub fn run_json(
    method: &str,
    data: &str,
    meta: &checkpoint::Meta,
    encoder_parameters: i64,
    scores: &Scores,
) -> serde_json::Value {
    json!({
        "method": method, "data": data, "epochs": meta.epoch,
        "pretrain_seconds": meta.wall_seconds, "encoder_parameters": encoder_parameters,
        "scores": scores,
    })
}

/// `selfsup eval --run`: evaluates the run in `dir` at its last checkpoint (or at
/// `checkpoint`, then writing `eval-CHECKPOINT.json`), with eval-key overrides `sets`;
/// writes its `eval.json` and returns what to print.
pub fn for_run(
    dir: &Path,
    checkpoint: Option<&Path>,
    sets: &[String],
    device: Device,
) -> Result<String> {
    let r = LoadedRun::load(dir, checkpoint, sets, device)?;
    r.ds.require_labels()?;
    let t0 = Instant::now();
    let scores = run_features(&r, device)?.score(r.ds.num_classes as i64, &r.cfg.eval_view());
    let secs = t0.elapsed().as_secs_f64();
    let json = run_json(
        &r.cfg.method,
        &r.cfg.data.source,
        &r.meta,
        r.encoder_parameters(),
        &scores,
    );
    let p = r.output(RunDir::EVAL);
    std::fs::write(&p, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("cannot write {}", p.display()))?;
    Ok(describe(&r.label(), &r.ds, &scores, secs))
}

/// Linear probe and kNN on (train, test) features.
pub fn score(
    train: &(Tensor, Tensor),
    test: &(Tensor, Tensor),
    num_classes: i64,
    cfg: &EvalView,
) -> Scores {
    let probe = linear::ProbeConfig::of(cfg);
    let (linear_top1, linear_top5) =
        linear::linear_probe(&train.0, &train.1, &test.0, &test.1, num_classes, &probe);
    let knn_top1 = knn::knn_accuracy(
        &train.0,
        &train.1,
        &test.0,
        &test.1,
        num_classes,
        cfg.probe.knn_k,
        cfg.probe.knn_temperature,
        cfg.precision,
    );
    Scores {
        linear_top1,
        linear_top5,
        knn_top1,
        feature_dim: train.0.size()[1],
    }
}

/// Extracts encoder features for both splits of `ds` (in `cfg.train.precision`) and scores them.
pub fn evaluate_encoder(
    encoder: &Encoder,
    ds: &Dataset,
    cfg: &EvalView,
    device: Device,
) -> Result<Scores> {
    let f = split_features_with(ds, device, cfg.precision, |x| encoder.forward_t(x, false))?;
    Ok(f.score(ds.num_classes as i64, cfg))
}

/// Scores what a pretrained method offers: its frozen encoder (`Method::encoder`).
pub fn evaluate_method(
    method: &dyn Method,
    ds: &Dataset,
    cfg: &EvalView,
    device: Device,
) -> Result<Scores> {
    evaluate_encoder(method.encoder(), ds, cfg, device)
}

/// Features `[N, D]` and labels `[N]` of `split` as the method's evaluation sees them.
pub fn method_features(
    method: &dyn Method,
    split: &Arc<Split>,
    batch_size: usize,
    device: Device,
    precision: Precision,
) -> Result<(Tensor, Tensor)> {
    encoder_features(method.encoder(), split, batch_size, device, precision)
}

/// (features, labels) of the train and of the test split of `ds` under `f` in `precision`
/// (batches of 512).
fn split_features_with(
    ds: &Dataset,
    device: Device,
    precision: Precision,
    f: impl Fn(&Tensor) -> Tensor,
) -> Result<SplitFeatures> {
    let (train, test) = (Arc::new(ds.train.clone()), Arc::new(ds.test.clone()));
    Ok(SplitFeatures {
        train: features_with(&train, 512, device, precision, &f)?,
        test: features_with(&test, 512, device, precision, &f)?,
    })
}

/// (features `[N, D]`, labels `[N]`) of both splits of a data set.
pub struct SplitFeatures {
    pub train: (Tensor, Tensor),
    pub test: (Tensor, Tensor),
}

impl SplitFeatures {
    /// What a method's evaluation sees of both splits of `ds` in `precision` (as
    /// `evaluate_method` scores them), to score and draw from the same features.
    pub fn of_method(
        method: &dyn Method,
        ds: &Dataset,
        device: Device,
        precision: Precision,
    ) -> Result<SplitFeatures> {
        split_features_with(ds, device, precision, |x| {
            method.encoder().forward_t(x, false)
        })
    }

    /// Linear probe and kNN, as [`score`].
    pub fn score(&self, num_classes: i64, cfg: &EvalView) -> Scores {
        score(&self.train, &self.test, num_classes, cfg)
    }
}

/// The features of both splits of a loaded run as its evaluation sees them. For a streamed
/// data set (whose images are decoded anew on every pass) they are computed once and kept
/// in the run folder (`features.safetensors`, or named after `--checkpoint`), with a key
/// of what they depend on: the data, the image size, the precision and the checkpoint.
/// `eval`, `report`, `neighbors`, `embed` and `compare` then read them back.
pub fn run_features(r: &LoadedRun, device: Device) -> Result<SplitFeatures> {
    let precision = r.cfg.train.precision;
    let method = r.model.method.as_ref();
    if r.ds.train.stream().is_none() && r.ds.test.stream().is_none() {
        return SplitFeatures::of_method(method, &r.ds, device, precision);
    }
    let path = r.output(crate::rundir::RunDir::FEATURES);
    let key = json!({
        "data": r.cfg.data.source, "image_size": r.cfg.data.image_size,
        "precision": precision.as_str(), "epoch": r.meta.epoch, "step": r.meta.step,
        "wall_seconds": r.meta.wall_seconds, "train": r.ds.train.len(), "test": r.ds.test.len(),
    })
    .to_string();
    if let Ok((tensors, meta)) = crate::tensor_io::read_safetensors(&path)
        && meta.get("key") == Some(&key)
    {
        let get = |name: &str| {
            tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.to_device(device))
        };
        if let (Some(a), Some(b), Some(c), Some(d)) = (
            get("train.features"),
            get("train.labels"),
            get("test.features"),
            get("test.labels"),
        ) {
            return Ok(SplitFeatures {
                train: (a, b),
                test: (c, d),
            });
        }
    }
    let f = SplitFeatures::of_method(method, &r.ds, device, precision)?;
    let tensors = [
        ("train.features", &f.train.0),
        ("train.labels", &f.train.1),
        ("test.features", &f.test.0),
        ("test.labels", &f.test.1),
    ]
    .map(|(n, t)| (n.to_string(), t.to_device(Device::Cpu)));
    let meta = std::collections::HashMap::from([("key".to_string(), key)]);
    crate::tensor_io::write_safetensors_atomic(&path, &tensors, meta)?;
    Ok(f)
}

/// Fraction of rows of `scores` `[N, C]` whose top-`k` classes contain `labels` `[N]`.
pub fn topk_accuracy(scores: &Tensor, labels: &Tensor, k: i64) -> f64 {
    let k = k.min(scores.size()[1]);
    let (_, idx) = scores.topk(k, 1, true, true); // [N, k]
    let hit = idx.eq_tensor(&labels.unsqueeze(1)).any_dim(1, false);
    hit.to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_features_are_float32_close_to_fp32_and_score_alike() {
        let _rng = crate::torch_rng_lock();
        let ds = crate::train::tests::tiny_dataset();
        let cfg = crate::train::tests::tiny_config("autoencoder");
        tch::manual_seed(0);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let enc = crate::nets::build_encoder(&(vs.root() / "encoder"), &cfg.encoder, 1);
        let split = Arc::new(ds.test.clone());
        let feats = |p| encoder_features(&enc, &split, 16, Device::Cpu, p).unwrap();
        let ((f32s, l32), (bf16s, lbf)) = (feats(Precision::Fp32), feats(Precision::Bf16));
        assert_eq!(bf16s.kind(), Kind::Float);
        assert!(l32.equal(&lbf));
        assert_eq!(f32s.size(), bf16s.size());
        // bf16 keeps 8 bits of mantissa: close to the fp32 features, but not them.
        let rel = ((&bf16s - &f32s).norm().double_value(&[]) / f32s.norm().double_value(&[])).abs();
        assert!(rel > 0.0 && rel < 0.02, "relative difference {rel}");
        // The whole evaluation runs in either precision; on these separable squares both
        // score (nearly) alike.
        let score = |precision| {
            let c = {
                let mut c = cfg.clone();
                c.train.precision = precision;
                c
            };
            evaluate_encoder(&enc, &ds, &c.eval_view(), Device::Cpu).unwrap()
        };
        let (a, b) = (score(Precision::Fp32), score(Precision::Bf16));
        assert!(
            (a.knn_top1 - b.knn_top1).abs() <= 1.0 / 32.0 + 1e-9,
            "{a:?} {b:?}"
        );
        assert!(
            (a.linear_top1 - b.linear_top1).abs() <= 1.0 / 32.0 + 1e-9,
            "{a:?} {b:?}"
        );
    }

    #[test]
    fn topk_accuracy_counts_hits() {
        let s =
            Tensor::from_slice(&[0.1f32, 0.5, 0.4, 0.9, 0.05, 0.05, 0.2, 0.3, 0.5]).view([3, 3]);
        let y = Tensor::from_slice(&[1i64, 1, 0]);
        // row 0: top-1 = 1 (hit); row 1: top-1 = 0 (miss), top-2 = {0, 1} or {0, 2}; row 2: top-1 = 2 (miss)
        assert!((topk_accuracy(&s, &y, 1) - 1.0 / 3.0).abs() < 1e-9);
        assert!((topk_accuracy(&s, &y, 3) - 1.0).abs() < 1e-9);
        // k below the number of classes (5), no ties: the label's rank in its row decides.
        // Ranks (1 = highest score): row 0 label 2 is 1st, row 1 label 4 is 2nd, row 2
        // label 0 is 3rd, row 3 label 1 is 5th (last).
        let s = Tensor::from_slice(&[
            0.1f32, 0.2, 0.9, 0.3, 0.0, // row 0
            0.5, 0.1, 0.2, 0.9, 0.6, // row 1
            0.4, 0.9, 0.1, 0.7, 0.2, // row 2
            0.3, 0.0, 0.8, 0.2, 0.5, // row 3
        ])
        .view([4, 5]);
        let y = Tensor::from_slice(&[2i64, 4, 0, 1]);
        for (k, want) in [
            (1, 0.25),
            (2, 0.5),
            (3, 0.75),
            (4, 0.75),
            (5, 1.0),
            (9, 1.0),
        ] {
            let got = topk_accuracy(&s, &y, k);
            assert!((got - want).abs() < 1e-9, "top-{k}: {got}, want {want}");
        }
    }
}
