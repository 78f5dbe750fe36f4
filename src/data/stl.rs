//! STL-10, binary version (`stl10_binary/`).
//!
//! `*_X.bin` holds 96x96 RGB images, 27648 bytes each: the red plane, then green, then
//! blue, each plane stored column-major (the byte of pixel (y, x) is at `x * 96 + y`).
//! They are transposed to row-major `[C, H, W]`. `*_y.bin` holds one byte per image, the
//! class 1..=10, which becomes 0..9.
//!
//! `unlabeled_X.bin` holds 100,000 images (2.7 GB). It is never read whole unless asked:
//! a seeded random subset of `max` records is read one record at a time at its offset
//! (positioned reads, no memory map), so memory is bounded by the subset.

use super::{Dataset, Split, find_dir_with};
use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const SIDE: usize = 96;
pub const PLANE: usize = SIDE * SIDE;
pub const IMAGE_BYTES: usize = 3 * PLANE;
/// `[C, H, W]` of every STL-10 image.
pub const SHAPE: [usize; 3] = [3, SIDE, SIDE];
/// Images in the full `unlabeled_X.bin`.
pub const UNLABELED_COUNT: usize = 100_000;

pub const CLASSES: [&str; 10] = [
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
];

/// Appends one column-major record (27648 bytes) to `out` as row-major `[3, 96, 96]`.
pub fn append_chw(record: &[u8], out: &mut Vec<u8>) {
    debug_assert_eq!(record.len(), IMAGE_BYTES);
    for plane in record.chunks_exact(PLANE) {
        for y in 0..SIDE {
            out.extend((0..SIDE).map(|x| plane[x * SIDE + y]));
        }
    }
}

/// Checks an `_X.bin` size: a positive multiple of the image size. Returns the image count.
pub fn image_count(len: u64) -> Result<usize> {
    if len == 0 || !len.is_multiple_of(IMAGE_BYTES as u64) {
        bail!("size {len} bytes is not a positive multiple of the {IMAGE_BYTES}-byte STL-10 image");
    }
    Ok((len / IMAGE_BYTES as u64) as usize)
}

/// Labels 1..=10 as 0..9.
pub fn parse_labels(bytes: &[u8]) -> Result<Vec<i64>> {
    if let Some(i) = bytes.iter().position(|&b| !(1..=10).contains(&b)) {
        bail!("label {} at index {i} is out of range 1..=10", bytes[i]);
    }
    Ok(bytes.iter().map(|&b| b as i64 - 1).collect())
}

/// Parses the bytes of an `_X.bin` into `[N, 3, 96, 96]` row-major images.
pub fn parse_images(x: &[u8]) -> Result<Vec<u8>> {
    image_count(x.len() as u64)?;
    let mut images = Vec::with_capacity(x.len());
    for rec in x.chunks_exact(IMAGE_BYTES) {
        append_chw(rec, &mut images);
    }
    Ok(images)
}

/// Parses the bytes of an `_X.bin` and its `_y.bin` into one split.
pub fn parse_labeled(x: &[u8], y: &[u8]) -> Result<Split> {
    Split::new(parse_images(x)?, parse_labels(y)?, SHAPE)
}

/// Reads `{stem}_X.bin` and `{stem}_y.bin`; sizes are checked from the metadata first.
pub fn read_labeled(dir: &Path, stem: &str) -> Result<Split> {
    let (xp, yp) = (
        dir.join(format!("{stem}_X.bin")),
        dir.join(format!("{stem}_y.bin")),
    );
    let size = |p: &Path| -> Result<u64> {
        Ok(std::fs::metadata(p)
            .with_context(|| format!("missing STL-10 file {}", p.display()))?
            .len())
    };
    let n = image_count(size(&xp)?).with_context(|| format!("{}", xp.display()))?;
    let ny = size(&yp)?;
    if ny != n as u64 {
        bail!(
            "{} holds {n} images but {} holds {ny} labels",
            xp.display(),
            yp.display()
        );
    }
    let x = std::fs::read(&xp).with_context(|| format!("cannot read {}", xp.display()))?;
    let y = std::fs::read(&yp).with_context(|| format!("cannot read {}", yp.display()))?;
    let labels =
        parse_labels(&y).with_context(|| format!("invalid STL-10 labels {}", yp.display()))?;
    let images =
        parse_images(&x).with_context(|| format!("invalid STL-10 images {}", xp.display()))?;
    Split::new(images, labels, SHAPE).with_context(|| format!("{}", xp.display()))
}

/// Reads a seeded random subset of at most `max` images of an unlabeled `_X.bin` (all of
/// them, in order, when `max` covers the file), one positioned read per image. Labels are -1.
pub fn read_unlabeled(path: &Path, max: usize, seed: u64) -> Result<Split> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("missing STL-10 file {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let n = image_count(len).with_context(|| format!("{}", path.display()))?;
    let k = max.min(n);
    let mut picked: Vec<usize> = if k == n {
        (0..n).collect()
    } else {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x57_1010);
        rand::seq::index::sample(&mut rng, n, k).into_vec()
    };
    picked.sort_unstable();
    let mut images = Vec::with_capacity(k * IMAGE_BYTES);
    let mut rec = vec![0u8; IMAGE_BYTES];
    for &i in &picked {
        file.read_exact_at(&mut rec, (i * IMAGE_BYTES) as u64)
            .with_context(|| format!("{}: cannot read image {i}", path.display()))?;
        append_chw(&rec, &mut images);
    }
    Split::new(images, vec![-1; k], SHAPE)
}

/// Loads STL-10 from `dir` (or its `stl10_binary` subfolder): train (5000) and test (8000)
/// whole, and, when `unlabeled_max` > 0, that many images of `unlabeled_X.bin` for pretraining.
pub fn load(dir: &Path, unlabeled_max: usize, seed: u64) -> Result<Dataset> {
    let dir = find_dir_with(dir, "stl10_binary", "test_X.bin")?;
    let unlabeled = if unlabeled_max > 0 {
        Some(
            read_unlabeled(&dir.join("unlabeled_X.bin"), unlabeled_max, seed)
                .context("(set stl10_unlabeled = 0 to pretrain on the labeled train split)")?,
        )
    } else {
        None
    };
    Ok(Dataset {
        name: "stl10".into(),
        train: read_labeled(&dir, "train")?,
        test: read_labeled(&dir, "test")?,
        unlabeled,
        num_classes: 10,
        class_names: CLASSES.iter().map(|s| s.to_string()).collect(),
    })
}

/// Test helper: the column-major file bytes of row-major `[3, 96, 96]` images.
#[cfg(test)]
pub(crate) fn encode_images(chw: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for img in chw {
        for plane in img.chunks_exact(PLANE) {
            for x in 0..SIDE {
                out.extend((0..SIDE).map(|y| plane[y * SIDE + x]));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Row-major image `k`: pixel (c, y, x) = (k + 60 c + 2 y + 5 x) mod 256.
    pub(crate) fn image(k: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(IMAGE_BYTES);
        for c in 0..3 {
            for y in 0..SIDE {
                for x in 0..SIDE {
                    v.push(((k + 60 * c + 2 * y + 5 * x) % 256) as u8);
                }
            }
        }
        v
    }

    fn write_stl(dir: &Path, unlabeled: usize) {
        let w = |name: &str, b: &[u8]| std::fs::write(dir.join(name), b).unwrap();
        w(
            "train_X.bin",
            &encode_images(&[image(0), image(1), image(2)]),
        );
        w("train_y.bin", &[1, 10, 4]);
        w("test_X.bin", &encode_images(&[image(3), image(4)]));
        w("test_y.bin", &[2, 3]);
        let u: Vec<Vec<u8>> = (0..unlabeled).map(|i| image(100 + i)).collect();
        w("unlabeled_X.bin", &encode_images(&u));
    }

    #[test]
    fn column_major_becomes_row_major() {
        // The first bytes of the file walk down column 0 of the red plane.
        let file = encode_images(&[image(0)]);
        assert_eq!(&file[..3], &[0, 2, 4]);
        assert_eq!(file[SIDE], 5); // (y 0, x 1)
        let mut back = Vec::new();
        append_chw(&file, &mut back);
        assert_eq!(back, image(0));
        assert_eq!(back[PLANE + SIDE + 1], 60 + 2 + 5); // green (y 1, x 1)
    }

    #[test]
    fn stl10_reads_back_images_labels_and_an_unlabeled_subset() {
        let dir = tempfile::tempdir().unwrap();
        write_stl(dir.path(), 6);
        let d = load(dir.path(), 4, 7).unwrap();
        assert_eq!(d.train.labels, vec![0, 9, 3]);
        assert_eq!(d.test.labels, vec![1, 2]);
        assert_eq!(d.train.shape, [3, 96, 96]);
        assert_eq!(d.train.image(1), &image(1)[..]);
        assert_eq!(d.test.image(1), &image(4)[..]);
        let u = d.unlabeled.as_ref().unwrap();
        assert_eq!((u.len(), u.labels.clone()), (4, vec![-1; 4]));
        // The subset is sorted, seeded, and each image is an exact unlabeled image.
        let ids: Vec<usize> = (0..4).map(|i| u.image(i)[0] as usize - 100).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(u.image(i), &image(100 + id)[..]);
        }
        assert_eq!(load(dir.path(), 4, 7).unwrap().unlabeled, d.unlabeled);
        assert_eq!(
            load(dir.path(), 100, 7).unwrap().unlabeled.unwrap().len(),
            6
        );
        assert!(load(dir.path(), 0, 7).unwrap().unlabeled.is_none());
        assert_eq!(d.pretrain_split().len(), 4);
    }

    #[test]
    fn corrupt_stl_files_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        write_stl(dir.path(), 2);
        let err = || format!("{:#}", load(dir.path(), 1, 0).unwrap_err());
        let d = dir.path();
        std::fs::write(d.join("train_y.bin"), [1, 11, 4]).unwrap();
        let e = err();
        assert!(
            e.contains("train_y.bin") && e.contains("label 11 at index 1"),
            "{e}"
        );
        std::fs::write(d.join("train_y.bin"), [1, 2]).unwrap();
        let e = err();
        assert!(e.contains("3 images") && e.contains("2 labels"), "{e}");
        std::fs::write(d.join("train_y.bin"), [1, 2, 3]).unwrap();
        let x = std::fs::read(d.join("test_X.bin")).unwrap();
        std::fs::write(d.join("test_X.bin"), &x[..x.len() - 7]).unwrap();
        let e = err();
        assert!(
            e.contains("test_X.bin") && e.contains("not a positive multiple"),
            "{e}"
        );
        std::fs::write(d.join("test_X.bin"), &x).unwrap();
        std::fs::write(d.join("unlabeled_X.bin"), [0u8; 100]).unwrap();
        let e = err();
        assert!(
            e.contains("unlabeled_X.bin") && e.contains("stl10_unlabeled = 0"),
            "{e}"
        );
        std::fs::remove_file(d.join("unlabeled_X.bin")).unwrap();
        let e = err();
        assert!(
            e.contains("missing") && e.contains("unlabeled_X.bin"),
            "{e}"
        );
        load(d, 0, 0).unwrap();
        std::fs::remove_file(d.join("test_y.bin")).unwrap();
        let e = format!("{:#}", load(d, 0, 0).unwrap_err());
        assert!(e.contains("missing") && e.contains("test_y.bin"), "{e}");
    }
}
