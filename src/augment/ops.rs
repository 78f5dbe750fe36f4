//! Pure image operations on u8 images (gray or RGB, any size), following torchvision's
//! tensor implementations. Each op computes in f32 and rounds back to u8 (torchvision
//! truncates; rounding is the unbiased choice). On 1-channel images the colour-only ops
//! (saturation, hue, grayscale conversion) return the image unchanged, as torchvision does.
//!
//! The ops are written for speed (separable passes, tables, loops that vectorise) and the
//! tests hold them to the per-pixel float formulas in `reference`: the same bytes, except
//! hue (at most one level apart where a value lies within float error of a .5 tie) and
//! contrast (its mean comes from exact integer sums, not a running f32 sum).

/// An image stored channel-major: `data[c * h * w + y * w + x]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<u8>,
}

impl Image {
    pub fn new(c: usize, h: usize, w: usize, data: Vec<u8>) -> Image {
        assert_eq!(
            data.len(),
            c * h * w,
            "image data does not match {c}x{h}x{w}"
        );
        Image { c, h, w, data }
    }
    pub fn at(&self, c: usize, y: usize, x: usize) -> u8 {
        self.data[(c * self.h + y) * self.w + x]
    }
    fn plane(&self) -> usize {
        self.h * self.w
    }
    /// The R, G and B planes `[H*W]` of a 3-channel image.
    fn rgb(&self) -> [&[u8]; 3] {
        debug_assert_eq!(self.c, 3);
        let p = self.plane();
        [0, 1, 2].map(|c| &self.data[c * p..(c + 1) * p])
    }
}

/// Rounds to nearest, halves away from zero, and saturates: `v.round().clamp(0, 255)`
/// without `f32::round`, which baseline x86-64 (no SSE4.1) compiles to a `roundf` call per
/// value, a sixth of the benchmark's time. On [0, 255] the fraction `v - trunc(v)` is exact,
/// so comparing it with 0.5 rounds as `round` does; this form also vectorises. NaN gives 0.
#[allow(
    clippy::manual_clamp,
    reason = "clamp keeps NaN, which the unchecked cast must not see"
)]
fn to_u8(v: f32) -> u8 {
    // max/min (unlike clamp) turn NaN into 0
    let v = v.max(0.0).min(255.0);
    // SAFETY: v is finite and in [0, 255], so it fits an i32. This cast, unlike `as`, has
    // no saturation and NaN checks, which kept the compiler from vectorising it.
    let t = unsafe { v.to_int_unchecked::<i32>() };
    (t + (v - t as f32 >= 0.5) as i32) as u8
}

/// A per-value op through a table: the result depends only on the u8 value, so `f` runs 256
/// times instead of once per value, and the pass over the image is one lookup per value.
fn map_values(img: &Image, f: impl Fn(f32) -> f32) -> Image {
    let lut: [u8; 256] = std::array::from_fn(|v| to_u8(f(v as f32)));
    Image {
        data: img.data.iter().map(|&v| lut[v as usize]).collect(),
        ..*img
    }
}

/// A crop rectangle in pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropBox {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// The bilinear taps of resizing `n_in` samples to `n_out` (half-pixel centres, clamped at
/// the borders): for each output index the left and right source index and the weight of
/// the right one.
fn bilinear_taps(n_out: usize, n_in: usize) -> Vec<(usize, usize, f32)> {
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|o| {
            let s = ((o as f32 + 0.5) * scale - 0.5).clamp(0.0, (n_in - 1) as f32);
            // s >= 0, so truncation is the floor (and not a `floorf` call)
            let i0 = s as usize;
            let i1 = (i0 + 1).min(n_in - 1);
            (i0, i1, s - i0 as f32)
        })
        .collect()
}

/// Crops `b` out of `img` and resizes it to `out_h` x `out_w` with bilinear interpolation
/// (half-pixel centres, as torchvision/PIL without antialiasing). Separable: each crop row
/// is resized horizontally once, then each output row blends two of those rows. Per pixel
/// this is the 2-D formula's arithmetic in the same order, so the result is the same.
pub fn resized_crop(img: &Image, b: CropBox, out_h: usize, out_w: usize) -> Image {
    let ys = bilinear_taps(out_h, b.height);
    let xs = bilinear_taps(out_w, b.width);
    // [b.height, out_w]: the crop's rows of one channel, resized horizontally.
    let mut rows = vec![0f32; b.height * out_w];
    let mut row_f32 = vec![0f32; b.width]; // one crop row of the source
    let mut data = vec![0u8; img.c * out_h * out_w];
    for (src, dst) in img
        .data
        .chunks_exact(img.plane())
        .zip(data.chunks_exact_mut(out_h * out_w))
    {
        let crop_rows = src.chunks_exact(img.w).skip(b.top).take(b.height);
        for (row, resized) in crop_rows.zip(rows.chunks_exact_mut(out_w)) {
            // converted once, not twice per output pixel: the gather below stays scalar
            for (f, &v) in row_f32.iter_mut().zip(&row[b.left..b.left + b.width]) {
                *f = v as f32;
            }
            for (r, &(x0, x1, wx)) in resized.iter_mut().zip(&xs) {
                *r = row_f32[x0] * (1.0 - wx) + row_f32[x1] * wx;
            }
        }
        for (out, &(y0, y1, wy)) in dst.chunks_exact_mut(out_w).zip(&ys) {
            let (top, bot) = (&rows[y0 * out_w..][..out_w], &rows[y1 * out_w..][..out_w]);
            for ((o, &t), &u) in out.iter_mut().zip(top).zip(bot) {
                *o = to_u8(t * (1.0 - wy) + u * wy);
            }
        }
    }
    Image {
        c: img.c,
        h: out_h,
        w: out_w,
        data,
    }
}

pub fn hflip(img: &Image) -> Image {
    let mut data = img.data.clone();
    for row in data.chunks_mut(img.w) {
        row.reverse();
    }
    Image { data, ..*img }
}

/// torchvision's rgb_to_grayscale weights for R, G, B.
const LUMA: [f32; 3] = [0.2989, 0.587, 0.114];

/// Luma per pixel `[H*W]` of a 3-channel image.
fn luma(img: &Image) -> Vec<f32> {
    let [r, g, b] = img.rgb();
    r.iter()
        .zip(g)
        .zip(b)
        .map(|((&r, &g), &b)| LUMA[0] * r as f32 + LUMA[1] * g as f32 + LUMA[2] * b as f32)
        .collect()
}

/// Mean luma of the image (the plane itself for gray), from exact integer sums per channel:
/// cheaper than summing per-pixel lumas, and without the drift of a long f32 running sum.
fn mean_luma(img: &Image) -> f32 {
    let p = img.plane();
    let sum = |c: usize| {
        img.data[c * p..(c + 1) * p]
            .iter()
            .map(|&v| v as u64)
            .sum::<u64>()
    };
    let total = if img.c == 3 {
        (0..3).map(|c| LUMA[c] as f64 * sum(c) as f64).sum()
    } else {
        sum(0) as f64
    };
    (total / p as f64) as f32
}

/// Gray version with the same number of channels; a 1-channel image is returned unchanged.
pub fn grayscale(img: &Image) -> Image {
    if img.c != 3 {
        return img.clone();
    }
    let l = luma(img);
    let mut data = vec![0u8; img.data.len()];
    for out in data.chunks_exact_mut(img.plane()) {
        for (o, &l) in out.iter_mut().zip(&l) {
            *o = to_u8(l);
        }
    }
    Image { data, ..*img }
}

/// Multiplies every pixel by `factor` (blend with black).
pub fn adjust_brightness(img: &Image, factor: f32) -> Image {
    map_values(img, |v| v * factor)
}

/// Blends with the mean luma of the image: factor 0 gives a flat gray image.
pub fn adjust_contrast(img: &Image, factor: f32) -> Image {
    let mean = mean_luma(img);
    map_values(img, |v| factor * v + (1.0 - factor) * mean)
}

/// Blends with the grayscale image: factor 0 gives gray, 1 the original. No-op on gray input.
pub fn adjust_saturation(img: &Image, factor: f32) -> Image {
    if img.c != 3 {
        return img.clone();
    }
    // (1 - factor) * luma per pixel, shared by the three channels
    let gray: Vec<f32> = luma(img).iter().map(|l| (1.0 - factor) * l).collect();
    let mut data = vec![0u8; img.data.len()];
    for (out, src) in data
        .chunks_exact_mut(img.plane())
        .zip(img.data.chunks_exact(img.plane()))
    {
        for ((o, &v), &g) in out.iter_mut().zip(src).zip(&gray) {
            *o = to_u8(factor * v as f32 + g);
        }
    }
    Image { data, ..*img }
}

/// `x` in [-6, 12) brought into [0, 6).
fn wrap6(x: f32) -> f32 {
    if x >= 6.0 {
        x - 6.0
    } else if x < 0.0 {
        x + 6.0
    } else {
        x
    }
}

/// Rotates the hue of one pixel by `shift6` sextants (sixths of a turn, in [0, 6]): the
/// HSV round trip of torchvision, with the normalisation by 255 and by the max cancelled.
/// Value (the max) and saturation (so max - min) stay; channel n of (R 5, G 3, B 1) is
/// max - d * clamp(min(k, 4 - k), 0, 1) at k = (n + hue) mod 6: HSV-to-RGB's six cases
/// without branches, so that the loop over pixels vectorises.
fn rotate_hue([r, g, b]: [f32; 3], shift6: f32) -> [f32; 3] {
    let (max, min) = (r.max(g).max(b), r.min(g).min(b));
    let d = max - min;
    // hue in sextants: red at 0, green at 2, blue at 4
    let (num, base) = if max == r {
        (g - b, 0.0)
    } else if max == g {
        (b - r, 2.0)
    } else {
        (r - g, 4.0)
    };
    // a gray pixel (d = 0, num = 0) gets some hue, and stays gray whatever it is
    let hue = wrap6(base + num / d.max(1.0) + shift6);
    [5.0, 3.0, 1.0].map(|n| {
        let k = wrap6(n + hue);
        max - d * k.min(4.0 - k).clamp(0.0, 1.0)
    })
}

/// Rotates the hue by `shift` turns (in [-0.5, 0.5]) in HSV space. No-op on gray input.
pub fn adjust_hue(img: &Image, shift: f32) -> Image {
    if img.c != 3 {
        return img.clone();
    }
    let p = img.plane();
    let shift6 = shift.rem_euclid(1.0) * 6.0; // [0, 6]: 6 where a tiny negative rounds up
    let [r, g, b] = img.rgb();
    let mut data = vec![0u8; img.data.len()];
    let (out_r, gb) = data.split_at_mut(p);
    let (out_g, out_b) = gb.split_at_mut(p);
    for i in 0..p {
        let out = rotate_hue([r[i], g[i], b[i]].map(|v| v as f32), shift6);
        [out_r[i], out_g[i], out_b[i]] = out.map(to_u8);
    }
    Image { data, ..*img }
}

/// torchvision's 1-D Gaussian for an odd `kernel` (an even one is rounded up):
/// exp(-x^2 / (2 sigma^2)) at x = -r..=r, normalised to sum 1.
fn gaussian_weights(kernel: usize, sigma: f32) -> Vec<f32> {
    let r = (kernel / 2) as i64;
    let weights: Vec<f32> = (-r..=r)
        .map(|x| (-(x * x) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = weights.iter().sum();
    weights.iter().map(|w| w / total).collect()
}

/// For padded positions -r..n+r of an axis of `n` samples, the source index under reflect
/// padding (torchvision's: the edge sample is not repeated).
fn reflected(n: usize, r: usize) -> Vec<usize> {
    let (n, r) = (n as i64, r as i64);
    let period = (2 * (n - 1)).max(1);
    (-r..n + r)
        .map(|i| {
            let m = i.rem_euclid(period);
            (if m < n { m } else { period - m }) as usize
        })
        .collect()
}

/// `acc += wt * x` elementwise: the inner loop of both blur passes, over whole rows so that
/// it vectorises; 8 lanes wide where the CPU has AVX2 (found at run time), else SSE2's 4.
/// A product then a sum, never fused: every lane width gives the same bits.
fn add_scaled(acc: &mut [f32], wt: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked above.
        return unsafe { add_scaled_avx2(acc, wt, x) };
    }
    add_scaled_portable(acc, wt, x);
}

#[inline(always)]
fn add_scaled_portable(acc: &mut [f32], wt: f32, x: &[f32]) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += wt * v;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_scaled_avx2(acc: &mut [f32], wt: f32, x: &[f32]) {
    add_scaled_portable(acc, wt, x);
}

/// Separable Gaussian blur with an odd `kernel` size and reflect padding (torchvision's).
/// A horizontal pass over reflect-padded rows, then a vertical one over whole rows, each
/// summing the taps in kernel order: the same f32 arithmetic per pixel as tap-by-tap loops.
pub fn gaussian_blur(img: &Image, kernel: usize, sigma: f32) -> Image {
    let weights = gaussian_weights(kernel, sigma);
    let r = weights.len() / 2;
    let (h, w) = (img.h, img.w);
    let (cols, rows) = (reflected(w, r), reflected(h, r));
    let mut padded = vec![0f32; w + 2 * r]; // one source row, reflect-padded
    let mut tmp = vec![0f32; h * w]; // [h, w]: one channel after the horizontal pass
    let mut acc = vec![0f32; w]; // one output row before rounding
    let mut data = vec![0u8; img.data.len()];
    for (src, dst) in img
        .data
        .chunks_exact(h * w)
        .zip(data.chunks_exact_mut(h * w))
    {
        for (row, t) in src.chunks_exact(w).zip(tmp.chunks_exact_mut(w)) {
            for (p, &x) in padded.iter_mut().zip(&cols) {
                *p = row[x] as f32;
            }
            t.fill(0.0);
            for (j, &wt) in weights.iter().enumerate() {
                add_scaled(t, wt, &padded[j..j + w]);
            }
        }
        for (y, out) in dst.chunks_exact_mut(w).enumerate() {
            acc.fill(0.0);
            for (&wt, &ry) in weights.iter().zip(&rows[y..]) {
                add_scaled(&mut acc, wt, &tmp[ry * w..(ry + 1) * w]);
            }
            for (o, &a) in out.iter_mut().zip(&acc) {
                *o = to_u8(a);
            }
        }
    }
    Image { data, ..*img }
}

/// Inverts every pixel at or above `threshold`.
pub fn solarize(img: &Image, threshold: u8) -> Image {
    Image {
        data: img
            .data
            .iter()
            .map(|&v| if v >= threshold { 255 - v } else { v })
            .collect(),
        ..*img
    }
}

#[cfg(test)]
mod reference;

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Noise and gradient images (gradients give the rounding ties noise rarely hits) of the
    /// benchmark's shapes and odd small ones, where the kernels and crops reach the borders.
    fn test_images() -> Vec<Image> {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let mut imgs = Vec::new();
        for (c, h, w) in [
            (3, 96, 96),
            (3, 32, 32),
            (1, 28, 28),
            (3, 7, 5),
            (1, 1, 1),
            (3, 1, 9),
        ] {
            let noise = (0..c * h * w).map(|_| rng.random()).collect();
            let ramp = (0..c * h * w)
                .map(|i| ((i % w) * 7 + (i / w % h) * 3 + i / (h * w) * 50) as u8)
                .collect();
            imgs.push(Image::new(c, h, w, noise));
            imgs.push(Image::new(c, h, w, ramp));
        }
        imgs
    }

    /// The largest difference and the count of differing values over pairs of images.
    #[derive(Default)]
    struct Tally {
        worst: u8,
        differing: usize,
        total: usize,
    }

    impl Tally {
        fn add(&mut self, a: &Image, b: &Image) {
            assert_eq!((a.c, a.h, a.w), (b.c, b.h, b.w));
            for (&x, &y) in a.data.iter().zip(&b.data) {
                self.worst = self.worst.max(x.abs_diff(y));
                self.differing += (x != y) as usize;
            }
            self.total += a.data.len();
        }
        /// The share of differing values: the mean absolute difference when `worst` <= 1.
        fn fraction(&self) -> f64 {
            self.differing as f64 / self.total as f64
        }
        /// Asserts at most one level apart anywhere and at most `fraction` values apart.
        fn check(&self, what: &str, fraction: f64) {
            let (worst, differing, total) = (self.worst, self.differing, self.total);
            eprintln!("{what}: max {worst}, {differing} of {total} values differ");
            assert!(
                worst <= 1 && self.fraction() <= fraction,
                "{what}: max {worst}, {differing} of {total}"
            );
        }
    }

    fn rgb(pixels: &[[u8; 3]], h: usize, w: usize) -> Image {
        let plane = h * w;
        let mut data = vec![0; 3 * plane];
        for (i, p) in pixels.iter().enumerate() {
            for c in 0..3 {
                data[c * plane + i] = p[c];
            }
        }
        Image::new(3, h, w, data)
    }

    #[test]
    fn resized_crop_identity_and_hand_values() {
        let img = Image::new(1, 2, 3, vec![0, 10, 20, 30, 40, 50]);
        let full = CropBox {
            top: 0,
            left: 0,
            height: 2,
            width: 3,
        };
        assert_eq!(resized_crop(&img, full, 2, 3), img);
        // 2x2 -> 4x4: output pixel 1 maps to source 0.25 (half-pixel centres).
        let img = Image::new(1, 2, 2, vec![0, 100, 200, 100]);
        let up = resized_crop(
            &img,
            CropBox {
                top: 0,
                left: 0,
                height: 2,
                width: 2,
            },
            4,
            4,
        );
        assert_eq!(&up.data[0..4], &[0, 25, 75, 100]);
        // Crop of a single pixel resized to 2x2 repeats it.
        let img = Image::new(1, 2, 3, vec![0, 10, 20, 30, 40, 50]);
        let one = resized_crop(
            &img,
            CropBox {
                top: 1,
                left: 2,
                height: 1,
                width: 1,
            },
            2,
            2,
        );
        assert_eq!(one.data, vec![50; 4]);
    }

    #[test]
    fn flip_reverses_rows_and_twice_is_identity() {
        let img = Image::new(2, 1, 3, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(hflip(&img).data, vec![3, 2, 1, 6, 5, 4]);
        assert_eq!(hflip(&hflip(&img)), img);
    }

    #[test]
    fn colour_ops_match_hand_values() {
        let img = rgb(&[[255, 0, 0], [0, 0, 255]], 1, 2);
        // luma: red 76.2, blue 29.1
        assert_eq!(grayscale(&img).data, vec![76, 29, 76, 29, 76, 29]);
        assert_eq!(
            adjust_brightness(&img, 0.5).data,
            vec![128, 0, 0, 0, 0, 128]
        );
        // contrast 0 -> mean luma (76.2 + 29.1) / 2 = 52.6 everywhere
        assert_eq!(adjust_contrast(&img, 0.0).data, vec![53; 6]);
        assert_eq!(adjust_saturation(&img, 0.0), grayscale(&img));
        assert_eq!(adjust_saturation(&img, 1.0), img);
        // hue +1/3 turns red into green and blue into red
        assert_eq!(adjust_hue(&img, 1.0 / 3.0).data, vec![0, 255, 255, 0, 0, 0]);
        assert_eq!(
            solarize(&Image::new(1, 1, 3, vec![10, 128, 200]), 128).data,
            vec![10, 127, 55]
        );
    }

    #[test]
    fn colour_only_ops_are_no_ops_on_gray() {
        let g = Image::new(1, 2, 2, vec![0, 50, 100, 250]);
        assert_eq!(adjust_saturation(&g, 0.2), g);
        assert_eq!(adjust_hue(&g, 0.3), g);
        assert_eq!(grayscale(&g), g);
        // brightness and contrast still act
        assert_eq!(adjust_brightness(&g, 2.0).data, vec![0, 100, 200, 255]);
    }

    #[test]
    fn hsv_round_trip() {
        for r in (0..=255).step_by(51) {
            for g in (0..=255).step_by(51) {
                for b in (0..=255).step_by(85) {
                    let c = [r as f32 / 255.0, g as f32 / 255.0, b as f32 / 255.0];
                    let (h, s, v) = reference::rgb_to_hsv(c);
                    let back = reference::hsv_to_rgb(h, s, v);
                    for i in 0..3 {
                        assert!((back[i] - c[i]).abs() < 1e-5, "{c:?} -> {back:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn blur_keeps_flat_images_and_spreads_a_point() {
        let flat = Image::new(1, 5, 5, vec![77; 25]);
        assert_eq!(gaussian_blur(&flat, 3, 1.0), flat);
        let mut d = vec![0u8; 25];
        d[12] = 255;
        let b = gaussian_blur(&Image::new(1, 5, 5, d), 3, 1.0);
        // 1-D weights for sigma 1: [e^-0.5, 1, e^-0.5] / (1 + 2 e^-0.5)
        let w0 = 1.0 / (1.0 + 2.0 * (-0.5f32).exp());
        assert_eq!(b.at(0, 2, 2), to_u8(255.0 * w0 * w0));
        assert_eq!(b.at(0, 2, 3), to_u8(255.0 * w0 * w0 * (-0.5f32).exp()));
        assert_eq!(b.at(0, 0, 0), 0);
    }

    #[test]
    fn to_u8_rounds_like_round_then_clamp() {
        let mut values = vec![
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -1e30,
            1e30,
            -0.0,
        ];
        // every multiple of 1/8 (so every .5 tie) from -64 to 260, and its float neighbours
        for k in -512..=260 * 8 {
            let v = k as f32 / 8.0;
            values.extend([v, v.next_up(), v.next_down()]);
        }
        for v in values {
            assert_eq!(to_u8(v), reference::to_u8(v), "{v}");
        }
    }

    #[test]
    fn separable_crop_equals_the_reference_bilinear() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for img in test_images() {
            for _ in 0..30 {
                let (height, width) = (rng.random_range(1..=img.h), rng.random_range(1..=img.w));
                let b = CropBox {
                    top: rng.random_range(0..=img.h - height),
                    left: rng.random_range(0..=img.w - width),
                    height,
                    width,
                };
                // up- and downscaling, to sizes on both sides of the crop's
                let (oh, ow) = (rng.random_range(1..=120), rng.random_range(1..=120));
                assert_eq!(
                    resized_crop(&img, b, oh, ow),
                    reference::resized_crop(&img, b, oh, ow),
                    "{b:?} of {}x{} to {oh}x{ow}",
                    img.h,
                    img.w
                );
            }
        }
    }

    /// (kernel, sigma): even and zero kernels round up; 11 on the small images reflects more
    /// than once.
    const BLUR_PARAMS: [(usize, f32); 8] = [
        (0, 1.0),
        (1, 0.5),
        (3, 0.1),
        (3, 1.0),
        (4, 1.3),
        (5, 2.0),
        (11, 0.7),
        (11, 2.0),
    ];

    #[test]
    fn separable_blur_equals_the_reference() {
        for img in test_images() {
            for (k, sigma) in BLUR_PARAMS {
                assert_eq!(
                    gaussian_blur(&img, k, sigma),
                    reference::gaussian_blur(&img, k, sigma),
                    "kernel {k} sigma {sigma} on {}x{}x{}",
                    img.c,
                    img.h,
                    img.w
                );
            }
        }
    }

    #[test]
    fn separable_blur_is_within_one_level_of_the_2d_convolution() {
        let mut tally = Tally::default();
        for img in test_images() {
            for (k, sigma) in BLUR_PARAMS {
                let exact = reference::gaussian_blur_2d(&img, k, sigma);
                tally.add(&gaussian_blur(&img, k, sigma), &exact);
            }
        }
        tally.check("blur vs 2-D convolution", 1e-3);
    }

    #[test]
    fn table_and_plane_ops_equal_the_float_formulas() {
        for img in test_images() {
            for f in [0.0, 0.37, 0.6, 1.0, 1.4, 2.5] {
                assert_eq!(
                    adjust_brightness(&img, f),
                    reference::adjust_brightness(&img, f)
                );
                assert_eq!(
                    adjust_saturation(&img, f),
                    reference::adjust_saturation(&img, f)
                );
            }
            assert_eq!(grayscale(&img), reference::grayscale(&img));
        }
    }

    #[test]
    fn contrast_is_the_formula_at_the_exact_mean() {
        let mut tally = Tally::default();
        for img in &test_images() {
            let p = img.plane();
            // the mean of f64 lumas, pixel by pixel
            let lumas = (0..p).map(|i| match img.c {
                3 => (0..3)
                    .map(|c| LUMA[c] as f64 * img.data[c * p + i] as f64)
                    .sum(),
                _ => img.data[i] as f64,
            });
            let mean = lumas.sum::<f64>() / p as f64;
            assert!((mean_luma(img) as f64 - mean).abs() < 1e-4, "{mean}");
            for f in [0.0, 0.6, 1.0, 1.4] {
                let fast = adjust_contrast(img, f);
                let formula = img
                    .data
                    .iter()
                    .map(|&v| reference::to_u8(f * v as f32 + (1.0 - f) * mean_luma(img)))
                    .collect::<Vec<_>>();
                assert_eq!(fast.data, formula);
                // the reference's mean is a running f32 sum of f32 lumas, which drifts by
                // up to ~5e-4 levels on 96x96 noise
                tally.add(&fast, &reference::adjust_contrast(img, f));
            }
        }
        tally.check("contrast vs reference", 1e-3);
    }

    #[test]
    fn hue_is_within_one_level_of_the_hsv_round_trip() {
        // every colour on a grid of step 15, beside the noise and gradient images
        let grid: Vec<[u8; 3]> = (0..18 * 18 * 18)
            .map(|i| [i / 324, i / 18 % 18, i % 18].map(|v| (v * 15) as u8))
            .collect();
        let mut imgs = test_images();
        imgs.push(rgb(&grid, 18, 324));
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (mut round_shifts, mut random_shifts) = (Tally::default(), Tally::default());
        for img in &imgs {
            assert_eq!(&adjust_hue(img, 0.0), img, "no shift, no change");
            // Round shifts put many exact values within float error of a .5 tie (0.05 turns
            // a difference of 10 into 3.5 exactly); random ones, as the pipeline draws, rarely.
            for shift in [-0.5, -0.3, -0.1, -0.01, 0.01, 0.05, 1.0 / 3.0, 0.5] {
                round_shifts.add(&adjust_hue(img, shift), &reference::adjust_hue(img, shift));
            }
            for _ in 0..8 {
                let shift = rng.random_range(-0.5..=0.5);
                random_shifts.add(&adjust_hue(img, shift), &reference::adjust_hue(img, shift));
            }
        }
        round_shifts.check("hue vs reference, round shifts", 1e-2);
        random_shifts.check("hue vs reference, random shifts", 1e-4);
    }
}
