//! The view policy of the methods that learn from augmented views (SimCLR, MoCo, BYOL,
//! SimSiam, ...): the random pipeline the `aug_*` keys describe, built from `augment`'s
//! ops, and multi-crop (2 global views and `multicrop_local` smaller ones).

use super::DataInfo;
use crate::augment::{Op, Pipeline, Views};
use crate::config::{AugSpec, check};
use crate::data::loader::nhwc_batch;
use crate::nets::Encoder;
use anyhow::Result;
use std::sync::Arc;
use tch::Tensor;

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
pub fn validate(aug: &AugSpec) -> Result<()> {
    for (key, p) in [
        ("aug_flip_p", aug.aug_flip_p),
        ("aug_jitter_p", aug.aug_jitter_p),
        ("aug_gray_p", aug.aug_gray_p),
        ("aug_blur_p", aug.aug_blur_p),
        ("aug_solarize_p", aug.aug_solarize_p),
    ] {
        check::probability(key, p)?;
    }
    check::ordered_pair("aug_crop_scale", aug.aug_crop_scale, Some(1.0))?;
    check::ordered_pair("aug_crop_ratio", aug.aug_crop_ratio, None)?;
    let [b, c, s, h] = aug.aug_jitter;
    if [b, c, s].iter().any(|x| !(x.is_finite() && *x >= 0.0)) || !(0.0..=0.5).contains(&h) {
        anyhow::bail!(
            "option aug_jitter = {:?}: strengths must be >= 0 and the hue shift in [0, 0.5]",
            aug.aug_jitter
        );
    }
    check::ordered_pair("aug_blur_sigma", aug.aug_blur_sigma, None)?;
    check::in_range("aug_crop_size", aug.aug_crop_size, 0..=4096)
}

/// The contrastive view pipeline described by the `aug_*` keys for `h` x `w` images.
pub fn contrastive_pipeline(aug: &AugSpec, h: usize, w: usize) -> Pipeline {
    let size = if aug.aug_crop_size == 0 {
        (h, w)
    } else {
        (aug.aug_crop_size, aug.aug_crop_size)
    };
    let [brightness, contrast, saturation, hue] = aug.aug_jitter;
    Pipeline {
        ops: vec![
            Op::ResizedCrop {
                size,
                scale: aug.aug_crop_scale.into(),
                ratio: aug.aug_crop_ratio.into(),
            },
            Op::HFlip { p: aug.aug_flip_p },
            Op::ColorJitter {
                p: aug.aug_jitter_p,
                brightness,
                contrast,
                saturation,
                hue,
            },
            Op::Grayscale { p: aug.aug_gray_p },
            Op::GaussianBlur {
                p: aug.aug_blur_p,
                kernel_frac: 0.1,
                sigma: aug.aug_blur_sigma.into(),
            },
            Op::Solarize {
                p: aug.aug_solarize_p,
                threshold: 128,
            },
        ],
    }
}

/// The pipeline of the `aug_*` keys for the images of `data`.
pub fn pipeline(aug: &AugSpec, data: &DataInfo) -> Pipeline {
    contrastive_pipeline(aug, data.shape[1] as usize, data.shape[2] as usize)
}

/// Two views from the same `aug_*` pipeline (SimCLR, MoCo, SimSiam).
pub fn two_views(aug: &AugSpec, data: &DataInfo) -> Arc<Views> {
    let p = pipeline(aug, data);
    Arc::new(Views {
        pipelines: vec![p.clone(), p],
    })
}

/// The multi-crop keys (SwAV, DINO, SimCLR, BYOL, SimSiam, MoCo v3).
pub const MULTICROP_KEYS: &[&str] = &[
    "multicrop_local",
    "multicrop_local_size",
    "multicrop_local_scale",
];

/// Checks the multi-crop keys.
pub fn validate_multicrop(aug: &AugSpec) -> Result<()> {
    check::in_range("multicrop_local", aug.multicrop_local, 0..=64)?;
    check::in_range("multicrop_local_size", aug.multicrop_local_size, 0..=4096)?;
    check::ordered_pair(
        "multicrop_local_scale",
        aug.multicrop_local_scale,
        Some(1.0),
    )
}

/// Side of the local crops for `h` x `w` images: `multicrop_local_size`, or 3/7 of the
/// shorter side (the papers' 96 of 224), at least 1.
pub fn local_size(aug: &AugSpec, h: usize, w: usize) -> usize {
    match aug.multicrop_local_size {
        0 => ((h.min(w) as f64 * 3.0 / 7.0).round() as usize).max(1),
        s => s,
    }
}

/// Multi-crop views (Caron et al. 2020): the `global` views (of the `aug_*` pipeline),
/// then `multicrop_local` local views: `local` with its crop at the local size and scale.
pub fn multi_crop(
    aug: &AugSpec,
    data: &DataInfo,
    global: Vec<Pipeline>,
    local: Pipeline,
) -> Arc<Views> {
    let (h, w) = (data.shape[1] as usize, data.shape[2] as usize);
    let side = local_size(aug, h, w);
    let mut local = local;
    for op in &mut local.ops {
        if let Op::ResizedCrop { size, scale, .. } = op {
            *size = (side, side);
            *scale = aug.multicrop_local_scale.into();
        }
    }
    let mut pipelines = global;
    pipelines.extend(std::iter::repeat_n(local, aug.multicrop_local));
    Arc::new(Views { pipelines })
}

/// Two views of the `aug_*` pipeline and `multicrop_local` local views of it (SwAV,
/// SimCLR, SimSiam, MoCo v3): `two_views` when `multicrop_local` = 0.
pub fn two_views_and_local_crops(aug: &AugSpec, data: &DataInfo) -> Arc<Views> {
    let p = pipeline(aug, data);
    multi_crop(aug, data, vec![p.clone(), p.clone()], p)
}

/// The encoder's features `[V B, D]` of a loader batch of `views` of B `[c, h, w]` images
/// (see `unpack`): the encoder runs once per crop size (so BatchNorm sees every view of a
/// size together), views in order.
pub fn encode(encoder: &Encoder, views: &Views, images: &Tensor, shape: [i64; 3]) -> Tensor {
    let h: Vec<Tensor> = unpack(views, images, shape)
        .iter()
        .map(|g| encoder.forward_t(g, true))
        .collect();
    Tensor::cat(&h, 0)
}

/// A loader batch of `views` of B `[c, h, w]` images as one tensor per view, `[B, c, h_v,
/// w_v]` each, in order (global crops first).
pub fn crops(views: &Views, images: &Tensor, shape: [i64; 3]) -> Vec<Tensor> {
    let groups = views.size_groups(shape[1] as usize, shape[2] as usize);
    unpack(views, images, shape)
        .iter()
        .zip(&groups)
        .flat_map(|(g, (n, _))| g.chunk(*n as i64, 0))
        .collect()
}

/// Splits a batch of the `views` of B `[c, h, w]` images, as the loader makes it, into
/// one tensor per size group, `[n_g * B, c, h_g, w_g]` (views in order, each view's B
/// images together). The loader's batch is that tensor already, `[V * B, c, h', w']`, when
/// every view has one size, and flat when sizes differ: every view's B images one after
/// the other, each `[h_g, w_g, c]` (channels-last, as `data::loader::nhwc_batch` reads it).
pub fn unpack(views: &Views, images: &Tensor, [c, h, w]: [i64; 3]) -> Vec<Tensor> {
    if images.dim() == 4 {
        return vec![images.shallow_clone()];
    }
    let groups = views.size_groups(h as usize, w as usize);
    let numel = |(n, (gh, gw)): &(usize, (usize, usize))| (n * gh * gw) as i64 * c;
    let b = images.numel() as i64 / groups.iter().map(numel).sum::<i64>();
    let mut at = 0;
    let mut out = Vec::new();
    for g in &groups {
        let (_, (gh, gw)) = *g;
        let part = images.narrow(0, at, b * numel(g));
        out.push(nhwc_batch(&part, [c, gh as i64, gw as i64]));
        at += b * numel(g);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::Pipeline;
    use tch::{Device, Kind};

    fn crop(size: usize) -> Pipeline {
        Pipeline {
            ops: vec![Op::ResizedCrop {
                size: (size, size),
                scale: (0.2, 1.0),
                ratio: (0.75, 4.0 / 3.0),
            }],
        }
    }

    #[test]
    fn multi_crop_batches_are_unpacked_by_size() {
        let _rng = crate::torch_rng_lock();
        let views = Views {
            pipelines: vec![crop(16), crop(16), crop(8), crop(8), crop(8)],
        };
        // B = 2 images of 1 channel: 2 x 2 x 256 values, then 3 x 2 x 64 (with one channel
        // channels-last is the plain order).
        let flat = Tensor::arange(2 * 2 * 256 + 3 * 2 * 64, (Kind::Float, Device::Cpu));
        let groups = unpack(&views, &flat, [1, 28, 28]);
        assert_eq!(groups[0].size(), vec![4, 1, 16, 16]);
        assert_eq!(groups[1].size(), vec![6, 1, 8, 8]);
        assert_eq!(groups[1].flatten(0, -1).double_value(&[0]), 1024.0);
        // One size: the loader's 4-D batch comes back whole.
        let two = Views {
            pipelines: vec![crop(8), crop(8)],
        };
        let x = Tensor::rand([6, 3, 8, 8], (Kind::Float, Device::Cpu));
        let got = unpack(&two, &x, [3, 28, 28]);
        assert!(got.len() == 1 && got[0].equal(&x));
    }
}
