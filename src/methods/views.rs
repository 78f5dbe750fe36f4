//! The view policy of the methods that learn from augmented views (SimCLR, MoCo, BYOL,
//! SimSiam, ...): the random pipeline the `aug_*` keys describe, built from `augment`'s
//! ops, and multi-crop (2 global views and `multicrop_local` smaller ones).

use super::DataInfo;
use crate::augment::{Op, Pipeline, Views};
use crate::config::{AugSpec, check};
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

/// The encoder's features `[V B, D]` of a batch's views (`data::Batch::images`: one tensor
/// per crop size): the encoder runs once per crop size (so BatchNorm sees every view of a
/// size together), views in order.
pub fn encode(encoder: &Encoder, images: &[Tensor]) -> Tensor {
    let h: Vec<Tensor> = images.iter().map(|g| encoder.forward_t(g, true)).collect();
    Tensor::cat(&h, 0)
}

/// A batch's views (one `[n B, C, h, w]` tensor per crop size) as one `[B, C, h, w]`
/// tensor per view, in order (global crops first).
pub fn crops(images: &[Tensor], b: i64) -> Vec<Tensor> {
    images
        .iter()
        .flat_map(|g| g.chunk(g.size()[0] / b, 0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn crops_split_each_size_group_into_its_views() {
        // B = 2: two global views of 4x4, then three local views of 2x2; value = view.
        let global = (Tensor::arange(4, (Kind::Float, Device::Cpu)) / 2)
            .floor()
            .view([4, 1, 1, 1])
            .expand([4, 1, 4, 4], false);
        let local = ((Tensor::arange(6, (Kind::Float, Device::Cpu)) / 2).floor() + 2)
            .view([6, 1, 1, 1])
            .expand([6, 1, 2, 2], false);
        let x = crops(&[global, local], 2);
        assert_eq!(x.len(), 5);
        for (v, t) in x.iter().enumerate() {
            assert_eq!(t.size()[0], 2);
            assert_eq!(t.size()[2], if v < 2 { 4 } else { 2 });
            assert_eq!(t.min().double_value(&[]), v as f64);
            assert_eq!(t.max().double_value(&[]), v as f64);
        }
    }
}
