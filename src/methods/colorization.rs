//! Colorization (Zhang et al. 2016): from the lightness L of a colour image, predict its
//! chroma ab (CIE Lab, D65).
//!
//! - The encoder (under `encoder`, the evaluated one) takes one channel, L / 100 in [0, 1],
//!   and gives a vector; the decoder spreads it back to a `[16, H, W]` map, which, next to
//!   L itself, goes through conv3x3(17 -> 64) -> ReLU -> conv1x1 to the per-pixel output.
//!   The evaluated encoder is the same network on the lightness of the data images
//!   (`EncoderInput::Lightness`), and so is the PyTorch export.
//! - `colorization_loss = classify` (the paper's): ab is quantized on a grid of 10 (centres
//!   at multiples of 10 in [-110, 110]), keeping the bins that sRGB colours reach (a
//!   64^3 sample of the gamut); every grid cell maps to its nearest kept bin. The loss is
//!   the per-pixel cross-entropy, weighted by class rebalancing: w ∝ 1 / ((1 - λ) p̃ + λ / Q)
//!   with λ = 0.5, p̃ the empirical ab distribution smoothed by a Gaussian of σ = 5, and
//!   E_p̃[w] = 1. The distribution is counted over all training pixels seen so far (a
//!   non-trainable variable, saved in the checkpoint). `regress`: L2 on ab / 110.
//! - It needs colour data: on images with another number of channels than 3, building the
//!   method fails with an error naming it and the channel count.

use super::{DataInfo, Method, MethodConfig, MethodSpec, StepCtx};
use crate::config::ColorizationLoss;
use crate::dist::current as dist;
use crate::nets::lab::{lab_to_rgb, rgb_to_lab};
use crate::nets::{self, Decoder, Encoder, EncoderInput};
use crate::{losses, precision};
use anyhow::{Result, bail};
use tch::nn;
use tch::{Device, Kind, Tensor};

pub const SPEC: MethodSpec = MethodSpec {
    name: "colorization",
    summary: "predict the ab colour channels from the L channel (Lab; needs colour data)",
    keys: &[&["decoder_widths", "colorization_loss"]],
    validate: super::no_own_keys,
    uses_labels: false,
    encoders: super::ANY_ENCODER,
    build: |p, cfg, data| Ok(Box::new(Colorization::new(p, cfg, data)?)),
};

/// The ab quantization grid: centres at multiples of `STEP` in [-110, 110].
const STEP: f64 = 10.0;
const GRID: i64 = 23;
/// Class rebalancing: mixing with the uniform distribution, and smoothing σ in ab units.
const REBALANCE_LAMBDA: f64 = 0.5;
const SMOOTH_SIGMA: f64 = 5.0;
/// Channels of the decoder's map, next to L before the head.
const MAP_CHANNELS: i64 = 16;

/// Grid cell `[...]` int64 in 0..GRID^2 of ab values (a and b in tensors of equal shape).
fn grid_cell(a: &Tensor, b: &Tensor) -> Tensor {
    let idx = |t: &Tensor| {
        (t / STEP)
            .round()
            .clamp(-(GRID / 2) as f64, (GRID / 2) as f64)
            .to_kind(Kind::Int64)
            + GRID / 2
    };
    idx(a) * GRID + idx(b)
}

/// The in-gamut ab bins: (centres `[Q, 2]` as (a, b), and for each of the GRID^2 grid cells
/// the index of the nearest in-gamut bin).
pub fn ab_bins() -> (Vec<[f64; 2]>, Vec<i64>) {
    let n = 64;
    let v = Tensor::arange(n, (Kind::Float, Device::Cpu)) / (n - 1) as f64;
    let r = v.view([n, 1, 1]).expand([n, n, n], false);
    let g = v.view([1, n, 1]).expand([n, n, n], false);
    let b = v.view([1, 1, n]).expand([n, n, n], false);
    let rgb = Tensor::stack(&[r, g, b], 0).view([1, 3, n * n, n]);
    let lab = rgb_to_lab(&rgb);
    let cells = grid_cell(&lab.get(0).get(1), &lab.get(0).get(2));
    let hit = cells.flatten(0, -1).bincount::<Tensor>(None, GRID * GRID);
    let hit = Vec::<i64>::try_from(&hit).unwrap();
    let centre = |cell: usize| {
        let g = GRID as usize;
        let c = |i: usize| (i as f64 - (g / 2) as f64) * STEP;
        [c(cell / g), c(cell % g)]
    };
    let kept: Vec<usize> = (0..hit.len()).filter(|&c| hit[c] > 0).collect();
    let centres: Vec<[f64; 2]> = kept.iter().map(|&c| centre(c)).collect();
    let nearest = (0..hit.len())
        .map(|cell| {
            let [a, b] = centre(cell);
            let d = |k: &[f64; 2]| (k[0] - a).powi(2) + (k[1] - b).powi(2);
            (0..centres.len())
                .min_by(|&i, &j| d(&centres[i]).total_cmp(&d(&centres[j])))
                .unwrap() as i64
        })
        .collect();
    (centres, nearest)
}

/// Class-rebalancing weights `[Q]` from bin counts `[Q]` and the Gaussian smoothing matrix
/// `[Q, Q]` (rows sum to 1): w ∝ 1 / ((1 - λ) p̃ + λ / Q), normalised to E_p̃[w] = 1.
pub fn rebalancing_weights(counts: &Tensor, smooth: &Tensor) -> Tensor {
    let q = counts.size()[0] as f64;
    let p = counts / counts.sum(Kind::Float).clamp_min(1.0); // [Q]
    let p = smooth.matmul(&p.unsqueeze(1)).squeeze_dim(1); // [Q]
    let w = ((&p * (1.0 - REBALANCE_LAMBDA)) + REBALANCE_LAMBDA / q).reciprocal();
    let norm = (&p * &w).sum(Kind::Float); // []
    // Before any count, p̃ is 0 and every weight is 1 (chosen on the device: no host read).
    (&w / &norm).where_self(&norm.gt(0.0), &w.ones_like())
}

pub struct Colorization {
    /// Trained on L / 100 `[B, 1, H, W]`.
    encoder: Encoder,
    /// The same network on the lightness of RGB images, as evaluation sees it.
    eval_encoder: Encoder,
    decoder: Decoder,
    head: nn::SequentialT,
    classify: bool,
    /// `[Q, 2]` bin centres (a, b).
    centres: Tensor,
    /// `[GRID^2]` int64: the bin of each grid cell.
    cell_to_bin: Tensor,
    /// `[Q, Q]` Gaussian smoothing of the ab distribution.
    smooth: Tensor,
    /// `[Q]` ab bin counts of the training pixels seen (non-trainable, checkpointed).
    counts: Tensor,
}

impl Colorization {
    pub fn new(p: &nn::Path, cfg: &MethodConfig, data: &DataInfo) -> Result<Colorization> {
        let [c, h, w] = data.shape;
        if c != 3 {
            bail!(
                "method colorization needs colour images (3 channels, RGB), but the data has {c} channel(s) of {h}x{w}; use a colour data set"
            );
        }
        let classify = cfg.keys.colorization_loss == ColorizationLoss::Classify;
        let dev = p.device();
        let (centres, nearest) = ab_bins();
        let q = centres.len() as i64;
        let flat: Vec<f32> = centres.iter().flat_map(|c| c.map(|v| v as f32)).collect();
        let centres = Tensor::from_slice(&flat).view([q, 2]).to_device(dev);
        let d2 = (centres.unsqueeze(1) - centres.unsqueeze(0))
            .square()
            .sum_dim_intlist(&[2i64][..], false, Kind::Float); // [Q, Q]
        let k = (d2 / (-2.0 * SMOOTH_SIGMA * SMOOTH_SIGMA)).exp();
        let smooth = &k / k.sum_dim_intlist(&[1i64][..], true, Kind::Float);
        let encoder = nets::build_encoder(&(p / "encoder"), cfg.encoder, 1);
        let decoder = Decoder::new(
            &(p / "decoder"),
            encoder.dim,
            &cfg.keys.decoder_widths,
            [MAP_CHANNELS, h, w],
        )?;
        let out = if classify { q } else { 2 };
        let conv = |padding| nn::ConvConfig {
            padding,
            ..Default::default()
        };
        let head = nn::seq_t()
            .add(nn::conv2d(p / "head1", MAP_CHANNELS + 1, 64, 3, conv(1)))
            .add_fn(|x| x.relu())
            .add(nn::conv2d(p / "head2", 64, out, 1, conv(0)));
        Ok(Colorization {
            eval_encoder: encoder.with_input(EncoderInput::Lightness),
            encoder,
            decoder,
            head,
            classify,
            centres,
            cell_to_bin: Tensor::from_slice(&nearest).to_device(dev),
            smooth,
            counts: p.zeros_no_train("ab_counts", &[q]),
        })
    }

    /// The ab bin `[B, H, W]` of each pixel of Lab images `[B, 3, H, W]`.
    pub fn bins(&self, lab: &Tensor) -> Tensor {
        let cells = grid_cell(&lab.select(1, 1), &lab.select(1, 2)); // [B, H, W]
        self.cell_to_bin
            .index_select(0, &cells.flatten(0, -1))
            .view_as(&cells)
    }

    /// L / 100 `[B, 1, H, W]` -> per-pixel output `[B, Q or 2, H, W]`.
    fn forward(&self, l: &Tensor, train: bool) -> Tensor {
        let z = self.encoder.forward_t(l, train); // [B, D]
        let map = self.decoder.forward_t(&z, train); // [B, 16, H, W]
        Tensor::cat(&[map, l.shallow_clone()], 1).apply_t(&self.head, train)
    }

    /// Predicted ab `[B, 2, H, W]` from the output: the annealed mean of the bin
    /// distribution (temperature 0.38, as in the paper) or the regressed values.
    fn predicted_ab(&self, out: &Tensor) -> Tensor {
        if !self.classify {
            return out * 110.0;
        }
        let p = (out / 0.38).softmax(1, Kind::Float); // [B, Q, H, W]
        Tensor::einsum(
            "bqhw,qc->bchw",
            &[p, self.centres.shallow_clone()],
            None::<i64>,
        )
    }
}

impl Method for Colorization {
    fn loss(&mut self, images: &[Tensor], _labels: &Tensor, _ctx: &StepCtx) -> Tensor {
        let images = &images[0]; // [B, C, H, W]
        let lab = tch::no_grad(|| rgb_to_lab(images)); // [B, 3, H, W]
        let l = lab.narrow(1, 0, 1) / 100.0; // [B, 1, H, W]
        let out = self.forward(&l, true);
        if !self.classify {
            let ab = lab.narrow(1, 1, 2) / 110.0; // [B, 2, H, W]
            return precision::in_fp32([&out, &ab], |[out, ab]| losses::mse(&out, &ab));
        }
        let q = self.centres.size()[0];
        let bins = self.bins(&lab).flatten(0, -1); // [B*H*W]
        let weights = tch::no_grad(|| {
            // The pixels of the global batch, counted on every rank: the counts stay equal.
            let seen = bins
                .bincount::<Tensor>(None, q)
                .to_kind(Kind::Float)
                .unsqueeze(0); // [1, Q]
            let seen = dist::all_gather(&seen).sum_dim_intlist(&[0i64][..], false, Kind::Float); // [Q]
            let _ = self.counts.g_add_(&seen);
            rebalancing_weights(&self.counts, &self.smooth)
        });
        let logits = out.permute([0, 2, 3, 1]).reshape([-1, q]); // [B*H*W, Q]
        precision::in_fp32([&logits], |[l]| {
            losses::class_weighted_cross_entropy(&l, &bins, &weights)
        })
    }
    /// The network on the lightness of RGB images: what evaluation feeds it.
    #[allow(clippy::misnamed_getters)]
    fn encoder(&self) -> &Encoder {
        &self.eval_encoder
    }
    /// Rows of (the L channel as grey, the colourised image, the original).
    fn examples(&self, images: &Tensor) -> Option<Tensor> {
        let lab = rgb_to_lab(images);
        let l = lab.narrow(1, 0, 1);
        let ab = self.predicted_ab(&self.forward(&(&l / 100.0), false));
        let gray = lab_to_rgb(&Tensor::cat(&[l.shallow_clone(), ab.zeros_like()], 1));
        let colour = lab_to_rgb(&Tensor::cat(&[l, ab], 1));
        Some(super::side_by_side(&[gray, colour, images.shallow_clone()]))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::{Dataset, Split};
    use crate::train::tests::{tiny_config, train_losses};

    #[test]
    fn ab_bins_cover_the_gamut() {
        let _rng = crate::torch_rng_lock();
        let (centres, nearest) = ab_bins();
        // Zhang et al. count 313 in-gamut bins with their grid; ours is of the same size.
        assert!((250..=330).contains(&centres.len()), "{}", centres.len());
        assert!(centres.contains(&[0.0, 0.0]));
        assert_eq!(nearest.len(), 23 * 23);
        // Cells in the gamut map to themselves.
        let grey = nearest[11 * 23 + 11] as usize;
        assert_eq!(centres[grey], [0.0, 0.0]);
    }

    #[test]
    fn rebalancing_favours_rare_colours() {
        let _rng = crate::torch_rng_lock();
        let smooth = Tensor::eye(3, (Kind::Float, Device::Cpu));
        let w = rebalancing_weights(&Tensor::from_slice(&[8f32, 1.0, 1.0]), &smooth);
        let w = Vec::<f32>::try_from(&w).unwrap();
        // p = [0.8, 0.1, 0.1]; 1/(0.5 p + 0.5/3) = [1.765, 4.615, 4.615], E_p = 2.335.
        assert!(
            (w[0] - 0.7557).abs() < 1e-3 && (w[1] - 1.9764).abs() < 1e-3,
            "{w:?}"
        );
        let none = rebalancing_weights(&Tensor::zeros([3], (Kind::Float, Device::Cpu)), &smooth);
        assert_eq!(Vec::<f32>::try_from(&none).unwrap(), [1.0, 1.0, 1.0]);
    }

    /// 64 8x8 colour images: on a dark background, a square whose hue depends on its
    /// position (label), at varying brightness.
    pub(crate) fn tiny_colour_dataset() -> Dataset {
        let colours = [
            [230u8, 40, 40],
            [40, 200, 60],
            [50, 60, 230],
            [230, 210, 40],
        ];
        let make = |n: usize| {
            let mut imgs = vec![20u8; n * 3 * 64];
            let mut labels = Vec::new();
            for i in 0..n {
                let k = i % 4;
                let (r, c) = [(0, 0), (0, 4), (4, 0), (4, 4)][k];
                let scale = 0.7 + 0.3 * ((i * 7) % 10) as f32 / 10.0;
                for ch in 0..3 {
                    for y in r..r + 4 {
                        for x in c..c + 4 {
                            imgs[((i * 3 + ch) * 8 + y) * 8 + x] =
                                (colours[k][ch] as f32 * scale) as u8;
                        }
                    }
                }
                labels.push(k as i64);
            }
            Split::new(imgs, labels, [3, 8, 8]).unwrap()
        };
        Dataset {
            name: "tiny-colour".into(),
            unlabeled: None,
            train: make(64),
            test: make(16),
            num_classes: 4,
            class_names: vec![],
        }
    }

    #[test]
    fn colorization_learns_on_colour_data_and_refuses_grey() {
        let _rng = crate::torch_rng_lock();
        for &loss in ColorizationLoss::ALL {
            let cfg = {
                let mut c = tiny_config("colorization");
                c.keys.colorization_loss = loss;
                c.train.epochs = 10;
                c
            };
            let l = train_losses(&cfg, &tiny_colour_dataset());
            assert!(l[9] < 0.7 * l[0], "{loss}: losses {l:?}");
        }
        let vs = nn::VarStore::new(Device::Cpu);
        let grey = DataInfo {
            shape: [1, 28, 28],
            num_classes: 10,
        };
        let e = Colorization::new(
            &vs.root(),
            &tiny_config("colorization").method_view(),
            &grey,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("method colorization needs colour images") && e.contains("has 1 channel(s)"),
            "{e}"
        );
    }

    #[test]
    fn the_evaluated_encoder_sees_the_lightness() {
        let _rng = crate::torch_rng_lock();
        let vs = nn::VarStore::new(Device::Cpu);
        let info = DataInfo {
            shape: [3, 8, 8],
            num_classes: 4,
        };
        let c = Colorization::new(
            &vs.root(),
            &tiny_config("colorization").method_view(),
            &info,
        )
        .unwrap();
        let x = Tensor::rand([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        let l = rgb_to_lab(&x).narrow(1, 0, 1) / 100.0; // [2, 1, 8, 8]
        let want = c.encoder.forward_t(&l, false);
        let got = c.encoder().forward_t(&x, false);
        assert_eq!(got.size(), vec![2, c.encoder().dim]);
        assert!(got.allclose(&want, 1e-6, 1e-6, false));
        assert_eq!(c.encoder().in_channels, 1);
        assert_eq!(c.examples(&x).unwrap().size(), vec![3, 18, 28]);
    }
}
