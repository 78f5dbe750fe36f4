//! Encoders, decoders and heads, configured by data (lists of widths, a width multiplier).
//! Every encoder maps `[B, C, H, W]` images to `[B, D]` feature vectors.

pub mod cnn;
pub mod decoder;
pub mod export;
pub mod momentum;
pub mod resnet;

pub use decoder::Decoder;

use crate::config::Config;
use anyhow::{Result, bail};
use tch::Tensor;
use tch::nn::{self, ModuleT};

/// An encoder network with its output feature dimension.
#[derive(Debug)]
pub struct Encoder {
    net: nn::SequentialT,
    /// Length of the feature vector it produces.
    pub dim: i64,
}

impl Encoder {
    /// Wraps a network that maps `[B, C, H, W]` to `[B, dim]`.
    pub fn new(net: nn::SequentialT, dim: i64) -> Encoder {
        Encoder { net, dim }
    }

    /// `[B, C, H, W]` -> `[B, dim]`
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.net.forward_t(xs, train)
    }
}

/// Builds the encoder named in `cfg.encoder` for images with `in_channels` channels.
pub fn build_encoder(p: &nn::Path, cfg: &Config, in_channels: i64) -> Result<Encoder> {
    match cfg.encoder.as_str() {
        "cnn" => {
            let (net, dim) = cnn::small_cnn(p, in_channels, &cfg.cnn_widths, cfg.cnn_pool);
            Ok(Encoder { net, dim })
        }
        "resnet18" => {
            let (net, dim) = resnet::resnet18_cifar(p, in_channels, cfg.resnet_width);
            Ok(Encoder { net, dim })
        }
        other => bail!(
            "option encoder = '{other}' is not one of {:?}",
            crate::config::ENCODERS
        ),
    }
}

/// An encoder under `encoder` and a decoder back to `shape` `[C, H, W]` under `decoder`, as
/// the reconstruction methods (autoencoders, context encoder) use them.
pub fn encoder_decoder(p: &nn::Path, cfg: &Config, shape: [i64; 3]) -> Result<(Encoder, Decoder)> {
    let encoder = build_encoder(&(p / "encoder"), cfg, shape[0])?;
    let decoder = Decoder::new(&(p / "decoder"), encoder.dim, &cfg.decoder_widths, shape)?;
    Ok((encoder, decoder))
}

/// Number of scalars in the trainable variables below `prefix` ("" for all).
pub fn parameter_count(vs: &nn::VarStore, prefix: &str) -> i64 {
    vs.variables()
        .iter()
        .filter(|(name, t)| name.starts_with(prefix) && t.requires_grad())
        .map(|(_, t)| t.numel() as i64)
        .sum()
}

/// An MLP head. `dims` = [input, hidden..., output]. Hidden layers are Linear -> (BatchNorm
/// if `bn`) -> ReLU; the last is a Linear, followed by a BatchNorm if `bn_last` (SimSiam's
/// projector). Linear layers followed by BatchNorm have no bias.
pub fn mlp(p: &nn::Path, dims: &[i64], bn: bool, bn_last: bool) -> nn::SequentialT {
    let mut net = nn::seq_t();
    for i in 0..dims.len() - 1 {
        let last = i == dims.len() - 2;
        let with_bn = if last { bn_last } else { bn };
        let lin = nn::LinearConfig {
            bias: !with_bn,
            ..Default::default()
        };
        net = net.add(nn::linear(p / format!("fc{i}"), dims[i], dims[i + 1], lin));
        if with_bn {
            net = net.add(nn::batch_norm1d(
                p / format!("bn{i}"),
                dims[i + 1],
                Default::default(),
            ));
        }
        if !last {
            net = net.add_fn(|x| x.relu());
        }
    }
    net
}

/// Runs `f` (in training mode) on `groups` equal sub-batches of `x` `[B, ...]`, so that
/// BatchNorm sees per-sub-batch statistics as it would on `groups` devices. With `shuffle`
/// the samples are permuted first and the outputs put back in order (MoCo's shuffling BN).
pub fn split_bn_forward(
    f: impl Fn(&Tensor) -> Tensor,
    x: &Tensor,
    groups: i64,
    shuffle: bool,
) -> Tensor {
    let b = x.size()[0];
    let perm = shuffle.then(|| Tensor::randperm(b, (tch::Kind::Int64, x.device())));
    let xs = match &perm {
        Some(p) => x.index_select(0, p),
        None => x.shallow_clone(),
    };
    let outs: Vec<Tensor> = xs.chunk(groups.min(b), 0).iter().map(&f).collect();
    let out = Tensor::cat(&outs, 0);
    match perm {
        Some(p) => out.index_select(0, &p.argsort(0, false)),
        None => out,
    }
}

/// conv -> batch norm -> ReLU, the building block of the small CNN and the ResNet stem.
pub fn conv_bn_relu(
    p: &nn::Path,
    conv: &str,
    bn: &str,
    cin: i64,
    cout: i64,
    stride: i64,
) -> nn::SequentialT {
    let cfg = nn::ConvConfig {
        stride,
        padding: 1,
        bias: false,
        ..Default::default()
    };
    nn::seq_t()
        .add(nn::conv2d(p / conv, cin, cout, 3, cfg))
        .add(nn::batch_norm2d(p / bn, cout, Default::default()))
        .add_fn(|x| x.relu())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn encoder(cfg: &Config, cin: i64) -> (nn::VarStore, Encoder) {
        let vs = nn::VarStore::new(Device::Cpu);
        let e = build_encoder(&(vs.root() / "encoder"), cfg, cin).unwrap();
        (vs, e)
    }

    #[test]
    fn resnet18_has_the_reference_parameter_count() {
        let _rng = crate::torch_rng_lock();
        // CIFAR ResNet-18 (3x3 stem, no max-pool) without its 10-way classifier:
        // 11,173,962 parameters in total minus 512*10 + 10 for the classifier.
        let cfg = Config {
            encoder: "resnet18".into(),
            ..Config::default()
        };
        let (vs, e) = encoder(&cfg, 3);
        assert_eq!(e.dim, 512);
        assert_eq!(parameter_count(&vs, "encoder."), 11_173_962 - 5_130);
        let names = vs.variables();
        for n in [
            "encoder.conv1.weight",
            "encoder.bn1.running_mean",
            "encoder.layer2.0.downsample.0.weight",
            "encoder.layer4.1.bn2.bias",
        ] {
            assert!(names.contains_key(n), "missing {n}");
        }
    }

    #[test]
    fn encoders_map_images_to_vectors() {
        let _rng = crate::torch_rng_lock();
        let x = Tensor::rand([2, 1, 28, 28], (Kind::Float, Device::Cpu));
        let (_, cnn) = encoder(&Config::default(), 1);
        assert_eq!(cnn.forward_t(&x, true).size(), vec![2, 128]);
        let cfg = Config {
            encoder: "resnet18".into(),
            resnet_width: 0.25,
            ..Config::default()
        };
        let (_, r) = encoder(&cfg, 1);
        assert_eq!(r.forward_t(&x, false).size(), vec![2, 128]);
    }

    #[test]
    fn decoder_restores_the_image_shape() {
        let _rng = crate::torch_rng_lock();
        let vs = nn::VarStore::new(Device::Cpu);
        let d = Decoder::new(&vs.root(), 16, &[8, 4], [3, 32, 32]).unwrap();
        let y = d.forward_t(&Tensor::randn([5, 16], (Kind::Float, Device::Cpu)), true);
        assert_eq!(y.size(), vec![5, 3, 32, 32]);
        assert!(y.min().double_value(&[]) > 0.0 && y.max().double_value(&[]) < 1.0);
        let e = Decoder::new(&(vs.root() / "b"), 16, &[8, 4, 2], [1, 28, 28])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("decoder_widths") && e.contains("divisible by 8"),
            "{e}"
        );
    }

    #[test]
    fn split_bn_forward_restores_order_and_uses_sub_batch_statistics() {
        let _rng = crate::torch_rng_lock();
        let x = Tensor::arange(8, (Kind::Float, Device::Cpu)).view([8, 1]);
        // f subtracts the sub-batch mean: with 2 unshuffled groups, [0..4) and [4..8) each lose 1.5 and 5.5.
        let f = |t: &Tensor| t - t.mean(Kind::Float);
        let y = split_bn_forward(f, &x, 2, false);
        let want =
            Tensor::from_slice(&[-1.5f32, -0.5, 0.5, 1.5, -1.5, -0.5, 0.5, 1.5]).view([8, 1]);
        assert!(y.allclose(&want, 1e-6, 1e-6, false));
        // Shuffled: identity-like f keeps every sample in its place.
        tch::manual_seed(1);
        let y = split_bn_forward(|t: &Tensor| t * 2.0, &x, 4, true);
        assert!(y.equal(&(&x * 2.0)));
    }
}
