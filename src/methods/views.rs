//! The view policy of the methods that learn from augmented views (SimCLR, MoCo, BYOL,
//! SimSiam): the random pipeline the `aug_*` keys describe, built from `augment`'s ops.

use super::DataInfo;
use crate::augment::{Op, Pipeline, Views};
use crate::config::{Config, check};
use anyhow::Result;
use std::sync::Arc;

/// The keys of the view pipeline.
pub const AUG_KEYS: &[&str] = &[
    "aug_crop_size",
    "aug_crop_scale",
    "aug_crop_ratio",
    "aug_flip_p",
    "aug_jitter_p",
    "aug_jitter",
    "aug_gray_p",
    "aug_blur_p",
    "aug_blur_sigma",
    "aug_solarize_p",
];

/// Checks the `aug_*` keys.
pub fn validate(cfg: &Config) -> Result<()> {
    for (key, p) in [
        ("aug_flip_p", cfg.aug_flip_p),
        ("aug_jitter_p", cfg.aug_jitter_p),
        ("aug_gray_p", cfg.aug_gray_p),
        ("aug_blur_p", cfg.aug_blur_p),
        ("aug_solarize_p", cfg.aug_solarize_p),
    ] {
        check::probability(key, p)?;
    }
    check::ordered_pair("aug_crop_scale", cfg.aug_crop_scale, Some(1.0))?;
    check::ordered_pair("aug_crop_ratio", cfg.aug_crop_ratio, None)?;
    let [b, c, s, h] = cfg.aug_jitter;
    if [b, c, s].iter().any(|x| !(x.is_finite() && *x >= 0.0)) || !(0.0..=0.5).contains(&h) {
        anyhow::bail!(
            "option aug_jitter = {:?}: strengths must be >= 0 and the hue shift in [0, 0.5]",
            cfg.aug_jitter
        );
    }
    check::ordered_pair("aug_blur_sigma", cfg.aug_blur_sigma, None)?;
    check::in_range("aug_crop_size", cfg.aug_crop_size, 0..=4096)
}

/// The contrastive view pipeline described by the `aug_*` keys for `h` x `w` images.
pub fn contrastive_pipeline(cfg: &Config, h: usize, w: usize) -> Pipeline {
    let size = if cfg.aug_crop_size == 0 {
        (h, w)
    } else {
        (cfg.aug_crop_size, cfg.aug_crop_size)
    };
    let [brightness, contrast, saturation, hue] = cfg.aug_jitter;
    Pipeline {
        ops: vec![
            Op::ResizedCrop {
                size,
                scale: cfg.aug_crop_scale.into(),
                ratio: cfg.aug_crop_ratio.into(),
            },
            Op::HFlip { p: cfg.aug_flip_p },
            Op::ColorJitter {
                p: cfg.aug_jitter_p,
                brightness,
                contrast,
                saturation,
                hue,
            },
            Op::Grayscale { p: cfg.aug_gray_p },
            Op::GaussianBlur {
                p: cfg.aug_blur_p,
                kernel_frac: 0.1,
                sigma: cfg.aug_blur_sigma.into(),
            },
            Op::Solarize {
                p: cfg.aug_solarize_p,
                threshold: 128,
            },
        ],
    }
}

/// The pipeline of `cfg` for the images of `data`.
pub fn pipeline(cfg: &Config, data: &DataInfo) -> Pipeline {
    contrastive_pipeline(cfg, data.shape[1] as usize, data.shape[2] as usize)
}

/// Two views from the same `aug_*` pipeline (SimCLR, MoCo, SimSiam).
pub fn two_views(cfg: &Config, data: &DataInfo) -> Arc<Views> {
    let p = pipeline(cfg, data);
    Arc::new(Views {
        pipelines: vec![p.clone(), p],
    })
}
