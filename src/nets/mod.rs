//! Encoders, decoders and heads, configured by data (lists of widths, a width multiplier).
//! Every encoder maps `[B, C, H, W]` images to `[B, D]` feature vectors.

pub mod cnn;
pub mod decoder;
pub mod resnet;

pub use decoder::Decoder;

use crate::config::Config;
use anyhow::{Result, bail};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// An encoder network with its output feature dimension.
#[derive(Debug)]
pub struct Encoder {
    net: nn::SequentialT,
    /// Length of the feature vector it produces.
    pub dim: i64,
}

impl Encoder {
    /// `[B, C, H, W]` -> `[B, dim]`
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.net.forward_t(xs, train)
    }
}

/// Builds the encoder named in `cfg.encoder` for images with `in_channels` channels.
pub fn build_encoder(p: &nn::Path, cfg: &Config, in_channels: i64) -> Result<Encoder> {
    match cfg.encoder.as_str() {
        "cnn" => {
            let (net, dim) = cnn::small_cnn(p, in_channels, &cfg.cnn_widths);
            Ok(Encoder { net, dim })
        }
        "resnet18" => {
            let (net, dim) = resnet::resnet18_cifar(p, in_channels, cfg.resnet_width);
            Ok(Encoder { net, dim })
        }
        other => bail!("option encoder = '{other}' is not one of {:?}", crate::config::ENCODERS),
    }
}

/// Number of scalars in the trainable variables below `prefix` ("" for all).
pub fn parameter_count(vs: &nn::VarStore, prefix: &str) -> i64 {
    vs.variables()
        .iter()
        .filter(|(name, t)| name.starts_with(prefix) && t.requires_grad())
        .map(|(_, t)| t.numel() as i64)
        .sum()
}

/// conv -> batch norm -> ReLU, the building block of the small CNN and the ResNet stem.
pub fn conv_bn_relu(p: &nn::Path, conv: &str, bn: &str, cin: i64, cout: i64, stride: i64) -> nn::SequentialT {
    let cfg = nn::ConvConfig { stride, padding: 1, bias: false, ..Default::default() };
    nn::seq_t()
        .add(nn::conv2d(p / conv, cin, cout, 3, cfg))
        .add(nn::batch_norm2d(p / bn, cout, Default::default()))
        .add_fn(|x| x.relu())
}
