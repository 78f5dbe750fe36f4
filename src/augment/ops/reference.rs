//! The straightforward float implementations the fast ops in `ops` replaced, kept for the
//! tests to compare against: every pixel computed on its own, in f32, from the formulas.

use super::Image;

pub fn to_u8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

pub fn gaussian_blur(img: &Image, kernel: usize, sigma: f32) -> Image {
    let k = kernel.max(1) | 1;
    let r = (k / 2) as i64;
    let weights: Vec<f32> = (-r..=r)
        .map(|x| (-(x * x) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = weights.iter().sum();
    let weights: Vec<f32> = weights.iter().map(|w| w / total).collect();
    let reflect = |i: i64, n: usize| -> usize {
        let n = n as i64;
        if n == 1 {
            return 0;
        }
        let period = 2 * (n - 1);
        let m = i.rem_euclid(period);
        (if m < n { m } else { period - m }) as usize
    };
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
