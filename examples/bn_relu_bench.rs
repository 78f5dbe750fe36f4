//! Training-mode batch norm + ReLU, forward and backward, fused (`native::bn_relu_train`)
//! against libtorch's two steps, alternating in one process, on the activation shapes of the
//! Fashion-MNIST SimCLR preset's CNN (batch 512 views, channels-last); prints the best of 10
//! rounds of each and where a profiled round's time goes. `-- fp32` for float32, else
//! bfloat16. `cargo run --release --example bn_relu_bench [-- fp32]`
use selfsup::nets::norm;
use std::time::Instant;
use tch::{Device, Kind, Tensor, nn};

fn main() {
    selfsup::tune_malloc();
    let kind = if std::env::args().any(|a| a == "fp32") {
        Kind::Float
    } else {
        Kind::BFloat16
    };
    let nhwc = |t: Tensor| t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
    let shapes = [(32, 28), (32, 28), (64, 14), (64, 14), (128, 7), (128, 7)]; // (C, H = W)
    let vs = nn::VarStore::new(Device::Cpu);
    let layers: Vec<_> = (shapes.iter().enumerate())
        .map(|(i, &(c, _))| norm::batch_norm2d(vs.root() / i, c))
        .collect();
    let xs: Vec<Tensor> = (shapes.iter())
        .map(|&(c, s)| {
            let x = Tensor::randn([512, c, s, s], (Kind::Float, Device::Cpu)).to_kind(kind);
            nhwc(x).set_requires_grad(true) // [512, C, H, W]
        })
        .collect();
    let gs: Vec<Tensor> = xs.iter().map(|x| nhwc(x.rand_like())).collect();
    // (y * g).sum() gives y the gradient g, as a following layer would.
    let step = || {
        for ((l, x), g) in layers.iter().zip(&xs).zip(&gs) {
            (l.relu_train(x, None) * g).sum(kind).backward();
        }
    };
    let mut best = [f64::MAX; 2];
    for round in 0..12 {
        for (i, fused) in [true, false].into_iter().enumerate() {
            norm::set_fused_relu(fused);
            let t = Instant::now();
            step();
            if round > 1 {
                best[i] = best[i].min(t.elapsed().as_secs_f64());
            }
        }
    }
    for fused in [true, false] {
        norm::set_fused_relu(fused);
        let (_, ops) = selfsup::profile(step).expect("profile");
        let top: Vec<String> = (ops.iter().take(6))
            .map(|o| format!("{} {:.1}", o.name, o.self_secs * 1e3))
            .collect();
        let what = if fused { "fused" } else { "two steps" };
        println!("{what}, ms per pass of the 6 layers: {}", top.join(", "));
    }
    println!(
        "{kind:?}: fused {:.1} ms, two steps {:.1} ms (with the product and sum that make the gradient): {:.2}x",
        best[0] * 1e3,
        best[1] * 1e3,
        best[1] / best[0]
    );
}
