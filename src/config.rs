//! One flat configuration with defaults (nanoGPT style). A run is described entirely by
//! this struct: it is read from an optional TOML file, then `--set key=value` overrides
//! are applied, then it is validated. The checkpoint carries it so a model can be rebuilt.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;

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
    pub cifar100_labels: String,
    /// STL-10: pretrain on a seeded random subset of this many images of the 100k unlabeled
    /// split, read one by one from disk (0 = pretrain on the labeled train split instead).
    pub stl10_unlabeled: usize,
    /// Image folders: the central square of each image is scaled to this size.
    pub image_size: usize,
    /// Image folders: an image that cannot be decoded is an `error`, or is reported and `skip`ped.
    pub bad_images: String,

    /// Encoder: `cnn` (small CNN for 28x28-ish inputs) or `resnet18` (CIFAR-style ResNet-18).
    pub encoder: String,
    /// Channel widths of the small CNN's stages; each stage after the first halves the size.
    pub cnn_widths: Vec<i64>,
    /// The small CNN's last feature map is average-pooled to a `cnn_pool` x `cnn_pool` grid
    /// and flattened: 1 is global average pooling (`[B, W]`); 2 keeps where things are in
    /// the image (`[B, 4W]`), which matters on centred data such as Fashion-MNIST.
    pub cnn_pool: i64,
    /// Width multiplier of the ResNet-18 (1.0 gives 64..512 channels).
    pub resnet_width: f64,
    /// Channel widths of the decoder's transposed-convolution stages (each doubles the size).
    pub decoder_widths: Vec<i64>,

    pub epochs: usize,
    pub batch_size: usize,
    /// `sgd` (with momentum), `adam` or `adamw`.
    pub optimizer: String,
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
    pub noise: String,
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

    /// CPC: patch size and stride of the patch grid (28x28 -> 6x6 grid of 8x8 at stride 4).
    pub cpc_patch: i64,
    pub cpc_stride: i64,
    /// CPC: predict rows t+1..t+cpc_steps from the context at row t.
    pub cpc_steps: i64,
    /// CPC context network: `masked-conv` (causal convolutions, PixelCNN style) or `gru`
    /// (a GRU running down each column).
    pub cpc_context: String,
    /// CPC: number of causal conv layers of the masked-conv context network.
    pub cpc_context_layers: i64,
    /// CPC: negatives per prediction step, drawn from all positions of all images in the batch.
    pub cpc_negatives: i64,
    /// Context encoder: the hole. `center` (a central square of side ce_hole x the image
    /// side), `random-blocks` (4 random squares of half that side, the union covering at
    /// most ce_hole^2 of the image) or `random-region` (a smooth random blob covering
    /// ce_hole^2 of the image).
    pub ce_mask: String,
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
    pub colorization_loss: String,

    /// Log a line to metrics.jsonl every this many steps (more often in runs shorter than
    /// 100 x log_every steps: see `train::log_interval`).
    pub log_every: usize,
    /// Batches prepared ahead of the training step.
    pub prefetch: usize,

    /// Linear probe: epochs over the frozen features, Adam learning rate, batch size, decay.
    pub probe_epochs: usize,
    pub probe_lr: f64,
    pub probe_batch_size: usize,
    pub probe_weight_decay: f64,
    /// kNN classifier: neighbours and temperature of the exp(sim / T) vote weights.
    pub knn_k: i64,
    pub knn_temperature: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            method: String::new(),
            data: "fashion-mnist".into(),
            train_subset: 0,
            cifar100_labels: "fine".into(),
            stl10_unlabeled: 10_000,
            image_size: 32,
            bad_images: "error".into(),
            encoder: "cnn".into(),
            cnn_widths: vec![32, 64, 128],
            cnn_pool: 1,
            resnet_width: 1.0,
            decoder_widths: vec![64, 32],
            epochs: 10,
            batch_size: 256,
            optimizer: "adamw".into(),
            lr: 2e-3,
            min_lr: 0.0,
            warmup_epochs: 1.0,
            momentum: 0.9,
            weight_decay: 1e-4,
            seed: 0,
            noise: "gaussian".into(),
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
            cpc_patch: 8,
            cpc_stride: 4,
            cpc_steps: 2,
            cpc_context: "masked-conv".into(),
            cpc_context_layers: 3,
            cpc_negatives: 1024,
            ce_mask: "center".into(),
            ce_hole: 0.5,
            ce_overlap: 1,
            ce_overlap_weight: 10.0,
            ce_adversarial: false,
            ce_adv_weight: 0.001,
            tile_size: 7,
            jigsaw_permutations: 100,
            colorization_loss: "classify".into(),
            log_every: 20,
            prefetch: 4,
            probe_epochs: 30,
            probe_lr: 2e-3,
            probe_batch_size: 512,
            probe_weight_decay: 1e-4,
            knn_k: 200,
            knn_temperature: 0.1,
        }
    }
}

pub const OPTIMIZERS: &[&str] = &["sgd", "adam", "adamw"];
pub const ENCODERS: &[&str] = &["cnn", "resnet18"];
pub const NOISES: &[&str] = &["gaussian", "masking"];
pub const CPC_CONTEXTS: &[&str] = &["masked-conv", "gru"];
pub const CIFAR100_LABELS: &[&str] = &["fine", "coarse"];
pub const BAD_IMAGES: &[&str] = &["error", "skip"];
pub const CE_MASKS: &[&str] = &["center", "random-blocks", "random-region"];
pub const COLORIZATION_LOSSES: &[&str] = &["classify", "regress"];

impl Config {
    /// Reads a TOML file (keys as in this struct; unknown keys are an error).
    pub fn from_toml_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
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

    /// Checks every option; the error names the option and what is wrong with it.
    pub fn validate(&self) -> Result<()> {
        fn one_of(key: &str, v: &str, allowed: &[&str]) -> Result<()> {
            if !allowed.contains(&v) {
                bail!("option {key} = '{v}' is not one of {allowed:?}");
            }
            Ok(())
        }
        fn positive(key: &str, v: f64) -> Result<()> {
            if !(v.is_finite() && v > 0.0) {
                bail!("option {key} = {v} must be a positive number");
            }
            Ok(())
        }
        fn non_negative(key: &str, v: f64) -> Result<()> {
            if !(v.is_finite() && v >= 0.0) {
                bail!("option {key} = {v} must be zero or a positive number");
            }
            Ok(())
        }
        one_of("encoder", &self.encoder, ENCODERS)?;
        one_of("optimizer", &self.optimizer, OPTIMIZERS)?;
        one_of("noise", &self.noise, NOISES)?;
        one_of("cifar100_labels", &self.cifar100_labels, CIFAR100_LABELS)?;
        one_of("bad_images", &self.bad_images, BAD_IMAGES)?;
        if self.image_size == 0 || self.image_size > 1024 {
            bail!(
                "option image_size = {} must be in 1..=1024",
                self.image_size
            );
        }
        one_of("ce_mask", &self.ce_mask, CE_MASKS)?;
        one_of(
            "colorization_loss",
            &self.colorization_loss,
            COLORIZATION_LOSSES,
        )?;
        if self.cnn_widths.is_empty() || self.cnn_widths.iter().any(|&w| w < 1 || w > 4096) {
            bail!(
                "option cnn_widths = {:?} must be a non-empty list of widths in 1..=4096",
                self.cnn_widths
            );
        }
        if !(1..=8).contains(&self.cnn_pool) {
            bail!("option cnn_pool = {} must be in 1..=8", self.cnn_pool);
        }
        if self.decoder_widths.is_empty() || self.decoder_widths.iter().any(|&w| w < 1 || w > 4096)
        {
            bail!(
                "option decoder_widths = {:?} must be a non-empty list of widths in 1..=4096",
                self.decoder_widths
            );
        }
        if !(self.resnet_width.is_finite()
            && self.resnet_width >= 0.125
            && self.resnet_width <= 8.0)
        {
            bail!(
                "option resnet_width = {} must be between 0.125 and 8",
                self.resnet_width
            );
        }
        if self.epochs == 0 {
            bail!("option epochs must be at least 1");
        }
        if self.batch_size < 2 {
            bail!("option batch_size = {} must be at least 2", self.batch_size);
        }
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
        if !(0.0..1.0).contains(&self.momentum) {
            bail!("option momentum = {} must be in [0, 1)", self.momentum);
        }
        non_negative("weight_decay", self.weight_decay)?;
        non_negative("noise_std", self.noise_std)?;
        if !(0.0..1.0).contains(&self.mask_ratio) {
            bail!("option mask_ratio = {} must be in [0, 1)", self.mask_ratio);
        }
        for (key, p) in [
            ("aug_flip_p", self.aug_flip_p),
            ("aug_jitter_p", self.aug_jitter_p),
            ("aug_gray_p", self.aug_gray_p),
            ("aug_blur_p", self.aug_blur_p),
            ("aug_solarize_p", self.aug_solarize_p),
        ] {
            if !(0.0..=1.0).contains(&p) {
                bail!("option {key} = {p} is a probability and must be in [0, 1]");
            }
        }
        let [s0, s1] = self.aug_crop_scale;
        if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0) {
            bail!(
                "option aug_crop_scale = {:?} must satisfy 0 < min <= max <= 1",
                self.aug_crop_scale
            );
        }
        let [r0, r1] = self.aug_crop_ratio;
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            bail!(
                "option aug_crop_ratio = {:?} must satisfy 0 < min <= max",
                self.aug_crop_ratio
            );
        }
        let [b, c, s, h] = self.aug_jitter;
        if [b, c, s].iter().any(|x| !(x.is_finite() && *x >= 0.0)) || !(0.0..=0.5).contains(&h) {
            bail!(
                "option aug_jitter = {:?}: strengths must be >= 0 and the hue shift in [0, 0.5]",
                self.aug_jitter
            );
        }
        let [g0, g1] = self.aug_blur_sigma;
        if !(g0 > 0.0 && g0 <= g1 && g1.is_finite()) {
            bail!(
                "option aug_blur_sigma = {:?} must satisfy 0 < min <= max",
                self.aug_blur_sigma
            );
        }
        if self.aug_crop_size > 4096 {
            bail!(
                "option aug_crop_size = {} is too large (at most 4096)",
                self.aug_crop_size
            );
        }
        if self.proj_hidden_dim < 1 || self.proj_dim < 1 {
            bail!(
                "options proj_hidden_dim = {} and proj_dim = {} must be at least 1",
                self.proj_hidden_dim,
                self.proj_dim
            );
        }
        positive("temperature", self.temperature)?;
        if self.pred_hidden_dim < 1 {
            bail!(
                "option pred_hidden_dim = {} must be at least 1",
                self.pred_hidden_dim
            );
        }
        if !(0.0..1.0).contains(&self.ema_momentum) {
            bail!(
                "option ema_momentum = {} must be in [0, 1)",
                self.ema_momentum
            );
        }
        if self.moco_queue < 1 {
            bail!("option moco_queue = {} must be at least 1", self.moco_queue);
        }
        if self.shuffle_bn_groups < 1 || self.batch_size as i64 % self.shuffle_bn_groups != 0 {
            bail!(
                "option shuffle_bn_groups = {} must be at least 1 and divide batch_size = {}",
                self.shuffle_bn_groups,
                self.batch_size
            );
        }
        one_of("cpc_context", &self.cpc_context, CPC_CONTEXTS)?;
        if self.cpc_patch < 1 || self.cpc_stride < 1 || self.cpc_stride > self.cpc_patch {
            bail!(
                "options cpc_patch = {} and cpc_stride = {} must satisfy 1 <= cpc_stride <= cpc_patch",
                self.cpc_patch,
                self.cpc_stride
            );
        }
        if self.cpc_steps < 1 {
            bail!("option cpc_steps = {} must be at least 1", self.cpc_steps);
        }
        if !(1..=64).contains(&self.cpc_context_layers) {
            bail!(
                "option cpc_context_layers = {} must be in 1..=64",
                self.cpc_context_layers
            );
        }
        if self.cpc_negatives < 1 {
            bail!(
                "option cpc_negatives = {} must be at least 1",
                self.cpc_negatives
            );
        }
        if !(self.ce_hole > 0.0 && self.ce_hole < 1.0) {
            bail!("option ce_hole = {} must be in (0, 1)", self.ce_hole);
        }
        if !(0..=16).contains(&self.ce_overlap) {
            bail!("option ce_overlap = {} must be in 0..=16", self.ce_overlap);
        }
        non_negative("ce_overlap_weight", self.ce_overlap_weight)?;
        if !(0.0..1.0).contains(&self.ce_adv_weight) {
            bail!(
                "option ce_adv_weight = {} must be in [0, 1)",
                self.ce_adv_weight
            );
        }
        if self.tile_size < 1 {
            bail!("option tile_size = {} must be at least 1", self.tile_size);
        }
        if !(2..=1000).contains(&self.jigsaw_permutations) {
            bail!(
                "option jigsaw_permutations = {} must be in 2..=1000",
                self.jigsaw_permutations
            );
        }
        if self.log_every == 0 {
            bail!("option log_every must be at least 1");
        }
        if self.prefetch == 0 || self.prefetch > 64 {
            bail!("option prefetch = {} must be in 1..=64", self.prefetch);
        }
        if self.probe_epochs == 0 {
            bail!("option probe_epochs must be at least 1");
        }
        positive("probe_lr", self.probe_lr)?;
        if self.probe_batch_size == 0 {
            bail!("option probe_batch_size must be at least 1");
        }
        non_negative("probe_weight_decay", self.probe_weight_decay)?;
        if self.knn_k < 1 {
            bail!("option knn_k = {} must be at least 1", self.knn_k);
        }
        positive("knn_temperature", self.knn_temperature)?;
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
        assert_eq!(c.optimizer, "sgd");
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
        let c = Config::default()
            .with_overrides(&["optimizer=lion".into()])
            .unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("optimizer"), "{e}");
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
            let cfg = Config::from_toml_file(&path).unwrap_or_else(|e| panic!("{e:#}"));
            cfg.validate()
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            crate::methods::find(&cfg.method).unwrap();
            n += 1;
        }
        assert!(n >= 5, "{n} presets");
    }
}
