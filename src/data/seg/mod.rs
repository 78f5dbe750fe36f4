//! Data for semantic segmentation: images with one class index per pixel (`IGNORE` = 255
//! marks pixels that are neither trained on nor scored), named by the `seg_data` key:
//!
//! - `fashion-scenes` (or `fashion-scenes:DIR` with Fashion-MNIST's IDX files): built-in
//!   synthetic scenes of Fashion-MNIST garments (see `scenes`), 11 classes;
//! - `seg-folder:DIR`: image files with PNG masks, in one of these layouts (tried in order):
//!   - PASCAL VOC: `JPEGImages/*.jpg`, `SegmentationClass/*.png` (palette PNGs) and
//!     `ImageSets/Segmentation/{train,val}.txt` (one file stem a line), in `DIR`,
//!     `DIR/VOC2012` or `DIR/VOCdevkit/VOC2012`; the 21 VOC classes, `val` is the test split;
//!   - `DIR/train/{images,masks}` and `DIR/test/{images,masks}` (or `val/`);
//!   - `DIR/images` and `DIR/masks`, every fifth image in name order held out for testing,
//!     as for image folders.
//!
//!   The mask of `images/NAME.png|jpg|jpeg` is `masks/NAME.png`. The classes are named one a
//!   line in `DIR/classes.txt` when it exists; otherwise they are 0..=the largest index in
//!   the training masks.
//!
//! A mask PNG holds class indices: 8-bit (or fewer bits) greyscale values, or palette
//! indices (read as indices, whatever the palette's colours), or RGB colours of the VOC
//! palette (`voc_colour`), mapped back to their indices. An image and its mask must have
//! the same size; both are cut to their central square and scaled to `size` x `size`
//! together, the image bilinearly, the mask by nearest neighbour (so no index is invented).
//! Images become RGB. A missing mask, a size mismatch, an unreadable mask or a class index
//! out of range is an error naming the file.

pub mod scenes;

use super::{Split, folder};
use anyhow::{Context, Result, anyhow, bail};
use rayon::prelude::*;
use std::collections::HashMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};

/// The mask value of pixels that are not trained on or scored.
pub const IGNORE: u8 = 255;

/// Largest mask side accepted, and the PNG decoder's memory limit.
const MAX_MASK_SIDE: u32 = 16_384;
const MAX_MASK_BYTES: usize = 256 << 20;

pub const VOC_CLASSES: [&str; 21] = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// Images with their masks.
#[derive(Debug, Clone, PartialEq)]
pub struct SegSplit {
    /// The images, `[N, C, H, W]` (their labels are unused: -1).
    pub images: Split,
    /// `[N, H, W]` class indices, `IGNORE` where a pixel is left out.
    pub masks: Vec<u8>,
}

impl SegSplit {
    pub fn new(images: Split, masks: Vec<u8>) -> Result<SegSplit> {
        let [_, h, w] = images.shape;
        if masks.len() != images.len() * h * w {
            bail!(
                "{} mask bytes do not hold {} masks of {h}x{w}",
                masks.len(),
                images.len()
            );
        }
        Ok(SegSplit { images, masks })
    }
    pub fn len(&self) -> usize {
        self.images.len()
    }
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
    pub fn mask_len(&self) -> usize {
        self.images.shape[1] * self.images.shape[2]
    }
    pub fn mask(&self, i: usize) -> &[u8] {
        let n = self.mask_len();
        &self.masks[i * n..(i + 1) * n]
    }
}

#[derive(Debug, Clone)]
pub struct SegDataset {
    pub name: String,
    pub train: SegSplit,
    pub test: SegSplit,
    pub num_classes: usize,
    pub class_names: Vec<String>,
}

/// A parsed `seg_data`.
#[derive(Debug, Clone, PartialEq)]
pub enum SegSpec {
    FashionScenes(PathBuf),
    Folder(PathBuf),
}

pub const SEG_DATA_KINDS: &str = "fashion-scenes, fashion-scenes:DIR, seg-folder:DIR";

/// How to read or make a segmentation data set (see the `seg_*` config keys).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegOptions {
    /// Side of the square images and masks (the canvas of `fashion-scenes`).
    pub size: usize,
    /// `fashion-scenes`: scenes in the train and test splits.
    pub train_scenes: usize,
    pub test_scenes: usize,
}

impl SegOptions {
    pub fn from_config(cfg: &crate::config::SegSpec) -> SegOptions {
        SegOptions {
            size: cfg.seg_image_size,
            train_scenes: cfg.seg_train_scenes,
            test_scenes: cfg.seg_test_scenes,
        }
    }
}

/// The segmentation data a config names (`seg_data`), read as its `seg_*` keys say.
pub fn load(cfg: &crate::config::SegSpec) -> Result<SegDataset> {
    let spec = SegSpec::parse(&cfg.seg_data).context("option seg_data")?;
    spec.load(&SegOptions::from_config(cfg))
}

impl SegSpec {
    pub fn parse(s: &str) -> Result<SegSpec> {
        match s.split_once(':') {
            None if s == "fashion-scenes" => {
                Ok(SegSpec::FashionScenes(super::DEBIAN_FASHION_MNIST.into()))
            }
            Some(("fashion-scenes", p)) if !p.is_empty() => Ok(SegSpec::FashionScenes(p.into())),
            Some(("seg-folder", p)) if !p.is_empty() => Ok(SegSpec::Folder(p.into())),
            None if s == "seg-folder" => {
                bail!("seg_data '{s}': seg-folder needs a folder, as seg-folder:DIR")
            }
            _ => bail!("seg_data '{s}' is not understood; expected one of: {SEG_DATA_KINDS}"),
        }
    }

    pub fn load(&self, opts: &SegOptions) -> Result<SegDataset> {
        match self {
            SegSpec::FashionScenes(dir) => scenes::load(dir, opts),
            SegSpec::Folder(dir) => load_folder(dir, opts.size),
        }
    }
}

/// The colour of class `i` in PASCAL VOC's palette (0 black, 1 dark red, ..., 255 the
/// cream of the "ignore" borders): bit k of the index goes to bit 7 - k / 3 of red, green
/// or blue in turn.
pub fn voc_colour(i: u8) -> [u8; 3] {
    let mut rgb = [0u8; 3];
    let mut c = i;
    for j in 0..8 {
        for (ch, v) in rgb.iter_mut().enumerate() {
            *v |= ((c >> ch) & 1) << (7 - j);
        }
        c >>= 3;
    }
    rgb
}

/// Reads a mask PNG: (width, height, one class index per pixel, row-major).
pub fn read_mask(path: &Path) -> Result<(u32, u32, Vec<u8>)> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open mask {}", path.display()))?;
    let limits = png::Limits {
        bytes: MAX_MASK_BYTES,
    };
    let bad = |e: png::DecodingError| anyhow!("unreadable mask {}: {e}", path.display());
    let mut reader = png::Decoder::new_with_limits(BufReader::new(file), limits)
        .read_info()
        .map_err(bad)?;
    let (w, h) = (reader.info().width, reader.info().height);
    if w > MAX_MASK_SIDE || h > MAX_MASK_SIDE {
        bail!(
            "mask {} is {w}x{h}, larger than {MAX_MASK_SIDE} pixels a side",
            path.display()
        );
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| anyhow!("mask {} is too large", path.display()))?;
    let mut buf = vec![0u8; size];
    let out = reader.next_frame(&mut buf).map_err(bad)?;
    let (w_us, h_us) = (w as usize, h as usize);
    let rows = buf.chunks(out.line_size).take(h_us);
    use png::{BitDepth, ColorType};
    let indices: Vec<u8> = match (out.color_type, out.bit_depth) {
        (
            ColorType::Grayscale | ColorType::Indexed,
            depth @ (BitDepth::One | BitDepth::Two | BitDepth::Four | BitDepth::Eight),
        ) => {
            let bits = depth as usize;
            let per_byte = 8 / bits;
            let top = (1u16 << bits) - 1;
            rows.flat_map(|row| {
                (0..w_us).map(move |x| {
                    let shift = 8 - bits * (x % per_byte + 1);
                    ((row[x / per_byte] as u16 >> shift) & top) as u8
                })
            })
            .collect()
        }
        (ColorType::Rgb | ColorType::Rgba, BitDepth::Eight) => {
            let channels = if out.color_type == ColorType::Rgb {
                3
            } else {
                4
            };
            let lookup: HashMap<[u8; 3], u8> = (0..=255u8).map(|i| (voc_colour(i), i)).collect();
            let mut v = Vec::with_capacity(w_us * h_us);
            for (y, row) in rows.enumerate() {
                for x in 0..w_us {
                    let px = &row[x * channels..x * channels + 3];
                    let rgb = [px[0], px[1], px[2]];
                    let i = lookup.get(&rgb).ok_or_else(|| {
                        anyhow!(
                            "mask {}: colour {rgb:?} at pixel ({x}, {y}) is not a class colour of the VOC palette; \
                             save masks as 8-bit grey or palette PNGs holding class indices",
                            path.display()
                        )
                    })?;
                    v.push(*i);
                }
            }
            v
        }
        (c, d) => bail!(
            "mask {} is a {c:?} PNG of {d:?} bits; masks must be 8-bit grey or palette PNGs holding class indices (or VOC palette colours)",
            path.display()
        ),
    };
    Ok((w, h, indices))
}

/// The central square of a `w` x `h` mask scaled to `size` x `size` by nearest neighbour:
/// output pixel (x, y) takes the source pixel under its centre.
pub fn square_nearest(mask: &[u8], w: u32, h: u32, size: usize) -> Vec<u8> {
    let (x0, y0, side) = folder::central_square(w, h);
    let (x0, y0, side, w) = (x0 as usize, y0 as usize, side as usize, w as usize);
    let src = |i: usize| (2 * i + 1) * side / (2 * size);
    let mut out = Vec::with_capacity(size * size);
    for y in 0..size {
        let row = (y0 + src(y)) * w + x0;
        out.extend((0..size).map(|x| mask[row + src(x)]));
    }
    out
}

/// An image and its mask decoded and scaled together, with the largest class index the
/// mask holds (ignoring `IGNORE`) and where it is, to check against the classes.
struct Decoded {
    image: Vec<u8>,
    mask: Vec<u8>,
    top: Option<(u8, u32, u32)>,
}

fn decode_pair(image: &Path, mask: &Path, size: usize) -> Result<Decoded> {
    let img = folder::open_image(image)?;
    let (w, h, m) = read_mask(mask)?;
    if (w, h) != (img.width(), img.height()) {
        bail!(
            "mask {} is {w}x{h} but its image {} is {}x{}",
            mask.display(),
            image.display(),
            img.width(),
            img.height()
        );
    }
    let top = m
        .iter()
        .enumerate()
        .filter(|(_, v)| **v != IGNORE)
        .max_by_key(|(i, v)| (**v, std::cmp::Reverse(*i)))
        .map(|(i, v)| (*v, i as u32 % w, i as u32 / w));
    Ok(Decoded {
        image: folder::square_chw(&img, size),
        mask: square_nearest(&m, w, h, size),
        top,
    })
}

/// (image, mask) file pairs.
type Pairs = Vec<(PathBuf, PathBuf)>;

/// `dir/images/*` with `dir/masks/<stem>.png`.
fn plain_pairs(dir: &Path) -> Result<Pairs> {
    let images = dir.join("images");
    if !images.is_dir() {
        bail!("{}: has no images/ folder", dir.display());
    }
    let (_, files) = folder::list(&images)?;
    let mut pairs = Vec::with_capacity(files.len());
    for f in files {
        let stem = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mask = dir.join("masks").join(format!("{stem}.png"));
        if !mask.is_file() {
            bail!("missing mask {} for image {}", mask.display(), f.display());
        }
        pairs.push((f, mask));
    }
    if pairs.is_empty() {
        bail!("{}: no PNG or JPEG images", images.display());
    }
    Ok(pairs)
}

/// The folder of a VOC layout: `dir`, `dir/VOC2012` or `dir/VOCdevkit/VOC2012`, the first
/// that holds `JPEGImages/` and `SegmentationClass/`.
fn voc_root(dir: &Path) -> Option<PathBuf> {
    [
        dir.to_path_buf(),
        dir.join("VOC2012"),
        dir.join("VOCdevkit/VOC2012"),
    ]
    .into_iter()
    .find(|d| d.join("JPEGImages").is_dir() && d.join("SegmentationClass").is_dir())
}

/// The pairs that `ImageSets/Segmentation/{list}` names.
fn voc_pairs(root: &Path, list: &str) -> Result<Pairs> {
    let path = root.join("ImageSets/Segmentation").join(list);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the VOC split list {}", path.display()))?;
    let mut pairs = Vec::new();
    for (n, stem) in text.lines().map(str::trim).enumerate() {
        if stem.is_empty() {
            continue;
        }
        let image = root.join("JPEGImages").join(format!("{stem}.jpg"));
        let mask = root.join("SegmentationClass").join(format!("{stem}.png"));
        for f in [&image, &mask] {
            if !f.is_file() {
                bail!("{} line {}: missing {}", path.display(), n + 1, f.display());
            }
        }
        pairs.push((image, mask));
    }
    if pairs.is_empty() {
        bail!("{}: lists no images", path.display());
    }
    Ok(pairs)
}

/// Loads `seg-folder:DIR` in one of the layouts of the module documentation.
pub fn load_folder(dir: &Path, size: usize) -> Result<SegDataset> {
    if !dir.is_dir() {
        bail!("data folder {} does not exist", dir.display());
    }
    let (train, test, names) = if let Some(root) = voc_root(dir) {
        let names: Vec<String> = VOC_CLASSES.iter().map(|s| s.to_string()).collect();
        (
            voc_pairs(&root, "train.txt")?,
            voc_pairs(&root, "val.txt")?,
            Some(names),
        )
    } else {
        let names = match std::fs::read_to_string(dir.join("classes.txt")) {
            Ok(t) => Some(
                t.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect(),
            ),
            Err(_) => None,
        };
        if dir.join("train").is_dir() {
            let test = ["test", "val"]
                .iter()
                .map(|t| dir.join(t))
                .find(|p| p.is_dir())
                .ok_or_else(|| {
                    anyhow!(
                        "{}: has train/ but no test/ (or val/) folder",
                        dir.display()
                    )
                })?;
            (plain_pairs(&dir.join("train"))?, plain_pairs(&test)?, names)
        } else if dir.join("images").is_dir() {
            let (mut train, mut test) = (Vec::new(), Vec::new());
            for (i, p) in plain_pairs(dir)?.into_iter().enumerate() {
                if (i + 1) % 5 == 0 {
                    test.push(p)
                } else {
                    train.push(p)
                }
            }
            (train, test, names)
        } else {
            bail!(
                "{}: expected images/ and masks/ folders, train/ and test/ folders holding them, \
                 or PASCAL VOC's JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/",
                dir.display()
            );
        }
    };
    let decode = |pairs: &Pairs| -> Result<Vec<Decoded>> {
        pairs
            .par_iter()
            .map(|(i, m)| decode_pair(i, m, size))
            .collect()
    };
    let (train_px, test_px) = (decode(&train)?, decode(&test)?);
    let class_names: Vec<String> = match names {
        Some(n) if !n.is_empty() => n,
        Some(_) => bail!("{}: lists no classes", dir.join("classes.txt").display()),
        None => {
            let top = train_px
                .iter()
                .filter_map(|d| d.top)
                .map(|t| t.0)
                .max()
                .unwrap_or(0);
            super::numbered_names(top as usize + 1)
        }
    };
    let num_classes = class_names.len();
    if num_classes > IGNORE as usize {
        bail!(
            "{}: {num_classes} classes, but masks hold at most 255 (255 = ignore)",
            dir.display()
        );
    }
    for (pairs, px) in [(&train, &train_px), (&test, &test_px)] {
        for ((_, mask), d) in pairs.iter().zip(px.iter()) {
            if let Some((v, x, y)) = d.top
                && v as usize >= num_classes
            {
                bail!(
                    "mask {}: class index {v} at pixel ({x}, {y}) is out of range: the data has {num_classes} classes (0..={}; 255 = ignore)",
                    mask.display(),
                    num_classes - 1
                );
            }
        }
    }
    let split = |px: Vec<Decoded>| -> Result<SegSplit> {
        let n = px.len();
        let (mut images, mut masks) = (Vec::new(), Vec::new());
        for d in px {
            images.extend_from_slice(&d.image);
            masks.extend_from_slice(&d.mask);
        }
        SegSplit::new(Split::new(images, vec![-1; n], [3, size, size])?, masks)
    };
    Ok(SegDataset {
        name: format!("seg-folder:{}", dir.display()),
        train: split(train_px)?,
        test: split(test_px)?,
        num_classes,
        class_names,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    /// Writes `indices` (`w` x `h`, row-major) as a palette PNG with the VOC palette.
    pub(crate) fn write_palette_png(path: &Path, w: u32, h: u32, indices: &[u8]) {
        let file = std::fs::File::create(path).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        let palette: Vec<u8> = (0..=255u8).flat_map(voc_colour).collect();
        enc.set_palette(palette);
        let mut writer = enc.write_header().unwrap();
        writer.write_image_data(indices).unwrap();
    }

    fn write_grey_png(path: &Path, w: u32, h: u32, indices: &[u8]) {
        image::GrayImage::from_raw(w, h, indices.to_vec())
            .unwrap()
            .save(path)
            .unwrap();
    }

    #[test]
    fn voc_palette_has_its_known_colours() {
        assert_eq!(voc_colour(0), [0, 0, 0]);
        assert_eq!(voc_colour(1), [128, 0, 0]);
        assert_eq!(voc_colour(2), [0, 128, 0]);
        assert_eq!(voc_colour(7), [128, 128, 128]);
        assert_eq!(voc_colour(8), [64, 0, 0]);
        assert_eq!(voc_colour(15), [192, 128, 128]); // person
        assert_eq!(voc_colour(20), [0, 64, 128]); // tvmonitor
        assert_eq!(voc_colour(255), [224, 224, 192]); // the ignored borders
    }

    #[test]
    fn masks_read_as_indices_from_palette_grey_low_depth_and_rgb_pngs() {
        let dir = tempfile::tempdir().unwrap();
        let idx: Vec<u8> = vec![0, 1, 15, 255, 20, 3];
        let p = dir.path().join("pal.png");
        write_palette_png(&p, 3, 2, &idx);
        assert_eq!(read_mask(&p).unwrap(), (3, 2, idx.clone()));
        let g = dir.path().join("grey.png");
        write_grey_png(&g, 2, 3, &idx);
        assert_eq!(read_mask(&g).unwrap(), (2, 3, idx.clone()));
        // RGB masks in the VOC colours map back to their indices.
        let rgb = RgbImage::from_fn(3, 2, |x, y| Rgb(voc_colour(idx[(y * 3 + x) as usize])));
        let r = dir.path().join("rgb.png");
        rgb.save(&r).unwrap();
        assert_eq!(read_mask(&r).unwrap(), (3, 2, idx.clone()));
        // A 2-bit palette PNG: five pixels a row, packed four to a byte.
        let file = std::fs::File::create(dir.path().join("two.png")).unwrap();
        let mut enc = png::Encoder::new(file, 5, 1);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Two);
        enc.set_palette(vec![0u8; 12]);
        let mut w = enc.write_header().unwrap();
        // 3, 2, 1, 0 | 2, (padding)
        w.write_image_data(&[0b11_10_01_00, 0b10_00_00_00]).unwrap();
        drop(w);
        assert_eq!(
            read_mask(&dir.path().join("two.png")).unwrap(),
            (5, 1, vec![3, 2, 1, 0, 2])
        );
        // A colour outside the palette, and a file that is no PNG, name the file.
        let odd = dir.path().join("odd.png");
        RgbImage::from_pixel(2, 2, Rgb([1, 2, 3]))
            .save(&odd)
            .unwrap();
        let e = format!("{:#}", read_mask(&odd).unwrap_err());
        assert!(
            e.contains("odd.png") && e.contains("[1, 2, 3]") && e.contains("(0, 0)"),
            "{e}"
        );
        let junk = dir.path().join("junk.png");
        std::fs::write(&junk, b"\x89PNG\r\n\x1a\n garbage").unwrap();
        let e = format!("{:#}", read_mask(&junk).unwrap_err());
        assert!(
            e.contains("junk.png") && e.contains("unreadable mask"),
            "{e}"
        );
    }

    #[test]
    fn nearest_scaling_takes_the_pixel_under_each_centre() {
        // 6 wide, 4 high: the central 4x4 square is columns 1..5.
        let m: Vec<u8> = (0..24).collect();
        assert_eq!(
            square_nearest(&m, 6, 4, 4),
            vec![1, 2, 3, 4, 7, 8, 9, 10, 13, 14, 15, 16, 19, 20, 21, 22]
        );
        // 4x4 -> 2x2: centres at source pixels 1 and 3.
        let m: Vec<u8> = (0..16).collect();
        assert_eq!(square_nearest(&m, 4, 4, 2), vec![5, 7, 13, 15]);
        // 2x2 -> 4x4: each pixel doubled.
        assert_eq!(
            square_nearest(&[1, 2, 3, 4], 2, 2, 4),
            vec![1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4]
        );
    }

    /// A folder `root/{images,masks}` of `n` 8x8 images; image k is uniform grey 10 k and
    /// its mask has class k % 3 in the left half and 255 in the right half.
    fn write_plain(root: &Path, n: usize) {
        std::fs::create_dir_all(root.join("images")).unwrap();
        std::fs::create_dir_all(root.join("masks")).unwrap();
        for k in 0..n {
            image::GrayImage::from_pixel(8, 8, image::Luma([10 * k as u8]))
                .save(root.join("images").join(format!("{k:02}.png")))
                .unwrap();
            let m: Vec<u8> = (0..64)
                .map(|i| if i % 8 < 4 { (k % 3) as u8 } else { IGNORE })
                .collect();
            write_grey_png(&root.join("masks").join(format!("{k:02}.png")), 8, 8, &m);
        }
    }

    #[test]
    fn plain_folders_load_with_a_held_out_fifth_or_train_and_test() {
        let dir = tempfile::tempdir().unwrap();
        write_plain(dir.path(), 10);
        let d = load_folder(dir.path(), 4).unwrap();
        // Images 04 and 09 are held out; classes 0..=2 from the largest training index.
        assert_eq!((d.train.len(), d.test.len(), d.num_classes), (8, 2, 3));
        assert_eq!(d.class_names, vec!["0", "1", "2"]);
        assert_eq!(d.train.images.shape, [3, 4, 4]);
        assert_eq!(d.test.images.image(0)[0], 40);
        assert_eq!(
            d.test.mask(1),
            &[
                0, 0, 255, 255, 0, 0, 255, 255, 0, 0, 255, 255, 0, 0, 255, 255
            ]
        );
        assert_eq!(d.train.mask(2)[..2], [2, 2]);
        // train/ and test/ folders, and named classes.
        let tt = tempfile::tempdir().unwrap();
        write_plain(&tt.path().join("train"), 3);
        write_plain(&tt.path().join("test"), 2);
        std::fs::write(tt.path().join("classes.txt"), "sky\ngrass\nroad\nsea\n").unwrap();
        let d = load_folder(tt.path(), 8).unwrap();
        assert_eq!((d.train.len(), d.test.len(), d.num_classes), (3, 2, 4));
        assert_eq!(d.class_names[3], "sea");
        assert_eq!(d.train.mask(1)[..8], [1, 1, 1, 1, 255, 255, 255, 255]);
    }

    #[test]
    fn voc_layout_loads_palette_masks_and_its_splits() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("VOCdevkit/VOC2012");
        for d in ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        // 6 wide, 4 high: the central square is columns 1..5.
        for (k, stem) in ["2007_000032", "2007_000039", "2007_000063"]
            .iter()
            .enumerate()
        {
            RgbImage::from_pixel(6, 4, Rgb([50 * k as u8, 0, 0]))
                .save(root.join("JPEGImages").join(format!("{stem}.jpg")))
                .unwrap();
            let m: Vec<u8> = (0..24)
                .map(|i| if i % 6 == 0 { 255 } else { [1, 15, 20][k] })
                .collect();
            write_palette_png(
                &root.join("SegmentationClass").join(format!("{stem}.png")),
                6,
                4,
                &m,
            );
        }
        let lists = root.join("ImageSets/Segmentation");
        std::fs::write(lists.join("train.txt"), "2007_000032\n2007_000039\n").unwrap();
        std::fs::write(lists.join("val.txt"), "2007_000063\n").unwrap();
        let d = load_folder(dir.path(), 4).unwrap();
        assert_eq!((d.train.len(), d.test.len(), d.num_classes), (2, 1, 21));
        assert_eq!(d.class_names[15], "person");
        // Column 0 (255) is cropped away with the central square.
        assert_eq!(d.train.mask(1), &[15; 16]);
        assert_eq!(d.test.mask(0), &[20; 16]);
        assert!(
            d.train.images.image(1)[..16]
                .iter()
                .all(|&r| r.abs_diff(50) <= 3)
        );
        // A listed image without its files is an error naming the list line and the file.
        std::fs::write(lists.join("val.txt"), "2007_000063\n2009_999999\n").unwrap();
        let e = format!("{:#}", load_folder(dir.path(), 4).unwrap_err());
        assert!(
            e.contains("val.txt line 2") && e.contains("2009_999999.jpg"),
            "{e}"
        );
    }

    #[test]
    fn corrupt_masks_give_errors_naming_the_file() {
        let err = |dir: &Path| format!("{:#}", load_folder(dir, 4).unwrap_err());
        // A missing mask.
        let dir = tempfile::tempdir().unwrap();
        write_plain(dir.path(), 5);
        std::fs::remove_file(dir.path().join("masks/03.png")).unwrap();
        let e = err(dir.path());
        assert!(
            e.contains("missing mask") && e.contains("masks/03.png") && e.contains("images/03.png"),
            "{e}"
        );
        // A mask of another size than its image.
        write_grey_png(&dir.path().join("masks/03.png"), 8, 6, &[0; 48]);
        let e = err(dir.path());
        assert!(
            e.contains("masks/03.png is 8x6") && e.contains("images/03.png is 8x8"),
            "{e}"
        );
        // A class index out of the classes that classes.txt names (test masks too).
        write_grey_png(&dir.path().join("masks/03.png"), 8, 8, &[0; 64]);
        std::fs::write(dir.path().join("classes.txt"), "a\nb\n").unwrap();
        let e = err(dir.path());
        assert!(
            e.contains("masks/02.png")
                && e.contains("class index 2 at pixel (0, 0)")
                && e.contains("2 classes"),
            "{e}"
        );
        // An index in a test mask beyond those of the training masks.
        std::fs::remove_file(dir.path().join("classes.txt")).unwrap();
        let mut m = vec![0u8; 64];
        m[9] = 7;
        write_grey_png(&dir.path().join("masks/04.png"), 8, 8, &m);
        let e = err(dir.path());
        assert!(
            e.contains("masks/04.png") && e.contains("class index 7 at pixel (1, 1)"),
            "{e}"
        );
        // A mask that is not a PNG, and a 16-bit one.
        std::fs::write(dir.path().join("masks/04.png"), b"nonsense").unwrap();
        let e = err(dir.path());
        assert!(
            e.contains("masks/04.png") && e.contains("unreadable mask"),
            "{e}"
        );
        image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_pixel(8, 8, image::Luma([1]))
            .save(dir.path().join("masks/04.png"))
            .unwrap();
        let e = err(dir.path());
        assert!(e.contains("masks/04.png") && e.contains("Sixteen"), "{e}");
        // Not a segmentation folder at all.
        let empty = tempfile::tempdir().unwrap();
        assert!(err(empty.path()).contains("expected images/ and masks/"));
        assert!(SegSpec::parse("seg-folder").is_err());
        assert!(
            SegSpec::parse("voc")
                .unwrap_err()
                .to_string()
                .contains("fashion-scenes")
        );
        assert_eq!(
            SegSpec::parse("seg-folder:/x").unwrap(),
            SegSpec::Folder("/x".into())
        );
    }
}
