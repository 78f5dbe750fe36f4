//! One flat configuration with defaults (nanoGPT style). A run is described entirely by
//! this struct: it is read from an optional TOML file, then `--set key=value` overrides
//! are applied, then it is validated. The checkpoint carries it so a model can be rebuilt.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Pretraining method, a name from `selfsup methods`.
    pub method: String,
    /// Data set, `KIND[:DIR]`: `fashion-mnist` (Debian's package), `fashion-mnist:DIR`,
    /// `mnist:DIR`, `cifar10:DIR`, `cifar100:DIR`, `stl10:DIR` or `folder:DIR`.
    pub data: String,
    /// Use only this many pretraining images (a seeded random subset); 0 means all.
    pub train_subset: usize,
    /// CIFAR-100 labels: `fine` (100 classes) or `coarse` (20 superclasses).
    pub cifar100_labels: Cifar100Labels,
    /// STL-10: pretrain on a seeded random subset of this many images of the 100k unlabeled
    /// split, read one by one from disk (0 = pretrain on the labeled train split instead).
    pub stl10_unlabeled: usize,
    /// Image folders: the central square of each image is scaled to this size.
    pub image_size: usize,
    /// Image folders: an image that cannot be decoded is an `error`, or is reported and `skip`ped.
    pub bad_images: BadImages,

    /// Encoder: `cnn` (small CNN for 28x28-ish inputs), `resnet18` (CIFAR-style ResNet-18)
    /// or `vit` (a small Vision Transformer).
    pub encoder: EncoderKind,
    /// Channel widths of the small CNN's stages; each stage after the first halves the size.
    pub cnn_widths: Vec<i64>,
    /// The small CNN's last feature map is average-pooled to a `cnn_pool` x `cnn_pool` grid
    /// and flattened: 1 is global average pooling (`[B, W]`); 2 keeps where things are in
    /// the image (`[B, 4W]`), which matters on centred data such as Fashion-MNIST.
    pub cnn_pool: i64,
    /// Width multiplier of the ResNet-18 (1.0 gives 64..512 channels).
    pub resnet_width: f64,
    /// ViT: patch size, number of blocks, token width and attention heads (the default is
    /// ViT-Tiny's 12 x 192 with 3 heads, at patch 4 for 32x32 images: an 8x8 grid), and the
    /// image side its position embeddings are made for (other sizes resample them).
    pub vit_patch: i64,
    pub vit_depth: i64,
    pub vit_width: i64,
    pub vit_heads: i64,
    pub vit_image_size: i64,
    /// Channel widths of the decoder's transposed-convolution stages (each doubles the size).
    pub decoder_widths: Vec<i64>,

    pub epochs: usize,
    pub batch_size: usize,
    /// `sgd` (with momentum), `adam` or `adamw`.
    pub optimizer: OptimizerKind,
    /// Peak learning rate, reached after the warm-up.
    pub lr: f64,
    /// Learning rate at the end of the cosine decay.
    pub min_lr: f64,
    pub warmup_epochs: f64,
    /// SGD momentum (Adam's beta1 stays 0.9).
    pub momentum: f64,
    pub weight_decay: f64,
    pub seed: u64,

    /// Denoising autoencoder corruption: `gaussian` (additive N(0, noise_std^2), clipped to
    /// [0, 1]) or `masking` (each pixel set to 0 with probability mask_ratio).
    pub noise: Noise,
    pub noise_std: f64,
    pub mask_ratio: f64,

    /// Contrastive views (SimCLR and kin): output size of RandomResizedCrop (0 = the image
    /// size), its area-fraction and aspect-ratio ranges, and the probabilities of each op.
    pub aug_crop_size: usize,
    pub aug_crop_scale: [f64; 2],
    pub aug_crop_ratio: [f64; 2],
    pub aug_flip_p: f64,
    pub aug_jitter_p: f64,
    /// Colour-jitter strengths: brightness, contrast, saturation, hue.
    pub aug_jitter: [f64; 4],
    pub aug_gray_p: f64,
    /// Gaussian blur: probability and sigma range; the kernel is ~10% of the image size.
    pub aug_blur_p: f64,
    pub aug_blur_sigma: [f64; 2],
    pub aug_solarize_p: f64,
    /// Projection head: hidden width and output width of the MLP on top of the encoder.
    pub proj_hidden_dim: i64,
    pub proj_dim: i64,
    /// Temperature of the contrastive losses.
    pub temperature: f64,
    /// Predictor MLP hidden width (BYOL, SimSiam, MoCo v3).
    pub pred_hidden_dim: i64,
    /// Momentum of the EMA target networks (MoCo keeps it constant; BYOL and MoCo v3
    /// raise it to 1 along a cosine).
    pub ema_momentum: f64,
    /// MoCo v1/v2: number of keys in the queue of negatives.
    pub moco_queue: i64,
    /// MoCo v1/v2: BatchNorm runs on this many sub-batches, the key encoder's on shuffled
    /// ones, emulating the paper's shuffling BN across GPUs (1 = whole batch).
    pub shuffle_bn_groups: i64,
    /// Barlow Twins: weight of the off-diagonal terms of the cross-correlation (paper: 0.0051).
    pub barlow_lambda: f64,
    /// VICReg: weights of the invariance, variance and covariance terms (paper: 25, 25, 1).
    pub vicreg_weights: [f64; 3],
    /// Multi-crop (SwAV, DINO, SimCLR, BYOL, SimSiam, MoCo v3): besides the two global
    /// views of the `aug_*` keys, this many local views of `multicrop_local_size` pixels
    /// (0: 3/7 of the image side, as 96 of 224) cropped from `multicrop_local_scale` of the
    /// image's area. 0 (the default, as solo-learn's) keeps the two views; the SwAV and DINO
    /// presets set the papers' 6.
    pub multicrop_local: usize,
    pub multicrop_local_size: usize,
    pub multicrop_local_scale: [f64; 2],
    /// SwAV: number of prototypes, Sinkhorn-Knopp's epsilon and iterations, the epochs
    /// during which the prototypes stay frozen, and the length of the queue of past
    /// projections that joins the batch in the Sinkhorn step (0: no queue).
    pub swav_prototypes: i64,
    pub swav_epsilon: f64,
    pub swav_iterations: usize,
    pub swav_freeze_epochs: usize,
    pub swav_queue: i64,
    /// DINO: output width of the head (K, the softmax's size), the teacher temperature
    /// reached after `dino_warmup_teacher_epochs` epochs of linear rise from
    /// `dino_warmup_teacher_temp`, and the momentum of the centre's EMA.
    pub dino_out_dim: i64,
    pub dino_teacher_temp: f64,
    pub dino_warmup_teacher_temp: f64,
    pub dino_warmup_teacher_epochs: usize,
    pub dino_center_momentum: f64,

    /// CPC: patch size and stride of the patch grid (28x28 -> 6x6 grid of 8x8 at stride 4).
    pub cpc_patch: i64,
    pub cpc_stride: i64,
    /// CPC: predict rows t+1..t+cpc_steps from the context at row t.
    pub cpc_steps: i64,
    /// CPC context network: `masked-conv` (causal convolutions, PixelCNN style) or `gru`
    /// (a GRU running down each column).
    pub cpc_context: CpcContext,
    /// CPC: number of causal conv layers of the masked-conv context network.
    pub cpc_context_layers: i64,
    /// CPC: negatives per prediction step, drawn from all positions of all images in the batch.
    pub cpc_negatives: i64,
    /// Context encoder: the hole. `center` (a central square of side ce_hole x the image
    /// side), `random-blocks` (4 random squares of half that side, the union covering at
    /// most ce_hole^2 of the image) or `random-region` (a smooth random blob covering
    /// ce_hole^2 of the image).
    pub ce_mask: CeMask,
    /// Context encoder: hole size as a fraction of the image side (0.5 hides a quarter).
    pub ce_hole: f64,
    /// Context encoder: width in pixels of the visible ring around the hole that is also
    /// reconstructed, with weight ce_overlap_weight (the hole itself has weight 1).
    pub ce_overlap: i64,
    pub ce_overlap_weight: f64,
    /// Context encoder: add the adversarial loss of a small discriminator, with weight
    /// ce_adv_weight (0.001 as in the paper; the reconstruction loss gets 1 - ce_adv_weight).
    pub ce_adversarial: bool,
    pub ce_adv_weight: f64,
    /// Jigsaw and relative-patch: side in pixels of the tiles cut from a 3x3 grid of cells
    /// of side/3 pixels. Each tile sits at a random offset inside its cell (jitter
    /// 0..=cell-tile), so neighbouring tiles are 0..=2(cell-tile) pixels apart.
    pub tile_size: i64,
    /// Jigsaw: number of permutations of the 9 tiles, chosen for maximal Hamming distance.
    pub jigsaw_permutations: usize,
    /// Colorization: `classify` (cross-entropy over quantized ab bins with class
    /// rebalancing) or `regress` (L2 on ab).
    pub colorization_loss: ColorizationLoss,

    /// Arithmetic of the forward passes, in training and in evaluation: `fp32`, or `bf16`
    /// (libtorch's autocast: convolutions and matrix products in bfloat16; weights,
    /// optimizer state, losses and checkpoints stay float32).
    pub precision: Precision,

    /// Log a line to metrics.jsonl every this many steps (more often in runs shorter than
    /// 100 x log_every steps: see `train::log_interval`).
    pub log_every: usize,
    /// Batches prepared ahead of the training step.
    pub prefetch: usize,
    /// A checkpoint is written at every epoch's end and, within an epoch, every this many
    /// steps (`500`), after this much time (`"90s"`, `"10m"`, `"2h"`), or never (`"epoch"`).
    /// A kill loses at most this much work.
    pub checkpoint_every: CheckpointEvery,
    /// Keep the checkpoints of the last this many epochs as `checkpoint-epochE.safetensors`
    /// besides the rolling `checkpoint.safetensors` (0: none are kept, none deleted).
    pub keep_checkpoints: usize,
    /// Data-parallel runs (more than one process): BatchNorm layers normalise with the
    /// statistics of the global batch, gathered from every rank (SyncBatchNorm), so that N
    /// ranks train as one process would; `false` keeps each rank's statistics local.
    pub sync_bn: bool,

    /// Linear probe: epochs over the frozen features, Adam learning rate, batch size, decay.
    pub probe_epochs: usize,
    pub probe_lr: f64,
    pub probe_batch_size: usize,
    pub probe_weight_decay: f64,
    /// kNN classifier: neighbours and temperature of the exp(sim / T) vote weights.
    pub knn_k: i64,
    pub knn_temperature: f64,

    /// Segmentation transfer (`selfsup segment`): the data, `fashion-scenes` (built from
    /// Fashion-MNIST), `fashion-scenes:DIR` or `seg-folder:DIR` (images with PNG masks, or
    /// the PASCAL VOC layout).
    pub seg_data: String,
    /// Segmentation: side of the square images and masks (the canvas of fashion-scenes).
    pub seg_image_size: usize,
    /// fashion-scenes: number of training and test scenes.
    pub seg_train_scenes: usize,
    pub seg_test_scenes: usize,
    /// Segmentation head: `linear` (a 1x1 convolution on the last feature map, logits
    /// upsampled bilinearly) or `fcn` (one such scoring layer on every stage's map, their
    /// upsampled logits summed, as FCN-8s).
    pub seg_head: SegHead,
    /// Segmentation training: epochs of the frozen protocol (over features extracted once,
    /// so they are cheap) and of fine-tuning, batch size, AdamW learning rate and decay.
    pub seg_frozen_epochs: usize,
    pub seg_finetune_epochs: usize,
    pub seg_batch_size: usize,
    pub seg_lr: f64,
    pub seg_weight_decay: f64,
    /// Fine-tuning: the encoder's learning rate is seg_lr times this.
    pub seg_encoder_lr_scale: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            method: String::new(),
            data: "fashion-mnist".into(),
            train_subset: 0,
            cifar100_labels: Cifar100Labels::Fine,
            stl10_unlabeled: 10_000,
            image_size: 32,
            bad_images: BadImages::Error,
            encoder: EncoderKind::Cnn,
            cnn_widths: vec![32, 64, 128],
            cnn_pool: 1,
            resnet_width: 1.0,
            vit_patch: 4,
            vit_depth: 12,
            vit_width: 192,
            vit_heads: 3,
            vit_image_size: 32,
            decoder_widths: vec![64, 32],
            epochs: 10,
            batch_size: 256,
            optimizer: OptimizerKind::AdamW,
            lr: 2e-3,
            min_lr: 0.0,
            warmup_epochs: 1.0,
            momentum: 0.9,
            weight_decay: 1e-4,
            seed: 0,
            noise: Noise::Gaussian,
            noise_std: 0.4,
            mask_ratio: 0.5,
            aug_crop_size: 0,
            aug_crop_scale: [0.08, 1.0],
            aug_crop_ratio: [0.75, 4.0 / 3.0],
            aug_flip_p: 0.5,
            aug_jitter_p: 0.8,
            aug_jitter: [0.4, 0.4, 0.4, 0.1],
            aug_gray_p: 0.2,
            aug_blur_p: 0.0,
            aug_blur_sigma: [0.1, 2.0],
            aug_solarize_p: 0.0,
            proj_hidden_dim: 512,
            proj_dim: 128,
            temperature: 0.5,
            pred_hidden_dim: 512,
            ema_momentum: 0.99,
            moco_queue: 4096,
            shuffle_bn_groups: 4,
            barlow_lambda: 0.0051,
            vicreg_weights: [25.0, 25.0, 1.0],
            multicrop_local: 0,
            multicrop_local_size: 0,
            multicrop_local_scale: [0.05, 0.4],
            swav_prototypes: 3000,
            swav_epsilon: 0.05,
            swav_iterations: 3,
            swav_freeze_epochs: 1,
            swav_queue: 0,
            dino_out_dim: 65536,
            dino_teacher_temp: 0.04,
            dino_warmup_teacher_temp: 0.04,
            dino_warmup_teacher_epochs: 0,
            dino_center_momentum: 0.9,
            cpc_patch: 8,
            cpc_stride: 4,
            cpc_steps: 2,
            cpc_context: CpcContext::MaskedConv,
            cpc_context_layers: 3,
            cpc_negatives: 1024,
            ce_mask: CeMask::Center,
            ce_hole: 0.5,
            ce_overlap: 1,
            ce_overlap_weight: 10.0,
            ce_adversarial: false,
            ce_adv_weight: 0.001,
            tile_size: 7,
            jigsaw_permutations: 100,
            colorization_loss: ColorizationLoss::Classify,
            precision: Precision::Fp32,
            log_every: 20,
            prefetch: 4,
            checkpoint_every: CheckpointEvery::Time(Duration::from_secs(600)),
            keep_checkpoints: 0,
            sync_bn: true,
            probe_epochs: 30,
            probe_lr: 2e-3,
            probe_batch_size: 512,
            probe_weight_decay: 1e-4,
            knn_k: 200,
            knn_temperature: 0.1,
            seg_data: "fashion-scenes".into(),
            seg_image_size: 64,
            seg_train_scenes: 10_000,
            seg_test_scenes: 2_000,
            seg_head: SegHead::Linear,
            seg_frozen_epochs: 20,
            seg_finetune_epochs: 5,
            seg_batch_size: 64,
            seg_lr: 1e-2,
            seg_weight_decay: 1e-4,
            seg_encoder_lr_scale: 0.1,
        }
    }
}

/// A config choice: an enum whose variants are written in the TOML as the given
/// kebab-case strings, spelled once here. A bad value is a serde error that lists the
/// allowed ones ("unknown variant `lion`, expected one of `sgd`, `adam`, `adamw`").
macro_rules! choice {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }
        impl $name {
            /// Every choice, in the order they are documented.
            pub const ALL: &[$name] = &[$($name::$variant),+];
            /// The name as written in a config.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

choice!(
    /// The encoder network.
    EncoderKind {
        /// Small CNN for 28x28-ish inputs (`cnn_widths`, `cnn_pool`).
        Cnn = "cnn",
        /// CIFAR-style ResNet-18 (`resnet_width`).
        Resnet18 = "resnet18",
        /// Small Vision Transformer with timm's names (`vit_*`).
        Vit = "vit",
    }
);
choice!(
    OptimizerKind {
        /// SGD with momentum.
        Sgd = "sgd",
        /// Adam with L2 weight decay.
        Adam = "adam",
        /// Adam with decoupled weight decay.
        AdamW = "adamw",
    }
);
choice!(
    /// Denoising autoencoder corruption.
    Noise {
        Gaussian = "gaussian",
        Masking = "masking",
    }
);
choice!(
    /// CPC's context network.
    CpcContext {
        MaskedConv = "masked-conv",
        Gru = "gru",
    }
);
choice!(
    Cifar100Labels {
        Fine = "fine",
        Coarse = "coarse",
    }
);
choice!(
    /// What loading an image folder does with an image it cannot decode.
    BadImages {
        Error = "error",
        Skip = "skip",
    }
);
choice!(
    /// The context encoder's hole.
    CeMask {
        Center = "center",
        RandomBlocks = "random-blocks",
        RandomRegion = "random-region",
    }
);
choice!(
    /// The arithmetic of forward passes (`precision`).
    Precision {
        /// float32 throughout.
        Fp32 = "fp32",
        /// bfloat16 autocast for the forward pass; float32 weights, optimizer and losses.
        Bf16 = "bf16",
    }
);
choice!(
    /// The segmentation head.
    SegHead {
        /// A 1x1 convolution on the last feature map.
        Linear = "linear",
        /// 1x1 convolutions on every stage's map, their upsampled logits summed.
        Fcn = "fcn",
    }
);
choice!(
    ColorizationLoss {
        /// Cross-entropy over quantized ab bins, with class rebalancing.
        Classify = "classify",
        /// L2 on ab.
        Regress = "regress",
    }
);

/// When the training loop writes a checkpoint within an epoch (it always writes one at an
/// epoch's end). Written as a number of steps (`500`), a time with its unit (`"90s"`,
/// `"10m"`, `"1.5h"`) or `"epoch"`.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(try_from = "CheckpointEverySpelled")]
pub enum CheckpointEvery {
    /// After every step that is a multiple of this (counted over the whole run).
    Steps(usize),
    /// Once this much time has passed since the last checkpoint (or the start).
    Time(Duration),
    /// Only at epoch ends.
    Epoch,
}

const CHECKPOINT_EVERY_FORMS: &str =
    "a number of steps (500), a time (\"90s\", \"10m\", \"2h\") or \"epoch\"";

/// `checkpoint_every` as a config spells it: an integer, a string, or something else (an
/// error naming the key, rather than serde's "did not match any variant").
#[derive(Deserialize)]
#[serde(untagged)]
enum CheckpointEverySpelled {
    Steps(i64),
    Text(String),
    Other(serde::de::IgnoredAny),
}

impl std::str::FromStr for CheckpointEvery {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("option checkpoint_every = {s:?}: expected {CHECKPOINT_EVERY_FORMS}");
        let s = s.trim();
        if s == "epoch" {
            return Ok(CheckpointEvery::Epoch);
        }
        if let Ok(n) = s.parse::<i64>() {
            return CheckpointEvery::try_from(CheckpointEverySpelled::Steps(n));
        }
        let secs = parse_seconds(s).ok_or_else(bad)?;
        match Duration::try_from_secs_f64(secs) {
            Ok(d) if !d.is_zero() => Ok(CheckpointEvery::Time(d)),
            _ => Err(format!(
                "option checkpoint_every = {s:?}: the time must be positive"
            )),
        }
    }
}

/// The seconds of a time written `90s`, `1.5m` or `2h` (seconds, minutes, hours; maybe
/// negative); None when it is not written so.
pub fn parse_seconds(s: &str) -> Option<f64> {
    let s = s.trim();
    let unit = match s.chars().last()? {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        _ => return None,
    };
    let n: f64 = s[..s.len() - 1].trim().parse().ok()?;
    Some(n * unit)
}

impl TryFrom<CheckpointEverySpelled> for CheckpointEvery {
    type Error = String;
    fn try_from(v: CheckpointEverySpelled) -> Result<Self, String> {
        match v {
            CheckpointEverySpelled::Steps(n) if n >= 1 => Ok(CheckpointEvery::Steps(n as usize)),
            CheckpointEverySpelled::Steps(n) => Err(format!(
                "option checkpoint_every = {n}: a number of steps must be at least 1 (\"epoch\" checkpoints only at epoch ends)"
            )),
            CheckpointEverySpelled::Text(s) => s.parse(),
            CheckpointEverySpelled::Other(_) => Err(format!(
                "option checkpoint_every: expected {CHECKPOINT_EVERY_FORMS}"
            )),
        }
    }
}

/// As it is written in a config: `500`, `"10m"`, `"epoch"`; parses back to the same value.
impl std::fmt::Display for CheckpointEvery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            CheckpointEvery::Steps(n) => write!(f, "{n}"),
            CheckpointEvery::Epoch => f.write_str("epoch"),
            CheckpointEvery::Time(d) => {
                let s = d.as_secs_f64();
                match d.as_secs() {
                    t if d.subsec_nanos() == 0 && t % 3600 == 0 => write!(f, "{}h", t / 3600),
                    t if d.subsec_nanos() == 0 && t % 60 == 0 => write!(f, "{}m", t / 60),
                    _ => write!(f, "{s}s"),
                }
            }
        }
    }
}

impl Serialize for CheckpointEvery {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            CheckpointEvery::Steps(n) => s.serialize_u64(n as u64),
            _ => s.serialize_str(&self.to_string()),
        }
    }
}

/// The keys every run reads, whatever its method: data, encoder and training loop, and
/// the `EVAL_KEYS`. Each method names the other keys it reads in its `MethodSpec`.
pub const GENERAL_KEYS: &[&str] = &[
    "method",
    "data",
    "train_subset",
    "cifar100_labels",
    "stl10_unlabeled",
    "image_size",
    "bad_images",
    "encoder",
    "cnn_widths",
    "cnn_pool",
    "resnet_width",
    "vit_patch",
    "vit_depth",
    "vit_width",
    "vit_heads",
    "vit_image_size",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "min_lr",
    "warmup_epochs",
    "momentum",
    "weight_decay",
    "seed",
    "log_every",
    "prefetch",
    "checkpoint_every",
    "keep_checkpoints",
    "sync_bn",
];

/// Keys that may change when a saved run is evaluated (`eval --run`, `report`). `precision`
/// is read by training too; evaluation takes the run's unless told otherwise.
pub const EVAL_KEYS: &[&str] = &[
    "precision",
    "probe_epochs",
    "probe_lr",
    "probe_batch_size",
    "probe_weight_decay",
    "knn_k",
    "knn_temperature",
    "seg_data",
    "seg_image_size",
    "seg_train_scenes",
    "seg_test_scenes",
    "seg_head",
    "seg_frozen_epochs",
    "seg_finetune_epochs",
    "seg_batch_size",
    "seg_lr",
    "seg_weight_decay",
    "seg_encoder_lr_scale",
];

/// Whether every run reads `key` (one of `GENERAL_KEYS` or `EVAL_KEYS`).
pub fn is_general(key: &str) -> bool {
    GENERAL_KEYS.contains(&key) || EVAL_KEYS.contains(&key)
}

/// Checks for one option; each error names the option and what is wrong with it.
pub mod check {
    use anyhow::{Result, bail};
    use std::fmt::Display;
    use std::ops::RangeInclusive;

    pub fn positive(key: &str, v: f64) -> Result<()> {
        if !(v.is_finite() && v > 0.0) {
            bail!("option {key} = {v} must be a positive number");
        }
        Ok(())
    }

    pub fn non_negative(key: &str, v: f64) -> Result<()> {
        if !(v.is_finite() && v >= 0.0) {
            bail!("option {key} = {v} must be zero or a positive number");
        }
        Ok(())
    }

    pub fn probability(key: &str, p: f64) -> Result<()> {
        if !(0.0..=1.0).contains(&p) {
            bail!("option {key} = {p} is a probability and must be in [0, 1]");
        }
        Ok(())
    }

    /// `v` in [0, 1): momenta and other fractions that must stay below 1.
    pub fn fraction_below_one(key: &str, v: f64) -> Result<()> {
        if !(0.0..1.0).contains(&v) {
            bail!("option {key} = {v} must be in [0, 1)");
        }
        Ok(())
    }

    pub fn in_range<T: PartialOrd + Display>(key: &str, v: T, r: RangeInclusive<T>) -> Result<()> {
        if !r.contains(&v) {
            bail!("option {key} = {v} must be in {}..={}", r.start(), r.end());
        }
        Ok(())
    }

    pub fn at_least<T: PartialOrd + Display>(key: &str, v: T, min: T) -> Result<()> {
        if v < min {
            bail!("option {key} = {v} must be at least {min}");
        }
        Ok(())
    }

    /// A non-empty list of layer widths in 1..=4096.
    pub fn widths(key: &str, w: &[i64]) -> Result<()> {
        if w.is_empty() || w.iter().any(|&x| !(1..=4096).contains(&x)) {
            bail!("option {key} = {w:?} must be a non-empty list of widths in 1..=4096");
        }
        Ok(())
    }

    /// A range `[min, max]` with 0 < min <= max (and max <= `top` when given).
    pub fn ordered_pair(key: &str, [a, b]: [f64; 2], top: Option<f64>) -> Result<()> {
        if !(a > 0.0 && a <= b && b.is_finite() && top.is_none_or(|t| b <= t)) {
            match top {
                Some(t) => bail!(
                    "option {key} = {:?} must satisfy 0 < min <= max <= {t}",
                    [a, b]
                ),
                None => bail!("option {key} = {:?} must satisfy 0 < min <= max", [a, b]),
            }
        }
        Ok(())
    }
}

impl Config {
    /// Reads a TOML file (keys as in this struct; unknown keys are an error).
    pub fn from_toml_file(path: &Path) -> Result<Config> {
        Ok(Config::read_toml_file(path)?.0)
    }

    /// Reads a TOML file; also returns the keys it sets.
    fn read_toml_file(path: &Path) -> Result<(Config, Vec<String>)> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let keys = toml::from_str::<toml::Table>(&text)
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        let cfg = toml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        Ok((cfg, keys))
    }

    /// The config of a command line: `base`, or the `file` when one is given, then the
    /// `key=value` overrides. Returns it with the keys that the file and the overrides set
    /// (the keys the user chose, as opposed to defaults), in that order.
    pub fn assemble(
        base: Config,
        file: Option<&Path>,
        sets: &[String],
    ) -> Result<(Config, Vec<String>)> {
        let (base, mut given) = match file {
            Some(p) => Config::read_toml_file(p)?,
            None => (base, Vec::new()),
        };
        let cfg = base.with_overrides(sets)?;
        given.extend(
            sets.iter()
                .filter_map(|s| s.split_once('='))
                .map(|(k, _)| k.trim().to_string()),
        );
        Ok((cfg, given))
    }

    /// Every key, in declaration order.
    pub fn keys() -> Vec<String> {
        let v = toml::Value::try_from(Config::default()).expect("the config serializes");
        v.as_table()
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Applies `key=value` overrides. The value is read as a TOML value (`0.1`, `[32, 64]`,
    /// `true`), and as a plain string when it is not one (`optimizer=sgd`).
    pub fn with_overrides(&self, sets: &[String]) -> Result<Config> {
        let mut table = toml::Table::try_from(self).context("config does not serialize")?;
        for set in sets {
            let Some((key, value)) = set.split_once('=') else {
                bail!("--set '{set}': expected key=value");
            };
            let key = key.trim();
            if !table.contains_key(key) {
                let keys: Vec<&String> = table.keys().collect();
                bail!("--set '{set}': unknown key '{key}'; known keys: {keys:?}");
            }
            let parsed: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
                Ok(t) => t["v"].clone(),
                Err(_) => toml::Value::String(value.to_string()),
            };
            table.insert(key.to_string(), parsed);
            Config::deserialize(toml::Value::Table(table.clone()))
                .map_err(|e| anyhow::anyhow!("--set '{set}': {}", e.message()))?;
        }
        Ok(Config::deserialize(toml::Value::Table(table))?)
    }

    /// The config as TOML, with only the `keys` (in declaration order).
    pub fn to_toml_with(&self, keys: &[&str]) -> Result<String> {
        let mut table = toml::Table::try_from(self).context("config does not serialize")?;
        table.retain(|k, _| keys.contains(&k));
        Ok(toml::to_string(&table)?)
    }

    /// Checks the general options (`GENERAL_KEYS`); each method checks its own keys
    /// (`methods::MethodSpec::validate`).
    pub fn validate(&self) -> Result<()> {
        use check::*;
        in_range("image_size", self.image_size, 1..=1024)?;
        widths("cnn_widths", &self.cnn_widths)?;
        in_range("cnn_pool", self.cnn_pool, 1..=8)?;
        if !(self.resnet_width.is_finite() && (0.125..=8.0).contains(&self.resnet_width)) {
            bail!(
                "option resnet_width = {} must be between 0.125 and 8",
                self.resnet_width
            );
        }
        in_range("vit_patch", self.vit_patch, 1..=64)?;
        in_range("vit_depth", self.vit_depth, 1..=64)?;
        in_range("vit_heads", self.vit_heads, 1..=64)?;
        at_least("vit_width", self.vit_width, 1)?;
        if self.vit_width % self.vit_heads != 0 {
            bail!(
                "option vit_width = {} must be a multiple of vit_heads = {}",
                self.vit_width,
                self.vit_heads
            );
        }
        if self.vit_image_size < self.vit_patch {
            bail!(
                "option vit_image_size = {} must be at least vit_patch = {}",
                self.vit_image_size,
                self.vit_patch
            );
        }
        at_least("epochs", self.epochs, 1)?;
        at_least("batch_size", self.batch_size, 2)?;
        positive("lr", self.lr)?;
        non_negative("min_lr", self.min_lr)?;
        if self.min_lr > self.lr {
            bail!(
                "option min_lr = {} must not exceed lr = {}",
                self.min_lr,
                self.lr
            );
        }
        non_negative("warmup_epochs", self.warmup_epochs)?;
        if self.warmup_epochs > self.epochs as f64 {
            bail!(
                "option warmup_epochs = {} exceeds epochs = {}",
                self.warmup_epochs,
                self.epochs
            );
        }
        fraction_below_one("momentum", self.momentum)?;
        non_negative("weight_decay", self.weight_decay)?;
        at_least("log_every", self.log_every, 1)?;
        in_range("prefetch", self.prefetch, 1..=64)?;
        at_least("probe_epochs", self.probe_epochs, 1)?;
        positive("probe_lr", self.probe_lr)?;
        at_least("probe_batch_size", self.probe_batch_size, 1)?;
        non_negative("probe_weight_decay", self.probe_weight_decay)?;
        at_least("knn_k", self.knn_k, 1)?;
        positive("knn_temperature", self.knn_temperature)?;
        in_range("seg_image_size", self.seg_image_size, 8..=1024)?;
        at_least("seg_train_scenes", self.seg_train_scenes, 1)?;
        at_least("seg_test_scenes", self.seg_test_scenes, 1)?;
        at_least("seg_frozen_epochs", self.seg_frozen_epochs, 1)?;
        at_least("seg_finetune_epochs", self.seg_finetune_epochs, 1)?;
        at_least("seg_batch_size", self.seg_batch_size, 1)?;
        positive("seg_lr", self.seg_lr)?;
        non_negative("seg_weight_decay", self.seg_weight_decay)?;
        positive("seg_encoder_lr_scale", self.seg_encoder_lr_scale)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_numbers_lists_and_strings() {
        let c = Config::default()
            .with_overrides(&[
                "lr=0.5".into(),
                "cnn_widths=[8, 16]".into(),
                "optimizer=sgd".into(),
            ])
            .unwrap();
        assert_eq!(c.lr, 0.5);
        assert_eq!(c.cnn_widths, vec![8, 16]);
        assert_eq!(c.optimizer, OptimizerKind::Sgd);
        c.validate().unwrap();
    }

    #[test]
    fn bad_overrides_name_the_key() {
        let e = Config::default()
            .with_overrides(&["lrr=0.5".into()])
            .unwrap_err();
        assert!(e.to_string().contains("unknown key 'lrr'"), "{e}");
        let e = Config::default()
            .with_overrides(&["epochs=many".into()])
            .unwrap_err();
        assert!(e.to_string().contains("epochs=many"), "{e}");
        let e = Config::default()
            .with_overrides(&["noequals".into()])
            .unwrap_err();
        assert!(e.to_string().contains("key=value"), "{e}");
        // A bad choice names the key and lists the allowed values, from their one spelling.
        let e = Config::default()
            .with_overrides(&["optimizer=lion".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("optimizer=lion") && e.contains("`sgd`, `adam`, `adamw`"),
            "{e}"
        );
        let e = Config::default()
            .with_overrides(&["cnn_pool=0".into()])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert_eq!(e, "option cnn_pool = 0 must be in 1..=8");
    }

    #[test]
    fn choices_round_trip_through_their_spelling() {
        for e in CeMask::ALL {
            let c = Config {
                ce_mask: *e,
                ..Config::default()
            };
            let back = Config::default()
                .with_overrides(&[format!("ce_mask={}", e.as_str())])
                .unwrap();
            assert_eq!(back, c);
        }
        assert_eq!(OptimizerKind::AdamW.to_string(), "adamw");
        assert_eq!(CpcContext::MaskedConv.to_string(), "masked-conv");
    }

    #[test]
    fn assemble_reports_the_keys_the_user_chose() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "lr = 0.1\ntemperature = 0.3\n").unwrap();
        let (c, given) =
            Config::assemble(Config::default(), Some(&f), &["epochs=3".into()]).unwrap();
        assert_eq!((c.lr, c.temperature, c.epochs), (0.1, 0.3, 3));
        assert_eq!(given, vec!["lr", "temperature", "epochs"]);
        let (c, given) = Config::assemble(Config::default(), None, &[]).unwrap();
        assert_eq!((c, given.len()), (Config::default(), 0));
    }

    #[test]
    fn general_and_eval_keys_are_config_keys() {
        let keys = Config::keys();
        for k in GENERAL_KEYS.iter().chain(EVAL_KEYS) {
            assert!(keys.iter().any(|x| x == k), "{k} is not a config key");
        }
        let t = Config::default().to_toml_with(&["lr", "method"]).unwrap();
        assert_eq!(t, "method = \"\"\nlr = 0.002\n");
    }

    #[test]
    fn checkpoint_every_takes_steps_times_or_epoch_and_names_bad_values() {
        let every = |v: &str| {
            Config::default()
                .with_overrides(&[format!("checkpoint_every={v}")])
                .map(|c| c.checkpoint_every)
        };
        let min = |m: u64| CheckpointEvery::Time(Duration::from_secs(60 * m));
        assert_eq!(Config::default().checkpoint_every, min(10));
        assert_eq!(every("500").unwrap(), CheckpointEvery::Steps(500));
        assert_eq!(every("\"500\"").unwrap(), CheckpointEvery::Steps(500));
        assert_eq!(every("10m").unwrap(), min(10));
        assert_eq!(every("1.5h").unwrap(), min(90));
        assert_eq!(
            every("90s").unwrap(),
            CheckpointEvery::Time(Duration::from_secs(90))
        );
        assert_eq!(every("epoch").unwrap(), CheckpointEvery::Epoch);
        for (bad, says) in [
            ("0", "at least 1"),
            ("-3", "at least 1"),
            ("10x", "expected a number of steps"),
            ("5ms", "expected a number of steps"),
            ("0m", "must be positive"),
            ("-2h", "must be positive"),
            ("1.5", "expected a number of steps"),
            ("[1]", "expected a number of steps"),
        ] {
            let e = every(bad).unwrap_err().to_string();
            assert!(
                e.contains(&format!("checkpoint_every={bad}")) && e.contains(says),
                "{bad}: {e}"
            );
        }
        // Written back as it is spelled, in TOML and in the checkpoint's JSON.
        for (v, text) in [
            (CheckpointEvery::Steps(7), "7"),
            (min(10), "\"10m\""),
            (min(120), "\"2h\""),
            (
                CheckpointEvery::Time(Duration::from_millis(2500)),
                "\"2.5s\"",
            ),
            (CheckpointEvery::Epoch, "\"epoch\""),
        ] {
            let c = Config {
                checkpoint_every: v,
                ..Config::default()
            };
            let toml = c.to_toml_with(&["checkpoint_every"]).unwrap();
            assert_eq!(toml, format!("checkpoint_every = {text}\n"));
            assert_eq!(toml::from_str::<Config>(&toml).unwrap(), c);
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<Config>(&json).unwrap(), c);
        }
    }

    #[test]
    fn toml_round_trip_keeps_the_config() {
        let c = Config {
            lr: 0.25,
            method: "autoencoder".into(),
            ..Config::default()
        };
        let text = toml::to_string(&c).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn every_preset_parses_and_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("presets");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let (cfg, given) = Config::assemble(Config::default(), Some(&path), &[])
                .unwrap_or_else(|e| panic!("{e:#}"));
            // Valid, and every key it sets is read by its method.
            let warnings = crate::methods::check_config(&cfg, &given)
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            assert!(warnings.is_empty(), "{}: {warnings:?}", path.display());
            n += 1;
        }
        assert!(n >= 5, "{n} presets");
    }
}
