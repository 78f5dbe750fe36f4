//! `selfsup data inspect`: counts, shape, class histogram and a PNG grid of samples.

use super::{Dataset, Split};
use anyhow::{Context, Result};
use image::{Rgb, RgbImage};
use std::borrow::Cow;
use std::fmt::Write;
use std::path::Path;

/// Images per row of the sample grid.
pub const GRID_COLS: usize = 8;
/// Pixels between grid cells, and their colour.
const GAP: u32 = 2;
const BACKGROUND: Rgb<u8> = Rgb([48, 48, 48]);

/// Count of each label `0..num_classes` in `split` (other labels, such as -1, are not counted).
pub fn histogram(split: &Split, num_classes: usize) -> Vec<usize> {
    let mut h = vec![0; num_classes];
    for &l in &split.labels {
        if let Some(c) = usize::try_from(l).ok().and_then(|l| h.get_mut(l)) {
            *c += 1;
        }
    }
    h
}

/// Images a streamed split's channel means are taken over (evenly spaced), so that
/// inspecting a large collection decodes only these.
pub const MEAN_SAMPLE: usize = 256;

/// Mean of each channel, in [0, 255], over every image of an in-memory split or over
/// `MEAN_SAMPLE` evenly spaced images of a streamed one; and the number of images used.
pub fn channel_means(split: &Split) -> Result<(Vec<f64>, usize)> {
    let [c, h, w] = split.shape;
    let used: Vec<usize> = match split.stream() {
        Some(_) if split.len() > MEAN_SAMPLE => (0..MEAN_SAMPLE)
            .map(|k| k * split.len() / MEAN_SAMPLE)
            .collect(),
        _ => (0..split.len()).collect(),
    };
    let mut sums = vec![0u64; c];
    for &i in &used {
        for (ch, plane) in split.fixed(i)?.chunks_exact(h * w).enumerate() {
            sums[ch] += plane.iter().map(|&v| v as u64).sum::<u64>();
        }
    }
    let n = (used.len() * h * w).max(1) as f64;
    Ok((sums.iter().map(|&s| s as f64 / n).collect(), used.len()))
}

/// The text report: counts, image shape, channels, per-channel means, class histogram.
pub fn describe(ds: &Dataset) -> Result<String> {
    let mut out = String::new();
    let unlabeled = ds.unlabeled.as_ref().map_or(0, Split::len);
    let [c, h, w] = ds.pretrain_split().shape;
    let kind = match c {
        1 => "greyscale",
        3 => "RGB",
        _ => "",
    };
    let _ = writeln!(
        out,
        "data {}: {} train / {} test / {unlabeled} unlabeled images",
        ds.name,
        ds.train.len(),
        ds.test.len()
    );
    let _ = writeln!(
        out,
        "image shape [C, H, W] = [{c}, {h}, {w}]: {c} channel(s) {kind}, u8"
    );
    let (means, used) = channel_means(ds.pretrain_split())?;
    let means: Vec<String> = means.iter().map(|m| format!("{m:.1}")).collect();
    let over = match used == ds.pretrain_split().len() {
        true => String::new(),
        false => format!(" (over {used} images)"),
    };
    let _ = writeln!(
        out,
        "pretraining split: {} images, channel means [{}]{over}",
        ds.pretrain_split().len(),
        means.join(", ")
    );
    if ds.num_classes == 0 {
        let _ = writeln!(out, "no classes (unlabeled data)");
        return Ok(out);
    }
    let _ = writeln!(out, "{} classes:", ds.num_classes);
    let (tr, te) = (
        histogram(&ds.train, ds.num_classes),
        histogram(&ds.test, ds.num_classes),
    );
    let _ = writeln!(
        out,
        "  {:>3}  {:<20} {:>8} {:>8}",
        "#", "class", "train", "test"
    );
    for k in 0..ds.num_classes {
        let name = ds.class_names.get(k).map_or("", String::as_str);
        let _ = writeln!(out, "  {k:>3}  {name:<20} {:>8} {:>8}", tr[k], te[k]);
    }
    Ok(out)
}

/// Which images go in the grid, row by row: for up to 10 classes, one row per class with
/// its first training images; otherwise the first 8 x 8 pretraining images.
pub fn grid_rows(ds: &Dataset) -> (&Split, Vec<Vec<usize>>) {
    if (1..=10).contains(&ds.num_classes) && !ds.train.is_empty() {
        let mut rows = vec![Vec::new(); ds.num_classes];
        for (i, &l) in ds.train.labels.iter().enumerate() {
            if let Some(r) = usize::try_from(l).ok().and_then(|l| rows.get_mut(l))
                && r.len() < GRID_COLS
            {
                r.push(i);
            }
        }
        return (&ds.train, rows);
    }
    let split = ds.pretrain_split();
    let n = split.len().min(GRID_COLS * GRID_COLS);
    let rows = (0..n)
        .collect::<Vec<_>>()
        .chunks(GRID_COLS)
        .map(|c| c.to_vec())
        .collect();
    (split, rows)
}

/// One cell of a tile grid: an image `[C, H, W]` and an optional frame colour.
pub struct Tile<'a> {
    pub pixels: Cow<'a, [u8]>,
    pub frame: Option<Rgb<u8>>,
}

/// Draws rows of equally shaped `[C, H, W]` images, `cols` cells wide; small images are
/// enlarged (nearest neighbour) to about 64 pixels. A tile's frame colours the gap around it.
pub fn tile_grid(rows: &[Vec<Tile>], shape: [usize; 3], cols: usize) -> RgbImage {
    let [c, h, w] = shape;
    let scale = (64 / h.max(w)).clamp(1, 8) as u32;
    let (ch, cw) = (h as u32 * scale, w as u32 * scale);
    let width = GAP + cols as u32 * (cw + GAP);
    let height = GAP + rows.len().max(1) as u32 * (ch + GAP);
    let mut img = RgbImage::from_pixel(width, height, BACKGROUND);
    // The planes shown as red, green and blue: the first three, or the one grey plane.
    let planes = if c >= 3 { [0, 1, 2] } else { [0, 0, 0] };
    for (r, row) in rows.iter().enumerate() {
        for (col, tile) in row.iter().enumerate() {
            let (x0, y0) = (GAP + col as u32 * (cw + GAP), GAP + r as u32 * (ch + GAP));
            if let Some(colour) = tile.frame {
                for y in y0 - GAP..y0 + ch + GAP {
                    for x in x0 - GAP..x0 + cw + GAP {
                        img.put_pixel(x, y, colour);
                    }
                }
            }
            for y in 0..ch {
                for x in 0..cw {
                    let at = (y / scale) as usize * w + (x / scale) as usize;
                    let px = planes.map(|p| tile.pixels[p * h * w + at]);
                    img.put_pixel(x0 + x, y0 + y, Rgb(px));
                }
            }
        }
    }
    img
}

/// Draws the sample grid of `grid_rows`.
pub fn sample_grid(ds: &Dataset) -> Result<RgbImage> {
    let (split, rows) = grid_rows(ds);
    let tiles: Vec<Vec<Tile>> = rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|&i| {
                    Ok(Tile {
                        pixels: split.fixed(i)?,
                        frame: None,
                    })
                })
                .collect::<Result<_>>()
        })
        .collect::<Result<_>>()?;
    Ok(tile_grid(&tiles, split.shape, GRID_COLS))
}

/// Writes the sample grid as a PNG.
pub fn write_grid(ds: &Dataset, path: &Path) -> Result<()> {
    sample_grid(ds)?
        .save_with_format(path, image::ImageFormat::Png)
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(shape: [usize; 3], labels: Vec<i64>, num_classes: usize) -> Dataset {
        let per: usize = shape.iter().product();
        let images = (0..labels.len() * per).map(|i| (i % 200) as u8).collect();
        let train = Split::new(images, labels, shape).unwrap();
        Dataset {
            name: "t".into(),
            test: train.clone(),
            train,
            unlabeled: None,
            num_classes,
            class_names: (0..num_classes).map(|k| format!("c{k}")).collect(),
        }
    }

    #[test]
    fn histogram_and_report_count_each_class() {
        let d = dataset([1, 2, 2], vec![0, 2, 2, 1, 2], 3);
        assert_eq!(histogram(&d.train, 3), vec![1, 1, 3]);
        let text = describe(&d).unwrap();
        assert!(text.contains("5 train / 5 test / 0 unlabeled"), "{text}");
        assert!(text.contains("[1, 2, 2]: 1 channel(s) greyscale"), "{text}");
        assert!(
            text.contains("c2                          3        3"),
            "{text}"
        );
        // Pixel values are 0..20 in order: mean 9.5.
        assert!(text.contains("channel means [9.5]"), "{text}");
    }

    #[test]
    fn grid_has_one_row_per_class_and_exact_pixels() {
        let d = dataset([3, 2, 2], vec![1, 0, 1], 2);
        let (_, rows) = grid_rows(&d);
        assert_eq!(rows, vec![vec![1], vec![0, 2]]);
        let g = sample_grid(&d).unwrap();
        // 2x2 images are enlarged 8 times: 16-pixel cells.
        assert_eq!(g.dimensions(), (2 + 8 * 18, 2 + 2 * 18));
        // Row 0 shows image 1, whose pixel (0, 0) has R, G, B at bytes 12, 16, 20.
        assert_eq!(g.get_pixel(2, 2), &Rgb([12, 16, 20]));
        // Row 1, column 1 shows image 2; its pixel (y 1, x 1) starts at 24 + 3.
        assert_eq!(g.get_pixel(2 + 18 + 15, 2 + 18 + 15), &Rgb([27, 31, 35]));
        assert_eq!(g.get_pixel(0, 0), &BACKGROUND);
    }
}
