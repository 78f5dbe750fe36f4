//! Decoding a region of an encoded image, at the smallest scale that still serves it, and
//! resizing crops of it: what a streamed data set does for every image a batch needs.
//!
//! JPEG goes through libjpeg-turbo (the `turbojpeg` crate's raw TurboJPEG 3 API): only
//! the rows and the column range of the region are decoded, and with a reduced DCT (1/2,
//! 1/4 or 1/8 of the size) when every crop is at least twice its output size there, as
//! PIL's draft mode and DALI do. Other formats (PNG, ...) are decoded whole by the `image`
//! crate. Crops are resized with an antialiased bilinear filter (`fast_image_resize`'s
//! convolution, PIL's `BILINEAR` when shrinking). Decoding is strict: a truncated or
//! corrupt JPEG is an error (libjpeg's warnings are errors here), never a grey half image.

use crate::augment::{CropBox, Image};
use anyhow::{Result, anyhow, bail};
use fast_image_resize::images::{Image as FirImage, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use std::cell::RefCell;
use turbojpeg::raw;

/// Largest width or height accepted from an image header, and the largest number of pixels.
pub const MAX_SIDE: u32 = 16_384;
pub const MAX_PIXELS: u64 = 100_000_000;
/// The `image` crate's allocation limit for formats it decodes.
const MAX_DECODE_BYTES: u64 = 512 << 20;

/// Width and height of an encoded image, from its header alone; an error for what is not an
/// image or is too large to decode.
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32)> {
    if bytes.is_empty() {
        bail!("empty file (0 bytes)");
    }
    let (w, h) = if is_jpeg(bytes) {
        with_turbo(|tj| tj.header(bytes)).map(|(w, h, _)| (w, h))?
    } else {
        let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| anyhow!("cannot read the image header: {e}"))?;
        if reader.format().is_none() {
            bail!("not an image (no known image format starts with these bytes)");
        }
        reader
            .into_dimensions()
            .map_err(|e| anyhow!("cannot read the image header: {e}"))?
    };
    check_size(w, h)?;
    Ok((w, h))
}

fn check_size(w: u32, h: u32) -> Result<()> {
    if w == 0 || h == 0 {
        bail!("the header gives an empty image ({w} x {h})");
    }
    if w > MAX_SIDE || h > MAX_SIDE || w as u64 * h as u64 > MAX_PIXELS {
        bail!(
            "the image is {w} x {h} pixels, more than this reader accepts ({MAX_SIDE} per side, {MAX_PIXELS} in all)"
        );
    }
    Ok(())
}

fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xff, 0xd8, 0xff])
}

/// An RGB region of an image, decoded at `scale` of its full size: the pixel (x, y) of the
/// full image sits at ((x * scale) - left, (y * scale) - top) here.
#[derive(Debug, Clone)]
pub struct Region {
    /// Interleaved RGB, `height` rows of `width` pixels.
    pub rgb: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub left: f64,
    pub top: f64,
    pub scale: f64,
}

/// The reduction (1, 1/2, 1/4 or 1/8) to decode at so that every crop keeps at least its
/// output size: the largest denominator d with `crop / d >= out` for every (crop, out).
pub fn reduction(crops: &[(CropBox, (usize, usize))]) -> u32 {
    [8u32, 4, 2]
        .into_iter()
        .find(|&d| {
            crops.iter().all(|(c, (oh, ow))| {
                c.height as f64 / d as f64 >= *oh as f64 && c.width as f64 / d as f64 >= *ow as f64
            })
        })
        .unwrap_or(1)
}

/// The smallest box holding every crop.
pub fn union(crops: &[CropBox]) -> CropBox {
    let top = crops.iter().map(|c| c.top).min().unwrap_or(0);
    let left = crops.iter().map(|c| c.left).min().unwrap_or(0);
    let bottom = crops.iter().map(|c| c.top + c.height).max().unwrap_or(0);
    let right = crops.iter().map(|c| c.left + c.width).max().unwrap_or(0);
    CropBox {
        top,
        left,
        height: bottom - top,
        width: right - left,
    }
}

/// Decodes the part of `bytes` (an image of `w` x `h`) that holds `region`, reduced by
/// `reduce` (1, 2, 4 or 8; only JPEG is decoded reduced, other formats come whole at scale 1).
pub fn decode_region(
    bytes: &[u8],
    (w, h): (u32, u32),
    region: CropBox,
    reduce: u32,
) -> Result<Region> {
    if is_jpeg(bytes) {
        match with_turbo(|tj| tj.decode(bytes, region, reduce)) {
            Ok(r) => return Ok(r),
            // Colour spaces and precisions libjpeg-turbo does not turn into 8-bit RGB
            // (CMYK, 12-bit) go to the `image` crate; anything else is a broken file.
            Err(e)
                if !e.to_string().contains("Unsupported color conversion")
                    && !e.to_string().contains("precision") =>
            {
                return Err(e);
            }
            Err(_) => {}
        }
    }
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| anyhow!("cannot read the image: {e}"))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| anyhow!("cannot decode the image: {e}"))?;
    if (img.width(), img.height()) != (w, h) {
        bail!(
            "the header says {w} x {h} but the image decodes to {} x {}",
            img.width(),
            img.height()
        );
    }
    Ok(Region {
        rgb: img.into_rgb8().into_raw(),
        width: w,
        height: h,
        left: 0.0,
        top: 0.0,
        scale: 1.0,
    })
}

/// `crop` (in the full image's pixels) of the decoded `region`, resized to `out_h` x `out_w`
/// with an antialiased bilinear filter, as a `[3, out_h, out_w]` image.
pub fn resize_crop(
    region: &Region,
    crop: CropBox,
    (out_h, out_w): (usize, usize),
) -> Result<Image> {
    let s = region.scale;
    let left = (crop.left as f64 * s - region.left).max(0.0);
    let top = (crop.top as f64 * s - region.top).max(0.0);
    let width = (crop.width as f64 * s).min(region.width as f64 - left);
    let height = (crop.height as f64 * s).min(region.height as f64 - top);
    let src = ImageRef::new(region.width, region.height, &region.rgb, PixelType::U8x3)
        .map_err(|e| anyhow!("decoded region: {e}"))?;
    let mut dst = FirImage::new(out_w as u32, out_h as u32, PixelType::U8x3);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(left, top, width, height);
    RESIZER
        .with(|r| r.borrow_mut().resize(&src, &mut dst, &options))
        .map_err(|e| anyhow!("resizing a crop: {e}"))?;
    Ok(hwc_to_chw(dst.buffer(), out_h, out_w))
}

/// Interleaved RGB into a `[3, h, w]` image.
pub fn hwc_to_chw(hwc: &[u8], h: usize, w: usize) -> Image {
    let mut chw = vec![0u8; 3 * h * w];
    let plane = h * w;
    for (i, px) in hwc.chunks_exact(3).enumerate() {
        chw[i] = px[0];
        chw[plane + i] = px[1];
        chw[2 * plane + i] = px[2];
    }
    Image::new(3, h, w, chw)
}

thread_local! {
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
    static TURBO: RefCell<Option<Turbo>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's TurboJPEG decompressor, made anew after any error (a
/// TurboJPEG handle that failed on a damaged header fails on every image after it).
fn with_turbo<T>(f: impl FnOnce(&mut Turbo) -> Result<T>) -> Result<T> {
    TURBO.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(Turbo::new()?);
        }
        let r = f(slot.as_mut().expect("made above"));
        if r.is_err() {
            *slot = None;
        }
        r
    })
}

/// A TurboJPEG 3 decompression handle.
struct Turbo(raw::tjhandle);

impl Drop for Turbo {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once.
        unsafe { raw::tj3Destroy(self.0) };
    }
}

/// The iMCU width in pixels of each TurboJPEG subsampling (444, 422, 420, GRAY, 440, 411,
/// 441): the cropping region's left edge must fall on a multiple of it (scaled).
const MCU_WIDTH: [i32; 7] = [8, 16, 16, 8, 8, 32, 8];

impl Turbo {
    fn new() -> Result<Turbo> {
        // SAFETY: tj3Init returns a handle or null.
        let h = unsafe { raw::tj3Init(raw::TJINIT_TJINIT_DECOMPRESS as i32) };
        if h.is_null() {
            bail!("libjpeg-turbo could not make a decompressor");
        }
        let t = Turbo(h);
        // Warnings (a truncated file, corrupt data) are errors: a damaged image is
        // reported, not decoded into grey.
        t.set(raw::TJPARAM_TJPARAM_STOPONWARNING, 1)?;
        Ok(t)
    }

    fn set(&self, param: raw::TJPARAM, value: i32) -> Result<()> {
        // SAFETY: a valid handle and a parameter of TurboJPEG 3.
        if unsafe { raw::tj3Set(self.0, param as i32, value) } != 0 {
            bail!("{}", self.error());
        }
        Ok(())
    }

    fn get(&self, param: raw::TJPARAM) -> i32 {
        // SAFETY: a valid handle.
        unsafe { raw::tj3Get(self.0, param as i32) }
    }

    fn error(&self) -> String {
        // SAFETY: tj3GetErrorStr returns a NUL-terminated string owned by the handle.
        let s = unsafe { std::ffi::CStr::from_ptr(raw::tj3GetErrorStr(self.0)) };
        s.to_string_lossy().trim().to_string()
    }

    /// (width, height, subsampling) from the JPEG header.
    fn header(&mut self, bytes: &[u8]) -> Result<(u32, u32, i32)> {
        // SAFETY: the buffer is valid for its length.
        if unsafe { raw::tj3DecompressHeader(self.0, bytes.as_ptr(), bytes.len() as _) } != 0 {
            bail!("not a readable JPEG: {}", self.error());
        }
        let (w, h) = (
            self.get(raw::TJPARAM_TJPARAM_JPEGWIDTH),
            self.get(raw::TJPARAM_TJPARAM_JPEGHEIGHT),
        );
        if w <= 0 || h <= 0 {
            bail!("the JPEG header gives an empty image ({w} x {h})");
        }
        Ok((w as u32, h as u32, self.get(raw::TJPARAM_TJPARAM_SUBSAMP)))
    }

    fn decode(&mut self, bytes: &[u8], region: CropBox, reduce: u32) -> Result<Region> {
        let (w, h, subsamp) = self.header(bytes)?;
        check_size(w, h)?;
        let d = reduce.clamp(1, 8) as i32;
        // SAFETY: a valid handle; 1/d is one of TurboJPEG's scaling factors.
        if unsafe { raw::tj3SetScalingFactor(self.0, raw::tjscalingfactor { num: 1, denom: d }) }
            != 0
        {
            bail!("{}", self.error());
        }
        let scaled = |v: i32| (v + d - 1) / d; // TJSCALED
        let (sw, sh) = (scaled(w as i32), scaled(h as i32));
        let mcu = (MCU_WIDTH.get(subsamp as usize).copied().unwrap_or(8) / d).max(1);
        let x = (region.left as i32 / d) / mcu * mcu;
        let y = (region.top as i32 / d).min(sh - 1);
        let right = scaled((region.left + region.width) as i32).clamp(x + 1, sw);
        let bottom = scaled((region.top + region.height) as i32).clamp(y + 1, sh);
        let crop = raw::tjregion {
            x,
            y,
            w: right - x,
            h: bottom - y,
        };
        // The whole width: TurboJPEG's "uncropped" region (its checks need x = 0, w = 0 then).
        let crop = if crop.x == 0 && crop.w == sw && crop.y == 0 && crop.h == sh {
            raw::tjregion {
                x: 0,
                y: 0,
                w: 0,
                h: 0,
            }
        } else {
            crop
        };
        // SAFETY: a valid handle and a region inside the scaled image.
        if unsafe { raw::tj3SetCroppingRegion(self.0, crop) } != 0 {
            bail!("{}", self.error());
        }
        let (ow, oh) = if crop.w == 0 {
            (sw, sh)
        } else {
            (crop.w, crop.h)
        };
        let mut rgb = vec![0u8; (ow * oh * 3) as usize];
        // SAFETY: the buffer holds oh rows of ow RGB pixels, the pitch given.
        let r = unsafe {
            raw::tj3Decompress8(
                self.0,
                bytes.as_ptr(),
                bytes.len() as _,
                rgb.as_mut_ptr(),
                ow * 3,
                raw::TJPF_TJPF_RGB,
            )
        };
        if r != 0 {
            bail!("corrupt JPEG data: {}", self.error());
        }
        Ok(Region {
            rgb,
            width: ow as u32,
            height: oh as u32,
            left: crop.x as f64,
            top: crop.y as f64,
            scale: 1.0 / d as f64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A w x h RGB picture with smooth gradients, encoded as JPEG (quality 95) and as PNG.
    pub(crate) fn gradient(w: u32, h: u32) -> (Vec<u8>, Vec<u8>, image::RgbImage) {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 255 / w.max(1)) as u8,
                (y * 255 / h.max(1)) as u8,
                ((x + y) * 127 / (w + h)) as u8,
            ])
        });
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode_image(&img)
            .unwrap();
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        (jpeg, png, img)
    }

    fn crop(top: usize, left: usize, height: usize, width: usize) -> CropBox {
        CropBox {
            top,
            left,
            height,
            width,
        }
    }

    #[test]
    fn headers_give_sizes_and_bad_bytes_give_errors() {
        let (jpeg, png, _) = gradient(120, 70);
        assert_eq!(dimensions(&jpeg).unwrap(), (120, 70));
        assert_eq!(dimensions(&png).unwrap(), (120, 70));
        assert!(
            dimensions(&[])
                .unwrap_err()
                .to_string()
                .contains("empty file")
        );
        assert!(
            dimensions(b"hello, world")
                .unwrap_err()
                .to_string()
                .contains("not an image")
        );
        let e = dimensions(&jpeg[..3]).unwrap_err().to_string();
        assert!(e.contains("JPEG"), "{e}");
    }

    #[test]
    fn a_huge_header_is_refused_before_any_allocation() {
        // A valid JPEG header claiming 30000 x 30000 pixels: SOF0 with those sizes.
        let (mut jpeg, _, _) = gradient(16, 16);
        let sof = jpeg.windows(2).position(|w| w == [0xff, 0xc0]).unwrap();
        jpeg[sof + 5..sof + 7].copy_from_slice(&30000u16.to_be_bytes());
        jpeg[sof + 7..sof + 9].copy_from_slice(&30000u16.to_be_bytes());
        let e = dimensions(&jpeg).unwrap_err().to_string();
        assert!(
            e.contains("30000 x 30000") && e.contains("more than"),
            "{e}"
        );
        let e = decode_region(&jpeg, (30000, 30000), crop(0, 0, 10, 10), 1).unwrap_err();
        assert!(e.to_string().contains("30000"), "{e}");
    }

    #[test]
    fn a_truncated_or_corrupt_jpeg_is_an_error_and_the_next_one_decodes() {
        let (jpeg, _, _) = gradient(64, 48);
        let whole = crop(0, 0, 48, 64);
        let cut = &jpeg[..jpeg.len() * 6 / 10];
        assert!(decode_region(cut, (64, 48), whole, 1).is_err());
        let mut flipped = jpeg.clone();
        let mid = flipped.len() / 2;
        for b in &mut flipped[mid..mid + 40] {
            *b ^= 0x5a;
        }
        let _ = decode_region(&flipped, (64, 48), whole, 1); // an error or noise, never a panic
        // The thread's decompressor is made anew after an error: a good image decodes.
        let r = decode_region(&jpeg, (64, 48), whole, 1).unwrap();
        assert_eq!((r.width, r.height, r.scale), (64, 48, 1.0));
    }

    #[test]
    fn a_jpeg_region_is_decoded_near_the_whole_image_at_every_reduction() {
        let (jpeg, _, img) = gradient(200, 120);
        let full = decode_region(&jpeg, (200, 120), crop(0, 0, 120, 200), 1).unwrap();
        assert_eq!(
            (full.width, full.height, full.left, full.top),
            (200, 120, 0.0, 0.0)
        );
        // Quality 95 of a smooth picture: within a few levels of the original.
        let err = full
            .rgb
            .iter()
            .zip(img.as_raw())
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        assert!(err <= 8, "max error {err}");
        for reduce in [1, 2, 4, 8] {
            let c = crop(30, 50, 60, 100);
            let r = decode_region(&jpeg, (200, 120), c, reduce).unwrap();
            assert_eq!(r.scale, 1.0 / reduce as f64);
            // The region covers the crop, its left edge on a (scaled) iMCU boundary.
            assert!(r.left <= 50.0 / reduce as f64 && r.top <= 30.0 / reduce as f64);
            assert!(r.left + r.width as f64 >= 150.0 / reduce as f64 - 1.0);
            assert!(r.top + r.height as f64 >= 90.0 / reduce as f64 - 1.0);
            // A pixel of the region is the picture's pixel at the mapped place.
            let (x, y) = (120.0, 70.0);
            let (rx, ry) = (
                (x * r.scale - r.left) as usize,
                (y * r.scale - r.top) as usize,
            );
            let got = &r.rgb[(ry * r.width as usize + rx) * 3..][..3];
            let want = img.get_pixel(x as u32, y as u32).0;
            for c in 0..3 {
                assert!(
                    (got[c] as i32 - want[c] as i32).abs() <= 12,
                    "reduce {reduce}: {got:?} vs {want:?}"
                );
            }
        }
    }

    #[test]
    fn crops_resize_alike_from_jpeg_reduced_and_from_png() {
        let (jpeg, png, _) = gradient(240, 160);
        let c = crop(20, 40, 120, 160);
        let out = (24, 32);
        let from_png =
            resize_crop(&decode_region(&png, (240, 160), c, 8).unwrap(), c, out).unwrap();
        assert_eq!((from_png.c, from_png.h, from_png.w), (3, 24, 32));
        let d = reduction(&[(c, out)]);
        assert_eq!(d, 4, "120 / 4 >= 24 and 160 / 4 >= 32, not / 8");
        let from_jpeg =
            resize_crop(&decode_region(&jpeg, (240, 160), c, d).unwrap(), c, out).unwrap();
        let diff = from_png
            .data
            .iter()
            .zip(&from_jpeg.data)
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        assert!(diff <= 10, "max difference {diff}");
        // The crop's corner colour: red grows with x, green with y.
        let (r0, g0) = (from_png.at(0, 0, 0) as i32, from_png.at(1, 0, 0) as i32);
        assert!(
            (r0 - 40 * 255 / 240).abs() <= 6 && (g0 - 20 * 255 / 160).abs() <= 6,
            "{r0} {g0}"
        );
    }

    #[test]
    fn union_and_reduction_by_hand() {
        let u = union(&[crop(10, 20, 5, 5), crop(2, 30, 20, 1)]);
        assert_eq!((u.top, u.left, u.height, u.width), (2, 20, 20, 11));
        assert_eq!(reduction(&[(crop(0, 0, 100, 100), (12, 12))]), 8);
        assert_eq!(reduction(&[(crop(0, 0, 100, 100), (13, 13))]), 4);
        assert_eq!(reduction(&[(crop(0, 0, 100, 100), (60, 60))]), 1);
        // The smallest crop decides.
        assert_eq!(
            reduction(&[
                (crop(0, 0, 400, 400), (50, 50)),
                (crop(0, 0, 100, 100), (50, 50))
            ]),
            2
        );
    }
}
