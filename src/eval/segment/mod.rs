//! Segmentation transfer (`selfsup segment`): a head trained on an encoder's spatial
//! feature maps (`Encoder::feature_maps`, before any pooling) to give every pixel a class,
//! scored by pixel accuracy, per-class IoU and mean IoU on the test split. Two protocols,
//! as in the literature, run in this order on the same encoder:
//!
//! - `frozen`: the encoder is fixed (evaluation mode, no gradients) and only the head is
//!   trained, which measures what the representation already holds;
//! - `finetune`: encoder and head are trained together, the encoder at `seg_encoder_lr_scale`
//!   times the head's learning rate, its BatchNorm in training mode.
//!
//! The head (`seg_head`): `linear` is BatchNorm then a 1x1 convolution on the last map, its
//! logits upsampled bilinearly to the image; BatchNorm standardises each channel (as the
//! linear probe standardises features), so one learning rate suits encoders whose features
//! differ in scale by orders of magnitude, and at test time it is an affine map, so the head
//! stays linear in the features. `fcn` puts such a scoring layer on every stage's map and
//! sums their upsampled logits, as FCN-8s does, so that finer, earlier maps can sharpen the
//! boundaries while the head stays linear in the features.
//!
//! What the encoder sees is what its evaluation sees (`nets::EncoderInput`): the images;
//! colorization's network on their lightness (it needs RGB data); CPC's patch encoder slid
//! over the image as its patch grid, which gives one coarse map (a 15x15 grid of codes
//! for 64x64 images with 8x8 patches at stride 4), upsampled like any other.
//!
//! Training: AdamW (`seg_lr`, `seg_weight_decay`), a linear warm-up over the first tenth
//! of the steps then a cosine decay, passes over the training images in a seeded order
//! (`seg_frozen_epochs` of them frozen, `seg_finetune_epochs` fine-tuning), batches of
//! `seg_batch_size`, cross-entropy per pixel with 255 ignored. No augmentation. The frozen
//! protocol extracts the maps its head reads once (as the linear probe extracts its
//! features once) and keeps them in half precision when they fit in `FROZEN_CACHE_BYTES`,
//! so that its many epochs cost little more than one pass of the encoder. The results go to `segment.json` and `segmentation.png` in the run folder.

pub mod confusion;
pub mod picture;

use crate::config::{Config, EncoderSpec, EvalView, OptimizerKind, Precision, SegHead};
use crate::data::seg::{self, IGNORE, SegDataset, SegSplit};
use crate::data::{Loader, Split, epoch_order};
use crate::nets::{self, Encoder, EncoderInput};
use crate::optim::Optimizer;
use crate::run::LoadedRun;
use crate::rundir::RunDir;
use crate::schedule::cosine_with_warmup;
use crate::{losses, precision};
use anyhow::{Context, Result, bail};
use confusion::Confusion;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tch::nn;
use tch::{Device, Kind, Tensor};

/// Test images shown in `segmentation.png`.
pub const SHOWN: usize = 6;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Frozen,
    Finetune,
}

impl Protocol {
    /// Both, in the order they run (frozen first: it leaves the encoder as it was).
    pub const ALL: [Protocol; 2] = [Protocol::Frozen, Protocol::Finetune];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Frozen => "frozen",
            Protocol::Finetune => "finetune",
        }
    }

    /// `frozen`, `finetune` or `both`.
    pub fn parse(s: &str) -> Result<Vec<Protocol>> {
        match s {
            "frozen" => Ok(vec![Protocol::Frozen]),
            "finetune" => Ok(vec![Protocol::Finetune]),
            "both" => Ok(Protocol::ALL.to_vec()),
            _ => bail!("--protocol {s}: expected frozen, finetune or both"),
        }
    }
}

/// What a result depends on besides the encoder's weights: stored with it, so that a
/// result is reused (by `compare`) only when these match.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Settings {
    pub data: String,
    pub image_size: usize,
    pub train_scenes: usize,
    pub test_scenes: usize,
    pub head: String,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Fine-tuning only.
    pub encoder_lr_scale: Option<f64>,
    pub seed: u64,
    /// Pretraining epochs of the encoder (0 for a random one).
    pub encoder_epochs: usize,
}

impl Settings {
    pub fn new(cfg: &EvalView, protocol: Protocol, encoder_epochs: usize) -> Settings {
        Settings {
            data: cfg.seg.seg_data.clone(),
            image_size: cfg.seg.seg_image_size,
            train_scenes: cfg.seg.seg_train_scenes,
            test_scenes: cfg.seg.seg_test_scenes,
            head: cfg.seg.seg_head.to_string(),
            epochs: match protocol {
                Protocol::Frozen => cfg.seg.seg_frozen_epochs,
                Protocol::Finetune => cfg.seg.seg_finetune_epochs,
            },
            batch_size: cfg.seg.seg_batch_size,
            lr: cfg.seg.seg_lr,
            weight_decay: cfg.seg.seg_weight_decay,
            encoder_lr_scale: (protocol == Protocol::Finetune)
                .then_some(cfg.seg.seg_encoder_lr_scale),
            seed: cfg.seed,
            encoder_epochs,
        }
    }
}

/// The result of one protocol.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Outcome {
    pub settings: Settings,
    pub pixel_accuracy: f64,
    pub mean_iou: f64,
    /// IoU of each class; null for a class absent from both prediction and truth.
    pub iou: Vec<Option<f64>>,
    pub class_names: Vec<String>,
    /// Mean loss of the last epoch.
    pub final_loss: f64,
    /// Training (head, and encoder when fine-tuned) and test-set scoring, wall time.
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub trainable_parameters: i64,
}

/// `segment.json`: what was segmented and a result per protocol.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Record {
    pub label: String,
    pub results: BTreeMap<Protocol, Outcome>,
}

impl Record {
    /// The record in `dir`, or an empty one when there is none.
    pub fn read(dir: &Path) -> Result<Record> {
        let p = dir.join(RunDir::SEGMENT);
        match std::fs::read_to_string(&p) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is not a segmentation record", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let p = dir.join(RunDir::SEGMENT);
        std::fs::write(&p, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("cannot write {}", p.display()))
    }
}

/// The scoring layers: for each map used, BatchNorm then a 1x1 convolution to the classes.
struct Head {
    /// The indices of the maps it scores.
    used: Vec<usize>,
    scorers: Vec<(nn::BatchNorm, nn::Conv2D)>,
}

impl Head {
    /// A head for maps of `channels` (finest first): on the last only (`linear`) or on all (`fcn`).
    fn new(p: &nn::Path, channels: &[i64], num_classes: i64, kind: SegHead) -> Head {
        let used: Vec<usize> = match kind {
            SegHead::Linear => vec![channels.len() - 1],
            SegHead::Fcn => (0..channels.len()).collect(),
        };
        let scorers = used
            .iter()
            .map(|&i| {
                let q = p / format!("map{i}");
                let c = channels[i];
                let bn = nn::batch_norm2d(&q / "bn", c, Default::default());
                let conv = nn::conv2d(&q / "score", c, num_classes, 1, Default::default());
                (bn, conv)
            })
            .collect();
        Head { used, scorers }
    }

    /// The maps it scores, of all the encoder's `maps`.
    fn pick(&self, maps: Vec<Tensor>) -> Vec<Tensor> {
        self.used.iter().map(|&i| maps[i].shallow_clone()).collect()
    }

    /// Logits `[B, K, H, W]` from the `pick`ed maps: their scores upsampled bilinearly to
    /// `size` and summed.
    fn forward_t(&self, picked: &[Tensor], size: [i64; 2], train: bool) -> Tensor {
        let mut scores = self.scorers.iter().zip(picked).map(|((bn, conv), m)| {
            m.apply_t(bn, train)
                .apply(conv) // [B, K, h_i, w_i]
                .upsample_bilinear2d(size, false, None, None)
        });
        let first = scores.next().expect("a head scores at least one map");
        scores.fold(first, |acc, s| acc + s)
    }
}

/// The maps `head` uses of `encoder` on `x` (in training mode when `train`), the encoder's
/// forward pass in `precision` (a run's own, as evaluation's features are), the maps in
/// float32 for the head, which trains and scores in float32 as the linear probe does.
fn encoder_maps(
    encoder: &Encoder,
    head: &Head,
    x: &Tensor,
    train: bool,
    precision: Precision,
) -> Result<Vec<Tensor>> {
    let _autocast = precision::scope(precision, x.device())?;
    let maps = head.pick(encoder.feature_maps(x, train));
    Ok(maps.iter().map(|m| m.to_kind(Kind::Float)).collect())
}

/// The frozen protocol extracts the maps its head uses once, and keeps them in half
/// precision, when they take at most this many bytes (else it runs the encoder every epoch).
pub const FROZEN_CACHE_BYTES: i64 = 1 << 30;

/// The maps `head` uses of every image of `split`, in order, from `encoder` in evaluation
/// mode (its forward pass in `precision`), in half precision: one `[N, C_i, h_i, w_i]`
/// tensor per map; None when they would take more than `limit` bytes.
fn frozen_maps(
    encoder: &Encoder,
    head: &Head,
    split: &Arc<Split>,
    batch: usize,
    limit: i64,
    device: Device,
    precision: Precision,
) -> Result<Option<Vec<Tensor>>> {
    let maps = |x: &Tensor| tch::no_grad(|| encoder_maps(encoder, head, x, false, precision));
    let Some(one) = Loader::new(split.clone(), vec![0], 1, false, 1, device).next() else {
        return Ok(None);
    };
    let one = one?;
    let per_image: i64 = maps(one.plain())?.iter().map(|m| m.numel() as i64).sum();
    if 2 * per_image * split.len() as i64 > limit {
        return Ok(None);
    }
    let order: Vec<usize> = (0..split.len()).collect();
    let mut parts: Vec<Vec<Tensor>> = Vec::new();
    for b in Loader::new(split.clone(), order, batch, false, 2, device) {
        let b = b?;
        let m = maps(b.plain())?;
        parts.resize_with(m.len(), Vec::new);
        for (p, t) in parts.iter_mut().zip(m) {
            p.push(t.to_kind(Kind::Half));
        }
    }
    Ok(Some(parts.iter().map(|p| Tensor::cat(p, 0)).collect()))
}

/// An encoder to segment with: the variables it lives in and the network as its
/// evaluation applies it.
pub struct Subject {
    /// "simclr (3 epochs)", "random-init cnn".
    pub label: String,
    pub vs: nn::VarStore,
    pub encoder: Encoder,
    /// Pretraining epochs (0 for a random encoder).
    pub epochs: usize,
}

impl Subject {
    /// The encoder of the run in `dir` and the run's config with `sets` (eval keys) applied.
    pub fn from_run(
        dir: &Path,
        checkpoint: Option<&Path>,
        sets: &[String],
        device: Device,
    ) -> Result<(Subject, Config)> {
        Ok(Subject::from_loaded(LoadedRun::load(
            dir, checkpoint, sets, device,
        )?))
    }

    /// The encoder of a loaded run, and the run's config.
    pub fn from_loaded(r: LoadedRun) -> (Subject, Config) {
        let label = r.label();
        let e = r.model.method.encoder();
        let encoder = e.with_input(e.input);
        let subject = Subject {
            label,
            vs: r.model.vs,
            encoder,
            epochs: r.meta.epoch,
        };
        (subject, r.cfg)
    }

    /// The encoder of `spec`, randomly initialised with `seed`, for `in_channels`.
    pub fn random(spec: &EncoderSpec, seed: u64, in_channels: i64, device: Device) -> Subject {
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(device);
        let encoder = nets::build_encoder(&(vs.root() / "encoder"), spec, in_channels);
        Subject {
            label: format!("random-init {}", spec.kind),
            vs,
            encoder,
            epochs: 0,
        }
    }

    /// Fails unless the encoder takes images with `channels` channels.
    fn check_channels(&self, ds: &SegDataset) -> Result<()> {
        let channels = ds.train.images.shape[0] as i64;
        let (needs, what) = match self.encoder.input {
            EncoderInput::Lightness => (3, "RGB images (it sees their lightness)".to_string()),
            _ => (
                self.encoder.in_channels,
                format!("{}-channel images", self.encoder.in_channels),
            ),
        };
        if channels != needs {
            bail!(
                "the encoder of {} takes {what}, but {} has {channels}-channel images; \
                 segment with data of the kind it was pretrained on",
                self.label,
                ds.name
            );
        }
        Ok(())
    }
}

/// The masks at `indices` of `split` as an int64 batch `[B, H, W]`.
fn mask_batch(split: &SegSplit, indices: &[usize], device: Device) -> Tensor {
    let [_, h, w] = split.images.shape;
    let mut bytes = Vec::with_capacity(indices.len() * h * w);
    for &i in indices {
        bytes.extend_from_slice(split.mask(i));
    }
    Tensor::from_slice(&bytes)
        .view([indices.len() as i64, h as i64, w as i64])
        .to_kind(Kind::Int64)
        .to_device(device)
}

/// A protocol's outcome and its predictions of the first `SHOWN` test images.
pub struct Trained {
    pub outcome: Outcome,
    /// `[H * W]` class indices per shown image.
    pub shown: Vec<Vec<u8>>,
}

/// Trains a head on `subject`'s encoder (and, fine-tuning, the encoder too) on the training
/// split of `ds`, then scores the test split. Fine-tuning changes the encoder's weights.
pub fn train_protocol(
    subject: &Subject,
    ds: &SegDataset,
    cfg: &EvalView,
    protocol: Protocol,
    device: Device,
    quiet: bool,
) -> Result<Trained> {
    subject.check_channels(ds)?;
    let encoder = &subject.encoder;
    let finetune = protocol == Protocol::Finetune;
    let k = ds.num_classes as i64;
    let [_, h, w] = ds.train.images.shape;
    let size = [h as i64, w as i64];
    tch::manual_seed(cfg.seed as i64);
    let head_vs = nn::VarStore::new(device);
    let head = Head::new(
        &(head_vs.root() / "head"),
        &encoder.map_channels(),
        k,
        cfg.seg.seg_head,
    );
    let (momentum, wd) = (cfg.momentum, cfg.seg.seg_weight_decay);
    let mut head_opt = Optimizer::new(&head_vs, OptimizerKind::AdamW, momentum, wd);
    let mut enc_opt =
        finetune.then(|| Optimizer::new(&subject.vs, OptimizerKind::AdamW, momentum, wd));
    let mut trainable = nets::parameter_count(&head_vs, "");
    if finetune {
        trainable += nets::parameter_count(&subject.vs, "encoder.");
    }

    let train = Arc::new(ds.train.images.clone());
    let n = train.len();
    let spe = n / cfg.seg.seg_batch_size;
    if spe == 0 {
        bail!(
            "option seg_batch_size = {} is larger than the {n} training images of {}",
            cfg.seg.seg_batch_size,
            ds.name
        );
    }
    let epochs = if finetune {
        cfg.seg.seg_finetune_epochs
    } else {
        cfg.seg.seg_frozen_epochs
    };
    let total = spe * epochs;
    let warmup = total / 10;
    let t0 = Instant::now();
    let cache = if finetune {
        None
    } else {
        frozen_maps(
            encoder,
            &head,
            &train,
            cfg.seg.seg_batch_size,
            FROZEN_CACHE_BYTES,
            device,
            cfg.precision,
        )?
    };
    let (mut step, mut final_loss) = (0usize, f64::NAN);
    for epoch in 0..epochs {
        let order = epoch_order(n, cfg.seed, epoch);
        let (mut sum, mut count) = (0f64, 0usize);
        let t_epoch = Instant::now();
        for batch in Loader::new(
            train.clone(),
            order,
            cfg.seg.seg_batch_size,
            true,
            2,
            device,
        ) {
            let batch = batch?;
            let masks = mask_batch(&ds.train, &batch.indices, device); // [B, H, W]
            let maps = match &cache {
                Some(c) => {
                    let idx: Vec<i64> = batch.indices.iter().map(|&i| i as i64).collect();
                    let idx = Tensor::from_slice(&idx).to_device(device);
                    c.iter()
                        .map(|m| m.index_select(0, &idx).to_kind(Kind::Float))
                        .collect()
                }
                None if finetune => {
                    encoder_maps(encoder, &head, batch.plain(), true, cfg.precision)?
                }
                None => tch::no_grad(|| {
                    encoder_maps(encoder, &head, batch.plain(), false, cfg.precision)
                })?,
            };
            let logits = head.forward_t(&maps, size, true); // [B, K, H, W]
            let loss = losses::pixel_cross_entropy(&logits, &masks, IGNORE as i64);
            head_opt.zero_grad();
            if let Some(o) = enc_opt.as_mut() {
                o.zero_grad();
            }
            loss.backward();
            let lr = cosine_with_warmup(step, total, warmup, cfg.seg.seg_lr, 0.0);
            head_opt.step(lr)?;
            if let Some(o) = enc_opt.as_mut() {
                o.step(lr * cfg.seg.seg_encoder_lr_scale)?;
            }
            let l = loss.double_value(&[]);
            if !l.is_finite() {
                bail!("segmentation loss became {l} at step {step}; try a lower seg_lr");
            }
            (sum, count, step) = (sum + l, count + 1, step + 1);
        }
        final_loss = sum / count.max(1) as f64;
        if !quiet {
            eprintln!(
                "  {} epoch {}/{}: loss {final_loss:.4}, {:.1}s",
                protocol.as_str(),
                epoch + 1,
                epochs,
                t_epoch.elapsed().as_secs_f64()
            );
        }
    }
    let train_seconds = t0.elapsed().as_secs_f64();

    let t0 = Instant::now();
    let mut confusion = Confusion::new(ds.num_classes);
    let mut shown = Vec::new();
    let test = Arc::new(ds.test.images.clone());
    let order: Vec<usize> = (0..test.len()).collect();
    tch::no_grad(|| -> Result<()> {
        for batch in Loader::new(test, order, cfg.seg.seg_batch_size, false, 2, device) {
            let batch = batch?;
            let masks = mask_batch(&ds.test, &batch.indices, device);
            let maps = encoder_maps(encoder, &head, batch.plain(), false, cfg.precision)?;
            let predicted = head.forward_t(&maps, size, false).argmax(1, false); // [B, H, W]
            confusion.add(&predicted, &masks)?;
            for (j, &i) in batch.indices.iter().enumerate() {
                if i < SHOWN {
                    let p = predicted
                        .get(j as i64)
                        .to_kind(Kind::Uint8)
                        .to_device(Device::Cpu);
                    shown.push(Vec::<u8>::try_from(p.flatten(0, -1))?);
                }
            }
        }
        Ok(())
    })?;
    Ok(Trained {
        outcome: Outcome {
            settings: Settings::new(cfg, protocol, subject.epochs),
            pixel_accuracy: confusion.pixel_accuracy(),
            mean_iou: confusion.mean_iou(),
            iou: confusion.iou(),
            class_names: ds.class_names.clone(),
            final_loss,
            train_seconds,
            eval_seconds: t0.elapsed().as_secs_f64(),
            trainable_parameters: trainable,
        },
        shown,
    })
}

/// Runs `protocols` on `subject` (frozen first), writes `segment.json` (keeping the other
/// protocols' results already there) and `segmentation.png` into `out`; returns the record.
pub fn segment(
    subject: &Subject,
    ds: &SegDataset,
    cfg: &EvalView,
    protocols: &[Protocol],
    out: &Path,
    device: Device,
    quiet: bool,
) -> Result<Record> {
    let mut record = Record::read(out).unwrap_or_default();
    if record.label != subject.label {
        record = Record {
            label: subject.label.clone(),
            results: BTreeMap::new(),
        };
    }
    let mut columns = Vec::new();
    for &p in Protocol::ALL.iter().filter(|p| protocols.contains(p)) {
        let t = train_protocol(subject, ds, cfg, p, device, quiet)?;
        record.results.insert(p, t.outcome);
        columns.push((p, t.shown));
    }
    record.write(out)?;
    picture::write(
        ds,
        &columns,
        &subject.label,
        &out.join(RunDir::SEGMENTATION),
    )?;
    Ok(record)
}

/// What `selfsup segment` prints about `record`.
pub fn describe(record: &Record, ds: &SegDataset, cfg: &EvalView) -> String {
    let mut s = format!(
        "segment {} on {}: {} train / {} test images, {} classes, head {}\n",
        record.label,
        ds.name,
        ds.train.len(),
        ds.test.len(),
        ds.num_classes,
        cfg.seg.seg_head
    );
    for (p, o) in &record.results {
        let _ = writeln!(
            s,
            "  {:<9} mIoU {:>6.2}%   pixel accuracy {:>6.2}%   ({} epochs, train {:.1}s, test {:.1}s)",
            p.as_str(),
            100.0 * o.mean_iou,
            100.0 * o.pixel_accuracy,
            o.settings.epochs,
            o.train_seconds,
            o.eval_seconds
        );
        let per: Vec<String> = o
            .class_names
            .iter()
            .zip(&o.iou)
            .map(|(n, v)| v.map_or(format!("{n} -"), |v| format!("{n} {:.1}", 100.0 * v)))
            .collect();
        let _ = writeln!(s, "            IoU %: {}", per.join(", "));
    }
    s
}

/// `selfsup segment --run DIR`: segments with the run's encoder (at `checkpoint`, default
/// the last one; eval-key overrides `sets`, which may name the `seg_*` keys), writes the
/// results into `out` (default: the run folder) and returns what to print.
pub fn for_run(
    dir: &Path,
    checkpoint: Option<&Path>,
    sets: &[String],
    protocols: &[Protocol],
    out: Option<&Path>,
    device: Device,
    quiet: bool,
) -> Result<String> {
    let (subject, cfg) = Subject::from_run(dir, checkpoint, sets, device)?;
    let ds = seg::load(&cfg.seg)?;
    let out = out.unwrap_or(dir);
    let view = cfg.eval_view();
    let record = segment(&subject, &ds, &view, protocols, out, device, quiet)?;
    Ok(describe(&record, &ds, &view) + &written(out))
}

/// `selfsup segment --baseline random`: the randomly initialised encoder of `cfg`.
pub fn for_random(
    cfg: &Config,
    protocols: &[Protocol],
    out: &Path,
    device: Device,
    quiet: bool,
) -> Result<String> {
    let ds = seg::load(&cfg.seg)?;
    let subject = Subject::random(
        &cfg.encoder,
        cfg.train.seed,
        ds.train.images.shape[0] as i64,
        device,
    );
    let view = cfg.eval_view();
    let record = segment(&subject, &ds, &view, protocols, out, device, quiet)?;
    Ok(describe(&record, &ds, &view) + &written(out))
}

fn written(out: &Path) -> String {
    format!(
        "results -> {}, picture -> {}\n",
        out.join(RunDir::SEGMENT).display(),
        out.join(RunDir::SEGMENTATION).display()
    )
}

/// The mIoU of each protocol for the encoder in `subject`, reusing the results in `out`
/// whose settings match `cfg`'s and computing (and saving) the others.
pub fn ensure(
    subject: &Subject,
    cfg: &EvalView,
    out: &Path,
    device: Device,
    quiet: bool,
) -> Result<Record> {
    let record = Record::read(out)?;
    let missing: Vec<Protocol> = Protocol::ALL
        .into_iter()
        .filter(|&p| {
            record.label != subject.label
                || record
                    .results
                    .get(&p)
                    .is_none_or(|o| o.settings != Settings::new(cfg, p, subject.epochs))
        })
        .collect();
    if missing.is_empty() {
        return Ok(record);
    }
    let ds = seg::load(cfg.seg)?;
    eprintln!("segmenting with {} ({})", subject.label, out.display());
    segment(subject, &ds, cfg, &missing, out, device, quiet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SegHead;
    use crate::data::Split;

    /// 8x8 grey images with a bright 4x4 square in one quadrant (class 1 + quadrant), the
    /// rest dark (class 0) but for the top-left pixel, which is ignored.
    fn quadrants(n: usize, offset: usize) -> SegSplit {
        let (mut images, mut masks) = (vec![20u8; n * 64], vec![0u8; n * 64]);
        for i in 0..n {
            let k = (i + offset) % 4;
            let (r, c) = [(0, 0), (0, 4), (4, 0), (4, 4)][k];
            for y in r..r + 4 {
                for x in c..c + 4 {
                    images[i * 64 + y * 8 + x] = 200 + (i % 50) as u8;
                    masks[i * 64 + y * 8 + x] = 1 + k as u8;
                }
            }
            masks[i * 64] = IGNORE;
        }
        SegSplit::new(Split::new(images, vec![-1; n], [1, 8, 8]).unwrap(), masks).unwrap()
    }

    fn toy() -> SegDataset {
        SegDataset {
            name: "quadrants".into(),
            train: quadrants(128, 0),
            test: quadrants(32, 1),
            num_classes: 5,
            class_names: crate::data::numbered_names(5),
        }
    }

    fn encoder_vars(s: &Subject) -> Vec<(String, Tensor)> {
        let mut v: Vec<_> =
            s.vs.variables()
                .into_iter()
                .map(|(k, t)| (k, t.copy()))
                .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn both_protocols_learn_an_easy_task_and_only_finetuning_moves_the_encoder() {
        let _rng = crate::torch_rng_lock();
        let cfg = {
            let mut c = Config::default();
            c.encoder.cnn_widths = vec![8, 16];
            c.seg.seg_head = SegHead::Fcn;
            c.seg.seg_frozen_epochs = 15;
            c.seg.seg_finetune_epochs = 15;
            c.seg.seg_batch_size = 16;
            c.seg.seg_lr = 3e-2;
            c
        };
        let ds = toy();
        let subject = Subject::random(&cfg.encoder, cfg.train.seed, 1, Device::Cpu);
        let before = encoder_vars(&subject);
        let frozen = train_protocol(
            &subject,
            &ds,
            &cfg.eval_view(),
            Protocol::Frozen,
            Device::Cpu,
            true,
        )
        .unwrap();
        let after = encoder_vars(&subject);
        for ((k, a), (_, b)) in before.iter().zip(&after) {
            assert!(a.equal(b), "{k} changed under the frozen protocol");
        }
        let tuned = train_protocol(
            &subject,
            &ds,
            &cfg.eval_view(),
            Protocol::Finetune,
            Device::Cpu,
            true,
        )
        .unwrap();
        let moved = before
            .iter()
            .zip(&encoder_vars(&subject))
            .filter(|((_, a), (_, b))| !a.equal(b))
            .count();
        assert!(
            moved > before.len() / 2,
            "fine-tuning moved {moved} of {} variables",
            before.len()
        );
        // The frozen random encoder's head gets most pixels (0.86 mIoU when written);
        // fine-tuning gets them all (1.0).
        for (t, min_iou) in [(&frozen, 0.75), (&tuned, 0.95)] {
            let o = &t.outcome;
            assert!(o.mean_iou > min_iou && o.pixel_accuracy > 0.9, "{o:?}");
            assert_eq!(o.iou.len(), 5);
            assert_eq!(t.shown.len(), SHOWN);
            assert_eq!(t.shown[0].len(), 64);
        }
        assert_eq!(frozen.outcome.settings.encoder_lr_scale, None);
        assert_eq!(tuned.outcome.settings.encoder_lr_scale, Some(0.1));
        assert!(tuned.outcome.trainable_parameters > frozen.outcome.trainable_parameters);
        // A batch larger than the training set is refused, naming the option.
        let big = {
            let mut c = cfg;
            c.seg.seg_batch_size = 500;
            c
        };
        let e = train_protocol(
            &subject,
            &ds,
            &big.eval_view(),
            Protocol::Frozen,
            Device::Cpu,
            true,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("seg_batch_size = 500"), "{e}");
    }

    #[test]
    fn frozen_maps_are_the_live_maps_in_half_precision_when_they_fit() {
        let _rng = crate::torch_rng_lock();
        let cfg = {
            let mut c = Config::default();
            c.encoder.cnn_widths = vec![4, 8];
            c
        };
        let subject = Subject::random(&cfg.encoder, cfg.train.seed, 1, Device::Cpu);
        let vs = nn::VarStore::new(Device::Cpu);
        let head = Head::new(&vs.root(), &[4, 8], 5, SegHead::Fcn);
        let ds = toy();
        let split = Arc::new(ds.test.images.clone());
        // 32 images of 4x8x8 + 8x4x4 halves: 32 * 384 * 2 bytes.
        let cached = frozen_maps(
            &subject.encoder,
            &head,
            &split,
            5,
            32 * 384 * 2,
            Device::Cpu,
            Precision::Fp32,
        )
        .unwrap()
        .unwrap();
        assert_eq!(cached[0].size(), vec![32, 4, 8, 8]);
        assert_eq!(cached[1].size(), vec![32, 8, 4, 4]);
        assert_eq!(cached[1].kind(), Kind::Half);
        let x = Tensor::from_slice(split.image(7))
            .view([1, 1, 8, 8])
            .to_kind(Kind::Float)
            / 255.0;
        let live = tch::no_grad(|| subject.encoder.feature_maps(&x, false));
        for (c, l) in cached.iter().zip(&live) {
            assert!(
                c.get(7)
                    .to_kind(Kind::Float)
                    .allclose(&l.get(0), 1e-2, 1e-3, false)
            );
        }
        // A bf16 run's maps come from a bfloat16 forward pass: near the float32 ones, not
        // equal to them.
        let low = frozen_maps(
            &subject.encoder,
            &head,
            &split,
            5,
            32 * 384 * 2,
            Device::Cpu,
            Precision::Bf16,
        )
        .unwrap()
        .unwrap();
        for (c, l) in cached.iter().zip(&low) {
            assert_eq!(l.kind(), Kind::Half);
            let (c, l) = (c.to_kind(Kind::Float), l.to_kind(Kind::Float));
            assert!(!c.equal(&l), "the encoder ran in bfloat16");
            assert!(c.allclose(&l, 5e-2, 5e-2, false));
        }
        assert!(
            frozen_maps(
                &subject.encoder,
                &head,
                &split,
                5,
                32 * 384 * 2 - 1,
                Device::Cpu,
                Precision::Fp32,
            )
            .unwrap()
            .is_none()
        );
    }
}
