//! The optimizer step alone: libtorch's fused kernels (`Optimizer::step`) against the
//! rules written out tensor by tensor (`Optimizer::step_unfused`), on the parameters of a
//! ResNet-18 and of the Fashion-MNIST presets' CNN, in interleaved rounds (the best round of
//! each counts, so that other work on the machine slows both alike).
//!
//! cargo run --release --example bench_optim [ROUNDS]
use selfsup::config::{EncoderKind, OptimizerKind};
use selfsup::nets::build_encoder;
use selfsup::optim::Optimizer;
use std::time::Instant;
use tch::{Device, Kind, Tensor, nn};

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(5, |r| r.parse().expect("ROUNDS"));
    println!(
        "{:<9} {:<6} {:>8} {:>12} {:>12} {:>7}",
        "encoder", "opt", "params", "fused ms", "unfused ms", "ratio"
    );
    for kind in [EncoderKind::Cnn, EncoderKind::Resnet18] {
        let mut spec = selfsup::config::Config::default().encoder;
        spec.kind = kind;
        for opt_kind in [OptimizerKind::Sgd, OptimizerKind::AdamW] {
            let vs = nn::VarStore::new(Device::Cpu);
            let _ = build_encoder(&vs.root(), &spec, 3);
            let params: Vec<Tensor> = vs.trainable_variables();
            let numel: i64 = params.iter().map(|p| p.numel() as i64).sum();
            // Gradients once, kept across steps (the step reads them, never clears them).
            for p in &params {
                let mut g = p.grad();
                if !g.defined() {
                    (p * Tensor::randn_like(p)).sum(Kind::Float).backward();
                    g = p.grad();
                }
                assert!(g.defined());
            }
            let mut opt = Optimizer::new(&vs, opt_kind, 0.9, 1e-4);
            let (mut fused, mut unfused) = (f64::MAX, f64::MAX);
            let steps = 20;
            for _ in 0..rounds {
                let t = Instant::now();
                for _ in 0..steps {
                    opt.step(1e-6).unwrap();
                }
                fused = fused.min(t.elapsed().as_secs_f64() * 1e3 / steps as f64);
                let t = Instant::now();
                for _ in 0..steps {
                    opt.step_unfused(1e-6);
                }
                unfused = unfused.min(t.elapsed().as_secs_f64() * 1e3 / steps as f64);
            }
            println!(
                "{:<9} {:<6} {:>8} {:>12.3} {:>12.3} {:>6.2}x",
                kind.to_string(),
                opt_kind.to_string(),
                numel,
                fused,
                unfused,
                unfused / fused
            );
        }
    }
}
