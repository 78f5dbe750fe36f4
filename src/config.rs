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
    /// Data set: `fashion-mnist` (Debian's package), `fashion-mnist:DIR` or `mnist:DIR`.
    pub data: String,
    /// Use only this many training images (a seeded random subset); 0 means all.
    pub train_subset: usize,

    /// Encoder: `cnn` (small CNN for 28x28-ish inputs) or `resnet18` (CIFAR-style ResNet-18).
    pub encoder: String,
    /// Channel widths of the small CNN's stages; each stage after the first halves the size.
    pub cnn_widths: Vec<i64>,
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

    /// Log a line to metrics.jsonl every this many steps.
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
            encoder: "cnn".into(),
            cnn_widths: vec![32, 64, 128],
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
}
