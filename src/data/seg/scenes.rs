//! `fashion-scenes`: a segmentation task made from Fashion-MNIST, needing no download.
//!
//! A scene is a black `size` x `size` canvas (64 by default) holding 2 to 4 garments, each
//! a 28x28 Fashion-MNIST image pasted whole inside the canvas at a uniformly random
//! position, in order, so that later garments cover earlier ones where they overlap.
//!
//! A garment's pixels are those of its image with intensity >= `GARMENT_THRESHOLD` (16 of
//! 255): Fashion-MNIST garments are bright on an exactly or nearly black background, and
//! the faint fringe below the threshold is mostly anti-aliasing. Only those pixels are
//! pasted (opaque); the rest of the 28x28 square is transparent. So image and mask agree
//! exactly: a pixel of class `1 + label` shows that garment's own intensity, a pixel of
//! class 0 (background) is black.
//!
//! Scene i of a split is drawn by ChaCha8 seeded with the split's seed on stream i, so a
//! scene does not depend on how many are made or on the threads that make them, and every
//! run sees the same scenes. Training scenes take their garments from Fashion-MNIST's
//! training images, test scenes from its test images.

use super::{SegDataset, SegOptions, SegSplit};
use crate::data::{FASHION_MNIST_CLASSES, Split, load_mnist_dir};
use anyhow::{Result, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::path::Path;

/// Garment pixels have at least this intensity.
pub const GARMENT_THRESHOLD: u8 = 16;
/// Garments per scene.
pub const MIN_GARMENTS: usize = 2;
pub const MAX_GARMENTS: usize = 4;
/// Seeds of the training and test scenes.
pub const TRAIN_SEED: u64 = 1;
pub const TEST_SEED: u64 = 2;

/// One garment of a scene: which image of the source split, and its top-left corner.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub garment: usize,
    pub x: usize,
    pub y: usize,
}

/// The 11 classes: background, then Fashion-MNIST's 10 in their label order.
pub fn class_names() -> Vec<String> {
    std::iter::once("background")
        .chain(FASHION_MNIST_CLASSES)
        .map(String::from)
        .collect()
}

/// The garments of scene `index`: 2 to 4 of the `n` source images, each `side` x `side`,
/// placed inside a `size` x `size` canvas.
pub fn placements(n: usize, side: usize, size: usize, seed: u64, index: u64) -> Vec<Placement> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    let count = rng.random_range(MIN_GARMENTS..=MAX_GARMENTS);
    (0..count)
        .map(|_| Placement {
            garment: rng.random_range(0..n),
            x: rng.random_range(0..=size - side),
            y: rng.random_range(0..=size - side),
        })
        .collect()
}

/// Pastes the garments of `source` (1 x side x side images) at `placements` into a black
/// `size` x `size` canvas: (image, mask), each `size * size` bytes.
pub fn render(source: &Split, placements: &[Placement], size: usize) -> (Vec<u8>, Vec<u8>) {
    let side = source.shape[1];
    let (mut image, mut mask) = (vec![0u8; size * size], vec![0u8; size * size]);
    for p in placements {
        let class = 1 + source.labels[p.garment] as u8;
        let g = source.image(p.garment);
        for y in 0..side {
            for x in 0..side {
                let v = g[y * side + x];
                if v >= GARMENT_THRESHOLD {
                    let at = (p.y + y) * size + p.x + x;
                    image[at] = v;
                    mask[at] = class;
                }
            }
        }
    }
    (image, mask)
}

/// `count` scenes of `size` x `size` made from the garments of `source` with `seed`.
pub fn make(source: &Split, count: usize, size: usize, seed: u64) -> Result<SegSplit> {
    let [c, h, w] = source.shape;
    if c != 1 || h != w {
        bail!(
            "fashion-scenes needs square 1-channel garment images, found {:?}",
            source.shape
        );
    }
    if size < h {
        bail!(
            "option seg_image_size = {size}: fashion-scenes needs a canvas of at least the garments' {h} pixels"
        );
    }
    if source.is_empty() {
        bail!("fashion-scenes: no garment images");
    }
    let scenes: Vec<(Vec<u8>, Vec<u8>)> = (0..count as u64)
        .into_par_iter()
        .map(|i| render(source, &placements(source.len(), h, size, seed, i), size))
        .collect();
    let (mut images, mut masks) = (
        Vec::with_capacity(count * size * size),
        Vec::with_capacity(count * size * size),
    );
    for (i, m) in scenes {
        images.extend_from_slice(&i);
        masks.extend_from_slice(&m);
    }
    SegSplit::new(Split::new(images, vec![-1; count], [1, size, size])?, masks)
}

/// `fashion-scenes` from the Fashion-MNIST IDX files in `dir`.
pub fn load(dir: &Path, opts: &SegOptions) -> Result<SegDataset> {
    let names = FASHION_MNIST_CLASSES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let fm = load_mnist_dir("fashion-mnist", dir, names)?;
    Ok(SegDataset {
        name: format!("fashion-scenes ({0}x{0})", opts.size),
        train: make(&fm.train, opts.train_scenes, opts.size, TRAIN_SEED)?,
        test: make(&fm.test, opts.test_scenes, opts.size, TEST_SEED)?,
        num_classes: 1 + FASHION_MNIST_CLASSES.len(),
        class_names: class_names(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Five 4x4 "garments": garment k has label k and intensity 100 + k on its 2x2 centre,
    /// a faint 10 (below the threshold) on the rest.
    fn garments() -> Split {
        let mut images = Vec::new();
        for k in 0..5u8 {
            for y in 0..4 {
                for x in 0..4 {
                    let centre = (1..3).contains(&y) && (1..3).contains(&x);
                    images.push(if centre { 100 + k } else { 10 });
                }
            }
        }
        Split::new(images, (0..5).collect(), [1, 4, 4]).unwrap()
    }

    #[test]
    fn scenes_are_deterministic_and_independent_of_the_count() {
        let g = garments();
        let a = make(&g, 40, 9, 7).unwrap();
        assert_eq!(a, make(&g, 40, 9, 7).unwrap());
        let fewer = make(&g, 10, 9, 7).unwrap();
        assert_eq!(
            fewer.images.memory().unwrap(),
            &a.images.memory().unwrap()[..10 * 81]
        );
        assert_ne!(a, make(&g, 40, 9, 8).unwrap());
        // 2 to 4 garments per scene, all inside the canvas, and every count occurs.
        let mut counts = [0; 5];
        for i in 0..200 {
            let p = placements(5, 4, 9, 7, i);
            counts[p.len()] += 1;
            assert!(
                p.iter().all(|q| q.garment < 5 && q.x <= 5 && q.y <= 5),
                "{p:?}"
            );
        }
        assert!(
            counts[2] > 0 && counts[3] > 0 && counts[4] > 0 && counts[0] + counts[1] == 0,
            "{counts:?}"
        );
    }

    #[test]
    fn masks_match_the_pasted_garments() {
        let g = garments();
        // Garment 1 at (0, 0), garment 3 at (1, 1) over it: their centres overlap at (2, 2).
        let p = [
            Placement {
                garment: 1,
                x: 0,
                y: 0,
            },
            Placement {
                garment: 3,
                x: 1,
                y: 1,
            },
        ];
        let (image, mask) = render(&g, &p, 6);
        #[rustfmt::skip]
        let want_mask = vec![
            0, 0, 0, 0, 0, 0,
            0, 2, 2, 0, 0, 0,
            0, 2, 4, 4, 0, 0,
            0, 0, 4, 4, 0, 0,
            0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(mask, want_mask);
        // Faint pixels are not pasted: background stays black, and every pixel shows the
        // garment its mask names.
        for (i, (&v, &m)) in image.iter().zip(&mask).enumerate() {
            match m {
                0 => assert_eq!(v, 0, "pixel {i}"),
                c => assert_eq!(v, 100 + c - 1, "pixel {i}"),
            }
        }
        // The same holds for generated scenes: image and mask agree everywhere.
        let s = make(&g, 30, 8, 3).unwrap();
        for (&v, &m) in s.images.memory().unwrap().iter().zip(&s.masks) {
            assert_eq!(v, if m == 0 { 0 } else { 100 + m - 1 });
        }
        assert!(s.masks.contains(&0) && s.masks.iter().any(|&m| m > 0));
        assert_eq!(class_names().len(), 11);
        assert_eq!(class_names()[10], "Ankle boot");
        let e = make(&g, 3, 3, 0).unwrap_err().to_string();
        assert!(e.contains("seg_image_size = 3"), "{e}");
    }
}
