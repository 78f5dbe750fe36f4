//! A small CNN encoder for small images (28x28 Fashion-MNIST, 32x32 CIFAR).
//!
//! Stage i has two 3x3 conv-BN-ReLU layers of width `widths[i]`; every stage after the
//! first starts with stride 2. Average pooling to a `pool` x `pool` grid, flattened, gives
//! a `widths.last() * pool^2` vector (`pool` = 1: global average pooling). With the default
//! widths [32, 64, 128], 28x28 goes 28 -> 14 -> 7 -> pool.

use super::{Backbone, conv_bn_relu};
use tch::nn;

pub fn small_cnn(p: &nn::Path, in_channels: i64, widths: &[i64], pool: i64) -> Backbone {
    let mut stages = Vec::with_capacity(widths.len());
    let mut cin = in_channels;
    for (i, &w) in widths.iter().enumerate() {
        let stage = p / format!("stage{i}");
        let stride = if i == 0 { 1 } else { 2 };
        stages.push(
            nn::seq_t()
                .add(conv_bn_relu(&stage, "conv1", "bn1", cin, w, stride))
                .add(conv_bn_relu(&stage, "conv2", "bn2", w, w, 1)),
        );
        cin = w;
    }
    Backbone::new(stages, widths.to_vec(), pool)
}
