//! CIFAR-10 and CIFAR-100, binary version.
//!
//! Each file is a run of fixed-size records: the label byte(s), then 3072 image bytes: the
//! red plane, then green, then blue, each 32x32 row-major. That is already `[C, H, W]`
//! row-major, so the image bytes are copied as they are.
//! - CIFAR-10: 1 label byte (0..10); `data_batch_1.bin` .. `data_batch_5.bin`, `test_batch.bin`.
//! - CIFAR-100: 2 label bytes, coarse (0..20) then fine (0..100); `train.bin`, `test.bin`.
//!
//! The file size is checked against the record size before anything is read.

use super::{Dataset, Split, find_dir_with, numbered_names};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// `[C, H, W]` of every CIFAR image.
pub const SHAPE: [usize; 3] = [3, 32, 32];
pub const IMAGE_BYTES: usize = 3 * 32 * 32;

pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The record layout of one CIFAR variant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Layout {
    /// Label bytes before the image: 1 (CIFAR-10) or 2 (CIFAR-100).
    pub label_bytes: usize,
    /// Which label byte to keep (CIFAR-100: 0 = coarse, 1 = fine).
    pub label_index: usize,
    /// The exclusive upper bound of each label byte.
    pub label_ranges: [u8; 2],
}

pub const CIFAR10: Layout = Layout {
    label_bytes: 1,
    label_index: 0,
    label_ranges: [10, 0],
};

/// CIFAR-100 with the `coarse` (20 superclasses) or `fine` (100 classes) labels.
pub fn cifar100(fine: bool) -> Layout {
    Layout {
        label_bytes: 2,
        label_index: fine as usize,
        label_ranges: [20, 100],
    }
}

impl Layout {
    pub fn record_bytes(&self) -> usize {
        self.label_bytes + IMAGE_BYTES
    }
    pub fn num_classes(&self) -> usize {
        self.label_ranges[self.label_index] as usize
    }
}

/// Checks a file size: a positive multiple of the record size.
pub fn check_size(len: u64, layout: Layout) -> Result<()> {
    let rec = layout.record_bytes();
    if len == 0 || !len.is_multiple_of(rec as u64) {
        bail!(
            "size {len} bytes is not a positive multiple of the {rec}-byte record ({} label byte(s) + {IMAGE_BYTES} image bytes)",
            layout.label_bytes
        );
    }
    Ok(())
}

/// Parses the records in `bytes`, appending images (`[N, 3, 32, 32]`) and labels.
pub fn parse_records(
    bytes: &[u8],
    layout: Layout,
    images: &mut Vec<u8>,
    labels: &mut Vec<i64>,
) -> Result<()> {
    check_size(bytes.len() as u64, layout)?;
    let rec = layout.record_bytes();
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        for (b, &limit) in layout.label_ranges[..layout.label_bytes].iter().enumerate() {
            if r[b] >= limit {
                bail!(
                    "record {i}: label byte {b} is {}, out of range 0..{limit}",
                    r[b]
                );
            }
        }
        labels.push(r[layout.label_index] as i64);
        images.extend_from_slice(&r[layout.label_bytes..]);
    }
    Ok(())
}

/// Reads CIFAR files into one split; the size is checked from the metadata first.
pub fn read_files(paths: &[PathBuf], layout: Layout) -> Result<Split> {
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for p in paths {
        let len = std::fs::metadata(p)
            .with_context(|| format!("missing CIFAR file {}", p.display()))?
            .len();
        check_size(len, layout).with_context(|| format!("CIFAR file {}", p.display()))?;
        let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
        parse_records(&bytes, layout, &mut images, &mut labels)
            .with_context(|| format!("invalid CIFAR file {}", p.display()))?;
    }
    Split::new(images, labels, SHAPE)
}

/// Loads CIFAR-10 from `dir` (or its `cifar-10-batches-bin` subfolder).
pub fn load_cifar10(dir: &Path) -> Result<Dataset> {
    let dir = find_dir_with(dir, "cifar-10-batches-bin", "test_batch.bin")?;
    let train: Vec<PathBuf> = (1..=5)
        .map(|i| dir.join(format!("data_batch_{i}.bin")))
        .collect();
    Ok(Dataset {
        name: "cifar10".into(),
        train: read_files(&train, CIFAR10)?,
        test: read_files(&[dir.join("test_batch.bin")], CIFAR10)?,
        unlabeled: None,
        num_classes: 10,
        class_names: CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
    })
}

/// Loads CIFAR-100 from `dir` (or its `cifar-100-binary` subfolder) with the fine or the
/// coarse labels. Class names come from `fine_label_names.txt` / `coarse_label_names.txt`
/// when present, else they are the numbers.
pub fn load_cifar100(dir: &Path, fine: bool) -> Result<Dataset> {
    let dir = find_dir_with(dir, "cifar-100-binary", "test.bin")?;
    let layout = cifar100(fine);
    let n = layout.num_classes();
    let names_file = dir.join(if fine {
        "fine_label_names.txt"
    } else {
        "coarse_label_names.txt"
    });
    let class_names = read_names(&names_file, n).unwrap_or_else(|| numbered_names(n));
    Ok(Dataset {
        name: format!("cifar100-{}", if fine { "fine" } else { "coarse" }),
        train: read_files(&[dir.join("train.bin")], layout)?,
        test: read_files(&[dir.join("test.bin")], layout)?,
        unlabeled: None,
        num_classes: n,
        class_names,
    })
}

/// `n` non-empty lines of a small text file, or None (missing, too big, wrong count).
fn read_names(path: &Path, n: usize) -> Option<Vec<String>> {
    if std::fs::metadata(path).ok()?.len() > 64 * 1024 {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    (names.len() == n).then_some(names)
}

/// Test helper: the file bytes of CIFAR records (label bytes, then the `[3, 32, 32]` image).
#[cfg(test)]
pub(crate) fn encode_records(labels: &[&[u8]], images: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (l, img) in labels.iter().zip(images) {
        out.extend_from_slice(l);
        out.extend_from_slice(img);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Image `k`: pixel (c, y, x) = (k * 7 + c * 50 + y * 3 + x) mod 256.
    fn image(k: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(IMAGE_BYTES);
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    v.push(((k * 7 + c * 50 + y * 3 + x) % 256) as u8);
                }
            }
        }
        v
    }

    fn write_cifar10(dir: &Path) {
        for (name, base) in [
            ("data_batch_1.bin", 0),
            ("data_batch_2.bin", 2),
            ("data_batch_3.bin", 4),
            ("data_batch_4.bin", 6),
            ("data_batch_5.bin", 8),
            ("test_batch.bin", 10),
        ] {
            let labels: Vec<[u8; 1]> = (0..2).map(|i| [((base + i) % 10) as u8]).collect();
            let refs: Vec<&[u8]> = labels.iter().map(|l| &l[..]).collect();
            let imgs: Vec<Vec<u8>> = (0..2).map(|i| image(base + i)).collect();
            std::fs::write(dir.join(name), encode_records(&refs, &imgs)).unwrap();
        }
    }

    #[test]
    fn cifar10_reads_back_planes_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        write_cifar10(dir.path());
        let d = load_cifar10(dir.path()).unwrap();
        assert_eq!((d.train.len(), d.test.len()), (10, 2));
        assert_eq!(d.train.shape, [3, 32, 32]);
        assert_eq!(d.train.labels, (0..10).collect::<Vec<i64>>());
        assert_eq!(d.test.labels, vec![0, 1]);
        // Image 3 (second record of data_batch_2): red (0, 0, 0), green (1, 0, 1), blue (2, 1, 0).
        let img = d.train.image(3);
        assert_eq!(img[0], 21);
        assert_eq!(img[1024 + 1], (21 + 50 + 1) as u8);
        assert_eq!(img[2048 + 32], (21 + 100 + 3) as u8);
        assert_eq!(img, &image(3)[..]);
        assert_eq!(d.test.image(1), &image(11)[..]);
    }

    #[test]
    fn cifar10_in_the_tarball_subfolder() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&sub).unwrap();
        write_cifar10(&sub);
        assert_eq!(load_cifar10(dir.path()).unwrap().train.len(), 10);
    }

    #[test]
    fn cifar100_chooses_fine_or_coarse() {
        let dir = tempfile::tempdir().unwrap();
        let imgs = vec![image(0), image(1), image(2)];
        let train = encode_records(&[&[3, 99], &[19, 0], &[0, 42]], &imgs);
        std::fs::write(dir.path().join("train.bin"), &train).unwrap();
        std::fs::write(dir.path().join("test.bin"), &train[..2 * 3074]).unwrap();
        let fine = load_cifar100(dir.path(), true).unwrap();
        assert_eq!(fine.train.labels, vec![99, 0, 42]);
        assert_eq!(
            (fine.num_classes, fine.class_names[42].as_str()),
            (100, "42")
        );
        assert_eq!(fine.train.image(2), &image(2)[..]);
        assert_eq!(fine.test.len(), 2);
        let coarse = load_cifar100(dir.path(), false).unwrap();
        assert_eq!(coarse.train.labels, vec![3, 19, 0]);
        assert_eq!(coarse.num_classes, 20);
        std::fs::write(
            dir.path().join("coarse_label_names.txt"),
            (0..20).map(|i| format!("super{i}\n")).collect::<String>(),
        )
        .unwrap();
        let coarse = load_cifar100(dir.path(), false).unwrap();
        assert_eq!(coarse.class_names[19], "super19");
    }

    #[test]
    fn corrupt_cifar_files_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        write_cifar10(dir.path());
        let err = |d: &Path| format!("{:#}", load_cifar10(d).unwrap_err());
        // Size not a multiple of 3073.
        let p = dir.path().join("data_batch_3.bin");
        let good = std::fs::read(&p).unwrap();
        std::fs::write(&p, &good[..good.len() - 1]).unwrap();
        let e = err(dir.path());
        assert!(
            e.contains("data_batch_3.bin")
                && e.contains("not a positive multiple of the 3073-byte record"),
            "{e}"
        );
        // Out-of-range label in the second record.
        let mut bad = good.clone();
        bad[3073] = 10;
        std::fs::write(&p, &bad).unwrap();
        let e = err(dir.path());
        assert!(
            e.contains("data_batch_3.bin") && e.contains("record 1") && e.contains("out of range"),
            "{e}"
        );
        // Empty file, then a missing one.
        std::fs::write(&p, []).unwrap();
        assert!(err(dir.path()).contains("data_batch_3.bin"));
        std::fs::remove_file(&p).unwrap();
        let e = err(dir.path());
        assert!(
            e.contains("missing") && e.contains("data_batch_3.bin"),
            "{e}"
        );
        // No CIFAR files at all.
        let empty = tempfile::tempdir().unwrap();
        let e = err(empty.path());
        assert!(
            e.contains("missing") && e.contains("data_batch_1.bin"),
            "{e}"
        );
        // CIFAR-100: out-of-range coarse label.
        let imgs = vec![image(0)];
        std::fs::write(
            dir.path().join("train.bin"),
            encode_records(&[&[20, 5]], &imgs),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("test.bin"),
            encode_records(&[&[1, 5]], &imgs),
        )
        .unwrap();
        let e = format!("{:#}", load_cifar100(dir.path(), true).unwrap_err());
        assert!(
            e.contains("train.bin") && e.contains("label byte 0 is 20"),
            "{e}"
        );
    }
}
