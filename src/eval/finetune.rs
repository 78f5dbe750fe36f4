//! Fine-tuning with few labels (`selfsup finetune`): a run's encoder and a linear head
//! trained end to end (the `finetune` method, by the training loop: checkpoints, exact
//! resume) on a class-balanced fraction of the training labels, the same images for every
//! method; then the test top-1/top-5 of its classifier. The from-scratch baseline trains
//! the same architecture from its random initialisation on the same images and budget.

use crate::config::{Config, OptimizerKind};
use crate::data::{Dataset, Loader};
use crate::methods::Method;
use crate::{precision, rundir::RunDir};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// `1%`, `10%`, `100%` (or `0.5%`, `12.5%`) as a fraction in (0, 1].
pub fn parse_labels(s: &str) -> Result<f64> {
    let t = s.trim();
    let pct = t.strip_suffix('%').with_context(|| {
        format!("--labels {s}: a percentage of the training labels, such as 1%, 10% or 100%")
    })?;
    let p: f64 = pct
        .trim()
        .parse()
        .with_context(|| format!("--labels {s}: '{pct}' is not a number"))?;
    if !(p > 0.0 && p <= 100.0) {
        bail!("--labels {s}: the percentage must be in (0%, 100%]");
    }
    Ok(p / 100.0)
}

/// The name of a fraction, as `--labels` writes it: `1%`, `12.5%`.
pub fn label_name(fraction: f64) -> String {
    let p = fraction * 100.0;
    match p.fract() == 0.0 {
        true => format!("{p:.0}%"),
        false => format!("{p}%"),
    }
}

/// The config that fine-tunes `base`'s encoder on `fraction` of the labels: the method
/// `finetune` with the `finetune_*` keys as its training loop (AdamW, a cosine schedule
/// after one warm-up epoch), `batch_size` no larger than the labeled images.
pub fn finetune_config(base: &Config, fraction: f64, labeled: usize) -> Config {
    let mut c = base.clone();
    c.method = "finetune".into();
    let f = c.finetune.clone();
    c.finetune.finetune_labels = fraction;
    c.data.train_subset = 0;
    c.train.epochs = f.finetune_epochs;
    c.train.max_steps = 0;
    c.train.lr = f.finetune_lr;
    c.train.min_lr = 0.0;
    c.train.optimizer = OptimizerKind::AdamW;
    c.train.weight_decay = f.finetune_weight_decay;
    c.train.warmup_epochs = 1.0f64.min(f.finetune_epochs as f64);
    c.train.batch_size = f.finetune_batch_size.min(labeled).max(2);
    c.train.keep_checkpoints = 0;
    c
}

/// The number of training images `fraction` of the labels keeps (the loop's subset).
pub fn labeled_images(ds: &Dataset, fraction: f64, seed: u64) -> Result<usize> {
    Ok(ds
        .train
        .balanced_subset(fraction, seed, &ds.class_names)?
        .len())
}

/// Test top-1 and top-5 of a classifier method (`Method::logits`) on `ds`'s test split.
pub fn test_accuracy(
    method: &dyn Method,
    ds: &Dataset,
    device: Device,
    precision: crate::config::Precision,
) -> Result<(f64, f64)> {
    let test = Arc::new(ds.test.clone());
    let order: Vec<usize> = (0..test.len()).collect();
    let (mut logits, mut labels) = (Vec::new(), Vec::new());
    let _autocast = precision::scope(precision, device)?;
    tch::no_grad(|| -> Result<()> {
        for b in Loader::new(test, order, 512, false, 2, device) {
            let b = b?;
            let l = method
                .logits(b.plain())
                .context("the method has no classifier to score")?;
            logits.push(l.to_kind(Kind::Float));
            labels.push(b.labels);
        }
        Ok(())
    })?;
    let (logits, labels) = (Tensor::cat(&logits, 0), Tensor::cat(&labels, 0));
    Ok((
        super::topk_accuracy(&logits, &labels, 1),
        super::topk_accuracy(&logits, &labels, 5),
    ))
}

/// One fine-tuning's result, as `finetune.json` keeps it (by `label_name`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The labeled training images it was fine-tuned on.
    pub images: usize,
    pub top1: f64,
    pub top5: f64,
    pub epochs: usize,
    /// Wall time of the fine-tuning.
    pub seconds: f64,
    /// The fine-tuning run's folder.
    pub run: String,
}

/// The outcomes of `dir`'s `finetune.json` (none when it has none).
pub fn read(dir: &Path) -> Result<BTreeMap<String, Outcome>> {
    let p = dir.join(RunDir::FINETUNE);
    if !p.exists() {
        return Ok(BTreeMap::new());
    }
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a fine-tuning record", p.display()))
}

/// Adds (or replaces) `outcome` under `name` in `dir`'s `finetune.json`, written atomically.
pub fn record(dir: &Path, name: &str, outcome: &Outcome) -> Result<()> {
    let mut all = read(dir)?;
    all.insert(name.to_string(), outcome.clone());
    crate::tensor_io::write_atomic(
        &dir.join(RunDir::FINETUNE),
        serde_json::to_string_pretty(&all)?.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_fractions_parse_and_print_as_percentages() {
        assert_eq!(parse_labels("10%").unwrap(), 0.1);
        assert_eq!(parse_labels(" 1% ").unwrap(), 0.01);
        assert_eq!(parse_labels("100%").unwrap(), 1.0);
        assert_eq!(parse_labels("12.5%").unwrap(), 0.125);
        for bad in ["0%", "-5%", "150%", "10", "ten%"] {
            assert!(parse_labels(bad).is_err(), "{bad}");
        }
        assert_eq!(label_name(0.01), "1%");
        assert_eq!(label_name(1.0), "100%");
        assert_eq!(label_name(0.125), "12.5%");
    }
}
