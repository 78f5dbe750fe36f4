//! `selfsup data pack`: any data set written as WebDataset shards (`train-000000.tar`, ...,
//! `test-000000.tar`), each sample a JPEG (`KEY.jpg`) and, when labeled, its class
//! (`KEY.cls`, the integer as text), as the webdataset library writes them. Images larger
//! than `max_side` are scaled down (the longer side to `max_side`, antialiased) and
//! re-encoded (quality 90); a JPEG that fits is copied as it is. Samples are written in a
//! seeded shuffled order, so that a reader going through the shards in order (the
//! webdataset library's) sees the classes mixed. A shard is written to a temporary name and
//! renamed when complete.

use super::stream::Streamed;
use super::{Dataset, Split, decode};
use crate::augment::CropBox;
use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Images larger than this (either side) are scaled down to it.
    pub max_side: u32,
    /// A new shard starts once one holds this many bytes.
    pub shard_bytes: u64,
    /// Seeds the order of the samples.
    pub seed: u64,
}

/// What was written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Packed {
    pub shards: Vec<PathBuf>,
    pub samples: usize,
    pub bytes: u64,
    /// Images re-encoded (scaled down, or not JPEG); the others were copied.
    pub reencoded: usize,
}

/// Parses a size such as `512MB`, `2GB`, `100kB` or a number of bytes.
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let digits = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: f64 = num
        .parse()
        .with_context(|| format!("'{s}' is not a size such as 512MB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        _ => bail!("'{s}': the unit must be B, kB, MB or GB"),
    };
    let bytes = n * mult;
    if bytes.is_nan() || bytes < 1024.0 {
        bail!("'{s}': a shard must be allowed at least 1 kB");
    }
    Ok(bytes as u64)
}

/// A sample's JPEG bytes and whether they were re-encoded.
type Jpeg = (Vec<u8>, bool);

/// The JPEG bytes of image `i` of `split`, no larger than `max_side`; and whether they were
/// re-encoded.
fn sample_jpeg(split: &Split, i: usize, max_side: u32) -> Result<(Vec<u8>, bool)> {
    match split.stream() {
        Some(stream) => streamed_jpeg(stream, i, max_side),
        None => {
            let [c, h, w] = split.shape;
            let chw = split.image(i);
            let plane = h * w;
            let mut rgb = vec![0u8; plane * 3];
            for p in 0..plane {
                for k in 0..3 {
                    rgb[p * 3 + k] = chw[(k.min(c - 1)) * plane + p];
                }
            }
            let region = decode::Region {
                rgb,
                width: w as u32,
                height: h as u32,
                left: 0.0,
                top: 0.0,
                scale: 1.0,
            };
            Ok((encode_fitting(&region, max_side)?, true))
        }
    }
}

fn streamed_jpeg(stream: &Streamed, i: usize, max_side: u32) -> Result<(Vec<u8>, bool)> {
    let item = stream.items[i];
    let bytes = stream.source.read(item)?;
    let what = || stream.source.describe(item);
    let (w, h) = decode::dimensions(&bytes).with_context(what)?;
    let is_jpeg = bytes.starts_with(&[0xff, 0xd8, 0xff]);
    if is_jpeg && w.max(h) <= max_side {
        return Ok((bytes, false));
    }
    let whole = CropBox {
        top: 0,
        left: 0,
        height: h as usize,
        width: w as usize,
    };
    // Decoded reduced as far as the scaled-down image allows.
    let (ow, oh) = fitted(w, h, max_side);
    let reduce = decode::reduction(&[(whole, (oh as usize, ow as usize))]);
    let region = decode::decode_region(&bytes, (w, h), whole, reduce).with_context(what)?;
    let scaled =
        decode::resize_crop(&region, whole, (oh as usize, ow as usize)).with_context(what)?;
    let plane = (oh * ow) as usize;
    let mut rgb = vec![0u8; plane * 3];
    for p in 0..plane {
        for k in 0..3 {
            rgb[p * 3 + k] = scaled.data[k * plane + p];
        }
    }
    let out = decode::Region {
        rgb,
        width: ow,
        height: oh,
        left: 0.0,
        top: 0.0,
        scale: 1.0,
    };
    Ok((encode_fitting(&out, max_side).with_context(what)?, true))
}

/// The size of a `w` x `h` image with its longer side brought down to `max_side`.
fn fitted(w: u32, h: u32, max_side: u32) -> (u32, u32) {
    let long = w.max(h);
    if long <= max_side {
        return (w, h);
    }
    let s = max_side as f64 / long as f64;
    (
        ((w as f64 * s).round() as u32).max(1),
        ((h as f64 * s).round() as u32).max(1),
    )
}

/// `region` as JPEG (quality 90), scaled down first when larger than `max_side`.
fn encode_fitting(region: &decode::Region, max_side: u32) -> Result<Vec<u8>> {
    let (w, h) = (region.width, region.height);
    let (ow, oh) = fitted(w, h, max_side);
    let rgb = if (ow, oh) == (w, h) {
        region.rgb.clone()
    } else {
        let whole = CropBox {
            top: 0,
            left: 0,
            height: h as usize,
            width: w as usize,
        };
        let chw = decode::resize_crop(region, whole, (oh as usize, ow as usize))?.data;
        let plane = (ow * oh) as usize;
        (0..plane * 3)
            .map(|i| chw[(i % 3) * plane + i / 3])
            .collect()
    };
    let image = turbojpeg::Image {
        pixels: &rgb[..],
        width: ow as usize,
        pitch: ow as usize * 3,
        height: oh as usize,
        format: turbojpeg::PixelFormat::RGB,
    };
    let jpeg =
        turbojpeg::compress(image, 90, turbojpeg::Subsamp::Sub2x2).context("encoding a JPEG")?;
    Ok(jpeg.to_vec())
}

/// Appends one member to a tar stream.
fn append(tar: &mut tar::Builder<BufWriter<File>>, name: &str, data: &[u8]) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, data)?;
    Ok(())
}

/// Writes `split` as shards `DIR/NAME-000000.tar`, ... (samples in a seeded order).
fn pack_split(
    split: &Split,
    name: &str,
    out: &Path,
    opts: &PackOptions,
    packed: &mut Packed,
) -> Result<()> {
    if split.is_empty() {
        return Ok(());
    }
    let mut order: Vec<usize> = (0..split.len()).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed));
    let labeled = split.labels.iter().all(|&l| l >= 0);
    let mut shard: Option<(tar::Builder<BufWriter<File>>, PathBuf, PathBuf, u64)> = None;
    let finish = |shard: Option<(tar::Builder<BufWriter<File>>, PathBuf, PathBuf, u64)>,
                  packed: &mut Packed|
     -> Result<()> {
        if let Some((tar, tmp, path, bytes)) = shard {
            let mut w = tar.into_inner()?;
            w.flush()?;
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&tmp, &path).with_context(|| {
                format!("cannot rename {} to {}", tmp.display(), path.display())
            })?;
            packed.bytes += bytes;
            packed.shards.push(path);
        }
        Ok(())
    };
    // Images are made 256 at a time in parallel, written in order.
    for chunk in order.chunks(256) {
        let made: Vec<(usize, Result<Jpeg>)> = chunk
            .par_iter()
            .map(|&i| (i, sample_jpeg(split, i, opts.max_side)))
            .collect();
        for (i, r) in made {
            let (jpeg, reencoded) = match r {
                Ok(x) => x,
                Err(e) => match split.stream() {
                    Some(s) if s.skip_bad => {
                        eprintln!("warning: skipped {e:#}");
                        continue;
                    }
                    _ => {
                        return Err(
                            e.context("(set bad_images = \"skip\" to leave such images out)")
                        );
                    }
                },
            };
            if shard.as_ref().is_some_and(|s| s.3 >= opts.shard_bytes) {
                finish(shard.take(), packed)?;
            }
            if shard.is_none() {
                let n = packed
                    .shards
                    .iter()
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|f| f.to_string_lossy().starts_with(name))
                    })
                    .count();
                let path = out.join(format!("{name}-{n:06}.tar"));
                let tmp = out.join(format!(".{name}-{n:06}.tar.tmp"));
                let file = File::create(&tmp)
                    .with_context(|| format!("cannot create {}", tmp.display()))?;
                shard = Some((tar::Builder::new(BufWriter::new(file)), tmp, path, 0));
            }
            let (tar, _, _, bytes) = shard.as_mut().expect("made above");
            let key = format!("{i:09}");
            append(tar, &format!("{key}.jpg"), &jpeg)?;
            *bytes += jpeg.len() as u64 + 512;
            if labeled {
                let cls = split.labels[i].to_string();
                append(tar, &format!("{key}.cls"), cls.as_bytes())?;
                *bytes += 1024;
            }
            packed.samples += 1;
            packed.reencoded += reencoded as usize;
        }
    }
    finish(shard.take(), packed)
}

/// Packs the data set's splits into `out`: `train-*` (the pretraining split when the data
/// set has no labels) and `test-*`.
pub fn pack(ds: &Dataset, out: &Path, opts: &PackOptions) -> Result<Packed> {
    if opts.max_side < 8 {
        bail!("--max-side {}: must be at least 8", opts.max_side);
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    if std::fs::read_dir(out)?
        .flatten()
        .any(|e| e.path().extension().is_some_and(|x| x == "tar"))
    {
        bail!(
            "{} already holds .tar shards; choose an empty folder",
            out.display()
        );
    }
    let mut packed = Packed::default();
    match &ds.unlabeled {
        Some(u) => pack_split(u, "train", out, opts, &mut packed)?,
        None => {
            pack_split(&ds.train, "train", out, opts, &mut packed)?;
            pack_split(&ds.test, "test", out, opts, &mut packed)?;
        }
    }
    Ok(packed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_their_units() {
        assert_eq!(parse_bytes("512MB").unwrap(), 512_000_000);
        assert_eq!(parse_bytes("1.5GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("10B").is_err());
        assert_eq!(fitted(400, 300, 256), (256, 192));
        assert_eq!(fitted(100, 300, 256), (85, 256));
        assert_eq!(fitted(100, 30, 256), (100, 30));
    }
}
