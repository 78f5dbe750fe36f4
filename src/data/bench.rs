//! `selfsup bench-data`: images per second of SimCLR's two-view pipeline streamed from an
//! image collection, by selfsup (from an image folder, and from its packed WebDataset
//! shards) and by torchvision (`ImageFolder` + `DataLoader` with as many workers as selfsup
//! has threads, `scripts/bench_data_torchvision.py`), in interleaved rounds; with JPEG
//! decoding alone (libjpeg-turbo here, PIL there) as the physical reference.

use super::loader::{Loader, ViewSpec, epoch_order};
use super::{DataOptions, DataSpec, Split};
use crate::augment::Views;
use crate::augment::bench::simclr_pipeline;
use crate::data::decode;
use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::Device;

#[derive(Debug, Clone)]
pub struct BenchDataOptions {
    /// An image folder (class subfolders), as torchvision's `ImageFolder` reads it.
    pub folder: PathBuf,
    /// The same images as WebDataset shards (`selfsup data pack`), a `wds:` data spec.
    pub shards: Option<String>,
    /// View sizes to measure.
    pub sizes: Vec<usize>,
    /// Images per measurement.
    pub images: usize,
    /// Rounds of measurements; the best of each setup counts.
    pub rounds: usize,
    pub batch_size: usize,
}

/// One measurement's best round.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub what: String,
    /// The view size; None for decoding alone.
    pub size: Option<usize>,
    pub images_per_sec: f64,
}

/// The training split of a data spec, streamed (its images decoded as batches need them).
fn streamed_split(spec: &str) -> Result<Arc<Split>> {
    let ds = DataSpec::parse(spec)?.load(&DataOptions::default())?;
    let split = ds.pretrain_split().clone();
    if split.stream().is_none() {
        bail!("{spec} is not a streamed data set (an image folder, WebDataset shards or Parquet)");
    }
    Ok(Arc::new(split))
}

/// Images per second of two SimCLR views of `size` per image, through the loader as
/// pretraining runs it (reading, decoding, augmenting, float batches), over `images`
/// images of the epoch-`round` order.
pub fn pipeline_rate(
    split: &Arc<Split>,
    size: usize,
    images: usize,
    batch: usize,
    round: usize,
) -> Result<f64> {
    let p = simclr_pipeline(size);
    let views = Arc::new(Views {
        pipelines: vec![p.clone(), p],
    });
    let mut order = epoch_order(split.len(), 0, round);
    order.truncate(images.min(split.len()) / batch * batch);
    if order.is_empty() {
        bail!("fewer than one batch of {batch} images to measure");
    }
    let spec = ViewSpec {
        views,
        seed: 0,
        epoch: round,
    };
    let n = order.len();
    let start = Instant::now();
    for b in Loader::with_views(
        split.clone(),
        order,
        batch,
        true,
        4,
        Device::Cpu,
        Some(spec),
    ) {
        b?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Images per second of reading and decoding whole images (no crop, no resize), on all
/// threads.
pub fn decode_rate(split: &Arc<Split>, images: usize, round: usize) -> Result<f64> {
    let stream = split.stream().context("a streamed split")?;
    let mut order = epoch_order(split.len(), 1, round);
    order.truncate(images);
    let start = Instant::now();
    order.par_iter().try_for_each(|&i| -> Result<()> {
        let bytes = stream.source.read(stream.items[i])?;
        let (w, h) = decode::dimensions(&bytes)?;
        let whole = crate::augment::CropBox {
            top: 0,
            left: 0,
            height: h as usize,
            width: w as usize,
        };
        decode::decode_region(&bytes, (w, h), whole, 1)?;
        Ok(())
    })?;
    Ok(order.len() as f64 / start.elapsed().as_secs_f64())
}

/// torchvision's rows (and PIL decoding's), from the script run with `python`.
fn torchvision_rows(python: &Path, opts: &BenchDataOptions, workers: usize) -> Result<Vec<Row>> {
    let script = crate::venv::source_file("scripts/bench_data_torchvision.py");
    let mut args = vec![
        "--root".to_string(),
        opts.folder.display().to_string(),
        "--images".into(),
        opts.images.to_string(),
        "--workers".into(),
        workers.to_string(),
        "--batch".into(),
        opts.batch_size.to_string(),
        "--sizes".into(),
    ];
    args.extend(opts.sizes.iter().map(|s| s.to_string()));
    let mut rows = Vec::new();
    for v in crate::venv::run_json_lines(python, &script, &args)? {
        let line = v.to_string();
        let rate = v["images_per_sec"]
            .as_f64()
            .with_context(|| format!("no images_per_sec in '{line}'"))?;
        let what = v["what"].as_str().unwrap_or("?");
        rows.push(Row {
            what: match what {
                "torchvision" => "torchvision ImageFolder".into(),
                _ => "PIL decode alone".into(),
            },
            size: v["size"].as_u64().map(|s| s as usize),
            images_per_sec: rate,
        });
    }
    Ok(rows)
}

/// Keeps the better of two measurements of the same setup.
fn keep_best(best: &mut Vec<Row>, row: Row) {
    match best
        .iter_mut()
        .find(|r| r.what == row.what && r.size == row.size)
    {
        Some(r) => r.images_per_sec = r.images_per_sec.max(row.images_per_sec),
        None => best.push(row),
    }
}

/// Measures every setup in `opts.rounds` interleaved rounds; the best round of each.
pub fn measure(opts: &BenchDataOptions, python: Result<PathBuf>) -> Result<Vec<Row>> {
    if opts.rounds == 0 || opts.images == 0 || opts.sizes.is_empty() {
        bail!("bench-data needs at least one round, one image and one size");
    }
    let folder = streamed_split(&format!("folder:{}", opts.folder.display()))?;
    let shards = opts.shards.as_deref().map(streamed_split).transpose()?;
    let python = python?;
    let workers = rayon::current_num_threads();
    let mut best = Vec::new();
    for round in 0..opts.rounds {
        for &size in &opts.sizes {
            let rate = pipeline_rate(&folder, size, opts.images, opts.batch_size, round)?;
            keep_best(&mut best, row("selfsup from the folder", Some(size), rate));
            if let Some(s) = &shards {
                let rate = pipeline_rate(s, size, opts.images, opts.batch_size, round)?;
                keep_best(
                    &mut best,
                    row("selfsup from packed shards", Some(size), rate),
                );
            }
        }
        for r in torchvision_rows(&python, opts, workers)? {
            keep_best(&mut best, r);
        }
        let rate = decode_rate(&folder, opts.images, round)?;
        keep_best(&mut best, row("libjpeg-turbo decode alone", None, rate));
    }
    Ok(best)
}

fn row(what: &str, size: Option<usize>, images_per_sec: f64) -> Row {
    Row {
        what: what.into(),
        size,
        images_per_sec,
    }
}

/// The table: each row's images/s, and its ratio to torchvision at the same size and to
/// PIL's decoding alone.
pub fn table(rows: &[Row]) -> String {
    let tv = |size| {
        rows.iter()
            .find(|r| r.what.starts_with("torchvision") && r.size == size)
            .map(|r| r.images_per_sec)
    };
    let pil = rows
        .iter()
        .find(|r| r.what == "PIL decode alone")
        .map(|r| r.images_per_sec);
    let mut out = format!(
        "{:<28} {:>5} {:>9} {:>15} {:>15}\n",
        "", "size", "images/s", "vs torchvision", "vs PIL decode"
    );
    let mut sorted: Vec<&Row> = rows.iter().collect();
    sorted.sort_by_key(|r| (r.size.unwrap_or(usize::MAX), !r.what.starts_with("selfsup")));
    for r in sorted {
        let ratio = |base: Option<f64>| {
            base.map_or("-".into(), |b| format!("{:.2}x", r.images_per_sec / b))
        };
        let size = r.size.map_or("-".into(), |s| s.to_string());
        let _ = writeln!(
            out,
            "{:<28} {size:>5} {:>9.0} {:>15} {:>15}",
            r.what,
            r.images_per_sec,
            if r.size.is_some() {
                ratio(tv(r.size))
            } else {
                "-".into()
            },
            ratio(pil),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_gives_ratios_to_torchvision_and_to_decoding() {
        let rows = vec![
            row("selfsup from the folder", Some(96), 1500.0),
            row("torchvision ImageFolder", Some(96), 500.0),
            row("PIL decode alone", None, 1000.0),
        ];
        let t = table(&rows);
        let line = t
            .lines()
            .find(|l| l.starts_with("selfsup from the folder"))
            .unwrap();
        assert!(line.contains("3.00x") && line.contains("1.50x"), "{t}");
        let mut best = rows.clone();
        keep_best(&mut best, row("torchvision ImageFolder", Some(96), 400.0));
        keep_best(&mut best, row("torchvision ImageFolder", Some(96), 600.0));
        assert_eq!(best.len(), 3);
        assert_eq!(best[1].images_per_sec, 600.0);
    }
}
