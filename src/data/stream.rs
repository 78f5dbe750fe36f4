//! Streamed images: a `Source` of encoded images (an image folder, WebDataset shards,
//! Parquet files) read one at a time when a batch needs them, and decoded as the batch
//! needs them: a random view from its crop of the full-resolution image (only that region
//! decoded, at a reduced scale where the crop allows), or the evaluation's fixed image
//! (the shorter side scaled to the split's size and the centre kept). Nothing is decoded
//! up front, so memory does not grow with the number of images.
//!
//! An image that cannot be read or decoded is an error naming where it comes from; with
//! `bad_images = "skip"` it is reported and left out: its slot in the batch takes the next
//! readable image of the split, drawn with the slot's own random views, so a batch keeps
//! its size (data-parallel ranks stay in step) and a resumed run skips it the same way.

use crate::augment::{CropBox, Image, Views, sample_rng};
use crate::data::decode;
use crate::data::{Dataset, Split, numbered_names};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Encoded images, by index.
pub trait Source: Send + Sync {
    /// The number of items.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Where item `i` comes from, for messages: a file, a shard and its member, a Parquet
    /// file and its row.
    fn describe(&self, i: usize) -> String;
    /// The encoded bytes of item `i`.
    fn read(&self, i: usize) -> Result<Vec<u8>>;
}

/// How many later images a bad one's slot may try before the batch fails.
const MAX_SUBSTITUTES: usize = 64;

/// A split's images as items of a source: image `i` of the split is item `items[i]`.
#[derive(Clone)]
pub struct Streamed {
    pub source: Arc<dyn Source>,
    pub items: Arc<[usize]>,
    /// `bad_images = "skip"`: a bad image is reported and replaced (see the module doc).
    pub skip_bad: bool,
}

impl std::fmt::Debug for Streamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Streamed({} items)", self.items.len())
    }
}

impl PartialEq for Streamed {
    fn eq(&self, other: &Streamed) -> bool {
        Arc::ptr_eq(&self.source, &other.source)
            && self.items == other.items
            && self.skip_bad == other.skip_bad
    }
}

impl Streamed {
    pub fn new(source: Arc<dyn Source>, items: Vec<usize>, skip_bad: bool) -> Streamed {
        Streamed {
            source,
            items: items.into(),
            skip_bad,
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Streamed {
        Streamed {
            source: self.source.clone(),
            items: indices.iter().map(|&i| self.items[i]).collect(),
            skip_bad: self.skip_bad,
        }
    }

    /// Where image `i` of the split comes from.
    pub fn describe(&self, i: usize) -> String {
        self.source.describe(self.items[i])
    }

    /// Image `i` as the evaluation sees it: `[3, size, size]`, its central square (as wide
    /// as its shorter side) scaled to `size`.
    pub fn fixed(&self, i: usize, size: usize) -> Result<Image> {
        self.with_substitutes(i, |bytes| fixed_image(bytes, size))
    }

    /// The random views of image `i` (`views`, drawn from (seed, epoch, i, view)), each from
    /// its crop of the full-resolution image; pipelines without a first crop start from
    /// the fixed image of `size`.
    pub fn views(
        &self,
        i: usize,
        views: &Views,
        seed: u64,
        epoch: usize,
        size: usize,
    ) -> Result<Vec<Image>> {
        self.with_substitutes(i, |bytes| view_images(bytes, views, seed, epoch, i, size))
    }

    /// `make` of image `i`'s bytes; when that fails and bad images are skipped, of the next
    /// readable image's, with a warning naming both.
    fn with_substitutes<T>(&self, i: usize, make: impl Fn(&[u8]) -> Result<T>) -> Result<T> {
        let attempt = |j: usize| -> Result<T> {
            let item = self.items[j];
            let bytes = self.source.read(item)?;
            make(&bytes).with_context(|| self.source.describe(item))
        };
        let first = match attempt(i) {
            Ok(t) => return Ok(t),
            Err(e) if !self.skip_bad => {
                return Err(e.context("(set bad_images = \"skip\" to leave such images out)"));
            }
            Err(e) => e,
        };
        let n = self.len();
        for k in 1..=MAX_SUBSTITUTES.min(n.saturating_sub(1)) {
            let j = (i + k) % n;
            if let Ok(t) = attempt(j) {
                eprintln!(
                    "warning: skipped {first:#} (its place in the batch went to {})",
                    self.describe(j)
                );
                return Ok(t);
            }
        }
        bail!(
            "{first:#}; and none of the next {} images could take its place",
            MAX_SUBSTITUTES.min(n.saturating_sub(1))
        )
    }
}

/// The central square of an image (as wide as its shorter side).
pub fn central_square(w: usize, h: usize) -> CropBox {
    let side = w.min(h);
    CropBox {
        top: (h - side) / 2,
        left: (w - side) / 2,
        height: side,
        width: side,
    }
}

/// The evaluation's image: the central square scaled to `size` x `size`.
pub fn fixed_image(bytes: &[u8], size: usize) -> Result<Image> {
    let (w, h) = decode::dimensions(bytes)?;
    let square = central_square(w as usize, h as usize);
    let crops = [(square, (size, size))];
    let region = decode::decode_region(bytes, (w, h), square, decode::reduction(&crops))?;
    decode::resize_crop(&region, square, (size, size))
}

/// The views of one image: every view's crop box is drawn in the full image's
/// coordinates, the region holding them all is decoded once (reduced as far as the
/// smallest crop allows), each crop is resized to its view's size, and the rest of its
/// pipeline runs on it.
pub fn view_images(
    bytes: &[u8],
    views: &Views,
    seed: u64,
    epoch: usize,
    index: usize,
    size: usize,
) -> Result<Vec<Image>> {
    let (w, h) = decode::dimensions(bytes)?;
    let mut rngs: Vec<_> = (0..views.pipelines.len())
        .map(|v| sample_rng(seed, epoch, index, v))
        .collect();
    let crops: Vec<(CropBox, (usize, usize))> = views
        .pipelines
        .iter()
        .zip(&mut rngs)
        .map(|(p, rng)| {
            p.first_crop(rng, h as usize, w as usize)
                .unwrap_or((central_square(w as usize, h as usize), (size, size)))
        })
        .collect();
    let boxes: Vec<CropBox> = crops.iter().map(|c| c.0).collect();
    let region = decode::decode_region(
        bytes,
        (w, h),
        decode::union(&boxes),
        decode::reduction(&crops),
    )?;
    views
        .pipelines
        .iter()
        .zip(rngs)
        .zip(&crops)
        .map(|((p, mut rng), &(crop, out))| {
            Ok(p.apply_rest(decode::resize_crop(&region, crop, out)?, &mut rng))
        })
        .collect()
}

/// Expands one brace group of `pattern`: `{000..003}` (a zero-padded range) or `{a,b}`.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>> {
    let Some(open) = pattern.find('{') else {
        return Ok(vec![pattern.to_string()]);
    };
    let close = pattern[open..]
        .find('}')
        .map(|c| open + c)
        .with_context(|| format!("'{pattern}': a '{{' without its '}}'"))?;
    let (head, body, tail) = (
        &pattern[..open],
        &pattern[open + 1..close],
        &pattern[close + 1..],
    );
    let items: Vec<String> = if let Some((a, b)) = body.split_once("..") {
        let (lo, hi): (u64, u64) = (
            a.parse()
                .with_context(|| format!("'{pattern}': '{a}' is not a number"))?,
            b.parse()
                .with_context(|| format!("'{pattern}': '{b}' is not a number"))?,
        );
        if lo > hi || hi - lo > 10_000_000 {
            bail!("'{pattern}': the range {lo}..{hi} is empty or too long");
        }
        let width = if a.starts_with('0') && a.len() > 1 {
            a.len()
        } else {
            0
        };
        (lo..=hi).map(|n| format!("{n:0width$}")).collect()
    } else {
        body.split(',').map(str::to_string).collect()
    };
    let mut out = Vec::new();
    for item in items {
        out.extend(expand_braces(&format!("{head}{item}{tail}"))?);
    }
    Ok(out)
}

/// The files with extension `ext` that `path` names: a folder's (searched recursively, in
/// path order), one file, or a brace pattern's expansion (every file must exist); `what`
/// names them in errors ("shard", "Parquet file").
pub fn list_files(path: &str, ext: &str, what: &str) -> Result<Vec<PathBuf>> {
    let p = Path::new(path);
    if p.is_dir() {
        let mut files = Vec::new();
        let mut stack = vec![p.to_path_buf()];
        while let Some(d) = stack.pop() {
            let entries = std::fs::read_dir(&d)
                .with_context(|| format!("cannot list folder {}", d.display()))?;
            for e in entries {
                let e = e?.path();
                if e.is_dir() {
                    stack.push(e);
                } else if e.extension().is_some_and(|x| x == ext) {
                    files.push(e);
                }
            }
        }
        files.sort();
        if files.is_empty() {
            bail!("{path}: no .{ext} files in this folder");
        }
        return Ok(files);
    }
    let files: Vec<PathBuf> = expand_braces(path)?
        .into_iter()
        .map(PathBuf::from)
        .collect();
    for f in &files {
        if !f.is_file() {
            bail!("{what} {} does not exist", f.display());
        }
    }
    Ok(files)
}

/// Which split a shard or data file belongs to by its name: `train`, `test` (`val`,
/// `validation`), or None.
pub fn split_of_name(path: &Path) -> Option<bool> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    let word: String = name
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    match word.as_str() {
        "train" => Some(true),
        "test" | "val" | "validation" | "valid" => Some(false),
        _ => None,
    }
}

/// A data set of the items of `source` with their `labels` (all or none), decoded to `size`:
/// the items whose file is named for a split (`split_of(i)`: train, test) form those
/// splits when every file is so named and one is `train`; otherwise every fifth labeled item
/// is held out for the test split, and unlabeled items are the pretraining split.
pub fn streamed_dataset(
    name: String,
    source: Arc<dyn Source>,
    labels: Vec<Option<i64>>,
    split_of: impl Fn(usize) -> Option<bool>,
    size: usize,
    skip_bad: bool,
) -> Result<Dataset> {
    let n = labels.len();
    let labeled = labels.iter().all(Option::is_some);
    if !labeled && let Some(i) = labels.iter().position(Option::is_some) {
        let j = labels
            .iter()
            .position(Option::is_none)
            .expect("not all labeled");
        bail!(
            "{name}: {} has a label but {} has none; a data set needs labels for all or none",
            source.describe(i),
            source.describe(j)
        );
    }
    if let Some(i) = labels
        .iter()
        .position(|l| l.is_some_and(|l| !(0..1_000_000).contains(&l)))
    {
        bail!(
            "{}: label {} is not in 0..1000000",
            source.describe(i),
            labels[i].unwrap_or(-1)
        );
    }
    let labels: Vec<i64> = labels.into_iter().map(|l| l.unwrap_or(-1)).collect();
    let named: Vec<Option<bool>> = (0..n).map(&split_of).collect();
    let by_name = named.contains(&Some(true)) && named.iter().all(Option::is_some);
    let (train, test): (Vec<usize>, Vec<usize>) = if by_name {
        (0..n).partition(|&i| named[i] == Some(true))
    } else if labeled {
        (0..n).partition(|&i| (i + 1) % 5 != 0)
    } else {
        ((0..n).collect(), Vec::new())
    };
    let split = |items: Vec<usize>| {
        let l = items.iter().map(|&i| labels[i]).collect();
        Split::streamed(Streamed::new(source.clone(), items, skip_bad), l, size)
    };
    if !labeled {
        return Ok(Dataset {
            name,
            train: split(Vec::new()),
            test: split(Vec::new()),
            unlabeled: Some(split(train)),
            num_classes: 0,
            class_names: Vec::new(),
        });
    }
    let num_classes = labels.iter().copied().max().unwrap_or(-1) as usize + 1;
    Ok(Dataset {
        name,
        train: split(train),
        test: split(test),
        unlabeled: None,
        num_classes,
        class_names: numbered_names(num_classes),
    })
}

/// A source of files in memory, for tests: item i is `files[i]`, described by its name.
#[cfg(test)]
pub(crate) struct MemorySource(pub Vec<(String, Vec<u8>)>);

#[cfg(test)]
impl Source for MemorySource {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn describe(&self, i: usize) -> String {
        self.0[i].0.clone()
    }
    fn read(&self, i: usize) -> Result<Vec<u8>> {
        Ok(self.0[i].1.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::{Op, Pipeline};

    fn jpeg(w: u32, h: u32, k: u8) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, k])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
            .encode_image(&img)
            .unwrap();
        out
    }

    fn source(files: Vec<(&str, Vec<u8>)>) -> Arc<dyn Source> {
        Arc::new(MemorySource(
            files.into_iter().map(|(n, b)| (n.to_string(), b)).collect(),
        ))
    }

    fn crop_views(size: usize) -> Views {
        let p = Pipeline {
            ops: vec![
                Op::ResizedCrop {
                    size: (size, size),
                    scale: (0.2, 1.0),
                    ratio: (0.75, 4.0 / 3.0),
                },
                Op::HFlip { p: 0.5 },
            ],
        };
        Views {
            pipelines: vec![p.clone(), p],
        }
    }

    #[test]
    fn the_fixed_image_is_the_scaled_central_square() {
        // 300 x 100: the central square is columns 100..200, whose red runs 100..199.
        let s = Streamed::new(source(vec![("a.jpg", jpeg(300, 100, 7))]), vec![0], false);
        let img = s.fixed(0, 10).unwrap();
        assert_eq!((img.c, img.h, img.w), (3, 10, 10));
        let (r_left, r_right) = (img.at(0, 5, 0) as i32, img.at(0, 5, 9) as i32);
        assert!(
            (r_left - 105).abs() <= 6 && (r_right - 195).abs() <= 6,
            "{r_left} {r_right}"
        );
        assert!((img.at(2, 5, 5) as i32 - 7).abs() <= 4);
    }

    #[test]
    fn views_are_seeded_by_image_and_view_and_their_crops_see_the_whole_image() {
        let s = Streamed::new(source(vec![("a.jpg", jpeg(320, 160, 0))]), vec![0], false);
        let v = crop_views(16);
        let a = s.views(0, &v, 3, 1, 16).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a, s.views(0, &v, 3, 1, 16).unwrap(), "the same draws");
        assert_ne!(a, s.views(0, &v, 3, 2, 16).unwrap(), "another epoch");
        assert_ne!(a[0], a[1], "two views differ");
        // Over many epochs the crops reach both ends of the wide image (red = x).
        let reds: Vec<u8> = (0..40)
            .flat_map(|e| s.views(0, &v, 3, e, 16).unwrap())
            .flat_map(|img| [img.at(0, 8, 0), img.at(0, 8, 15)])
            .collect();
        assert!(
            reds.iter().any(|&r| r < 40) && reds.iter().any(|&r| r > 240),
            "{reds:?}"
        );
    }

    #[test]
    fn bad_images_fail_naming_the_file_or_are_replaced_with_a_warning() {
        let src = source(vec![
            ("good0.jpg", jpeg(40, 40, 1)),
            ("cut.jpg", jpeg(40, 40, 2)[..200].to_vec()),
            ("empty.jpg", Vec::new()),
            ("good3.jpg", jpeg(40, 40, 3)),
        ]);
        let strict = Streamed::new(src.clone(), vec![0, 1, 2, 3], false);
        let e = format!("{:#}", strict.fixed(1, 8).unwrap_err());
        assert!(e.contains("cut.jpg") && e.contains("bad_images"), "{e}");
        let e = format!("{:#}", strict.fixed(2, 8).unwrap_err());
        assert!(e.contains("empty.jpg") && e.contains("empty file"), "{e}");
        let lenient = Streamed::new(src, vec![0, 1, 2, 3], true);
        // Slots 1 and 2 both go to the next good image, 3 (blue = 3).
        for i in [1, 2] {
            let img = lenient.fixed(i, 8).unwrap();
            assert!((img.at(2, 4, 4) as i32 - 3).abs() <= 4, "slot {i}");
        }
        // Without any readable image left, the error says so.
        let none = Streamed::new(
            source(vec![("x.jpg", b"junk".to_vec()), ("y.jpg", Vec::new())]),
            vec![0, 1],
            true,
        );
        let e = format!("{:#}", none.fixed(0, 8).unwrap_err());
        assert!(e.contains("x.jpg") && e.contains("none of the next"), "{e}");
    }
}
