//! Colorization on a synthetic colour data set whose colour says what the object is:
//! Fashion-MNIST coloured by class. (On real colour data, use `selfsup pretrain --method
//! colorization --data cifar10:DIR`.)
//!
//! Every image keeps its lightness (the Lab L of the grey image) and gets chroma
//! C = 30 min(1, L / 50) at the hue 36° x class + U(-10°, 10°) (seeded), converted back to
//! sRGB (clipped to the gamut). Its colour is therefore predictable from what the object
//! is, and only from that, which is what a colorization network has to learn; and the L
//! channel its encoder sees is (up to the gamut clipping) the grey Fashion-MNIST image.
//!
//! ```sh
//! cargo run --release --example colorization_synthetic -- OUT_DIR [KEY=VALUE ...]
//! ```
//! pretrains `colorization` with the given config overrides into OUT_DIR, then evaluates
//! it as `selfsup eval` does (linear probe, kNN), next to raw RGB pixels and raw L pixels.

use anyhow::{Result, bail};
use rand::{Rng, SeedableRng};
use selfsup::config::Config;
use selfsup::data::{self, Dataset, Split};
use selfsup::eval;
use selfsup::nets::lab::{lab_to_rgb, rgb_to_lab};
use selfsup::run::{Model, checkpoint, data_info};
use selfsup::rundir::RunDir;
use selfsup::train::{self, TrainOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// The split coloured by class (see the module comment), 2000 images at a time.
fn colourise(split: &Split, seed: u64) -> Split {
    let [c, h, w] = split.shape.map(|d| d as i64);
    assert_eq!(c, 1, "expects grey images");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let hues: Vec<f32> = split
        .labels
        .iter()
        .map(|&y| (36.0 * y as f32 + rng.random_range(-10.0..10.0)).to_radians())
        .collect();
    let pixels = split.memory().expect("Fashion-MNIST is held in memory");
    let mut out = Vec::with_capacity(pixels.len() * 3);
    let per = split.image_len();
    for start in (0..split.len()).step_by(2000) {
        let n = (split.len() - start).min(2000);
        let grey = Tensor::from_slice(&pixels[start * per..(start + n) * per])
            .view([n as i64, 1, h, w])
            .to_kind(Kind::Float)
            / 255.0;
        let l = rgb_to_lab(&grey.repeat([1, 3, 1, 1])).narrow(1, 0, 1); // [n, 1, H, W]
        let hue = Tensor::from_slice(&hues[start..start + n]).view([n as i64, 1, 1, 1]);
        let chroma = (&l / 50.0).clamp_max(1.0) * 30.0;
        let lab = Tensor::cat(
            &[l.shallow_clone(), &chroma * hue.cos(), &chroma * hue.sin()],
            1,
        );
        let rgb = (lab_to_rgb(&lab) * 255.0).round().to_kind(Kind::Uint8);
        out.extend(Vec::<u8>::try_from(rgb.flatten(0, -1)).unwrap());
    }
    Split::new(out, split.labels.clone(), [3, h as usize, w as usize]).unwrap()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first().map(PathBuf::from) else {
        bail!("usage: colorization_synthetic OUT_DIR [KEY=VALUE ...]");
    };
    let mut sets = vec!["method=\"colorization\"".to_string()];
    sets.extend(args[1..].iter().cloned());
    let (cfg, given) = Config::assemble(Config::default(), None, &sets)?;
    for w in selfsup::methods::check_config(&cfg, &given)? {
        eprintln!("warning: {w}");
    }
    let grey = data::load(&cfg.data, cfg.train.seed)?;
    let t0 = Instant::now();
    let ds = Dataset {
        name: format!("{} coloured by class (synthetic)", grey.name),
        train: colourise(&grey.train, cfg.train.seed),
        test: colourise(&grey.test, cfg.train.seed + 1),
        unlabeled: None,
        num_classes: grey.num_classes,
        class_names: grey.class_names.clone(),
    };
    eprintln!(
        "coloured {} + {} images in {:.1}s",
        ds.train.len(),
        ds.test.len(),
        t0.elapsed().as_secs_f64()
    );
    let device = Device::Cpu;
    let opts = TrainOptions {
        quiet: true,
        ..Default::default()
    };
    let s = train::pretrain(&cfg, &ds, &out, &opts, device)?.summary;
    println!(
        "{}",
        s.describe(&format!("colorization on {}", ds.name), &out)
    );

    let ck = checkpoint::load(&out)?;
    let model = Model::build(&cfg, &data_info(&ds), device)?;
    checkpoint::load_into(&model.vs, &ck.model)?;
    let t = Instant::now();
    let scores = eval::evaluate_method(model.method.as_ref(), &ds, &cfg.eval_view(), device)?;
    let label = format!("colorization ({} epochs, encoder on L)", ck.meta.epoch);
    println!(
        "{}",
        eval::describe(&label, &ds, &scores, t.elapsed().as_secs_f64())
    );
    let params = selfsup::nets::parameter_count(&model.vs, "encoder.");
    let json = eval::run_json(&cfg.method, &cfg.data.source, &ck.meta, params, &scores);
    std::fs::write(out.join(RunDir::EVAL), serde_json::to_string_pretty(&json)?)?;
    let (tr, te) = (Arc::new(ds.train.clone()), Arc::new(ds.test.clone()));
    let t = Instant::now();
    let rgb = eval::score(
        &eval::pixel_features(&tr, device)?,
        &eval::pixel_features(&te, device)?,
        ds.num_classes as i64,
        &cfg.eval_view(),
    );
    println!(
        "{}",
        eval::describe("raw RGB pixels", &ds, &rgb, t.elapsed().as_secs_f64())
    );
    let l_pixels = |split: &Arc<Split>| {
        eval::features_with(split, 1024, device, cfg.train.precision, |x| {
            rgb_to_lab(x).narrow(1, 0, 1).flatten(1, -1) / 100.0
        })
    };
    let t = Instant::now();
    let l = eval::score(
        &l_pixels(&tr)?,
        &l_pixels(&te)?,
        ds.num_classes as i64,
        &cfg.eval_view(),
    );
    println!(
        "{}",
        eval::describe("raw L pixels", &ds, &l, t.elapsed().as_secs_f64())
    );
    Ok(())
}
