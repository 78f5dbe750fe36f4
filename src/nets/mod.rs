//! Encoders, decoders and heads, configured by data (lists of widths, a width multiplier).
//! Every encoder maps `[B, C, H, W]` images to `[B, D]` feature vectors, and can also give
//! the spatial feature maps of its stages before pooling (for dense tasks such as
//! segmentation), from the same variables.

pub mod cnn;
pub mod decoder;
pub mod export;
pub mod lab;
pub mod momentum;
pub mod norm;
pub mod resnet;
pub mod vit;

pub use decoder::Decoder;

use crate::config::{EncoderKind, EncoderSpec};
use crate::dist::current as dist;
use crate::native;
use anyhow::Result;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

/// What an encoder's network is applied to when the encoder is evaluated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EncoderInput {
    /// The images themselves.
    Image,
    /// The Lab lightness L / 100 of sRGB images (colorization's encoder).
    Lightness,
    /// Every `patch` x `patch` patch of the image at `stride`, each encoded on its own,
    /// the codes averaged (CPC's encoder, as CPC v2 evaluates it).
    PatchMean { patch: i64, stride: i64 },
}

/// A convolutional network built as stages (each keeps or halves the resolution) and the
/// average pooling that turns the last stage's map into the feature vector. Classification
/// evaluation sees only the pooled vector (`forward_t`); dense tasks read the maps of every
/// stage (`maps`). Both run the same modules, so the variables and their names are the
/// same either way.
#[derive(Debug)]
pub struct Backbone {
    stages: Vec<nn::SequentialT>,
    /// A Vision Transformer: its one stage, with its token-level steps public.
    vit: Option<vit::Vit>,
    /// Output channels of each stage.
    widths: Vec<i64>,
    /// The last map is average-pooled to a `pool` x `pool` grid and flattened (1: global).
    pool: i64,
}

impl Backbone {
    pub fn new(stages: Vec<nn::SequentialT>, widths: Vec<i64>, pool: i64) -> Backbone {
        assert_eq!(stages.len(), widths.len(), "one width per stage");
        assert!(!stages.is_empty(), "a backbone has at least one stage");
        Backbone {
            stages,
            vit: None,
            widths,
            pool,
        }
    }

    /// A one-stage backbone of a Vision Transformer (global average pooling of its tokens).
    pub fn transformer(vit: vit::Vit) -> Backbone {
        Backbone {
            stages: Vec::new(),
            widths: vec![vit.width()],
            vit: Some(vit),
            pool: 1,
        }
    }

    /// The Vision Transformer, for token-level use (MAE); None for convolutional networks.
    pub fn vit(&self) -> Option<&vit::Vit> {
        self.vit.as_ref()
    }

    /// Length of the pooled feature vector.
    pub fn dim(&self) -> i64 {
        self.widths[self.widths.len() - 1] * self.pool * self.pool
    }

    /// The output `[B, widths[i], H_i, W_i]` of every stage, first (finest) to last.
    pub fn maps(&self, xs: &Tensor, train: bool) -> Vec<Tensor> {
        if let Some(v) = &self.vit {
            return vec![v.map(xs)];
        }
        let mut x = xs.shallow_clone();
        let mut out = Vec::with_capacity(self.stages.len());
        for s in &self.stages {
            x = s.forward_t(&x, train);
            out.push(x.shallow_clone());
        }
        out
    }

    /// `[B, C, h, w]` -> `[B, C * pool^2]`, flattened in PyTorch's order (channel, row, column).
    /// The grid is libtorch's adaptive average pooling written as one matrix product: on a
    /// channels-last map this is a batched GEMM, where `adaptive_avg_pool2d` and above all its
    /// backward pass are slow loops (7% of the Fashion-MNIST preset's bf16 step).
    fn pool(&self, map: &Tensor) -> Tensor {
        if self.pool == 1 {
            return map.mean_dim(&[-2i64, -1][..], false, float_kind(map.kind()));
        }
        let s = map.size(); // [B, C, h, w]
        let (name, g) = (
            format!("pool {}x{} to {}", s[2], s[3], self.pool),
            self.pool,
        );
        let weights = constant(&name, map.kind(), map.device(), || {
            adaptive_pool_matrix(s[2], s[3], g)
        }); // [pool^2, h w]
        let pixels = map.permute([0, 2, 3, 1]).reshape([s[0], s[2] * s[3], s[1]]); // [B, h w, C]
        weights
            .matmul(&pixels) // [B, pool^2, C]
            .transpose(1, 2) // [B, C, pool^2]
            .reshape([s[0], -1])
    }
}

/// The `[g^2, h w]` matrix of adaptive average pooling from `h` x `w` to `g` x `g`: cell
/// (i, j) averages rows floor(i h / g) .. ceil((i + 1) h / g) and the same for columns, as
/// libtorch's `adaptive_avg_pool2d` (cells overlap when g does not divide the side); float64,
/// cast to the map's kind where it is used.
pub fn adaptive_pool_matrix(h: i64, w: i64, g: i64) -> Tensor {
    let span = |i: i64, n: i64| (i * n / g, ((i + 1) * n + g - 1) / g);
    let mut m = vec![0f64; (g * g * h * w) as usize];
    for i in 0..g {
        let (r0, r1) = span(i, h);
        for j in 0..g {
            let (c0, c1) = span(j, w);
            let value = 1.0 / ((r1 - r0) * (c1 - c0)) as f64;
            for r in r0..r1 {
                for c in c0..c1 {
                    m[((i * g + j) * h * w + r * w + c) as usize] = value;
                }
            }
        }
    }
    Tensor::from_slice(&m).view([g * g, h * w])
}

impl ModuleT for Backbone {
    /// `[B, C, H, W]` -> `[B, dim]`: the stages, then the pooling.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let last = match &self.vit {
            Some(v) => v.map(xs),
            None => self
                .stages
                .iter()
                .fold(xs.shallow_clone(), |x, s| s.forward_t(&x, train)),
        };
        self.pool(&last)
    }
}

/// An encoder network with its output feature dimension and what it is applied to.
#[derive(Debug)]
pub struct Encoder {
    /// Shared by the encoders that differ only in their `input`.
    net: Rc<Backbone>,
    /// Length of the feature vector it produces.
    pub dim: i64,
    /// Channels the network takes (1 for colorization's lightness on RGB data).
    pub in_channels: i64,
    pub input: EncoderInput,
}

impl Encoder {
    /// Wraps a network that maps `[B, in_channels, H, W]` to `[B, net.dim()]`.
    pub fn new(net: Backbone, in_channels: i64) -> Encoder {
        Encoder {
            dim: net.dim(),
            net: Rc::new(net),
            in_channels,
            input: EncoderInput::Image,
        }
    }

    /// The same network, with the same variables, applied to `input`.
    pub fn with_input(&self, input: EncoderInput) -> Encoder {
        Encoder {
            net: self.net.clone(),
            input,
            ..*self
        }
    }

    /// The Vision Transformer behind this encoder, for token-level methods (MAE).
    pub fn vit(&self) -> Option<&vit::Vit> {
        self.net.vit()
    }

    /// `[B, C, H, W]` -> `[B, dim]`, the network applied as `input` says.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self.input {
            EncoderInput::Image => self.net.forward_t(xs, train),
            EncoderInput::Lightness => self.net.forward_t(&lab::lightness(xs), train),
            EncoderInput::PatchMean { patch, stride } => self
                .patch_codes(xs, patch, stride, train) // [B, D, rows, cols]
                .mean_dim(&[2i64, 3][..], false, Kind::Float),
        }
    }

    /// The spatial feature maps that dense tasks use, finest first: `[B, C, H, W]` ->
    /// `[B, map_channels()[i], H_i, W_i]`, before any pooling, applied as `input` says:
    /// every stage's map of the image (or of its lightness); for a patch-grid encoder
    /// (CPC), one coarse map, the code of every patch of the grid (`patch_codes`).
    pub fn feature_maps(&self, xs: &Tensor, train: bool) -> Vec<Tensor> {
        match self.input {
            EncoderInput::Image => self.net.maps(xs, train),
            EncoderInput::Lightness => self.net.maps(&lab::lightness(xs), train),
            EncoderInput::PatchMean { patch, stride } => {
                vec![self.patch_codes(xs, patch, stride, train)]
            }
        }
    }

    /// Channels of each map of `feature_maps`.
    pub fn map_channels(&self) -> Vec<i64> {
        match self.input {
            EncoderInput::Image | EncoderInput::Lightness => self.net.widths.clone(),
            EncoderInput::PatchMean { .. } => vec![self.dim],
        }
    }

    /// The network's code of every patch of a grid: `[B, C, H, W]` -> `[B, dim, rows,
    /// cols]`, where patch (r, c) is the `patch` x `patch` square at pixel (r stride, c stride).
    pub fn patch_codes(&self, xs: &Tensor, patch: i64, stride: i64, train: bool) -> Tensor {
        let p = patches(xs, patch, stride); // [B, rows, cols, C, p, p]
        let s = p.size();
        let flat = p.reshape([s[0] * s[1] * s[2], s[3], s[4], s[5]]); // [B*rows*cols, C, p, p]
        self.net
            .forward_t(&flat, train) // [B*rows*cols, D]
            .view([s[0], s[1], s[2], self.dim])
            .permute([0, 3, 1, 2])
    }
}

/// Every 4-d variable of `vs` (the convolution weights) laid out channels-last, values
/// unchanged: the layout of cuDNN's fastest kernels for channels-last batches, as PyTorch's
/// `model.to(memory_format=torch.channels_last)`. Done for CUDA devices (on the CPU oneDNN
/// reorders the weights itself).
pub fn channels_last_weights(vs: &nn::VarStore) {
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            if v.dim() == 4 {
                let nhwc = v.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
                v.set_data(&nhwc);
            }
        }
    });
}

/// The constant tensor that `make` builds on the host, in `kind` on `device`: built and
/// copied once per (`name`, kind, device) and kept, so that no step waits for a copy from
/// the host (each a synchronisation on a GPU). `name` must say everything `make` depends on.
pub fn constant(name: &str, kind: Kind, device: Device, make: impl FnOnce() -> Tensor) -> Tensor {
    thread_local! {
        static CONSTANTS: RefCell<HashMap<String, Tensor>> = RefCell::new(HashMap::new());
    }
    let key = format!("{name}/{kind:?}/{device:?}");
    CONSTANTS.with(|c| {
        c.borrow_mut()
            .entry(key)
            .or_insert_with(|| make().to_kind(kind).to_device(device))
            .shallow_clone()
    })
}

/// The kind that pooling and normalisation statistics are computed in: float32, or float64
/// for a float64 network (which the data-parallel equivalence tests use).
pub fn float_kind(kind: Kind) -> Kind {
    match kind {
        Kind::Double => Kind::Double,
        _ => Kind::Float,
    }
}

/// The patches of a grid: `[B, C, H, W]` -> `[B, rows, cols, C, patch, patch]`, patch (r, c)
/// starting at pixel (r * stride, c * stride); rows = (H - patch) / stride + 1.
pub fn patches(x: &Tensor, patch: i64, stride: i64) -> Tensor {
    x.unfold(2, patch, stride) // [B, C, rows, W, p]
        .unfold(3, patch, stride) // [B, C, rows, cols, p, p]
        .permute([0, 2, 3, 1, 4, 5])
}

/// Builds the encoder named in `spec.kind` for images with `in_channels` channels.
pub fn build_encoder(p: &nn::Path, spec: &EncoderSpec, in_channels: i64) -> Encoder {
    let net = match spec.kind {
        EncoderKind::Cnn => cnn::small_cnn(p, in_channels, &spec.cnn_widths, spec.cnn_pool),
        EncoderKind::Resnet18 => resnet::resnet18_cifar(p, in_channels, spec.resnet_width),
        EncoderKind::Vit => vit::vit(p, in_channels, vit_shape(spec)),
    };
    Encoder::new(net, in_channels)
}

/// The ViT's shape from the `vit_*` keys.
pub fn vit_shape(spec: &EncoderSpec) -> vit::VitShape {
    vit::VitShape {
        patch: spec.vit_patch,
        depth: spec.vit_depth,
        width: spec.vit_width,
        heads: spec.vit_heads,
        image_size: spec.vit_image_size,
    }
}

/// An encoder under `encoder` and a decoder back to `shape` `[C, H, W]` under `decoder`, as
/// the reconstruction methods (autoencoders, context encoder) use them.
/// `decoder_widths` are the decoder's stage widths (the `decoder_widths` key).
pub fn encoder_decoder(
    p: &nn::Path,
    spec: &EncoderSpec,
    decoder_widths: &[i64],
    shape: [i64; 3],
) -> Result<(Encoder, Decoder)> {
    let encoder = build_encoder(&(p / "encoder"), spec, shape[0]);
    let decoder = Decoder::new(&(p / "decoder"), encoder.dim, decoder_widths, shape)?;
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

/// Where an MLP head has BatchNorm layers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MlpNorm {
    /// Nowhere (SimCLR's and MoCo's heads).
    None,
    /// After each hidden Linear (BYOL's projector, the predictors).
    Hidden,
    /// After every Linear, the output one too (SimSiam's and MoCo v3's projectors).
    All,
}

/// An MLP head. `dims` = [input, hidden..., output]. Hidden layers are Linear ->
/// (BatchNorm) -> ReLU; the last is a Linear (-> BatchNorm with `MlpNorm::All`). Linear
/// layers followed by BatchNorm have no bias.
pub fn mlp(p: &nn::Path, dims: &[i64], norm: MlpNorm) -> nn::SequentialT {
    let mut net = nn::seq_t();
    for i in 0..dims.len() - 1 {
        let last = i == dims.len() - 2;
        let with_bn = match norm {
            MlpNorm::None => false,
            MlpNorm::Hidden => !last,
            MlpNorm::All => true,
        };
        let lin = nn::LinearConfig {
            bias: !with_bn,
            ..Default::default()
        };
        net = net.add(nn::linear(p / format!("fc{i}"), dims[i], dims[i + 1], lin));
        if with_bn {
            net = net.add(norm::batch_norm1d(p / format!("bn{i}"), dims[i + 1]));
        }
        if !last {
            net = net.add_fn(|x| x.relu());
        }
    }
    net
}

/// Runs `f` (in training mode) on `groups` equal sub-batches of the global batch, so that
/// BatchNorm sees per-sub-batch statistics as it would on `groups` devices: BatchNorm stays
/// local to each sub-batch (`norm::bn_local`), never synchronised across ranks. `x`
/// `[b, ...]` is this rank's slice of the global batch and the result's rows are its rows;
/// with W ranks (`groups` divisible by W) each rank runs `groups / W` sub-batches.
///
/// With `shuffle` the global batch is permuted first and the outputs put back in order
/// (MoCo's shuffling BN): the inputs are gathered from every rank, permuted by one
/// permutation (rank 0's draw, broadcast), each rank runs its share of the sub-batches, and
/// the outputs are gathered and un-permuted, so W ranks compute what one process does.
/// The outputs come back through a plain gather when `f` runs without gradients (MoCo's
/// key encoder) and through the differentiable one otherwise.
pub fn split_bn_forward(
    f: impl Fn(&Tensor) -> Tensor,
    x: &Tensor,
    groups: i64,
    shuffle: bool,
) -> Tensor {
    let (rank, world) = (dist::rank() as i64, dist::world_size() as i64);
    let b = x.size()[0];
    let local_groups = (groups / world).clamp(1, b);
    let run = |xs: &Tensor| -> Tensor {
        norm::bn_local(|| {
            Tensor::cat(
                &xs.chunk(local_groups, 0).iter().map(&f).collect::<Vec<_>>(),
                0,
            )
        })
    };
    if !shuffle {
        return run(x);
    }
    let all = dist::all_gather(x); // [B, ...], B = W b
    let perm = dist::broadcast(&Tensor::randperm(all.size()[0], (Kind::Int64, x.device()))); // [B]
    let mine = all.index_select(0, &perm).narrow(0, rank * b, b); // [b, ...]
    let out = dist::all_gather(&run(&mine)); // [B, ...], in permuted order
    out.index_select(0, &perm.argsort(0, false))
        .narrow(0, rank * b, b)
}

/// conv -> batch norm -> ReLU, the building block of the small CNN and the ResNet stem.
pub fn conv_bn_relu(
    p: &nn::Path,
    conv: &str,
    bn: &str,
    cin: i64,
    cout: i64,
    stride: i64,
) -> ConvBnRelu {
    let cfg = nn::ConvConfig {
        stride,
        padding: 1,
        bias: false,
        ..Default::default()
    };
    ConvBnRelu {
        conv: nn::conv2d(p / conv, cin, cout, 3, cfg),
        bn: norm::batch_norm2d(p / bn, cout),
        stride,
    }
}

/// A 3x3 convolution (padding 1, no bias), batch norm and ReLU. In evaluation without
/// gradients on the CPU (feature extraction) the three run as one oneDNN convolution, the
/// batch norm folded into its weights and bias and the ReLU fused into it
/// (`native::conv_bn_relu_eval`): the same function to rounding, with two passes over the
/// activations fewer (they took half of `eval`'s feature time). In training the batch norm
/// and ReLU run as one (`BatchNorm::relu_train`).
#[derive(Debug)]
pub struct ConvBnRelu {
    conv: nn::Conv2D,
    bn: norm::BatchNorm,
    stride: i64,
}

impl ConvBnRelu {
    /// The fused evaluation pass, where it applies (else None).
    fn fused_eval(&self, x: &Tensor) -> Option<Tensor> {
        if x.device() != Device::Cpu || x.requires_grad() {
            return None;
        }
        let (gamma, beta, mean, var) = self.bn.eval_affine()?;
        let eps = norm::BatchNorm::EPS;
        native::conv_bn_relu_eval(
            x,
            &self.conv.ws,
            gamma,
            beta,
            mean,
            var,
            eps,
            self.stride,
            1,
        )
        .ok()
    }
}

impl nn::ModuleT for ConvBnRelu {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        if !train && let Some(y) = self.fused_eval(x) {
            return y;
        }
        let y = self.conv.forward_t(x, train);
        if train {
            self.bn.relu_train(&y, None)
        } else {
            self.bn.forward_t(&y, train).relu()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Precision};
    use tch::{Device, Kind};

    fn encoder(cfg: &Config, cin: i64) -> (nn::VarStore, Encoder) {
        let vs = nn::VarStore::new(Device::Cpu);
        let e = build_encoder(&(vs.root() / "encoder"), &cfg.encoder, cin);
        (vs, e)
    }

    /// Channels-last weights (as on CUDA) keep every value and give the same features.
    #[test]
    fn channels_last_weights_keep_values_and_outputs() {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(5);
        let cfg = Config {
            encoder: EncoderSpec {
                kind: EncoderKind::Resnet18,
                ..Config::default().encoder
            },
            ..Config::default()
        };
        let (vs, e) = encoder(&cfg, 3);
        let x = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let before = tch::no_grad(|| e.forward_t(&x, false));
        let values: Vec<(String, Vec<f32>)> = (vs.variables().into_iter())
            .map(|(k, v)| (k, Vec::<f32>::try_from(v.flatten(0, -1)).unwrap()))
            .collect();
        channels_last_weights(&vs);
        let vars = vs.variables();
        // A 3x3 kernel: a 1x1 kernel's two layouts are the same memory, and libtorch keeps its
        // contiguous strides (the map's order would make the pick vary between runs).
        let conv = &vars["encoder.conv1.weight"];
        assert_eq!(conv.size()[2..], [3, 3]);
        let s = conv.stride();
        assert!(
            s[1] == 1 && !conv.is_contiguous(),
            "channels-last strides: {s:?}"
        );
        for (k, v) in &values {
            assert_eq!(
                &Vec::<f32>::try_from(vars[k].flatten(0, -1)).unwrap(),
                v,
                "{k}"
            );
        }
        let after = tch::no_grad(|| e.forward_t(&x, false));
        let d = (&after - &before).abs().max().double_value(&[]);
        assert!(d < 1e-5, "features moved by {d}");
    }

    /// In evaluation without gradients the fused oneDNN convolution gives conv -> batch
    /// norm -> ReLU's values (float32 to 1e-5; under bf16 autocast, bfloat16 values within its
    /// rounding); with gradients on, the layer runs the three steps.
    #[test]
    fn fused_evaluation_conv_bn_relu_matches_the_three_steps() {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = conv_bn_relu(&vs.root(), "conv", "bn", 4, 8, 2);
        tch::no_grad(|| {
            let (g, b, m, v) = layer.bn.eval_affine().unwrap();
            let opts = (Kind::Float, Device::Cpu);
            for (t, lo) in [(g, 0.5), (b, -0.5), (m, -0.5), (v, 0.5)] {
                t.shallow_clone().copy_(&(Tensor::rand([8], opts) + lo));
            }
        });
        let x = Tensor::randn([3, 4, 9, 9], (Kind::Float, Device::Cpu)); // [B, C, H, W]
        let three = tch::no_grad(|| {
            let y = layer.conv.forward_t(&x, false);
            layer.bn.forward_t(&y, false).relu()
        }); // [3, 8, 5, 5]
        let scale = three.abs().max().double_value(&[]);
        assert!(scale > 0.5, "a non-trivial output: {scale}");
        let diff = |a: &Tensor| {
            (a.to_kind(Kind::Float) - &three)
                .abs()
                .max()
                .double_value(&[])
        };
        let fused = tch::no_grad(|| layer.fused_eval(&x)).expect("the fused pass applies");
        assert_eq!(fused.size(), three.size());
        assert!(diff(&fused) < 1e-5 * scale, "float32: {}", diff(&fused));
        let bf16 = tch::no_grad(|| {
            let _autocast = crate::precision::scope(Precision::Bf16, Device::Cpu).unwrap();
            layer.forward_t(&x, false)
        });
        assert_eq!(bf16.kind(), Kind::BFloat16);
        let d = diff(&bf16);
        assert!(d > 0.0 && d < 0.03 * scale, "bfloat16: {d} (scale {scale})");
        // With gradients on (a training-time call in evaluation mode): the three steps.
        assert!(layer.fused_eval(&x).is_none());
        assert_eq!(diff(&layer.forward_t(&x, false)), 0.0);
    }

    /// Training-mode batch norm (+ a residual) + ReLU fused (`native::bn_relu_train`) against
    /// libtorch's steps in float32 on the same values: the output, the gradients of the input,
    /// weight, bias and residual, and the running statistics, in float32 (to 1e-5 of the scale)
    /// and bfloat16 (within its rounding), on channels-last input whose channels sit far from
    /// zero (the sums' shift matters), with some negative weights (the ReLU's mask flips
    /// sides); and the fused kernels ran. (Against libtorch's bfloat16 steps the residual case
    /// differs at the ReLU's edge: libtorch rounds the batch norm's output before the sum.)
    #[test]
    fn fused_training_bn_relu_matches_the_two_steps() {
        let _rng = crate::torch_rng_lock();
        let nhwc = |t: Tensor| t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
        for (kind, with_residual) in [
            (Kind::Float, false),
            (Kind::BFloat16, false),
            (Kind::Float, true),
            (Kind::BFloat16, true),
        ] {
            tch::manual_seed(11);
            let opts = (Kind::Float, Device::Cpu);
            let c = 24; // not a multiple of a vector's lanes
            let shape = [5, c, 7, 6];
            let x0 = Tensor::randn(shape, opts) * 3.0
                + Tensor::arange(c, opts).view([1, c, 1, 1]) * 2.0
                - 20.0;
            let x0 = nhwc(x0.to_kind(kind));
            assert!(!x0.is_contiguous() && x0.stride()[1] == 1);
            let res0 = nhwc(Tensor::randn(shape, opts).to_kind(kind));
            let r = Tensor::randn(shape, opts); // d loss / d y
            let weight = Tensor::randn([c], opts);
            let bias = Tensor::randn([c], opts) * 0.5;
            let (rm, rv) = (Tensor::randn([c], opts), Tensor::rand([c], opts) + 0.5);
            let run = |fused: bool, kind: Kind| {
                let vs = nn::VarStore::new(Device::Cpu);
                let bn = norm::batch_norm2d(vs.root() / "bn", c);
                tch::no_grad(|| {
                    let v = vs.variables();
                    for (name, t) in [
                        ("bn.weight", &weight),
                        ("bn.bias", &bias),
                        ("bn.running_mean", &rm),
                        ("bn.running_var", &rv),
                    ] {
                        v[name].shallow_clone().copy_(t);
                    }
                });
                let x = x0.to_kind(kind).copy().set_requires_grad(true);
                let res = res0.to_kind(kind).copy().set_requires_grad(true);
                norm::set_fused_relu(fused);
                let (y, ops) = native::profile(|| {
                    let y = bn.relu_train(&x, with_residual.then_some(&res));
                    (y.to_kind(Kind::Float) * &r).sum(Kind::Float).backward();
                    y
                })
                .unwrap();
                norm::set_fused_relu(true);
                let ran = ops.iter().any(|o| o.name == "selfsup::bn_relu_backward");
                assert_eq!(ran, fused, "{kind:?}: fused kernels ran: {ran}");
                assert_eq!(y.kind(), kind);
                let v = vs.variables();
                let grad = |n: &str| v[n].grad();
                for n in ["bn.weight", "bn.bias"] {
                    assert_eq!(grad(n).kind(), Kind::Float, "{kind:?}: {n}'s gradient");
                }
                let res_grad = if with_residual {
                    res.grad()
                } else {
                    r.ones_like()
                };
                [
                    y,
                    x.grad(),
                    grad("bn.weight"),
                    grad("bn.bias"),
                    v["bn.running_mean"].copy(),
                    v["bn.running_var"].copy(),
                    res_grad,
                ]
                .map(|t| t.to_kind(Kind::Double))
            };
            let (fused, two) = (run(true, kind), run(false, Kind::Float));
            let tol = if kind == Kind::Float { 1e-5 } else { 2e-2 };
            let names = ["y", "x.grad", "w.grad", "b.grad", "mean", "var", "res.grad"];
            let what = format!("{kind:?}, residual {with_residual}");
            for ((a, b), name) in fused.iter().zip(&two).zip(names) {
                let scale = b.abs().max().double_value(&[]);
                assert!(scale > 0.1 && scale.is_finite(), "{what} {name}: {scale}");
                let d = (a - b).abs().max().double_value(&[]);
                assert!(d <= tol * scale, "{what} {name}: {d} (scale {scale})");
            }
            let zeros = |t: &Tensor| t.eq(0.0).sum(Kind::Int64).int64_value(&[]);
            assert!(zeros(&fused[0]) > 200, "the ReLU cut some values");
            assert_eq!(zeros(&fused[0]), zeros(&two[0]), "{what}: the ReLU's mask");
        }
        // Contiguous input: libtorch's two steps, the same values.
        let vs = nn::VarStore::new(Device::Cpu);
        let bn = norm::batch_norm2d(vs.root() / "bn", 3);
        let x = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu));
        let (y, ops) = native::profile(|| bn.relu_train(&x, None)).unwrap();
        assert!(!ops.iter().any(|o| o.name.starts_with("selfsup::")));
        let v = vs.variables();
        let (w, b) = (Some(&v["bn.weight"]), Some(&v["bn.bias"]));
        let reference = Tensor::batch_norm(
            &x,
            w,
            b,
            None::<&Tensor>,
            None::<&Tensor>,
            true,
            0.1,
            1e-5,
            false,
        );
        assert_eq!((y - reference.relu()).abs().max().double_value(&[]), 0.0);
    }

    #[test]
    fn resnet18_has_the_reference_parameter_count() {
        let _rng = crate::torch_rng_lock();
        // CIFAR ResNet-18 (3x3 stem, no max-pool) without its 10-way classifier:
        // 11,173,962 parameters in total minus 512*10 + 10 for the classifier.
        let cfg = {
            let mut c = Config::default();
            c.encoder.kind = EncoderKind::Resnet18;
            c
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
        let cfg = {
            let mut c = Config::default();
            c.encoder.kind = EncoderKind::Resnet18;
            c.encoder.resnet_width = 0.25;
            c
        };
        let (_, r) = encoder(&cfg, 1);
        assert_eq!(r.forward_t(&x, false).size(), vec![2, 128]);
    }

    #[test]
    fn grid_pooling_is_adaptive_average_pooling_in_either_memory_layout() {
        let _rng = crate::torch_rng_lock();
        // By hand, 3x2 -> 2x2: the cells span rows [0, 2) and [1, 3) (the middle row is in both).
        assert_eq!(
            Vec::<f64>::try_from(adaptive_pool_matrix(3, 2, 2).flatten(0, -1)).unwrap(),
            [
                [0.5f64, 0.0, 0.5, 0.0, 0.0, 0.0], // rows 0-1, column 0
                [0.0, 0.5, 0.0, 0.5, 0.0, 0.0],    // rows 0-1, column 1
                [0.0, 0.0, 0.5, 0.0, 0.5, 0.0],    // rows 1-2, column 0
                [0.0, 0.0, 0.0, 0.5, 0.0, 0.5],    // rows 1-2, column 1
            ]
            .concat()
        );
        let global = adaptive_pool_matrix(3, 3, 1);
        let ninths = Tensor::full([1, 9], 1.0 / 9.0, (Kind::Double, Device::Cpu));
        assert!(global.allclose(&ninths, 1e-7, 0.0, false));
        for (h, w, g) in [(7, 7, 3), (7, 7, 2), (5, 6, 4), (4, 4, 2), (3, 3, 3)] {
            let x = Tensor::randn([2, 5, h, w], (Kind::Double, Device::Cpu)); // [B, C, h, w]
            let nhwc = x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
            let backbone = Backbone::new(vec![nn::seq_t()], vec![5], g);
            let want = x.adaptive_avg_pool2d([g, g]).flatten(1, -1);
            for layout in [&x, &nhwc] {
                let got = backbone.pool(layout);
                assert!(got.allclose(&want, 1e-12, 1e-12, false), "{h}x{w} -> {g}");
            }
        }
    }

    #[test]
    fn feature_maps_are_the_stages_before_the_pooling_of_the_vector() {
        let _rng = crate::torch_rng_lock();
        let x = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let cfg = {
            let mut c = Config::default();
            c.encoder.cnn_widths = vec![4, 6, 8];
            c.encoder.cnn_pool = 2;
            c
        };
        let (vs, cnn) = encoder(&cfg, 3);
        // The variables keep the names that checkpoints and the PyTorch export use.
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(names.len(), 3 * 2 * 5, "{names:?}");
        assert!(names.contains(&"encoder.stage2.bn2.running_var".to_string()));
        let maps = cnn.feature_maps(&x, false);
        let shapes: Vec<Vec<i64>> = maps.iter().map(|m| m.size()).collect();
        assert_eq!(
            shapes,
            vec![vec![2, 4, 16, 16], vec![2, 6, 8, 8], vec![2, 8, 4, 4]]
        );
        assert_eq!(cnn.map_channels(), vec![4, 6, 8]);
        // The 2x2 pooling grid of the last map, flattened, is the feature vector.
        let pooled = maps[2].adaptive_avg_pool2d([2, 2]).flatten(1, -1);
        assert!(pooled.allclose(&cnn.forward_t(&x, false), 1e-6, 1e-6, false));
        // Lightness: the same maps as the network on the lightness channel.
        let (_, grey) = encoder(&cfg, 1);
        let light = grey.with_input(EncoderInput::Lightness);
        let want = grey.feature_maps(&lab::lightness(&x), false);
        for (a, b) in light.feature_maps(&x, false).iter().zip(&want) {
            assert!(a.equal(b));
        }
        // A patch grid: one coarse map, the code of each patch.
        let grid = cnn.with_input(EncoderInput::PatchMean {
            patch: 8,
            stride: 4,
        });
        let m = grid.feature_maps(&x, false);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].size(), vec![2, 32, 3, 3]);
        assert_eq!(grid.map_channels(), vec![32]);
        let corner = cnn.forward_t(&x.narrow(2, 4, 8).narrow(3, 8, 8), false); // patch (1, 2)
        assert!(
            m[0].select(2, 1)
                .select(2, 2)
                .allclose(&corner, 1e-5, 1e-6, false)
        );
        // ResNet-18: four stages, the stem inside the first.
        let r = {
            let mut c = Config::default();
            c.encoder.kind = EncoderKind::Resnet18;
            c.encoder.resnet_width = 0.125;
            c
        };
        let (_, res) = encoder(&r, 3);
        let maps = res.feature_maps(&x, false);
        let shapes: Vec<Vec<i64>> = maps.iter().map(|m| m.size()).collect();
        assert_eq!(
            shapes,
            vec![
                vec![2, 8, 16, 16],
                vec![2, 16, 8, 8],
                vec![2, 32, 4, 4],
                vec![2, 64, 2, 2]
            ]
        );
        let pooled = maps[3].mean_dim(&[2i64, 3][..], false, Kind::Float);
        assert!(pooled.allclose(&res.forward_t(&x, false), 1e-6, 1e-6, false));
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
        // Shuffled into 4 sub-batches of 2: sample i loses the mean of the sub-batch it was
        // shuffled into, the pair it shares in the permutation (drawn here with the same
        // seed), and comes back in its own row.
        tch::manual_seed(1);
        let perm = Vec::<i64>::try_from(Tensor::randperm(8, (Kind::Int64, Device::Cpu))).unwrap();
        let mut want = [0f32; 8];
        for pair in perm.chunks(2) {
            for &i in pair {
                want[i as usize] = (2 * i - pair[0] - pair[1]) as f32 / 2.0;
            }
        }
        tch::manual_seed(1);
        let y = split_bn_forward(f, &x, 4, true);
        let want = Tensor::from_slice(&want).view([8, 1]);
        assert!(y.allclose(&want, 1e-6, 1e-6, false), "{y} vs {want}");
        // Shuffling changes the result: unshuffled pairs (0, 1), (2, 3), ... give -0.5, 0.5.
        let plain = split_bn_forward(f, &x, 4, false);
        assert!(!y.allclose(&plain, 1e-3, 1e-3, false), "{perm:?}");
    }

    #[test]
    fn non_overlapping_patches_rebuild_the_image() {
        let x = Tensor::arange(2 * 3 * 8 * 12, (Kind::Float, Device::Cpu)).view([2, 3, 8, 12]);
        let p = patches(&x, 4, 4); // [2, 2, 3, 3, 4, 4]
        assert_eq!(p.size(), vec![2, 2, 3, 3, 4, 4]);
        // [B, r, c, C, p, p] -> [B, C, r, p, c, p] -> [B, C, H, W]
        let back = p.permute([0, 3, 1, 4, 2, 5]).reshape([2, 3, 8, 12]);
        assert!(back.equal(&x));
        // Overlapping: patch (1, 2) at stride 2 starts at pixel (2, 4).
        let p = patches(&x, 4, 2);
        assert!(
            p.get(1)
                .get(1)
                .get(2)
                .equal(&x.get(1).narrow(1, 2, 4).narrow(2, 4, 4))
        );
    }
}
