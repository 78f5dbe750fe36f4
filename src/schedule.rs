//! Learning-rate schedule: linear warm-up then cosine decay, a small pure function.

use std::f64::consts::PI;

/// Learning rate for `step` (0-based) of `total` steps: rises linearly from base/warmup to
/// `base` over the first `warmup` steps, then follows a half cosine down to `min` at the end.
pub fn cosine_with_warmup(step: usize, total: usize, warmup: usize, base: f64, min: f64) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let decay_steps = total.saturating_sub(warmup).max(1);
    let t = ((step - warmup) as f64 / decay_steps as f64).min(1.0);
    min + (base - min) * 0.5 * (1.0 + (PI * t).cos())
}

/// BYOL's target momentum: rises from `base` at step 0 to 1 at the last step along a half
/// cosine, tau = 1 - (1 - base) (cos(pi k / K) + 1) / 2.
pub fn cosine_momentum(step: usize, total: usize, base: f64) -> f64 {
    let t = step as f64 / total.max(1) as f64;
    1.0 - (1.0 - base) * ((PI * t.min(1.0)).cos() + 1.0) / 2.0
}

/// A value that rises linearly from `start` at epoch 0 to `end` at epoch `epochs` and
/// stays there (DINO's teacher temperature warm-up, indexed by epoch as in the paper).
pub fn linear_ramp(epoch: usize, epochs: usize, start: f64, end: f64) -> f64 {
    if epoch >= epochs {
        return end;
    }
    start + (end - start) * epoch as f64 / epochs as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_ramp_rises_then_stays() {
        assert_eq!(linear_ramp(0, 4, 0.04, 0.08), 0.04);
        assert!((linear_ramp(1, 4, 0.04, 0.08) - 0.05).abs() < 1e-15);
        assert_eq!(linear_ramp(4, 4, 0.04, 0.08), 0.08);
        assert_eq!(linear_ramp(9, 4, 0.04, 0.08), 0.08);
        assert_eq!(linear_ramp(0, 0, 0.04, 0.08), 0.08);
    }

    #[test]
    fn warmup_then_cosine() {
        let lr = |s| cosine_with_warmup(s, 110, 10, 1.0, 0.1);
        assert!((lr(0) - 0.1).abs() < 1e-12);
        assert!((lr(4) - 0.5).abs() < 1e-12);
        assert!((lr(9) - 1.0).abs() < 1e-12);
        assert!((lr(10) - 1.0).abs() < 1e-12);
        // halfway through the decay: min + (base - min) / 2
        assert!((lr(60) - 0.55).abs() < 1e-12);
        assert!((lr(110) - 0.1).abs() < 1e-12);
        // monotone decreasing after the warm-up
        assert!((10..110).all(|s| lr(s + 1) <= lr(s)));
    }

    #[test]
    fn no_warmup_starts_at_base() {
        assert_eq!(cosine_with_warmup(0, 5, 0, 2.0, 0.0), 2.0);
    }

    #[test]
    fn momentum_rises_from_base_to_one() {
        assert!((cosine_momentum(0, 100, 0.996) - 0.996).abs() < 1e-12);
        assert!((cosine_momentum(50, 100, 0.996) - 0.998).abs() < 1e-12);
        assert!((cosine_momentum(100, 100, 0.996) - 1.0).abs() < 1e-12);
    }
}
