//! The straightforward float implementations the fast ops in `ops` replaced, kept for the
//! tests to compare against: every pixel computed on its own, in f32, from the formulas.

use super::{CropBox, Image};

pub fn to_u8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

fn map_f32(img: &Image, f: impl Fn(usize, usize, f32) -> f32) -> Image {
    let plane = img.h * img.w;
    let data = img
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| to_u8(f(i / plane, i % plane, v as f32)))
        .collect();
    Image { data, ..*img }
}

pub fn resized_crop(img: &Image, b: CropBox, out_h: usize, out_w: usize) -> Image {
    let (sy, sx) = (
        b.height as f32 / out_h as f32,
        b.width as f32 / out_w as f32,
    );
    let taps = |n_out: usize, scale: f32, n_in: usize, offset: usize| -> Vec<(usize, usize, f32)> {
        (0..n_out)
            .map(|o| {
                let s = ((o as f32 + 0.5) * scale - 0.5).clamp(0.0, (n_in - 1) as f32);
                let i0 = s.floor() as usize;
                let i1 = (i0 + 1).min(n_in - 1);
                (offset + i0, offset + i1, s - i0 as f32)
            })
            .collect()
    };
    let ys = taps(out_h, sy, b.height, b.top);
    let xs = taps(out_w, sx, b.width, b.left);
    let mut data = Vec::with_capacity(img.c * out_h * out_w);
    for c in 0..img.c {
        for &(y0, y1, wy) in &ys {
            for &(x0, x1, wx) in &xs {
                let p = |y, x| img.at(c, y, x) as f32;
                let top = p(y0, x0) * (1.0 - wx) + p(y0, x1) * wx;
                let bot = p(y1, x0) * (1.0 - wx) + p(y1, x1) * wx;
                data.push(to_u8(top * (1.0 - wy) + bot * wy));
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

fn luma(img: &Image) -> Vec<f32> {
    let plane = img.h * img.w;
    if img.c != 3 {
        return img.data[..plane].iter().map(|&v| v as f32).collect();
    }
    (0..plane)
        .map(|i| {
            0.2989 * img.data[i] as f32
                + 0.587 * img.data[plane + i] as f32
                + 0.114 * img.data[2 * plane + i] as f32
        })
        .collect()
}

pub fn grayscale(img: &Image) -> Image {
    if img.c != 3 {
        return img.clone();
    }
    let l = luma(img);
    map_f32(img, |_, i, _| l[i])
}

pub fn adjust_brightness(img: &Image, factor: f32) -> Image {
    map_f32(img, |_, _, v| v * factor)
}

pub fn adjust_contrast(img: &Image, factor: f32) -> Image {
    let l = luma(img);
    let mean = l.iter().sum::<f32>() / l.len() as f32;
    map_f32(img, |_, _, v| factor * v + (1.0 - factor) * mean)
}

pub fn adjust_saturation(img: &Image, factor: f32) -> Image {
    if img.c != 3 {
        return img.clone();
    }
    let l = luma(img);
    map_f32(img, |_, i, v| factor * v + (1.0 - factor) * l[i])
}

pub fn adjust_hue(img: &Image, shift: f32) -> Image {
    if img.c != 3 {
        return img.clone();
    }
    let plane = img.h * img.w;
    let mut data = img.data.clone();
    for i in 0..plane {
        let rgb =
            [img.data[i], img.data[plane + i], img.data[2 * plane + i]].map(|v| v as f32 / 255.0);
        let (h, s, v) = rgb_to_hsv(rgb);
        let out = hsv_to_rgb((h + shift).rem_euclid(1.0), s, v);
        for c in 0..3 {
            data[c * plane + i] = to_u8(out[c] * 255.0);
        }
    }
    Image { data, ..*img }
}

pub fn rgb_to_hsv([r, g, b]: [f32; 3]) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    let s = if max > 0.0 { d / max } else { 0.0 };
    let h = if d == 0.0 {
        0.0
    } else if max == r {
        ((g - b) / d).rem_euclid(6.0) / 6.0
    } else if max == g {
        ((b - r) / d + 2.0) / 6.0
    } else {
        ((r - g) / d + 4.0) / 6.0
    };
    (h, s, max)
}

pub fn hsv_to_rgb(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h6 = h * 6.0;
    let i = h6.floor();
    let f = h6 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match (i as i64).rem_euclid(6) {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// Index `i` of an axis of `n` samples under reflect padding (the edge is not repeated).
fn reflect(i: i64, n: usize) -> usize {
    let n = n as i64;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let m = i.rem_euclid(period);
    (if m < n { m } else { period - m }) as usize
}

pub fn gaussian_blur(img: &Image, kernel: usize, sigma: f32) -> Image {
    let k = kernel.max(1) | 1;
    let r = (k / 2) as i64;
    let weights: Vec<f32> = (-r..=r)
        .map(|x| (-(x * x) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = weights.iter().sum();
    let weights: Vec<f32> = weights.iter().map(|w| w / total).collect();
    let (h, w) = (img.h, img.w);
    let mut tmp = vec![0f32; img.data.len()];
    let mut out = vec![0u8; img.data.len()];
    for c in 0..img.c {
        let base = c * h * w;
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0.0;
                for (j, wt) in weights.iter().enumerate() {
                    acc += wt * img.data[base + y * w + reflect(x as i64 + j as i64 - r, w)] as f32;
                }
                tmp[base + y * w + x] = acc;
            }
        }
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0.0;
                for (j, wt) in weights.iter().enumerate() {
                    acc += wt * tmp[base + reflect(y as i64 + j as i64 - r, h) * w + x];
                }
                out[base + y * w + x] = to_u8(acc);
            }
        }
    }
    Image { data: out, ..*img }
}

/// torchvision's blur as it is defined: one 2-D convolution with the outer product of the
/// 1-D Gaussian over the reflect-padded image, here in f64, so the exact value that the
/// separable f32 passes approximate.
pub fn gaussian_blur_2d(img: &Image, kernel: usize, sigma: f32) -> Image {
    let r = (kernel / 2) as i64;
    let g: Vec<f64> = (-r..=r)
        .map(|x| (-(x * x) as f64 / (2.0 * sigma as f64 * sigma as f64)).exp())
        .collect();
    let norm = g.iter().sum::<f64>().powi(2);
    let mut data = Vec::with_capacity(img.data.len());
    for c in 0..img.c {
        for y in 0..img.h as i64 {
            for x in 0..img.w as i64 {
                let mut acc = 0.0;
                for (i, gy) in (-r..=r).zip(&g) {
                    for (j, gx) in (-r..=r).zip(&g) {
                        let v = img.at(c, reflect(y + i, img.h), reflect(x + j, img.w));
                        acc += gy * gx * v as f64;
                    }
                }
                data.push(to_u8((acc / norm) as f32));
            }
        }
    }
    Image { data, ..*img }
}
