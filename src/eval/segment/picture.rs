//! `segmentation.png`: for the first few test images, one row each: the image, its true
//! mask and the mask each protocol predicted, with a legend of the class colours. Masks
//! are drawn in a fixed palette: class 0 (the background) black, 255 (ignored) VOC's
//! cream, the other classes in the colours of the embedding plots (tab10 for up to 10 of
//! them, evenly spaced hues for more), which are brighter and further apart than VOC's
//! own palette (whose dark reds and greens are hard to tell from each other and from black).

use super::{Protocol, SHOWN};
use crate::data::Split;
use crate::data::seg::{IGNORE, SegDataset, voc_colour};
use crate::plots;
use anyhow::Result;
use image::{Rgb, RgbImage};
use plotters::style::RGBColor;
use std::path::Path;

/// The colour of class `c` of `num_classes` (background 0 included).
pub fn class_colour(c: u8, num_classes: usize) -> [u8; 3] {
    match c {
        0 => [0, 0, 0],
        IGNORE => voc_colour(IGNORE),
        c => {
            let RGBColor(r, g, b) = plots::class_colour(c as i64 - 1, num_classes.max(2) - 1);
            [r, g, b]
        }
    }
}

/// A `side` x `side` mask of class indices in the palette of `num_classes` classes.
pub fn colour_mask(mask: &[u8], side: u32, num_classes: usize) -> RgbImage {
    RgbImage::from_fn(side, side, |x, y| {
        Rgb(class_colour(mask[(y * side + x) as usize], num_classes))
    })
}

/// Image `i` of `split` as RGB (a grey image in all three channels).
pub fn rgb_image(split: &Split, i: usize) -> RgbImage {
    let [c, h, w] = split.shape;
    let px = split.image(i);
    let plane = h * w;
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let at = y as usize * w + x as usize;
        let ch = |k: usize| px[k.min(c - 1) * plane + at];
        Rgb([ch(0), ch(1), ch(2)])
    })
}

/// Draws the first `SHOWN` test images of `ds` with their true masks and the predictions
/// of each protocol in `columns` (`[H * W]` class indices per image), titled with `label`.
pub fn write(
    ds: &SegDataset,
    columns: &[(Protocol, Vec<Vec<u8>>)],
    label: &str,
    out: &Path,
) -> Result<()> {
    let side = ds.test.images.shape[2] as u32;
    let n = SHOWN.min(ds.test.len());
    let k = ds.num_classes;
    let rows: Vec<Vec<RgbImage>> = (0..n)
        .map(|i| {
            let mut row = vec![
                rgb_image(&ds.test.images, i),
                colour_mask(ds.test.mask(i), side, k),
            ];
            row.extend(
                columns
                    .iter()
                    .map(|(_, shown)| colour_mask(&shown[i], side, k)),
            );
            row
        })
        .collect();
    let mut headings = vec!["image".to_string(), "truth".to_string()];
    headings.extend(columns.iter().map(|(p, _)| p.as_str().to_string()));
    let mut legend: Vec<(String, [u8; 3])> = ds
        .class_names
        .iter()
        .enumerate()
        .map(|(c, name)| (name.clone(), class_colour(c as u8, k)))
        .collect();
    if (0..n).any(|i| ds.test.mask(i).contains(&IGNORE)) {
        legend.push(("ignored".to_string(), voc_colour(IGNORE)));
    }
    let title = format!("{label}: {} test images of {}", n, ds.name);
    plots::image_table(&rows, &headings, &legend, &title, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::seg::SegSplit;
    use crate::rundir::RunDir;

    #[test]
    fn picture_shows_image_truth_and_predictions_in_the_palette() {
        // Two 4x4 test images: grey 100, with mask classes 1 and 2 on halves and one ignored pixel.
        let images = Split::new(vec![100; 2 * 16], vec![-1, -1], [1, 4, 4]).unwrap();
        let mut masks: Vec<u8> = (0..32).map(|i| if i % 4 < 2 { 1 } else { 2 }).collect();
        masks[5] = IGNORE;
        let split = SegSplit::new(images, masks).unwrap();
        let ds = SegDataset {
            name: "toy".into(),
            train: split.clone(),
            test: split,
            num_classes: 3,
            class_names: vec!["background".into(), "a".into(), "b".into()],
        };
        let frozen = vec![vec![0u8; 16], vec![2u8; 16]];
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(RunDir::SEGMENTATION);
        write(&ds, &[(Protocol::Frozen, frozen)], "toy run", &out).unwrap();
        let img = image::open(&out).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), plots::image_table_size(2, 3, 4));
        // Cells of 128 pixels (4x4 enlarged 32 times) with 8-pixel gaps, from (8, 64).
        let cell = |r: u32, c: u32, x: u32, y: u32| {
            img.get_pixel(8 + c * 136 + 32 * x + 5, 64 + r * 136 + 32 * y + 5)
                .0
        };
        assert_eq!(cell(0, 0, 0, 0), [100, 100, 100]);
        let (a, b) = (class_colour(1, 3), class_colour(2, 3));
        assert_eq!(a, [31, 119, 180], "tab10 blue for the first class");
        assert_ne!(a, b);
        assert_eq!(cell(0, 1, 0, 0), a);
        assert_eq!(cell(0, 1, 3, 0), b);
        assert_eq!(cell(0, 1, 1, 1), voc_colour(IGNORE));
        assert_eq!(cell(0, 2, 2, 2), [0, 0, 0]);
        assert_eq!(cell(1, 2, 0, 3), b);
    }
}
