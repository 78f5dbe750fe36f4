//! Context encoder (Pathak et al. 2016): hide a region of the image, and let an
//! encoder-decoder paint it back from the visible context.
//!
//! - The hole (`ce_mask`): `center`, a central square of side `ce_hole` x the image side
//!   (0.5: a quarter of the image, as the paper's 64x64 centre of 128x128); `random-blocks`,
//!   the union of 4 random squares of half that side (at most the same area); or
//!   `random-region`, a smooth random blob (4x4 uniform noise, upsampled bilinearly, above
//!   its per-image quantile) covering exactly round(ce_hole^2 H W) pixels, a stand-in for
//!   the paper's random segmentation-mask shapes.
//! - The input: the image with the hole filled with the batch's mean value per channel (the
//!   paper's mean pixel).
//! - The output: the decoder's full image; the L2 reconstruction loss is taken over the
//!   hole (weight 1) and a visible ring of `ce_overlap` pixels around it (weight
//!   `ce_overlap_weight`, 10 in the paper, to blend the filling into its context),
//!   normalised by the total weight.
//! - Optional adversarial loss (`ce_adversarial`): a small discriminator (two stride-2 4x4
//!   convolutions with LeakyReLU, no BatchNorm, global average pooling, a linear logit)
//!   tells real images from completed ones (context + prediction in the hole). The loss is
//!   (1 - λ) L_rec + λ L_adv with λ = `ce_adv_weight` = 0.001.
//!
//! The training loop has one optimizer and one loss, so the two players are trained in one
//! backward pass: the loss adds the discriminator's own loss on (real, detached completion),
//! and the generator term λ (L_adv(D(fake)) - L_adv(D(fake.detach()))). The subtracted
//! copy has the same value and the same gradient with respect to the discriminator, so the
//! discriminator's weights get only their own loss's gradient, and the generator gets λ
//! L_adv's. The logged loss is then (1 - λ) L_rec + L_D.
//!
//! The evaluated encoder is the encoder half (under `encoder`), fed whole images.

use super::{DataInfo, Method, MethodConfig, MethodSpec, StepCtx};
use crate::config::{CeMask, check};
use crate::nets::{self, Decoder, Encoder};
use crate::{losses, precision};
use anyhow::{Result, bail};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

pub const SPEC: MethodSpec = MethodSpec {
    name: "context-encoder",
    summary: "inpaint a hidden region from its context (L2 on the hole, optional adversarial loss)",
    keys: &[&[
        "decoder_widths",
        "ce_mask",
        "ce_hole",
        "ce_overlap",
        "ce_overlap_weight",
        "ce_adversarial",
        "ce_adv_weight",
    ]],
    validate,
    uses_labels: false,
    encoders: super::ANY_ENCODER,
    build: |p, cfg, data| Ok(Box::new(ContextEncoder::new(p, cfg, data)?)),
};

/// Holes of `b` images of `h` x `w` pixels: `[b, 1, h, w]` float, 1 inside the hole.
/// `frac` is the hole's side as a fraction of the image side.
pub fn hole_masks(kind: CeMask, frac: f64, b: i64, h: i64, w: i64, device: Device) -> Tensor {
    let opts = (Kind::Int64, device);
    let side = ((frac * h.min(w) as f64).round() as i64).clamp(1, h.min(w));
    // [b, n] indicator of the interval [start, start + len) along an axis of size n;
    // `start` is [b, 1].
    let span = |start: &Tensor, len: i64, n: i64| {
        let i = Tensor::arange(n, opts).view([1, n]);
        i.ge_tensor(start).logical_and(&i.lt_tensor(&(start + len)))
    };
    let square = |ys: &Tensor, xs: &Tensor, s: i64| {
        span(ys, s, h)
            .unsqueeze(2)
            .logical_and(&span(xs, s, w).unsqueeze(1)) // [b, h, w]
    };
    let m = match kind {
        CeMask::Center => {
            let ys = Tensor::full([b, 1], (h - side) / 2, opts);
            let xs = Tensor::full([b, 1], (w - side) / 2, opts);
            square(&ys, &xs, side)
        }
        CeMask::RandomBlocks => {
            let s = (side / 2).max(1);
            let mut m = Tensor::zeros([b, h, w], (Kind::Bool, device));
            for _ in 0..4 {
                let ys = Tensor::randint(h - s + 1, [b, 1], opts);
                let xs = Tensor::randint(w - s + 1, [b, 1], opts);
                m = m.logical_or(&square(&ys, &xs, s));
            }
            m
        }
        CeMask::RandomRegion => {
            let n = ((frac * frac * (h * w) as f64).round() as i64).clamp(1, h * w);
            let fopts = (Kind::Float, device);
            let noise = Tensor::rand([b, 1, 4, 4], fopts)
                .upsample_bilinear2d([h, w], false, None, None)
                .view([b, h * w]) // [b, h*w]
                + Tensor::rand([b, h * w], fopts) * 1e-4; // breaks the interpolation's ties
            let (top, _) = noise.topk(n, 1, true, false); // [b, n]
            let threshold = top.min_dim(1, true).0; // [b, 1]
            noise.ge_tensor(&threshold).view([b, h, w])
        }
    };
    m.unsqueeze(1).to_kind(Kind::Float)
}

/// The loss weights of a hole mask `[B, 1, H, W]`: 1 in the hole, `ring_weight` on the
/// visible pixels within `overlap` pixels of it (Chebyshev distance), 0 elsewhere.
pub fn overlap_weights(mask: &Tensor, overlap: i64, ring_weight: f64) -> Tensor {
    if overlap == 0 {
        return mask.shallow_clone();
    }
    let k = 2 * overlap + 1;
    let grown = mask.max_pool2d([k, k], [1, 1], [overlap, overlap], [1, 1], false);
    let ring = grown - mask;
    mask + ring * ring_weight
}

pub struct ContextEncoder {
    encoder: Encoder,
    decoder: Decoder,
    discriminator: Option<nn::Sequential>,
    kind: CeMask,
    hole: f64,
    overlap: i64,
    overlap_weight: f64,
    adv_weight: f64,
}

fn validate(cfg: &MethodConfig) -> Result<()> {
    if !(cfg.keys.ce_hole > 0.0 && cfg.keys.ce_hole < 1.0) {
        bail!("option ce_hole = {} must be in (0, 1)", cfg.keys.ce_hole);
    }
    check::in_range("ce_overlap", cfg.keys.ce_overlap, 0..=16)?;
    check::non_negative("ce_overlap_weight", cfg.keys.ce_overlap_weight)?;
    check::fraction_below_one("ce_adv_weight", cfg.keys.ce_adv_weight)
}

impl ContextEncoder {
    pub fn new(p: &nn::Path, cfg: &MethodConfig, data: &DataInfo) -> Result<ContextEncoder> {
        let kind = cfg.keys.ce_mask;
        let (encoder, decoder) =
            nets::encoder_decoder(p, cfg.encoder, &cfg.keys.decoder_widths, data.shape)?;
        let discriminator = cfg
            .keys
            .ce_adversarial
            .then(|| discriminator(&(p / "discriminator"), data.shape[0]));
        Ok(ContextEncoder {
            encoder,
            decoder,
            discriminator,
            kind,
            hole: cfg.keys.ce_hole,
            overlap: cfg.keys.ce_overlap,
            overlap_weight: cfg.keys.ce_overlap_weight,
            adv_weight: cfg.keys.ce_adv_weight,
        })
    }

    /// (hole mask `[B, 1, H, W]`, the images with the hole filled by the per-channel mean).
    fn mask_batch(&self, images: &Tensor) -> (Tensor, Tensor) {
        let s = images.size(); // [B, C, H, W]
        let mask = hole_masks(self.kind, self.hole, s[0], s[2], s[3], images.device());
        let fill = images
            .mean_dim(&[0i64, 2, 3][..], true, Kind::Float)
            .detach(); // [1, C, 1, 1]
        let input = images * (mask.ones_like() - &mask) + fill * &mask;
        (mask, input)
    }
}

/// `[B, C, H, W]` -> `[B, 1]` real/fake logits.
fn discriminator(p: &nn::Path, channels: i64) -> nn::Sequential {
    let c = |stride| nn::ConvConfig {
        stride,
        padding: 1,
        ..Default::default()
    };
    nn::seq()
        .add(nn::conv2d(p / "conv1", channels, 32, 4, c(2)))
        .add_fn(|x| x.leaky_relu())
        .add(nn::conv2d(p / "conv2", 32, 64, 4, c(2)))
        .add_fn(|x| x.leaky_relu())
        .add_fn(|x| x.mean_dim(&[-2i64, -1][..], false, Kind::Float)) // [B, 64]
        .add(nn::linear(p / "fc", 64, 1, Default::default()))
}

impl Method for ContextEncoder {
    fn loss(&mut self, images: &[Tensor], _labels: &Tensor, _ctx: &StepCtx) -> Tensor {
        let images = &images[0]; // [B, C, H, W]
        let (mask, input) = self.mask_batch(images); // [B, 1, H, W], [B, C, H, W]
        let z = self.encoder.forward_t(&input, true); // [B, D]
        let pred = self.decoder.forward_t(&z, true); // [B, C, H, W]
        let weights = overlap_weights(&mask, self.overlap, self.overlap_weight);
        let rec = precision::in_fp32([&pred, images, &weights], |[p, x, w]| {
            losses::weighted_mse(&p, &x, &w)
        });
        let Some(d) = &self.discriminator else {
            return rec;
        };
        let bce = |logits: &Tensor, target| {
            precision::in_fp32([logits], |[l]| losses::bce_with_logits(&l, target))
        };
        let lambda = self.adv_weight;
        let fake = images * (mask.ones_like() - &mask) + &pred * &mask; // completed images
        let d_fake_detached = d.forward(&fake.detach()); // [B, 1]
        let d_loss = bce(&d.forward(images), 1.0) + bce(&d_fake_detached, 0.0);
        let g_adv = bce(&d.forward(&fake), 1.0) - bce(&d_fake_detached, 1.0);
        rec * (1.0 - lambda) + g_adv * lambda + d_loss
    }
    fn encoder(&self) -> &Encoder {
        &self.encoder
    }
    /// Rows of (input with its hole, prediction pasted into the hole, original).
    fn examples(&self, images: &Tensor) -> Option<Tensor> {
        let (mask, input) = self.mask_batch(images);
        let pred = self
            .decoder
            .forward_t(&self.encoder.forward_t(&input, false), false);
        let filled = images * (mask.ones_like() - &mask) + pred * &mask;
        Some(super::side_by_side(&[
            input,
            filled,
            images.shallow_clone(),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::tests::{tiny_config, tiny_dataset, train_losses};

    fn ones_at(m: &Tensor, b: i64) -> Vec<(i64, i64)> {
        let s = m.size();
        let mut v = Vec::new();
        for y in 0..s[2] {
            for x in 0..s[3] {
                if m.double_value(&[b, 0, y, x]) == 1.0 {
                    v.push((y, x));
                }
            }
        }
        v
    }

    #[test]
    fn center_mask_is_the_central_square() {
        let _rng = crate::torch_rng_lock();
        let m = hole_masks(CeMask::Center, 0.5, 2, 28, 28, Device::Cpu);
        assert_eq!(m.size(), vec![2, 1, 28, 28]);
        let want: Vec<(i64, i64)> = (7..21).flat_map(|y| (7..21).map(move |x| (y, x))).collect();
        assert_eq!(ones_at(&m, 0), want);
        assert_eq!(ones_at(&m, 1), want);
        // Odd sizes: a 3x3 hole in 7x8 starts at row 2, column 2.
        let m = hole_masks(CeMask::Center, 0.43, 1, 7, 8, Device::Cpu);
        assert_eq!(ones_at(&m, 0)[0], (2, 2));
        assert_eq!(m.sum(Kind::Float).double_value(&[]), 9.0);
    }

    #[test]
    fn random_masks_cover_what_they_claim() {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(5);
        // random-region: exactly round(0.25 * 784) = 196 pixels per image, in one smooth blob
        // (most hidden pixels have a hidden 4-neighbour).
        let m = hole_masks(CeMask::RandomRegion, 0.5, 16, 28, 28, Device::Cpu);
        let per = m.sum_dim_intlist(&[1i64, 2, 3][..], false, Kind::Float);
        assert_eq!(Vec::<f32>::try_from(per).unwrap(), vec![196.0; 16]);
        let right = m.narrow(3, 0, 27) * m.narrow(3, 1, 27);
        let frac_paired = right.sum(Kind::Float).double_value(&[]) / (16.0 * 196.0);
        assert!(frac_paired > 0.8, "{frac_paired}");
        let a = ones_at(&m, 0);
        assert_ne!(a, ones_at(&m, 1));
        // random-blocks: a union of 4 squares of side 7: 49..=196 pixels, each one
        // inside a 7x7 square of hidden pixels.
        let m = hole_masks(CeMask::RandomBlocks, 0.5, 16, 28, 28, Device::Cpu);
        let full7 = m
            .avg_pool2d([7, 7], [1, 1], [0, 0], false, true, None::<i64>)
            .eq(1.0);
        let covered = full7
            .to_kind(Kind::Float)
            .constant_pad_nd([6, 6, 6, 6])
            .max_pool2d([7, 7], [1, 1], [0, 0], [1, 1], false); // pixels inside some all-hidden 7x7 square
        assert!(m.eq_tensor(&covered).all().int64_value(&[]) == 1);
        for b in 0..16 {
            let n = ones_at(&m, b).len();
            assert!((49..=196).contains(&n), "{n}");
        }
    }

    #[test]
    fn overlap_ring_surrounds_the_hole() {
        let _rng = crate::torch_rng_lock();
        let m = hole_masks(CeMask::Center, 0.5, 1, 8, 8, Device::Cpu); // rows/cols 2..6
        let w = overlap_weights(&m, 1, 10.0);
        for y in 0..8i64 {
            for x in 0..8i64 {
                let inside = (2..6).contains(&y) && (2..6).contains(&x);
                let ring = !inside && (1..7).contains(&y) && (1..7).contains(&x);
                let want = if inside {
                    1.0
                } else if ring {
                    10.0
                } else {
                    0.0
                };
                assert_eq!(w.double_value(&[0, 0, y, x]), want, "({y}, {x})");
            }
        }
    }

    #[test]
    fn input_hides_the_hole_and_loss_decreases_with_and_without_adversary() {
        let _rng = crate::torch_rng_lock();
        let cfg = {
            let mut c = tiny_config("context-encoder");
            c.keys.ce_hole = 0.5;
            c.train.epochs = 8;
            c
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let info = DataInfo {
            shape: [1, 8, 8],
            num_classes: 4,
        };
        let ce = ContextEncoder::new(&vs.root(), &cfg.method_view(), &info).unwrap();
        let x = Tensor::rand([3, 1, 8, 8], (Kind::Float, Device::Cpu));
        let (mask, input) = ce.mask_batch(&x);
        let mean = x.mean(Kind::Float).double_value(&[]);
        let hole = input.masked_select(&mask.gt(0.5));
        assert_eq!(hole.size(), vec![3 * 16]);
        assert!((hole - mean).abs().max().double_value(&[]) < 1e-6);
        let outside = mask.lt(0.5);
        assert!(
            input
                .masked_select(&outside)
                .equal(&x.masked_select(&outside))
        );
        let pic = ce.examples(&x).unwrap();
        assert_eq!(pic.size(), vec![1, 3 * 10 - 2, 3 * 10 - 2]);

        let l = train_losses(&cfg, &tiny_dataset());
        assert!(l[7] < 0.5 * l[0], "losses {l:?}");
        let adv = {
            let mut c = cfg.clone();
            c.keys.ce_adversarial = true;
            c
        };
        let la = train_losses(&adv, &tiny_dataset());
        // The adversarial run logs (1 - λ) L_rec + L_D, with L_D near 2 ln 2 at the start,
        // and falls as both players learn (each part on its own: the next test); seen:
        // 1.24 to 0.093.
        assert!(la[0] > 1.0 && la[7] < 0.25 * la[0], "{la:?}");
    }

    /// (L_rec, L_D) of `ce` on `x`, computed here: the weighted squared error of the hole
    /// and its ring, and the discriminator's loss on the real images against the completed
    /// ones.
    fn parts(ce: &ContextEncoder, x: &Tensor) -> (f64, f64) {
        tch::no_grad(|| {
            let (mask, input) = ce.mask_batch(x);
            let pred = ce
                .decoder
                .forward_t(&ce.encoder.forward_t(&input, true), true);
            let w = overlap_weights(&mask, ce.overlap, ce.overlap_weight);
            let rec = ((&pred - x).square() * &w).sum(Kind::Float) / w.sum(Kind::Float);
            let d = ce.discriminator.as_ref().unwrap();
            let fake = x * (mask.ones_like() - &mask) + pred * &mask;
            // -log sigmoid(real logit) - log(1 - sigmoid(fake logit)), each a mean.
            let real = -d.forward(x).sigmoid().log().mean(Kind::Float);
            let completed = -(-d.forward(&fake).sigmoid() + 1.0).log().mean(Kind::Float);
            (rec.double_value(&[]), (real + completed).double_value(&[]))
        })
    }

    /// With the adversary the generator still learns to fill the hole, and the
    /// discriminator learns to tell completed images from real ones: over the steps of one
    /// optimizer on the one loss, the reconstruction error and the discriminator's loss both
    /// fall, and the loss is (1 - λ) L_rec + L_D as the module says.
    #[test]
    fn with_the_adversary_reconstruction_and_discriminator_losses_fall() {
        let _rng = crate::torch_rng_lock();
        let cfg = {
            let mut c = tiny_config("context-encoder");
            c.keys.ce_hole = 0.5;
            c.keys.ce_adversarial = true;
            c
        };
        let info = DataInfo {
            shape: [1, 8, 8],
            num_classes: 4,
        };
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut ce = ContextEncoder::new(&vs.root(), &cfg.method_view(), &info).unwrap();
        let train = tiny_dataset().train;
        let x = Tensor::from_slice(&train.memory().unwrap()[..16 * 64]).view([16, 1, 8, 8]) / 255.0;
        let ctx = StepCtx {
            epoch: 0,
            step: 0,
            total_steps: 1,
        };
        let mut opt = nn::OptimizerConfig::build(nn::Adam::default(), &vs, 1e-2).unwrap();
        let lambda = cfg.keys.ce_adv_weight;
        let mut seen = Vec::new();
        for step in 0..30 {
            let (rec, d) = parts(&ce, &x);
            let l = ce.loss(std::slice::from_ref(&x), &x, &ctx);
            let logged = l.double_value(&[]);
            assert!(
                (logged - ((1.0 - lambda) * rec + d)).abs() < 1e-4,
                "step {step}: {logged} vs (1 - λ) {rec} + {d}"
            );
            seen.push((rec, d));
            opt.backward_step(&l);
        }
        // Seen: L_rec 0.24 -> 0.07, L_D 1.41 -> 0.001.
        let ((rec0, d0), (rec, d)) = (seen[0], seen[seen.len() - 1]);
        assert!(rec < 0.5 * rec0, "reconstruction {rec0} -> {rec}: {seen:?}");
        assert!(d < 0.5 * d0, "discriminator {d0} -> {d}: {seen:?}");
    }

    /// The adversarial context encoder of the gradient tests (λ = 0.5), a batch of 8x8
    /// images and a step.
    fn adversarial_setup() -> (crate::config::Config, DataInfo, Tensor, StepCtx) {
        let cfg = {
            let mut c = tiny_config("context-encoder");
            c.keys.ce_adversarial = true;
            c.keys.ce_adv_weight = 0.5;
            c
        };
        let info = DataInfo {
            shape: [1, 8, 8],
            num_classes: 4,
        };
        let x = Tensor::rand([4, 1, 8, 8], (Kind::Float, Device::Cpu));
        let ctx = StepCtx {
            epoch: 0,
            step: 0,
            total_steps: 1,
        };
        (cfg, info, x, ctx)
    }

    #[test]
    fn adversarial_term_gives_the_discriminator_only_its_own_gradient() {
        let _rng = crate::torch_rng_lock();
        let (cfg, info, x, ctx) = adversarial_setup();
        // Gradient of the full loss vs. of the discriminator's own loss alone.
        let grads = |full: bool| {
            let vs = nn::VarStore::new(Device::Cpu);
            tch::manual_seed(0);
            let mut ce = ContextEncoder::new(&vs.root(), &cfg.method_view(), &info).unwrap();
            tch::manual_seed(1);
            let l = if full {
                ce.loss(std::slice::from_ref(&x), &x, &ctx)
            } else {
                let (mask, _) = ce.mask_batch(&x);
                let d = ce.discriminator.as_ref().unwrap();
                let pred = ce
                    .decoder
                    .forward_t(&ce.encoder.forward_t(&ce.mask_batch(&x).1, true), true);
                let fake = &x * (mask.ones_like() - &mask) + pred * &mask;
                losses::bce_with_logits(&d.forward(&x), 1.0)
                    + losses::bce_with_logits(&d.forward(&fake.detach()), 0.0)
            };
            l.backward();
            let g = vs.variables()["discriminator.conv1.weight"].grad();
            g.copy()
        };
        let (a, b) = (grads(true), grads(false));
        assert!(a.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        assert!(a.allclose(&b, 1e-4, 1e-6, false));
    }

    /// The adversarial term trains the generator: the gradient of the loss in the encoder
    /// and decoder is that of (1 - λ) L_rec + λ BCE(D(completed), real), not that of
    /// (1 - λ) L_rec alone (which a detached or dropped adversarial term would leave).
    #[test]
    fn adversarial_term_gives_the_generator_its_gradient() {
        let _rng = crate::torch_rng_lock();
        let (cfg, info, x, ctx) = adversarial_setup();
        let lambda = cfg.keys.ce_adv_weight;
        // The generator's gradient (every encoder and decoder variable) of: 0 the loss,
        // 1 (1 - λ) L_rec + λ L_adv by hand, 2 (1 - λ) L_rec alone.
        let grads = |which: u8| {
            let vs = nn::VarStore::new(Device::Cpu);
            tch::manual_seed(0);
            let mut ce = ContextEncoder::new(&vs.root(), &cfg.method_view(), &info).unwrap();
            tch::manual_seed(1);
            let l = if which == 0 {
                ce.loss(std::slice::from_ref(&x), &x, &ctx)
            } else {
                let (mask, input) = ce.mask_batch(&x);
                let pred = ce
                    .decoder
                    .forward_t(&ce.encoder.forward_t(&input, true), true);
                let w = overlap_weights(&mask, ce.overlap, ce.overlap_weight);
                let rec = losses::weighted_mse(&pred, &x, &w) * (1.0 - lambda);
                let fake = &x * (mask.ones_like() - &mask) + &pred * &mask;
                let d = ce.discriminator.as_ref().unwrap();
                match which {
                    1 => rec + losses::bce_with_logits(&d.forward(&fake), 1.0) * lambda,
                    _ => rec,
                }
            };
            l.backward();
            let vars = vs.variables();
            let mut names: Vec<&String> = vars
                .keys()
                .filter(|k| !k.starts_with("discriminator") && vars[*k].requires_grad())
                .collect();
            names.sort();
            let g: Vec<Tensor> = names
                .iter()
                .map(|k| vars[*k].grad().flatten(0, -1))
                .collect();
            Tensor::cat(&g, 0)
        };
        let (full, by_hand, rec_only) = (grads(0), grads(1), grads(2));
        let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
        let scale = by_hand.abs().max().double_value(&[]);
        assert!(
            diff(&full, &by_hand) < 1e-4 * scale,
            "the generator's gradient differs from (1 - λ) L_rec + λ L_adv's by {}",
            diff(&full, &by_hand)
        );
        assert!(
            diff(&full, &rec_only) > 1e-3 * scale,
            "the generator's gradient is (1 - λ) L_rec's alone (differs by {}): no adversarial gradient",
            diff(&full, &rec_only)
        );
    }
}
