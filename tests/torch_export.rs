//! The exported encoder loads into the PyTorch modules of the Python package
//! (python/selfsup/models.py: torchvision's and timm's resnet18 with the CIFAR stem, timm's
//! VisionTransformer, the small CNN) and gives the same features as selfsup to 1e-4, for
//! every registered method (colorization's lightness input and CPC's mean-pooled patch
//! grid included). Runs the check script with the setup venv's Python (which holds timm).

mod common;

use selfsup::config::{Config, EncoderKind};
use selfsup::data::Split;
use selfsup::eval;
use selfsup::methods::{DataInfo, REGISTRY};
use selfsup::nets::{self, Encoder, export};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind, Tensor, nn};

/// Runs scripts/check_torch_export.py on (weights, io) pairs, which must pass; returns what
/// it printed.
fn check_in_pytorch(pairs: &[(PathBuf, PathBuf)]) -> String {
    let (passed, text) = common::check_torch_export(pairs);
    assert!(passed, "{text}");
    assert_eq!(
        text.matches("max |torch - selfsup|").count(),
        pairs.len(),
        "{text}"
    );
    eprintln!("{}", text.trim());
    text
}

/// Exports `encoder` (whose variables are in `vs`) into `dir` with the input images `x` and
/// the features `y` selfsup computed; returns the (weights, io) pair.
fn export_pair(
    dir: &Path,
    name: &str,
    vs: &nn::VarStore,
    cfg: &Config,
    encoder: &Encoder,
    x: &Tensor,
    y: &Tensor,
) -> (PathBuf, PathBuf) {
    assert_eq!(y.size(), [x.size()[0], encoder.dim], "{name}");
    let weights = dir.join(format!("{name}.safetensors"));
    export::write_encoder(
        &weights,
        &vs.variables(),
        &cfg.method,
        &cfg.encoder,
        encoder,
        [x.size()[1], x.size()[2], x.size()[3]],
    )
    .unwrap();
    let io = dir.join(format!("{name}-io.safetensors"));
    Tensor::write_safetensors(&[("input", x), ("output", y)], &io).unwrap();
    (weights, io)
}

/// A few training-mode passes give BatchNorm non-trivial running statistics.
fn warm_up_batchnorm(encoder: &Encoder, shape: [i64; 4]) {
    for _ in 0..3 {
        let x = Tensor::rand(shape, (Kind::Float, Device::Cpu)) * 2.0;
        let _ = tch::no_grad(|| encoder.forward_t(&x, true));
    }
}

fn check_architecture(cfg: &Config, shape: [i64; 4]) {
    tch::manual_seed(4);
    let vs = nn::VarStore::new(Device::Cpu);
    let enc = nets::build_encoder(&(vs.root() / "encoder"), &cfg.encoder, shape[1]);
    warm_up_batchnorm(&enc, shape);
    let x = Tensor::rand(shape, (Kind::Float, Device::Cpu));
    let y = tch::no_grad(|| enc.forward_t(&x, false));
    let dir = tempfile::tempdir().unwrap();
    check_in_pytorch(&[export_pair(dir.path(), "encoder", &vs, cfg, &enc, &x, &y)]);
}

#[test]
fn resnet18_export_matches_torchvision() {
    let cfg = {
        let mut c = Config::default();
        c.encoder.kind = EncoderKind::Resnet18;
        c
    };
    check_architecture(&cfg, [2, 3, 32, 32]);
}

#[test]
fn vit_export_matches_timm() {
    let cfg = {
        let mut c = Config::default();
        c.encoder.kind = EncoderKind::Vit;
        c.encoder.vit_depth = 2;
        c.encoder.vit_width = 24;
        c.encoder.vit_heads = 3;
        c
    };
    // 32x32 (the position embeddings' own grid) and 28x28 (resampled to 7x7).
    check_architecture(&cfg, [2, 3, 32, 32]);
    check_architecture(&cfg, [2, 1, 28, 28]);
}

#[test]
fn small_cnn_export_matches_pytorch() {
    check_architecture(&Config::default(), [3, 1, 28, 28]);
}

#[test]
fn small_cnn_with_pooling_grid_export_matches_pytorch() {
    // cnn_pool = 2: the 7x7 map is averaged over overlapping 4x4 windows, as PyTorch's
    // adaptive_avg_pool2d does, and flattened channel-major to [B, 4 * 128].
    let cfg = {
        let mut c = Config::default();
        c.encoder.cnn_pool = 2;
        c
    };
    check_architecture(&cfg, [3, 1, 28, 28]);
}

/// For every registered method: the encoder `selfsup export` writes, loaded in PyTorch,
/// gives the features `selfsup eval` extracts (through `eval::method_features`, the code
/// the evaluation runs) from the same images.
#[test]
fn every_method_exports_what_its_evaluation_sees() {
    let dir = tempfile::tempdir().unwrap();
    // 3-channel 8x8 images, so that colorization, which needs colour, is built too.
    let (n, shape) = (6usize, [3usize, 8, 8]);
    let pixels: Vec<u8> = (0..n * 192).map(|i| (i * 37 % 251) as u8).collect();
    let split = Arc::new(Split::new(pixels, vec![0; n], shape).unwrap());
    let images = Tensor::from_slice(split.memory().unwrap()).view([n as i64, 3, 8, 8]) / 255.0;
    let info = DataInfo {
        shape: [3, 8, 8],
        num_classes: 4,
    };
    let mut pairs = Vec::new();
    for spec in REGISTRY {
        let cfg = {
            let mut c = Config {
                method: spec.name.into(),
                ..Config::default()
            };
            c.encoder.cnn_widths = vec![4, 8];
            c.encoder.cnn_pool = 2;
            c.keys.decoder_widths = vec![8, 4];
            c.keys.proj_hidden_dim = 16;
            c.keys.pred_hidden_dim = 8;
            c.keys.proj_dim = 8;
            c.keys.moco_queue = 32;
            c.keys.nnclr_queue = 32;
            c.keys.cpc_negatives = 16;
            c.keys.cpc_patch = 4;
            c.keys.cpc_stride = 2;
            c.keys.tile_size = 2;
            match spec.encoders.contains(&selfsup::config::EncoderKind::Cnn) {
                true => c,
                false => c.with_tiny_vit(),
            }
        };
        let model = selfsup::run::Model::build(&cfg, &info, Device::Cpu).unwrap();
        let encoder = model.method.encoder();
        warm_up_batchnorm(encoder, [8, 3, 8, 8]);
        let (features, _) = eval::method_features(
            model.method.as_ref(),
            &split,
            4,
            Device::Cpu,
            cfg.train.precision,
        )
        .unwrap();
        pairs.push(export_pair(
            dir.path(),
            spec.name,
            &model.vs,
            &cfg,
            encoder,
            &images,
            &features,
        ));
    }
    let text = check_in_pytorch(&pairs);
    assert!(text.contains("colorization: cnn on lightness"), "{text}");
    assert!(text.contains("cpc: cnn on patch-mean"), "{text}");
}

/// The check fails on features that are not finite, wherever they are: a NaN in the second
/// of three pairs (Python's `max` over the differences would drop it), an infinity in the
/// third.
#[test]
fn the_check_fails_on_a_nan_or_an_infinity_in_any_pair() {
    let cfg = Config::default();
    let shape = [2, 1, 8, 8];
    tch::manual_seed(6);
    let vs = nn::VarStore::new(Device::Cpu);
    let enc = nets::build_encoder(&(vs.root() / "encoder"), &cfg.encoder, shape[1]);
    let x = Tensor::rand(shape, (Kind::Float, Device::Cpu));
    let y = tch::no_grad(|| enc.forward_t(&x, false));
    let dir = tempfile::tempdir().unwrap();
    let planted = |name: &str, value: f64| {
        let y = y.copy();
        let _ = y.get(1).get(3).fill_(value);
        export_pair(dir.path(), name, &vs, &cfg, &enc, &x, &y)
    };
    let pairs = [
        export_pair(dir.path(), "good", &vs, &cfg, &enc, &x, &y),
        planted("nan", f64::NAN),
        planted("inf", f64::INFINITY),
    ];
    let (passed, text) = common::check_torch_export(&pairs);
    assert!(!passed, "NaN and infinity passed:\n{text}");
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("max |torch")).collect();
    assert_eq!(lines.len(), 3, "{text}");
    // The good pair agrees: the failure is the planted values'.
    let good: f64 = lines[0].rsplit("= ").next().unwrap().parse().unwrap();
    assert!(good < 1e-4, "{text}");
    for line in &lines[1..] {
        assert!(
            line.ends_with("= inf (not finite: NaN or infinity in the features)"),
            "{text}"
        );
    }
}

#[test]
fn export_renames_and_adds_batchnorm_counters() {
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = nets::build_encoder(&(vs.root() / "encoder"), &Config::default().encoder, 1);
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
