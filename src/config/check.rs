//! Checks for one option; each error names the option and what is wrong with it.

use anyhow::{Result, bail};
use std::fmt::Display;
use std::ops::RangeInclusive;

pub fn positive(key: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        bail!("option {key} = {v} must be a positive number");
    }
    Ok(())
}

pub fn non_negative(key: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v >= 0.0) {
        bail!("option {key} = {v} must be zero or a positive number");
    }
    Ok(())
}

pub fn probability(key: &str, p: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        bail!("option {key} = {p} is a probability and must be in [0, 1]");
    }
    Ok(())
}

/// `v` in [0, 1): momenta and other fractions that must stay below 1.
pub fn fraction_below_one(key: &str, v: f64) -> Result<()> {
    if !(0.0..1.0).contains(&v) {
        bail!("option {key} = {v} must be in [0, 1)");
    }
    Ok(())
}

pub fn in_range<T: PartialOrd + Display>(key: &str, v: T, r: RangeInclusive<T>) -> Result<()> {
    if !r.contains(&v) {
        bail!("option {key} = {v} must be in {}..={}", r.start(), r.end());
    }
    Ok(())
}

pub fn at_least<T: PartialOrd + Display>(key: &str, v: T, min: T) -> Result<()> {
    if v < min {
        bail!("option {key} = {v} must be at least {min}");
    }
    Ok(())
}

/// A non-empty list of layer widths in 1..=4096.
pub fn widths(key: &str, w: &[i64]) -> Result<()> {
    if w.is_empty() || w.iter().any(|&x| !(1..=4096).contains(&x)) {
        bail!("option {key} = {w:?} must be a non-empty list of widths in 1..=4096");
    }
    Ok(())
}

/// A range `[min, max]` with 0 < min <= max (and max <= `top` when given).
pub fn ordered_pair(key: &str, [a, b]: [f64; 2], top: Option<f64>) -> Result<()> {
    if !(a > 0.0 && a <= b && b.is_finite() && top.is_none_or(|t| b <= t)) {
        match top {
            Some(t) => bail!(
                "option {key} = {:?} must satisfy 0 < min <= max <= {t}",
                [a, b]
            ),
            None => bail!("option {key} = {:?} must satisfy 0 < min <= max", [a, b]),
        }
    }
    Ok(())
}
