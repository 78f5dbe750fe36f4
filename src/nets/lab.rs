//! Colour conversion on image tensors: sRGB (D65) <-> CIE XYZ <-> CIE Lab. Colorization
//! learns ab from L, and its evaluated encoder sees the lightness L (`EncoderInput::Lightness`).

use crate::precision;
use tch::{Device, Kind, Tensor};

const RGB_TO_XYZ: [f32; 9] = [
    0.412_456_4,
    0.357_576_1,
    0.180_437_5,
    0.212_672_9,
    0.715_152_2,
    0.072_175,
    0.019_333_9,
    0.119_192,
    0.950_304_1,
];
const XYZ_TO_RGB: [f32; 9] = [
    3.240_454_2,
    -1.537_138_5,
    -0.498_531_4,
    -0.969_266,
    1.876_010_8,
    0.041_556,
    0.055_643_4,
    -0.204_025_9,
    1.057_225_2,
];
/// The D65 white point (X, Y, Z) with Y = 1.
const WHITE: [f64; 3] = [0.950_47, 1.0, 1.088_83];
const DELTA: f64 = 6.0 / 29.0;

/// `[3, 3]` matrix applied to the channel dimension of `[B, 3, H, W]`.
fn mix_channels(name: &str, m: &[f32; 9], x: &Tensor) -> Tensor {
    let m = super::constant(name, Kind::Float, x.device(), || {
        Tensor::from_slice(m).view([3, 3])
    });
    Tensor::einsum("ij,bjhw->bihw", &[m, x.to_kind(Kind::Float)], None::<i64>)
}

/// Elementwise `if cond { a } else { b }`.
fn pick(cond: &Tensor, a: &Tensor, b: &Tensor) -> Tensor {
    a.where_self(cond, b)
}

fn white(device: Device) -> Tensor {
    super::constant("D65 white", Kind::Float, device, || {
        Tensor::from_slice(&WHITE.map(|v| v as f32)).view([1, 3, 1, 1])
    })
}

/// sRGB in [0, 1] `[B, 3, H, W]` -> Lab `[B, 3, H, W]` (L in [0, 100], a and b roughly in
/// [-110, 110]), D65 white. In float32 also under autocast: it makes targets and inputs.
pub fn rgb_to_lab(rgb: &Tensor) -> Tensor {
    precision::without_autocast(|| rgb_to_lab_fp32(rgb))
}

fn rgb_to_lab_fp32(rgb: &Tensor) -> Tensor {
    let c = rgb.to_kind(Kind::Float).clamp(0.0, 1.0);
    let linear = pick(
        &c.le(0.04045),
        &(&c / 12.92),
        &((&c + 0.055) / 1.055).pow_tensor_scalar(2.4),
    );
    let xyz = mix_channels("RGB to XYZ", &RGB_TO_XYZ, &linear) / white(rgb.device()); // [B, 3, H, W]
    let f = pick(
        &xyz.gt(DELTA.powi(3)),
        &xyz.clamp_min(1e-12).pow_tensor_scalar(1.0 / 3.0),
        &(&xyz / (3.0 * DELTA * DELTA) + 4.0 / 29.0),
    );
    let (fx, fy, fz) = (f.narrow(1, 0, 1), f.narrow(1, 1, 1), f.narrow(1, 2, 1));
    Tensor::cat(
        &[&fy * 116.0 - 16.0, (&fx - &fy) * 500.0, (&fy - &fz) * 200.0],
        1,
    )
}

/// Lab `[B, 3, H, W]` -> sRGB `[B, 3, H, W]`, clipped to [0, 1]; the inverse of `rgb_to_lab`
/// on the sRGB gamut. In float32 also under autocast.
pub fn lab_to_rgb(lab: &Tensor) -> Tensor {
    precision::without_autocast(|| lab_to_rgb_fp32(lab))
}

fn lab_to_rgb_fp32(lab: &Tensor) -> Tensor {
    let lab = lab.to_kind(Kind::Float);
    let (l, a, b) = (
        lab.narrow(1, 0, 1),
        lab.narrow(1, 1, 1),
        lab.narrow(1, 2, 1),
    );
    let fy = (l + 16.0) / 116.0;
    let f = Tensor::cat(&[&fy + a / 500.0, fy.shallow_clone(), &fy - b / 200.0], 1);
    let xyz = pick(
        &f.gt(DELTA),
        &f.pow_tensor_scalar(3.0),
        &((&f - 4.0 / 29.0) * (3.0 * DELTA * DELTA)),
    ) * white(lab.device());
    let linear = mix_channels("XYZ to RGB", &XYZ_TO_RGB, &xyz).clamp(0.0, 1.0);
    pick(
        &linear.le(0.0031308),
        &(&linear * 12.92),
        &(linear.pow_tensor_scalar(1.0 / 2.4) * 1.055 - 0.055),
    )
    .clamp(0.0, 1.0)
}

/// The lightness L / 100 in [0, 1] of sRGB images: `[B, 3, H, W]` -> `[B, 1, H, W]`.
pub fn lightness(rgb: &Tensor) -> Tensor {
    rgb_to_lab(rgb).narrow(1, 0, 1) / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_matches_reference_values_and_round_trips() {
        let _rng = crate::torch_rng_lock();
        let px = |v: [f32; 3]| Tensor::from_slice(&v).view([1, 3, 1, 1]);
        let lab = |v| Vec::<f32>::try_from(rgb_to_lab(&px(v)).flatten(0, -1)).unwrap();
        let close = |a: Vec<f32>, b: [f32; 3]| {
            assert!(
                a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 0.02),
                "{a:?} vs {b:?}"
            )
        };
        // Reference values (sRGB, D65; e.g. Bruce Lindbloom's calculator).
        close(lab([1.0, 1.0, 1.0]), [100.0, 0.0, 0.0]);
        close(lab([0.0, 0.0, 0.0]), [0.0, 0.0, 0.0]);
        close(lab([1.0, 0.0, 0.0]), [53.2408, 80.0925, 67.2032]);
        close(lab([0.0, 1.0, 0.0]), [87.7347, -86.1827, 83.1793]);
        close(lab([0.0, 0.0, 1.0]), [32.2970, 79.1875, -107.8602]);
        close(lab([0.5, 0.5, 0.5]), [53.3889, 0.0, 0.0]);
        // Round trip over random colours and a full grid of the gamut's edges.
        tch::manual_seed(0);
        let rgb = Tensor::cat(
            &[
                Tensor::rand([4, 3, 16, 16], (Kind::Float, Device::Cpu)),
                Tensor::randint(2, [4, 3, 16, 16], (Kind::Float, Device::Cpu)),
            ],
            0,
        );
        let back = lab_to_rgb(&rgb_to_lab(&rgb));
        let err = (back - &rgb).abs().max().double_value(&[]);
        assert!(err < 1e-4, "round-trip error {err}");
    }
}
