//! Every config key: its name, type, default and doc, in one place, grouped in the sections
//! that the code below the training loop and the evaluation takes (typed views of one flat
//! config: users still write `lr = 0.1`, not `[train] lr`). A new key is one line in its
//! section; the TOML name is the field name (two are renamed: `data` and `encoder`).

use super::check::*;
use super::choices::*;
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A section of the config: a struct of keys with their defaults (`Default`) and docs.
macro_rules! keys {
    ($(#[$meta:meta])* pub struct $name:ident {
        $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty = $default:expr, )*
    }) => {
        $(#[$meta])*
        #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }
        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: $default, )* }
            }
        }
    };
}

keys! {
    /// How the data set is read (`data::DataOptions` is built from these).
    pub struct DataKeys {
        /// Data set, `KIND[:PATH]`: `fashion-mnist` (Debian's package), `fashion-mnist:DIR`,
        /// `mnist:DIR`, `cifar10:DIR`, `cifar100:DIR`, `stl10:DIR`, or streamed: `folder:DIR`,
        /// `wds:PATH` (WebDataset shards) or `parquet:PATH` (Hugging Face Parquet).
        #[serde(rename = "data")]
        pub source: String = "fashion-mnist".into(),
        /// Use only this many pretraining images (a seeded random subset); 0 means all.
        pub train_subset: usize = 0,
        /// CIFAR-100 labels: `fine` (100 classes) or `coarse` (20 superclasses).
        pub cifar100_labels: Cifar100Labels = Cifar100Labels::Fine,
        /// STL-10: pretrain on a seeded random subset of this many images of the 100k unlabeled
        /// split, read one by one from disk (0 = pretrain on the labeled train split instead).
        pub stl10_unlabeled: usize = 10_000,
        /// Streamed data: the size images are evaluated at (the central square, scaled to it)
        /// and the base size of the random views.
        pub image_size: usize = 32,
        /// Streamed data: an image that cannot be read or decoded is an `error` (the run stops
        /// naming it), or is reported and `skip`ped (its place in the batch goes to the next
        /// readable image).
        pub bad_images: BadImages = BadImages::Error,
    }
}

keys! {
    /// The encoder network (`nets::build_encoder`).
    pub struct EncoderSpec {
        /// Encoder: `cnn` (small CNN for 28x28-ish inputs), `resnet18` (CIFAR-style ResNet-18)
        /// or `vit` (a small Vision Transformer).
        #[serde(rename = "encoder")]
        pub kind: EncoderKind = EncoderKind::Cnn,
        /// Channel widths of the small CNN's stages; each stage after the first halves the size.
        pub cnn_widths: Vec<i64> = vec![32, 64, 128],
        /// The small CNN's last feature map is average-pooled to a `cnn_pool` x `cnn_pool` grid
        /// and flattened: 1 is global average pooling (`[B, W]`); 2 keeps where things are in
        /// the image (`[B, 4W]`), which matters on centred data such as Fashion-MNIST.
        pub cnn_pool: i64 = 1,
        /// Width multiplier of the ResNet-18 (1.0 gives 64..512 channels).
        pub resnet_width: f64 = 1.0,
        /// ViT: patch size, number of blocks, token width and attention heads (the default is
        /// ViT-Tiny's 12 x 192 with 3 heads, at patch 4 for 32x32 images: an 8x8 grid), and the
        /// image side its position embeddings are made for (other sizes resample them).
        pub vit_patch: i64 = 4,
        pub vit_depth: i64 = 12,
        pub vit_width: i64 = 192,
        pub vit_heads: i64 = 3,
        pub vit_image_size: i64 = 32,
    }
}

keys! {
    /// The training loop: schedule, optimizer, precision, logging and checkpoints.
    pub struct TrainSpec {
        pub epochs: usize = 10,
        pub batch_size: usize = 256,
        /// End pretraining after this many steps of the run (0: no limit), with a
        /// checkpoint as at an epoch's end; for benchmarks and smoke runs. The schedule
        /// stays that of the whole run, so a run stopped here resumes (`--resume --set
        /// max_steps=0`) exactly as if it had not stopped.
        pub max_steps: usize = 0,
        /// `sgd` (with momentum), `adam` or `adamw`.
        pub optimizer: OptimizerKind = OptimizerKind::AdamW,
        /// Peak learning rate, reached after the warm-up.
        pub lr: f64 = 2e-3,
        /// Learning rate at the end of the cosine decay.
        pub min_lr: f64 = 0.0,
        pub warmup_epochs: f64 = 1.0,
        /// SGD momentum (Adam's beta1 stays 0.9).
        pub momentum: f64 = 0.9,
        pub weight_decay: f64 = 1e-4,
        pub seed: u64 = 0,
        /// Arithmetic of the forward passes, in training and in evaluation: `fp32`, or `bf16`
        /// (libtorch's autocast: convolutions and matrix products in bfloat16; weights,
        /// optimizer state, losses and checkpoints stay float32).
        pub precision: Precision = Precision::Fp32,
        /// CUDA: float32 matrix products and convolutions in TensorFloat-32 (10-bit mantissa,
        /// up to 8x the float32 speed on tensor cores; PyTorch's default for convolutions).
        /// No effect on the CPU.
        pub tf32: bool = true,
        /// Deterministic algorithms only (`torch.use_deterministic_algorithms`): on CUDA the
        /// same seed gives the same numbers run after run, at some cost in speed (cuDNN's
        /// benchmark mode off; needs `CUBLAS_WORKSPACE_CONFIG=:4096:8` in the environment); an op without a
        /// deterministic kernel is then an error. CPU runs are deterministic either way.
        pub deterministic: bool = false,
        /// Log a line to metrics.jsonl every this many steps (more often in runs shorter than
        /// 100 x log_every steps: see `train::log_interval`).
        pub log_every: usize = 20,
        /// Batches prepared ahead of the training step.
        pub prefetch: usize = 4,
        /// A checkpoint is written at every epoch's end and, within an epoch, every this many
        /// steps (`500`), after this much time (`"90s"`, `"10m"`, `"2h"`), or never (`"epoch"`).
        /// A kill loses at most this much work.
        pub checkpoint_every: CheckpointEvery = CheckpointEvery::Time(Duration::from_secs(600)),
        /// Keep the checkpoints of the last this many epochs as `checkpoint-epochE.safetensors`
        /// besides the rolling `checkpoint.safetensors` (0: none are kept, none deleted).
        pub keep_checkpoints: usize = 0,
        /// Data-parallel runs (more than one process): BatchNorm layers normalise with the
        /// statistics of the global batch, gathered from every rank (SyncBatchNorm), so that N
        /// ranks train as one process would; `false` keeps each rank's statistics local.
        pub sync_bn: bool = true,
    }
}

keys! {
    /// The random views of the view-based methods (`methods::views`).
    pub struct AugSpec {
        /// Contrastive views (SimCLR and kin): output size of RandomResizedCrop (0 = the image
        /// size), its area-fraction and aspect-ratio ranges, and the probabilities of each op.
        pub aug_crop_size: usize = 0,
        pub aug_crop_scale: [f64; 2] = [0.08, 1.0],
        pub aug_crop_ratio: [f64; 2] = [0.75, 4.0 / 3.0],
        pub aug_flip_p: f64 = 0.5,
        pub aug_jitter_p: f64 = 0.8,
        /// Colour-jitter strengths: brightness, contrast, saturation, hue.
        pub aug_jitter: [f64; 4] = [0.4, 0.4, 0.4, 0.1],
        pub aug_gray_p: f64 = 0.2,
        /// Gaussian blur: probability and sigma range; the kernel is ~10% of the image size.
        pub aug_blur_p: f64 = 0.0,
        pub aug_blur_sigma: [f64; 2] = [0.1, 2.0],
        pub aug_solarize_p: f64 = 0.0,
        /// Multi-crop (SwAV, DINO, SimCLR, BYOL, SimSiam, MoCo v3): besides the two global
        /// views of the `aug_*` keys, this many local views of `multicrop_local_size` pixels
        /// (0: 3/7 of the image side, as 96 of 224) cropped from `multicrop_local_scale` of the
        /// image's area. 0 (the default, as solo-learn's) keeps the two views; the SwAV and DINO
        /// presets set the papers' 6.
        pub multicrop_local: usize = 0,
        pub multicrop_local_size: usize = 0,
        pub multicrop_local_scale: [f64; 2] = [0.05, 0.4],
    }
}

keys! {
    /// The keys of particular methods (each `MethodSpec` names those it reads).
    pub struct MethodKeys {
        /// Channel widths of the decoder's transposed-convolution stages (each doubles the size).
        pub decoder_widths: Vec<i64> = vec![64, 32],
        /// Denoising autoencoder corruption: `gaussian` (additive N(0, noise_std^2), clipped to
        /// [0, 1]) or `masking` (each pixel set to 0 with probability mask_ratio).
        pub noise: Noise = Noise::Gaussian,
        pub noise_std: f64 = 0.4,
        pub mask_ratio: f64 = 0.5,
        /// Projection head: hidden width and output width of the MLP on top of the encoder.
        pub proj_hidden_dim: i64 = 512,
        pub proj_dim: i64 = 128,
        /// Temperature of the contrastive losses.
        pub temperature: f64 = 0.5,
        /// Predictor MLP hidden width (BYOL, SimSiam, MoCo v3).
        pub pred_hidden_dim: i64 = 512,
        /// Momentum of the EMA target networks (MoCo keeps it constant; BYOL and MoCo v3
        /// raise it to 1 along a cosine).
        pub ema_momentum: f64 = 0.99,
        /// MoCo v1/v2: number of keys in the queue of negatives.
        pub moco_queue: i64 = 4096,
        /// MoCo v1/v2: BatchNorm runs on this many sub-batches, the key encoder's on shuffled
        /// ones, emulating the paper's shuffling BN across GPUs (1 = whole batch).
        pub shuffle_bn_groups: i64 = 4,
        /// Barlow Twins: weight of the off-diagonal terms of the cross-correlation (paper: 0.0051).
        pub barlow_lambda: f64 = 0.0051,
        /// VICReg: weights of the invariance, variance and covariance terms (paper: 25, 25, 1).
        pub vicreg_weights: [f64; 3] = [25.0, 25.0, 1.0],
        /// SwAV: number of prototypes, Sinkhorn-Knopp's epsilon and iterations, the epochs
        /// during which the prototypes stay frozen, and the length of the queue of past
        /// projections that joins the batch in the Sinkhorn step (0: no queue).
        pub swav_prototypes: i64 = 3000,
        pub swav_epsilon: f64 = 0.05,
        pub swav_iterations: usize = 3,
        pub swav_freeze_epochs: usize = 1,
        pub swav_queue: i64 = 0,
        /// DINO: output width of the head (K, the softmax's size), the teacher temperature
        /// reached after `dino_warmup_teacher_epochs` epochs of linear rise from
        /// `dino_warmup_teacher_temp`, and the momentum of the centre's EMA.
        pub dino_out_dim: i64 = 65536,
        pub dino_teacher_temp: f64 = 0.04,
        pub dino_warmup_teacher_temp: f64 = 0.04,
        pub dino_warmup_teacher_epochs: usize = 0,
        pub dino_center_momentum: f64 = 0.9,
        /// CPC: patch size and stride of the patch grid (28x28 -> 6x6 grid of 8x8 at stride 4).
        pub cpc_patch: i64 = 8,
        pub cpc_stride: i64 = 4,
        /// CPC: predict rows t+1..t+cpc_steps from the context at row t.
        pub cpc_steps: i64 = 2,
        /// CPC context network: `masked-conv` (causal convolutions, PixelCNN style) or `gru`
        /// (a GRU running down each column).
        pub cpc_context: CpcContext = CpcContext::MaskedConv,
        /// CPC: number of causal conv layers of the masked-conv context network.
        pub cpc_context_layers: i64 = 3,
        /// CPC: negatives per prediction step, drawn from all positions of all images in the batch.
        pub cpc_negatives: i64 = 1024,
        /// Context encoder: the hole. `center` (a central square of side ce_hole x the image
        /// side), `random-blocks` (4 random squares of half that side, the union covering at
        /// most ce_hole^2 of the image) or `random-region` (a smooth random blob covering
        /// ce_hole^2 of the image).
        pub ce_mask: CeMask = CeMask::Center,
        /// Context encoder: hole size as a fraction of the image side (0.5 hides a quarter).
        pub ce_hole: f64 = 0.5,
        /// Context encoder: width in pixels of the visible ring around the hole that is also
        /// reconstructed, with weight ce_overlap_weight (the hole itself has weight 1).
        pub ce_overlap: i64 = 1,
        pub ce_overlap_weight: f64 = 10.0,
        /// Context encoder: add the adversarial loss of a small discriminator, with weight
        /// ce_adv_weight (0.001 as in the paper; the reconstruction loss gets 1 - ce_adv_weight).
        pub ce_adversarial: bool = false,
        pub ce_adv_weight: f64 = 0.001,
        /// Jigsaw and relative-patch: side in pixels of the tiles cut from a 3x3 grid of cells
        /// of side/3 pixels. Each tile sits at a random offset inside its cell (jitter
        /// 0..=cell-tile), so neighbouring tiles are 0..=2(cell-tile) pixels apart.
        pub tile_size: i64 = 7,
        /// Jigsaw: number of permutations of the 9 tiles, chosen for maximal Hamming distance.
        pub jigsaw_permutations: usize = 100,
        /// NNCLR: the length of the support queue of past projections (paper: 98304 on
        /// ImageNet).
        pub nnclr_queue: i64 = 8192,
        /// MAE: the fraction of patches hidden per image (paper: 0.75), the decoder's token
        /// width, blocks and heads (paper, ViT-B: 512, 8, 16; lighter here for small ViTs),
        /// and whether the loss compares pixels normalised per patch (the paper's better
        /// setting).
        pub mae_mask_ratio: f64 = 0.75,
        pub mae_decoder_width: i64 = 128,
        pub mae_decoder_depth: i64 = 2,
        pub mae_decoder_heads: i64 = 4,
        pub mae_norm_pix_loss: bool = true,
        /// Colorization: `classify` (cross-entropy over quantized ab bins with class
        /// rebalancing) or `regress` (L2 on ab).
        pub colorization_loss: ColorizationLoss = ColorizationLoss::Classify,
    }
}

keys! {
    /// The linear probe and the kNN classifier (evaluation keys).
    pub struct ProbeSpec {
        /// Linear probe: epochs over the frozen features, Adam learning rate, batch size, decay.
        pub probe_epochs: usize = 30,
        pub probe_lr: f64 = 2e-3,
        pub probe_batch_size: usize = 512,
        pub probe_weight_decay: f64 = 1e-4,
        /// kNN classifier: neighbours and temperature of the exp(sim / T) vote weights.
        pub knn_k: i64 = 200,
        pub knn_temperature: f64 = 0.1,
    }
}

keys! {
    /// Fine-tuning with few labels (`selfsup finetune`; evaluation keys): the encoder and a
    /// linear head trained end to end on a class-balanced subset of the training labels.
    pub struct FinetuneSpec {
        /// The fraction of each class's training images that keep their label, in (0, 1]
        /// (`--labels 1%` sets 0.01); the subset is drawn with `finetune_seed`, not the run's
        /// seed, so every method is fine-tuned on the same images.
        pub finetune_labels: f64 = 1.0,
        pub finetune_seed: u64 = 0,
        /// Epochs over the labeled subset, AdamW learning rate, batch size, weight decay.
        pub finetune_epochs: usize = 30,
        pub finetune_lr: f64 = 1e-3,
        pub finetune_batch_size: usize = 256,
        pub finetune_weight_decay: f64 = 1e-4,
        /// The training views: random resized crop with this area-fraction range, and flip.
        pub finetune_crop_scale: [f64; 2] = [0.5, 1.0],
        pub finetune_flip_p: f64 = 0.5,
    }
}

keys! {
    /// Segmentation transfer (evaluation keys).
    pub struct SegSpec {
        /// Segmentation transfer (`selfsup segment`): the data, `fashion-scenes` (built from
        /// Fashion-MNIST), `fashion-scenes:DIR` or `seg-folder:DIR` (images with PNG masks, or
        /// the PASCAL VOC layout).
        pub seg_data: String = "fashion-scenes".into(),
        /// Segmentation: side of the square images and masks (the canvas of fashion-scenes).
        pub seg_image_size: usize = 64,
        /// fashion-scenes: number of training and test scenes.
        pub seg_train_scenes: usize = 10_000,
        pub seg_test_scenes: usize = 2_000,
        /// Segmentation head: `linear` (a 1x1 convolution on the last feature map, logits
        /// upsampled bilinearly) or `fcn` (one such scoring layer on every stage's map, their
        /// upsampled logits summed, as FCN-8s).
        pub seg_head: SegHead = SegHead::Linear,
        /// Segmentation training: epochs of the frozen protocol (over features extracted once,
        /// so they are cheap) and of fine-tuning, batch size, AdamW learning rate and decay.
        pub seg_frozen_epochs: usize = 20,
        pub seg_finetune_epochs: usize = 5,
        pub seg_batch_size: usize = 64,
        pub seg_lr: f64 = 1e-2,
        pub seg_weight_decay: f64 = 1e-4,
        /// Fine-tuning: the encoder's learning rate is seg_lr times this.
        pub seg_encoder_lr_scale: f64 = 0.1,
    }
}

impl DataKeys {
    pub fn validate(&self) -> Result<()> {
        in_range("image_size", self.image_size, 1..=1024)
    }
}

impl EncoderSpec {
    pub fn validate(&self) -> Result<()> {
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
        Ok(())
    }
}

impl TrainSpec {
    pub fn validate(&self) -> Result<()> {
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
        Ok(())
    }
}

impl MethodKeys {
    /// `[proj_hidden_dim, proj_dim, pred_hidden_dim]`: the widths of the projector and
    /// predictor MLPs of the methods with an online and a target network.
    pub fn head_dims(&self) -> [i64; 3] {
        [self.proj_hidden_dim, self.proj_dim, self.pred_hidden_dim]
    }
}

impl ProbeSpec {
    pub fn validate(&self) -> Result<()> {
        at_least("probe_epochs", self.probe_epochs, 1)?;
        positive("probe_lr", self.probe_lr)?;
        at_least("probe_batch_size", self.probe_batch_size, 1)?;
        non_negative("probe_weight_decay", self.probe_weight_decay)?;
        at_least("knn_k", self.knn_k, 1)?;
        positive("knn_temperature", self.knn_temperature)?;
        Ok(())
    }
}

impl FinetuneSpec {
    pub fn validate(&self) -> Result<()> {
        if !(self.finetune_labels > 0.0 && self.finetune_labels <= 1.0) {
            bail!(
                "option finetune_labels = {} must be a fraction in (0, 1] (e.g. --labels 10%)",
                self.finetune_labels
            );
        }
        at_least("finetune_epochs", self.finetune_epochs, 1)?;
        positive("finetune_lr", self.finetune_lr)?;
        at_least("finetune_batch_size", self.finetune_batch_size, 1)?;
        non_negative("finetune_weight_decay", self.finetune_weight_decay)?;
        ordered_pair("finetune_crop_scale", self.finetune_crop_scale, Some(1.0))?;
        probability("finetune_flip_p", self.finetune_flip_p)
    }
}

impl SegSpec {
    pub fn validate(&self) -> Result<()> {
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
