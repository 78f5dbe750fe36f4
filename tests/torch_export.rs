//! The exported encoder loads into the equivalent PyTorch module (torchvision's resnet18
//! with the CIFAR stem, or the small CNN) and gives the same outputs to 1e-4. Runs the
//! check script in the setup venv (the same one that provides libtorch).

use selfsup::config::Config;
use selfsup::nets::{self, export};
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor, nn};

fn python() -> PathBuf {
    match std::env::var("SELFSUP_PYTHON") {
        Ok(p) => p.into(),
        Err(_) => PathBuf::from(std::env::var("HOME").unwrap())
            .join(".cache/selfsup/torch-2.11.0/bin/python"),
    }
}

fn check(cfg: &Config, shape: [i64; 4]) {
    tch::manual_seed(4);
    let vs = nn::VarStore::new(Device::Cpu);
    let enc = nets::build_encoder(&(vs.root() / "encoder"), cfg, shape[1]).unwrap();
    // A few training-mode passes give BatchNorm non-trivial running statistics.
    for _ in 0..3 {
        let _ = tch::no_grad(|| {
            enc.forward_t(
                &(Tensor::rand(shape, (Kind::Float, Device::Cpu)) * 2.0),
                true,
            )
        });
    }
    let x = Tensor::rand(shape, (Kind::Float, Device::Cpu));
    let y = tch::no_grad(|| enc.forward_t(&x, false));
    assert_eq!(y.size(), [shape[0], enc.dim]);
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("encoder.safetensors");
    export::write_encoder(&weights, &vs.variables(), cfg, shape[1]).unwrap();
    let io = dir.path().join("io.safetensors");
    Tensor::write_safetensors(&[("input", &x), ("output", &y)], &io).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/check_torch_export.py");
    let out = std::process::Command::new(python())
        .arg(&script)
        .arg(&weights)
        .arg(&io)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("max |torch - selfsup|"), "{text}");
    eprintln!("{}", text.trim());
}

#[test]
fn resnet18_export_matches_torchvision() {
    let cfg = Config {
        encoder: "resnet18".into(),
        ..Config::default()
    };
    check(&cfg, [2, 3, 32, 32]);
}

#[test]
fn small_cnn_export_matches_pytorch() {
    check(&Config::default(), [3, 1, 28, 28]);
}

#[test]
fn small_cnn_with_pooling_grid_export_matches_pytorch() {
    // cnn_pool = 2: the 7x7 map is averaged over overlapping 4x4 windows, as PyTorch's
    // adaptive_avg_pool2d does, and flattened channel-major to [B, 4 * 128].
    let cfg = Config {
        cnn_pool: 2,
        ..Config::default()
    };
    check(&cfg, [3, 1, 28, 28]);
}

#[test]
fn export_renames_and_adds_batchnorm_counters() {
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = nets::build_encoder(&(vs.root() / "encoder"), &Config::default(), 1).unwrap();
    let _ = vs
        .root()
        .sub("decoder")
        .var("w", &[1], nn::Init::Const(0.0));
    let sd: HashMap<String, Tensor> = export::encoder_state_dict(&vs.variables())
        .unwrap()
        .into_iter()
        .collect();
    assert!(
        sd.contains_key("stage0.conv1.weight") && sd.contains_key("stage2.bn2.num_batches_tracked")
    );
    assert!(
        !sd.keys()
            .any(|k| k.starts_with("decoder") || k.starts_with("encoder."))
    );
}
