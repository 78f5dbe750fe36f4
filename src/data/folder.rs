//! Image folders (JPEG, PNG and the other formats the `image` crate reads), streamed.
//!
//! Layouts, tried in this order:
//! - `DIR/train/<class>/*` and `DIR/test/<class>/*` (or `val/`): the given split;
//! - `DIR/<class>/*`: one subfolder per class; in each class, every fifth file in name
//!   order (the 5th, 10th, ...) is held out as the test split;
//! - `DIR/*`: a flat folder without labels, used only for pretraining.
//!
//! Classes are the subfolder names in sorted order. Files other than `.png`, `.jpg` and
//! `.jpeg` (any case) and names starting with `.` are ignored.
//!
//! Loading lists the files, nothing more: an image is read and decoded when a batch needs
//! it (`stream`), from its full resolution: a random view from its crop of the whole
//! image, the evaluation's image as the central square (as wide as the shorter side)
//! scaled to `image_size`. An image that cannot be decoded is an error naming the file
//! when a batch meets it, or, with `bad_images = "skip"`, reported and replaced.

use super::stream::{Source, Streamed};
use super::{Dataset, Split};
use anyhow::{Context, Result, anyhow, bail};
use image::imageops::FilterType;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest width or height accepted from an image header, and the decoder's memory limit.
const MAX_SIDE: u32 = 16_384;
const MAX_DECODE_BYTES: u64 = 512 << 20;

/// How to decode a folder's images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FolderOptions {
    /// The height and width of the evaluation's images (and the base size of the views).
    pub size: usize,
    /// Replace (and report) images that cannot be decoded instead of failing.
    pub skip_bad: bool,
}

/// The image files of a folder, by index, named relative to it.
pub struct FolderSource {
    root: PathBuf,
    files: Vec<Box<str>>,
}

impl Source for FolderSource {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn describe(&self, i: usize) -> String {
        self.root.join(&*self.files[i]).display().to_string()
    }
    fn read(&self, i: usize) -> Result<Vec<u8>> {
        let p = self.root.join(&*self.files[i]);
        std::fs::read(&p).with_context(|| format!("cannot read image {}", p.display()))
    }
}

fn is_image(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ext = p
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    !name.starts_with('.') && matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"))
}

/// The sorted (subfolders, image files) of `dir`.
pub(crate) fn list(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let (mut dirs, mut files) = (Vec::new(), Vec::new());
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list folder {}", dir.display()))?;
    for e in entries {
        let p = e
            .with_context(|| format!("cannot list folder {}", dir.display()))?
            .path();
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if p.is_dir() && !hidden {
            dirs.push(p);
        } else if p.is_file() && is_image(&p) {
            files.push(p);
        }
    }
    dirs.sort();
    files.sort();
    Ok((dirs, files))
}

pub(crate) fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Decodes one image file into `[3, size, size]` row-major bytes.
pub fn decode(path: &Path, size: usize) -> Result<Vec<u8>> {
    Ok(square_chw(&open_image(path)?, size))
}

/// Decodes an image file (PNG or JPEG), with limits on its size and memory.
pub fn open_image(path: &Path) -> Result<image::DynamicImage> {
    let mut reader = image::ImageReader::open(path)
        .with_context(|| format!("cannot open image {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read image {}", path.display()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    // The decoder's message already holds its cause; chaining it would repeat it.
    reader
        .decode()
        .map_err(|e| anyhow!("unreadable image {}: {e}", path.display()))
}

/// The central square of `img` (as wide as its shorter side), scaled to `size` x `size`
/// (bilinear), as RGB `[3, size, size]` row-major bytes.
pub fn square_chw(img: &image::DynamicImage, size: usize) -> Vec<u8> {
    // Cut the central square first, so that no aspect ratio makes a large intermediate.
    let (x0, y0, side) = central_square(img.width(), img.height());
    let square = img.crop_imm(x0, y0, side, side);
    let s = size as u32;
    let rgb = if side == s {
        square.to_rgb8()
    } else {
        square.resize_exact(s, s, FilterType::Triangle).to_rgb8()
    };
    // HWC (interleaved RGB) -> CHW
    let hwc = rgb.as_raw();
    let mut chw = Vec::with_capacity(hwc.len());
    for c in 0..3 {
        chw.extend(hwc.iter().skip(c).step_by(3));
    }
    chw
}

/// (left, top, side) of the central square of a `w` x `h` image.
pub fn central_square(w: u32, h: u32) -> (u32, u32, u32) {
    let side = w.min(h);
    ((w - side) / 2, (h - side) / 2, side)
}

/// The images of each class folder, labelled by position in `classes`.
fn class_files(root: &Path, classes: &[String]) -> Result<Vec<(PathBuf, i64)>> {
    let (dirs, stray) = list(root)?;
    if let Some(f) = stray.first() {
        bail!(
            "{}: image file {} sits beside the class folders; move it into one",
            root.display(),
            file_name(f)
        );
    }
    let mut out = Vec::new();
    for d in dirs {
        let name = file_name(&d);
        let Some(label) = classes.iter().position(|c| *c == name) else {
            bail!(
                "{}: class folder '{name}' is not one of the training classes {classes:?}",
                root.display()
            );
        };
        let (_, files) = list(&d)?;
        out.extend(files.into_iter().map(|f| (f, label as i64)));
    }
    Ok(out)
}

fn class_names(root: &Path) -> Result<Vec<String>> {
    Ok(list(root)?.0.iter().map(|d| file_name(d)).collect())
}

/// Lists an image folder in one of the layouts described in the module documentation.
pub fn load(dir: &Path, opts: FolderOptions) -> Result<Dataset> {
    if !dir.is_dir() {
        bail!("data folder {} does not exist", dir.display());
    }
    let (dirs, files) = list(dir)?;
    let name = format!("folder:{}", dir.display());
    let (train_files, test_files, classes) = if dir.join("train").is_dir() {
        let classes = class_names(&dir.join("train"))?;
        let train = class_files(&dir.join("train"), &classes)?;
        let test_dir = ["test", "val"]
            .iter()
            .map(|t| dir.join(t))
            .find(|p| p.is_dir());
        let test = match test_dir {
            Some(t) => class_files(&t, &classes)?,
            None => bail!(
                "{}: has train/ but no test/ (or val/) folder",
                dir.display()
            ),
        };
        (train, test, classes)
    } else if !dirs.is_empty() {
        let classes = class_names(dir)?;
        let (mut train, mut test) = (Vec::new(), Vec::new());
        let mut count = vec![0usize; classes.len()];
        for (f, l) in class_files(dir, &classes)? {
            count[l as usize] += 1;
            if count[l as usize] % 5 == 0 {
                test.push((f, l));
            } else {
                train.push((f, l));
            }
        }
        (train, test, classes)
    } else {
        if files.is_empty() {
            bail!(
                "{}: no PNG or JPEG images and no class folders",
                dir.display()
            );
        }
        let files: Vec<(PathBuf, i64)> = files.into_iter().map(|f| (f, -1)).collect();
        let [unlabeled, train, test] = streamed_splits(dir, [&files, &[], &[]], opts);
        return Ok(Dataset {
            name,
            train,
            test,
            unlabeled: Some(unlabeled),
            num_classes: 0,
            class_names: Vec::new(),
        });
    };
    if train_files.is_empty() {
        bail!(
            "{}: the class folders hold no PNG or JPEG images",
            dir.display()
        );
    }
    let [train, test, _] = streamed_splits(dir, [&train_files, &test_files, &[]], opts);
    Ok(Dataset {
        name,
        train,
        test,
        unlabeled: None,
        num_classes: classes.len(),
        class_names: classes,
    })
}

/// Three streamed splits of `files` (with their labels), over one source of all of them.
fn streamed_splits(root: &Path, parts: [&[(PathBuf, i64)]; 3], opts: FolderOptions) -> [Split; 3] {
    let relative =
        |p: &PathBuf| -> Box<str> { p.strip_prefix(root).unwrap_or(p).to_string_lossy().into() };
    let files: Vec<Box<str>> = parts
        .iter()
        .flat_map(|p| p.iter().map(|(f, _)| relative(f)))
        .collect();
    let source: Arc<dyn Source> = Arc::new(FolderSource {
        root: root.to_path_buf(),
        files,
    });
    let mut first = 0;
    parts.map(|part| {
        let items: Vec<usize> = (first..first + part.len()).collect();
        first += part.len();
        let labels = part.iter().map(|(_, l)| *l).collect();
        Split::streamed(
            Streamed::new(source.clone(), items, opts.skip_bad),
            labels,
            opts.size,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    /// A `w` x `h` image whose pixel (x, y) is (x, y, k).
    fn gradient(w: u32, h: u32, k: u8) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([x as u8, y as u8, k]))
    }

    const OPTS: FolderOptions = FolderOptions {
        size: 4,
        skip_bad: false,
    };

    #[test]
    fn decodes_rgb_planes_in_chw_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.png");
        gradient(4, 4, 9).save(&p).unwrap();
        let px = decode(&p, 4).unwrap();
        // Red plane = x, green plane = y, blue plane = 9.
        assert_eq!(&px[..8], &[0, 1, 2, 3, 0, 1, 2, 3]);
        assert_eq!(&px[16..24], &[0, 0, 0, 0, 1, 1, 1, 1]);
        assert_eq!(&px[32..], &[9; 16]);
    }

    #[test]
    fn resizes_the_shorter_side_then_crops_the_centre() {
        let dir = tempfile::tempdir().unwrap();
        // 8 wide, 4 high; columns 0..2 and 6..8 are red, the centre 4 columns blue.
        let img = RgbImage::from_fn(8, 4, |x, _| {
            if (2..6).contains(&x) {
                Rgb([0, 0, 255])
            } else {
                Rgb([255, 0, 0])
            }
        });
        let p = dir.path().join("wide.png");
        img.save(&p).unwrap();
        let px = decode(&p, 4).unwrap();
        assert_eq!(&px[..16], &[0; 16], "no red left after the centre crop");
        assert_eq!(&px[32..], &[255; 16]);
        // Downscaling 8x8 -> 4x4 keeps a uniform colour exactly, and JPEG decodes too.
        let q = dir.path().join("grey.jpg");
        image::GrayImage::from_pixel(8, 8, image::Luma([128]))
            .save(&q)
            .unwrap();
        let px = decode(&q, 4).unwrap();
        assert_eq!(px.len(), 48);
        assert!(px.iter().all(|&v| v.abs_diff(128) <= 2), "{px:?}");
        // An extreme aspect ratio: only the central 2x2 square (rows 999, 1000) is scaled.
        let tall = RgbImage::from_fn(2, 2000, |x, y| Rgb([x as u8, (y / 8) as u8, 7]));
        let r = dir.path().join("tall.png");
        tall.save(&r).unwrap();
        let px = decode(&r, 4).unwrap();
        assert!(px[16..32].iter().all(|&g| g == 124 || g == 125), "{px:?}");
        assert_eq!(&px[32..], &[7; 16]);
    }

    fn write_classes(root: &Path, per_class: usize) {
        for (k, class) in ["cat", "dog"].iter().enumerate() {
            std::fs::create_dir_all(root.join(class)).unwrap();
            for i in 0..per_class {
                gradient(4, 4, (10 * k + i) as u8)
                    .save(root.join(class).join(format!("{i:02}.png")))
                    .unwrap();
            }
        }
    }

    #[test]
    fn class_folders_hold_out_every_fifth_file() {
        let dir = tempfile::tempdir().unwrap();
        write_classes(dir.path(), 6);
        std::fs::write(dir.path().join("cat").join("notes.txt"), "ignored").unwrap();
        let d = load(dir.path(), OPTS).unwrap();
        assert_eq!(d.class_names, vec!["cat", "dog"]);
        assert_eq!(d.train.labels, vec![0, 0, 0, 0, 0, 1, 1, 1, 1, 1]);
        assert_eq!(d.test.labels, vec![0, 1]);
        // The test image of "dog" is its 5th file, 04.png: blue plane = 14.
        assert_eq!(d.test.fixed(1).unwrap()[32], 14);
        assert_eq!(d.train.fixed(5).unwrap()[32], 10);
        assert!(d.train.stream().is_some(), "listed, not decoded");
    }

    #[test]
    fn train_and_test_folders_and_flat_folders() {
        let dir = tempfile::tempdir().unwrap();
        write_classes(&dir.path().join("train"), 2);
        write_classes(&dir.path().join("test"), 1);
        let d = load(dir.path(), OPTS).unwrap();
        assert_eq!((d.train.len(), d.test.len()), (4, 2));
        assert_eq!(d.test.labels, vec![0, 1]);
        let flat = tempfile::tempdir().unwrap();
        for i in 0..3 {
            gradient(6, 6, i)
                .save(flat.path().join(format!("{i}.png")))
                .unwrap();
        }
        let d = load(flat.path(), OPTS).unwrap();
        assert_eq!((d.train.len(), d.num_classes), (0, 0));
        assert_eq!(d.pretrain_split().len(), 3);
        assert_eq!(d.pretrain_split().labels, vec![-1; 3]);
        assert_eq!(d.pretrain_split().shape, [3, 4, 4]);
    }

    #[test]
    fn unreadable_images_fail_or_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        write_classes(dir.path(), 3);
        std::fs::write(
            dir.path().join("dog").join("broken.png"),
            b"\x89PNG not really",
        )
        .unwrap();
        // Listing does not decode: the broken file is the 7th training image (dog's 00, 01,
        // 02 come after it in name order: "broken.png" < "00.png" is false, so it is last).
        let d = load(dir.path(), OPTS).unwrap();
        assert_eq!(d.train.len() + d.test.len(), 7);
        let broken = (0..d.train.len())
            .find(|&i| {
                d.train
                    .stream()
                    .unwrap()
                    .describe(i)
                    .ends_with("broken.png")
            })
            .unwrap();
        let e = format!("{:#}", d.train.fixed(broken).unwrap_err());
        assert!(e.contains("broken.png") && e.contains("skip"), "{e}");
        let d = load(
            dir.path(),
            FolderOptions {
                skip_bad: true,
                ..OPTS
            },
        )
        .unwrap();
        assert_eq!(d.train.fixed(broken).unwrap().len(), 48);
        let empty = tempfile::tempdir().unwrap();
        let e = format!("{:#}", load(empty.path(), OPTS).unwrap_err());
        assert!(e.contains("no PNG or JPEG"), "{e}");
        let e = format!("{:#}", load(&empty.path().join("nope"), OPTS).unwrap_err());
        assert!(e.contains("does not exist"), "{e}");
        write_classes(&empty.path().join("train"), 1);
        let e = format!("{:#}", load(empty.path(), OPTS).unwrap_err());
        assert!(e.contains("no test/"), "{e}");
    }
}
