//! Augmentation throughput: two SimCLR views per image, at given sizes and thread counts,
//! next to the same pipeline in torchvision (scripts/bench_augment_torchvision.py).

use super::{Image, Op, Pipeline, Views};
use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// SimCLR's pipeline at `size`, the one the torchvision script builds.
pub fn simclr_pipeline(size: usize) -> Pipeline {
    Pipeline {
        ops: vec![
            Op::ResizedCrop {
                size: (size, size),
                scale: (0.08, 1.0),
                ratio: (0.75, 4.0 / 3.0),
            },
            Op::HFlip { p: 0.5 },
            Op::ColorJitter {
                p: 0.8,
                brightness: 0.4,
                contrast: 0.4,
                saturation: 0.4,
                hue: 0.1,
            },
            Op::Grayscale { p: 0.2 },
            Op::GaussianBlur {
                p: 0.5,
                kernel_frac: 0.1,
                sigma: (0.1, 2.0),
            },
        ],
    }
}

/// Images per second (each giving two views) of the selfsup pipeline on `threads` threads.
pub fn selfsup_throughput(size: usize, images: usize, threads: usize) -> Result<f64> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let imgs: Vec<Image> = (0..images)
        .map(|_| {
            Image::new(
                3,
                size,
                size,
                (0..3 * size * size).map(|_| rng.random()).collect(),
            )
        })
        .collect();
    let p = simclr_pipeline(size);
    let views = Views {
        pipelines: vec![p.clone(), p],
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let start = Instant::now();
    let made: usize = pool.install(|| {
        imgs.par_iter()
            .enumerate()
            .map(|(i, img)| views.apply(img, 0, 0, i).len())
            .sum()
    });
    let secs = start.elapsed().as_secs_f64();
    if made != 2 * images {
        bail!("made {made} views for {images} images");
    }
    Ok(images as f64 / secs)
}

/// Runs the torchvision script with `python`; returns (size, threads) -> images/s.
pub fn torchvision_throughput(
    python: &Path,
    script: &Path,
    images: usize,
    threads: &[usize],
    sizes: &[usize],
) -> Result<Vec<(usize, usize, f64)>> {
    let out = std::process::Command::new(python)
        .arg(script)
        .arg("--images")
        .arg(images.to_string())
        .arg("--threads")
        .args(threads.iter().map(|t| t.to_string()))
        .arg("--sizes")
        .args(sizes.iter().map(|s| s.to_string()))
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed: {}",
            python.display(),
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("unexpected output line '{line}'"))?;
        let get = |k: &str| {
            v[k].as_f64()
                .with_context(|| format!("no '{k}' in '{line}'"))
        };
        rows.push((
            get("size")? as usize,
            get("threads")? as usize,
            get("images_per_sec")?,
        ));
    }
    Ok(rows)
}

/// The `selfsup bench-augment` table: selfsup and torchvision (with `python`; the
/// comparison is left out, with a note on stderr, when it cannot run) at 32x32 and
/// 96x96, on 1 thread and on all of them.
pub fn table(images: usize, python: Result<PathBuf>) -> Result<String> {
    if images == 0 {
        bail!("--images must be at least 1");
    }
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: Vec<usize> = if all > 1 { vec![1, all] } else { vec![1] };
    let sizes = [32, 96];
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_augment_torchvision.py");
    let tv = python
        .and_then(|py| torchvision_throughput(&py, &script, images, &threads, &sizes))
        .unwrap_or_else(|e| {
            eprintln!("torchvision comparison skipped: {e:#}");
            Vec::new()
        });
    let mut out = format!(
        "{:>7} {:>7} {:>15} {:>18} {:>7}\n",
        "size", "threads", "selfsup img/s", "torchvision img/s", "ratio"
    );
    for &size in &sizes {
        for &t in &threads {
            let ours = selfsup_throughput(size, images, t)?;
            let theirs = tv.iter().find(|r| r.0 == size && r.1 == t).map(|r| r.2);
            let (tv_s, ratio) = match theirs {
                Some(x) => (format!("{x:.0}"), format!("{:.2}x", ours / x)),
                None => ("-".into(), "-".into()),
            };
            let dims = format!("{size}x{size}");
            out += &format!("{dims:>7} {t:>7} {ours:>15.0} {tv_s:>18} {ratio:>7}\n");
        }
    }
    Ok(out)
}
