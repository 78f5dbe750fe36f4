//! A decoder from a feature vector back to an image, built from transposed convolutions.
//!
//! `[B, D]` -> linear -> `[B, widths[0], H/2^n, W/2^n]` -> n stages of
//! (4x4 stride-2 transposed conv -> BN -> ReLU), each doubling the size and moving to the
//! next width (the last stage keeps `widths[n-1]`) -> 3x3 conv to C channels -> sigmoid.

use super::norm::{BatchNorm, batch_norm2d};
use anyhow::{Result, bail};
use tch::Tensor;
use tch::nn::{self, Module};

#[derive(Debug)]
pub struct Decoder {
    fc: nn::Linear,
    stages: Vec<(nn::ConvTranspose2D, BatchNorm)>,
    out: nn::Conv2D,
    start: [i64; 3],
}

impl Decoder {
    /// `out_shape` is `[C, H, W]`; H and W must be divisible by 2^len(widths).
    pub fn new(p: &nn::Path, in_dim: i64, widths: &[i64], out_shape: [i64; 3]) -> Result<Decoder> {
        let n = widths.len() as u32;
        let f = 1i64 << n;
        let [c, h, w] = out_shape;
        if n == 0 || h % f != 0 || w % f != 0 {
            bail!(
                "option decoder_widths = {widths:?}: {} upsampling stages need the image size {h}x{w} to be divisible by {f}",
                widths.len()
            );
        }
        let start = [widths[0], h / f, w / f];
        let fc = nn::linear(p / "fc", in_dim, start.iter().product(), Default::default());
        let cfg = nn::ConvTransposeConfig {
            stride: 2,
            padding: 1,
            bias: false,
            ..Default::default()
        };
        let mut stages = Vec::new();
        for i in 0..widths.len() {
            let (cin, cout) = (widths[i], widths[(i + 1).min(widths.len() - 1)]);
            let sp = p / format!("up{i}");
            stages.push((
                nn::conv_transpose2d(&sp / "deconv", cin, cout, 4, cfg),
                batch_norm2d(&sp / "bn", cout),
            ));
        }
        let last = *widths.last().unwrap();
        let out = nn::conv2d(
            p / "out",
            last,
            c,
            3,
            nn::ConvConfig {
                padding: 1,
                ..Default::default()
            },
        );
        Ok(Decoder {
            fc,
            stages,
            out,
            start,
        })
    }

    /// `[B, D]` -> `[B, C, H, W]` in (0, 1)
    pub fn forward_t(&self, z: &Tensor, train: bool) -> Tensor {
        let b = z.size()[0];
        let [c0, h0, w0] = self.start;
        let mut x = self.fc.forward(z).relu().view([b, c0, h0, w0]);
        for (deconv, bn) in &self.stages {
            x = deconv.forward(&x).apply_t(bn, train).relu();
        }
        self.out.forward(&x).sigmoid()
    }
}
