//! Denoising autoencoder (Vincent et al. 2008): corrupt the input, reconstruct the clean
//! image. Corruption is `gaussian` (x + N(0, noise_std^2), clipped to [0, 1]) or
//! `masking` (each pixel, across all channels, zeroed with probability mask_ratio).

use super::MethodConfig;
use super::MethodSpec;
use super::autoencoder::{Autoencoder, Corruption};
use crate::config::{Noise, check};
use anyhow::Result;
use tch::{Kind, Tensor};

pub const SPEC: MethodSpec = MethodSpec {
    name: "denoising-autoencoder",
    summary: "reconstruct the clean image from a noisy one (gaussian or masking noise)",
    keys: &[&["decoder_widths", "noise", "noise_std", "mask_ratio"]],
    validate,
    uses_labels: false,
    encoders: super::ANY_ENCODER,
    build: |p, cfg, data| {
        Ok(Box::new(Autoencoder::new(
            p,
            cfg,
            data,
            Some(corruption(cfg)),
        )?))
    },
};

fn validate(cfg: &MethodConfig) -> Result<()> {
    check::non_negative("noise_std", cfg.keys.noise_std)?;
    check::fraction_below_one("mask_ratio", cfg.keys.mask_ratio)
}

pub fn corruption(cfg: &MethodConfig) -> Corruption {
    let (std, ratio) = (cfg.keys.noise_std, cfg.keys.mask_ratio);
    match cfg.keys.noise {
        Noise::Gaussian => Box::new(move |x: &Tensor| (x + x.randn_like() * std).clamp(0.0, 1.0)),
        Noise::Masking => Box::new(move |x: &Tensor| {
            let s = x.size(); // [B, C, H, W]
            let keep = Tensor::rand([s[0], 1, s[2], s[3]], (Kind::Float, x.device())).ge(ratio);
            x * keep.to_kind(Kind::Float)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn masking_zeroes_about_the_ratio_and_keeps_the_rest() {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(0);
        let cfg = {
            let mut c = Config::default();
            c.keys.noise = Noise::Masking;
            c.keys.mask_ratio = 0.3;
            c
        };
        let x = Tensor::ones([8, 3, 16, 16], (Kind::Float, tch::Device::Cpu)) * 0.5;
        let y = corruption(&cfg.method_view())(&x);
        let zero = y.eq(0.0).to_kind(Kind::Float);
        let frac = zero.mean(Kind::Float).double_value(&[]);
        assert!((frac - 0.3).abs() < 0.03, "masked fraction {frac}");
        // Masks are per pixel: all channels of a pixel agree.
        assert!(
            zero.std_dim(&[1i64][..], false, false)
                .max()
                .double_value(&[])
                == 0.0
        );
        // Kept pixels are unchanged.
        let kept: Tensor = &x * (&zero * -1.0 + 1.0);
        assert!((&y - kept).abs().max().double_value(&[]) == 0.0);
    }

    #[test]
    fn gaussian_noise_has_the_configured_std() {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(1);
        let cfg = {
            let mut c = Config::default();
            c.keys.noise = Noise::Gaussian;
            c.keys.noise_std = 0.1;
            c
        };
        let x = Tensor::ones([4, 1, 64, 64], (Kind::Float, tch::Device::Cpu)) * 0.5;
        let y = corruption(&cfg.method_view())(&x);
        let std = (&y - &x).std(true).double_value(&[]);
        assert!((std - 0.1).abs() < 0.005, "std {std}");
        assert!(y.min().double_value(&[]) >= 0.0 && y.max().double_value(&[]) <= 1.0);
    }
}
