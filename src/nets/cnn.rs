//! A small CNN encoder for small images (28x28 Fashion-MNIST, 32x32 CIFAR).
//!
//! Stage i has two 3x3 conv-BN-ReLU layers of width `widths[i]`; every stage after the
//! first starts with stride 2. Average pooling to a `pool` x `pool` grid, flattened, gives
//! a `widths.last() * pool^2` vector (`pool` = 1: global average pooling). With the default
//! widths [32, 64, 128], 28x28 goes 28 -> 14 -> 7 -> pool.

use super::conv_bn_relu;
use tch::nn;

pub fn small_cnn(
    p: &nn::Path,
    in_channels: i64,
    widths: &[i64],
    pool: i64,
) -> (nn::SequentialT, i64) {
    let mut net = nn::seq_t();
    let mut cin = in_channels;
    for (i, &w) in widths.iter().enumerate() {
        let stage = p / format!("stage{i}");
        let stride = if i == 0 { 1 } else { 2 };
        net = net.add(conv_bn_relu(&stage, "conv1", "bn1", cin, w, stride));
        net = net.add(conv_bn_relu(&stage, "conv2", "bn2", w, w, 1));
        cin = w;
    }
    let net = if pool == 1 {
        // [B, W, h, w] -> [B, W]
        net.add_fn(|x| x.mean_dim(&[-2i64, -1][..], false, super::float_kind(x.kind())))
    } else {
        // [B, W, h, w] -> [B, W, pool, pool] -> [B, W * pool * pool]
        net.add_fn(move |x| x.adaptive_avg_pool2d([pool, pool]).flatten(1, -1))
    };
    (net, cin * pool * pool)
}
