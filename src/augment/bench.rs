//! Augmentation throughput: two SimCLR views per image, at given shapes and thread counts,
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

/// Random images of `channels` x `size` x `size`: the script's `CxS` shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    pub channels: usize,
    pub size: usize,
}

impl Shape {
    /// The script's spelling, e.g. `1x28`.
    pub fn arg(&self) -> String {
        format!("{}x{}", self.channels, self.size)
    }
}

/// One measurement: images per second (each giving two views) of `shape` on `threads`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Row {
    pub shape: Shape,
    pub threads: usize,
    pub images_per_sec: f64,
}

/// Images per second (each giving two views) of the selfsup pipeline on `threads` threads.
pub fn selfsup_throughput(shape: Shape, images: usize, threads: usize) -> Result<f64> {
    let Shape { channels, size } = shape;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let imgs: Vec<Image> = (0..images)
        .map(|_| {
            Image::new(
                channels,
                size,
                size,
                (0..channels * size * size).map(|_| rng.random()).collect(),
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

/// Runs the torchvision script with `python`: one row per (shape, threads).
pub fn torchvision_throughput(
    python: &Path,
    script: &Path,
    images: usize,
    threads: &[usize],
    shapes: &[Shape],
) -> Result<Vec<Row>> {
    let mut args = vec![
        "--images".to_string(),
        images.to_string(),
        "--threads".into(),
    ];
    args.extend(threads.iter().map(|t| t.to_string()));
    args.push("--shapes".into());
    args.extend(shapes.iter().map(Shape::arg));
    let mut rows = Vec::new();
    for v in crate::venv::run_json_lines(python, script, &args)? {
        let line = v.to_string();
        let get = |k: &str| {
            v[k].as_f64()
                .with_context(|| format!("no '{k}' in '{line}'"))
        };
        rows.push(Row {
            shape: Shape {
                channels: get("channels")? as usize,
                size: get("size")? as usize,
            },
            threads: get("threads")? as usize,
            images_per_sec: get("images_per_sec")?,
        });
    }
    Ok(rows)
}

/// The `selfsup bench-augment` table: selfsup and torchvision (with `python`; the
/// comparison is left out, with a note on stderr, when it cannot run) at 28x28 gray (the
/// default data, Fashion-MNIST), 32x32 and 96x96 RGB (CIFAR, STL-10), on 1 thread and on
/// all of them.
pub fn table(images: usize, python: Result<PathBuf>) -> Result<String> {
    if images == 0 {
        bail!("--images must be at least 1");
    }
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: Vec<usize> = if all > 1 { vec![1, all] } else { vec![1] };
    let shapes = [(1, 28), (3, 32), (3, 96)].map(|(channels, size)| Shape { channels, size });
    let script = crate::venv::source_file("scripts/bench_augment_torchvision.py");
    let tv = python
        .and_then(|py| torchvision_throughput(&py, &script, images, &threads, &shapes))
        .unwrap_or_else(|e| {
            eprintln!("torchvision comparison skipped: {e:#}");
            Vec::new()
        });
    let mut out = format!(
        "{:>10} {:>7} {:>15} {:>18} {:>7}\n",
        "shape", "threads", "selfsup img/s", "torchvision img/s", "ratio"
    );
    for &shape in &shapes {
        for &t in &threads {
            let ours = selfsup_throughput(shape, images, t)?;
            let theirs = tv.iter().find(|r| r.shape == shape && r.threads == t);
            let (tv_s, ratio) = match theirs {
                Some(r) => (
                    format!("{:.0}", r.images_per_sec),
                    format!("{:.2}x", ours / r.images_per_sec),
                ),
                None => ("-".into(), "-".into()),
            };
            let name = format!("{}x{}x{}", shape.channels, shape.size, shape.size);
            out += &format!("{name:>10} {t:>7} {ours:>15.0} {tv_s:>18} {ratio:>7}\n");
        }
    }
    Ok(out)
}
