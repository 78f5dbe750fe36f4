//! CIFAR-style ResNet-18: a 3x3 stride-1 stem, no max-pool, four stages of two basic blocks,
//! global average pooling. Parameter names follow torchvision's `resnet18` (conv1, bn1,
//! layer1.0.conv1, ..., layerN.0.downsample.0/1), apart from the stem, which torchvision
//! makes 7x7 stride 2 followed by a max-pool.

use super::norm::{BatchNorm, batch_norm2d};
use super::{Backbone, ConvBnRelu, conv_bn_relu};
use tch::Tensor;
use tch::nn::{self, ModuleT};

#[derive(Debug)]
struct BasicBlock {
    /// conv1 -> bn1 -> ReLU (one fused convolution in evaluation).
    first: ConvBnRelu,
    conv2: nn::Conv2D,
    bn2: BatchNorm,
    downsample: Option<(nn::Conv2D, BatchNorm)>,
}

impl BasicBlock {
    fn new(p: &nn::Path, cin: i64, cout: i64, stride: i64) -> BasicBlock {
        let c3 = |stride| nn::ConvConfig {
            stride,
            padding: 1,
            bias: false,
            ..Default::default()
        };
        let downsample = (stride != 1 || cin != cout).then(|| {
            let c1 = nn::ConvConfig {
                stride,
                bias: false,
                ..Default::default()
            };
            (
                nn::conv2d(p / "downsample" / "0", cin, cout, 1, c1),
                batch_norm2d(p / "downsample" / "1", cout),
            )
        });
        BasicBlock {
            first: conv_bn_relu(p, "conv1", "bn1", cin, cout, stride),
            conv2: nn::conv2d(p / "conv2", cout, cout, 3, c3(1)),
            bn2: batch_norm2d(p / "bn2", cout),
            downsample,
        }
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let out = self.first.forward_t(xs, train).apply(&self.conv2);
        let shortcut = match &self.downsample {
            Some((conv, bn)) => xs.apply(conv).apply_t(bn, train),
            None => xs.shallow_clone(),
        };
        if train {
            // bn2, the sum and the ReLU as one (`BatchNorm::relu_train`)
            self.bn2.relu_train(&out, Some(&shortcut))
        } else {
            (out.apply_t(&self.bn2, train) + shortcut).relu()
        }
    }
}

/// The stem and `layer1` form the first stage (full resolution), `layer2`..`layer4` the
/// others; the feature vector is the global average of the last map (512 x width).
pub fn resnet18_cifar(p: &nn::Path, in_channels: i64, width: f64) -> Backbone {
    let w = |c: f64| ((c * width).round() as i64).max(1);
    let widths = [w(64.0), w(128.0), w(256.0), w(512.0)];
    let mut stages = Vec::with_capacity(widths.len());
    let mut stage = nn::seq_t().add(conv_bn_relu(p, "conv1", "bn1", in_channels, widths[0], 1));
    let mut cin = widths[0];
    for (i, &cout) in widths.iter().enumerate() {
        let layer = p / format!("layer{}", i + 1);
        let stride = if i == 0 { 1 } else { 2 };
        stage = stage
            .add(BasicBlock::new(&(&layer / "0"), cin, cout, stride))
            .add(BasicBlock::new(&(&layer / "1"), cout, cout, 1));
        stages.push(std::mem::replace(&mut stage, nn::seq_t()));
        cin = cout;
    }
    Backbone::new(stages, widths.to_vec(), 1)
}
