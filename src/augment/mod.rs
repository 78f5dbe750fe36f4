//! Augmentation: pure ops on u8 images (`ops`) and random view pipelines built from them.
//!
//! Every random choice for image `index` in `epoch`, view `view`, comes from an RNG seeded
//! by (seed, epoch, index, view), so a run gives the same views whatever the number of
//! threads and whatever order the images are processed in.

pub mod bench;
pub mod ops;

pub use ops::{CropBox, Image};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One random step of a pipeline; `p` is its application probability.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// RandomResizedCrop to `size` (h, w): area fraction in `scale`, aspect ratio in `ratio`.
    ResizedCrop {
        size: (usize, usize),
        scale: (f64, f64),
        ratio: (f64, f64),
    },
    HFlip {
        p: f64,
    },
    /// ColorJitter: brightness, contrast and saturation factors drawn from [1-x, 1+x],
    /// hue shift from [-hue, hue], applied in a random order.
    ColorJitter {
        p: f64,
        brightness: f64,
        contrast: f64,
        saturation: f64,
        hue: f64,
    },
    Grayscale {
        p: f64,
    },
    /// Gaussian blur with an odd kernel of about `kernel_frac` of the image size and sigma
    /// drawn from `sigma`.
    GaussianBlur {
        p: f64,
        kernel_frac: f64,
        sigma: (f64, f64),
    },
    Solarize {
        p: f64,
        threshold: u8,
    },
}

/// A sequence of random ops producing one view.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Pipeline {
    pub ops: Vec<Op>,
}

/// The views of each image (e.g. two for SimCLR, asymmetric ones for BYOL).
#[derive(Clone, Debug, PartialEq)]
pub struct Views {
    pub pipelines: Vec<Pipeline>,
}

/// The RNG for (seed, epoch, index, view): the ChaCha key comes from (seed, epoch), the
/// stream from (view, index), so every image and view of an epoch draws independently.
pub fn sample_rng(seed: u64, epoch: usize, index: usize, view: usize) -> ChaCha8Rng {
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    rng.set_stream(((view as u64) << 48) ^ index as u64);
    rng
}

/// torchvision's RandomResizedCrop.get_params: 10 tries at a random area and log-uniform
/// aspect ratio, then a centre crop clamped to the ratio range.
pub fn random_crop_box(
    rng: &mut impl Rng,
    h: usize,
    w: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
) -> CropBox {
    let area = (h * w) as f64;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale.0..=scale.1);
        let aspect = rng.random_range(lr0..=lr1).exp();
        let cw = (target * aspect).sqrt().round() as usize;
        let ch = (target / aspect).sqrt().round() as usize;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let top = rng.random_range(0..=h - ch);
            let left = rng.random_range(0..=w - cw);
            return CropBox {
                top,
                left,
                height: ch,
                width: cw,
            };
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (cw, ch) = if in_ratio < ratio.0 {
        (w, ((w as f64 / ratio.0).round() as usize).clamp(1, h))
    } else if in_ratio > ratio.1 {
        (((h as f64 * ratio.1).round() as usize).clamp(1, w), h)
    } else {
        (w, h)
    };
    CropBox {
        top: (h - ch) / 2,
        left: (w - cw) / 2,
        height: ch,
        width: cw,
    }
}

impl Pipeline {
    /// Output (h, w) for an input of (h, w).
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        self.ops.iter().fold((h, w), |s, op| match op {
            Op::ResizedCrop { size, .. } => *size,
            _ => s,
        })
    }

    pub fn apply(&self, img: &Image, rng: &mut impl Rng) -> Image {
        match self.first_crop(rng, img.h, img.w) {
            Some((b, (oh, ow))) => self.apply_rest(ops::resized_crop(img, b, oh, ow), rng),
            None => self.apply_rest(img.clone(), rng),
        }
    }

    /// When the pipeline starts with a random resized crop: its box in an `h` x `w` image
    /// (drawn from `rng` first, as `apply` draws it) and its output (h, w). Streamed images
    /// take it in their full-resolution coordinates and decode only what it needs.
    pub fn first_crop(
        &self,
        rng: &mut impl Rng,
        h: usize,
        w: usize,
    ) -> Option<(CropBox, (usize, usize))> {
        match self.ops.first()? {
            Op::ResizedCrop { size, scale, ratio } => {
                Some((random_crop_box(rng, h, w, *scale, *ratio), *size))
            }
            _ => None,
        }
    }

    /// The ops after the first crop (`first_crop`), or all of them when there is none, on
    /// `img` with the rest of `rng`'s draws.
    pub fn apply_rest(&self, img: Image, rng: &mut impl Rng) -> Image {
        let skip = matches!(self.ops.first(), Some(Op::ResizedCrop { .. })) as usize;
        let mut img = img;
        for op in &self.ops[skip..] {
            img = match op {
                Op::ResizedCrop { size, scale, ratio } => {
                    let b = random_crop_box(rng, img.h, img.w, *scale, *ratio);
                    ops::resized_crop(&img, b, size.0, size.1)
                }
                Op::HFlip { p } => {
                    if rng.random_bool(*p) {
                        ops::hflip(&img)
                    } else {
                        img
                    }
                }
                Op::ColorJitter {
                    p,
                    brightness,
                    contrast,
                    saturation,
                    hue,
                } => {
                    if !rng.random_bool(*p) {
                        continue;
                    }
                    let mut order = [0, 1, 2, 3];
                    order.shuffle(rng);
                    let factor = |rng: &mut dyn rand::RngCore, x: f64| {
                        rng.random_range((1.0 - x).max(0.0)..=1.0 + x) as f32
                    };
                    for k in order {
                        img = match k {
                            0 if *brightness > 0.0 => {
                                ops::adjust_brightness(&img, factor(rng, *brightness))
                            }
                            1 if *contrast > 0.0 => {
                                ops::adjust_contrast(&img, factor(rng, *contrast))
                            }
                            2 if *saturation > 0.0 => {
                                ops::adjust_saturation(&img, factor(rng, *saturation))
                            }
                            3 if *hue > 0.0 => {
                                ops::adjust_hue(&img, rng.random_range(-*hue..=*hue) as f32)
                            }
                            _ => img,
                        };
                    }
                    img
                }
                Op::Grayscale { p } => {
                    if rng.random_bool(*p) {
                        ops::grayscale(&img)
                    } else {
                        img
                    }
                }
                Op::GaussianBlur {
                    p,
                    kernel_frac,
                    sigma,
                } => {
                    if rng.random_bool(*p) {
                        let k =
                            ((img.h.min(img.w) as f64 * kernel_frac).round() as usize).max(1) | 1;
                        let s = rng.random_range(sigma.0..=sigma.1) as f32;
                        ops::gaussian_blur(&img, k, s)
                    } else {
                        img
                    }
                }
                Op::Solarize { p, threshold } => {
                    if rng.random_bool(*p) {
                        ops::solarize(&img, *threshold)
                    } else {
                        img
                    }
                }
            };
        }
        img
    }
}

impl Views {
    /// The views of image `index` in `epoch`.
    pub fn apply(&self, img: &Image, seed: u64, epoch: usize, index: usize) -> Vec<Image> {
        self.pipelines
            .iter()
            .enumerate()
            .map(|(v, p)| p.apply(img, &mut sample_rng(seed, epoch, index, v)))
            .collect()
    }

    /// Output (h, w) of each view for (h, w) images.
    pub fn sizes(&self, h: usize, w: usize) -> Vec<(usize, usize)> {
        self.pipelines.iter().map(|p| p.output_size(h, w)).collect()
    }

    /// The views by size, in order: (number of views, their (h, w)). Multi-crop's views
    /// (2 global, then V local) make two groups; `validate` keeps each size in one group.
    pub fn size_groups(&self, h: usize, w: usize) -> Vec<(usize, (usize, usize))> {
        let mut groups: Vec<(usize, (usize, usize))> = Vec::new();
        for size in self.sizes(h, w) {
            match groups.last_mut() {
                Some((n, s)) if *s == size => *n += 1,
                _ => groups.push((1, size)),
            }
        }
        groups
    }

    pub fn validate(&self, h: usize, w: usize) -> anyhow::Result<()> {
        if self.pipelines.is_empty() {
            anyhow::bail!("a view set needs at least one pipeline");
        }
        let groups = self.size_groups(h, w);
        for (i, (_, size)) in groups.iter().enumerate() {
            if groups[..i].iter().any(|(_, s)| s == size) {
                anyhow::bail!(
                    "the views of size {size:?} must follow one another (they are batched by size)"
                );
            }
        }
        for p in &self.pipelines {
            for op in &p.ops {
                let probs = match op {
                    Op::ResizedCrop { size, scale, ratio } => {
                        if size.0 == 0
                            || size.1 == 0
                            || !(0.0 < scale.0 && scale.0 <= scale.1 && scale.1 <= 1.0)
                            || !(0.0 < ratio.0 && ratio.0 <= ratio.1)
                        {
                            anyhow::bail!("invalid crop {size:?} scale {scale:?} ratio {ratio:?}");
                        }
                        1.0
                    }
                    Op::HFlip { p }
                    | Op::ColorJitter { p, .. }
                    | Op::Grayscale { p }
                    | Op::GaussianBlur { p, .. }
                    | Op::Solarize { p, .. } => *p,
                };
                if !(0.0..=1.0).contains(&probs) {
                    anyhow::bail!("probability {probs} of {op:?} is not in [0, 1]");
                }
                if let Op::GaussianBlur { sigma, .. } = op
                    && !(0.0 < sigma.0 && sigma.0 <= sigma.1)
                {
                    anyhow::bail!("blur sigma range {sigma:?} must be positive and ordered");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simclr_like(size: usize) -> Pipeline {
        let mut p = bench::simclr_pipeline(size);
        p.ops.push(Op::Solarize {
            p: 0.2,
            threshold: 128,
        });
        p
    }

    fn test_image(c: usize, h: usize, w: usize) -> Image {
        Image::new(
            c,
            h,
            w,
            (0..c * h * w).map(|i| (i * 37 % 256) as u8).collect(),
        )
    }

    #[test]
    fn crop_boxes_respect_scale_ratio_and_bounds() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for _ in 0..500 {
            let b = random_crop_box(&mut rng, 32, 48, (0.2, 0.6), (0.5, 2.0));
            assert!(b.top + b.height <= 32 && b.left + b.width <= 48);
            let frac = (b.height * b.width) as f64 / (32.0 * 48.0);
            // rounding of the sides moves the area a little
            assert!((0.17..=0.65).contains(&frac), "{b:?} area {frac}");
            let r = b.width as f64 / b.height as f64;
            assert!((0.4..=2.3).contains(&r), "{b:?} ratio {r}");
        }
        // Impossible ratios fall back to a centred crop clamped to the range.
        let b = random_crop_box(&mut rng, 10, 100, (1.0, 1.0), (1.0, 1.0));
        assert_eq!(
            b,
            CropBox {
                top: 0,
                left: 45,
                height: 10,
                width: 10
            }
        );
    }

    #[test]
    fn views_are_reproducible_and_distinct() {
        let views = Views {
            pipelines: vec![simclr_like(16), simclr_like(16)],
        };
        views.validate(28, 28).unwrap();
        for c in [1, 3] {
            let img = test_image(c, 28, 28);
            let a = views.apply(&img, 7, 2, 123);
            assert_eq!(a, views.apply(&img, 7, 2, 123));
            assert_eq!((a[0].c, a[0].h, a[0].w), (c, 16, 16));
            assert_ne!(a[0], a[1], "the two views should differ");
            assert_ne!(
                a,
                views.apply(&img, 7, 3, 123),
                "another epoch gives other views"
            );
            assert_ne!(
                a,
                views.apply(&img, 7, 2, 124),
                "another image index gives other views"
            );
        }
    }

    #[test]
    fn rng_depends_only_on_its_key() {
        let draw = |s, e, i, v| sample_rng(s, e, i, v).random::<u64>();
        assert_eq!(draw(1, 2, 3, 0), draw(1, 2, 3, 0));
        let all = [
            draw(1, 2, 3, 0),
            draw(2, 2, 3, 0),
            draw(1, 3, 3, 0),
            draw(1, 2, 4, 0),
            draw(1, 2, 3, 1),
        ];
        for i in 0..all.len() {
            for j in i + 1..all.len() {
                assert_ne!(all[i], all[j]);
            }
        }
    }

    #[test]
    fn invalid_views_are_rejected() {
        let bad = Views {
            pipelines: vec![Pipeline {
                ops: vec![Op::HFlip { p: 1.5 }],
            }],
        };
        assert!(
            bad.validate(8, 8)
                .unwrap_err()
                .to_string()
                .contains("probability")
        );
        let mixed = Views {
            pipelines: vec![simclr_like(16), simclr_like(8), simclr_like(16)],
        };
        assert!(
            mixed
                .validate(28, 28)
                .unwrap_err()
                .to_string()
                .contains("follow one another")
        );
    }

    #[test]
    fn multi_crop_views_are_grouped_by_size() {
        let views = Views {
            pipelines: vec![
                simclr_like(16),
                simclr_like(16),
                simclr_like(8),
                simclr_like(8),
                simclr_like(8),
            ],
        };
        views.validate(28, 28).unwrap();
        assert_eq!(views.size_groups(28, 28), vec![(2, (16, 16)), (3, (8, 8))]);
    }
}
