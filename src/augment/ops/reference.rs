//! The straightforward float implementations the fast ops in `ops` replaced, kept for the
//! tests to compare against: every pixel computed on its own, in f32, from the formulas.

pub fn to_u8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}
