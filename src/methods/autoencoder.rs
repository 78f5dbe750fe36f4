//! Autoencoder: encoder -> feature vector -> transposed-conv decoder, trained to reproduce
//! its input under an L2 loss. The denoising variant (denoising.rs) corrupts the input
//! and still reconstructs the clean image.

use super::{DataInfo, Method, MethodConfig, MethodSpec, StepCtx};
use crate::nets::{self, Decoder, Encoder};
use crate::{losses, precision};
use anyhow::Result;
use tch::{Tensor, nn};

pub const SPEC: MethodSpec = MethodSpec {
    name: "autoencoder",
    summary: "reconstruct the image from its feature vector (L2 loss)",
    keys: &[&["decoder_widths"]],
    validate: super::no_own_keys,
    uses_labels: false,
    encoders: super::ANY_ENCODER,
    build: |p, cfg, data| Ok(Box::new(Autoencoder::new(p, cfg, data, None)?)),
};

/// A corruption applied to the input batch before encoding: `[B, C, H, W]` -> same.
pub type Corruption = Box<dyn Fn(&Tensor) -> Tensor>;

pub struct Autoencoder {
    encoder: Encoder,
    decoder: Decoder,
    corrupt: Option<Corruption>,
}

impl Autoencoder {
    pub fn new(
        p: &nn::Path,
        cfg: &MethodConfig,
        data: &DataInfo,
        corrupt: Option<Corruption>,
    ) -> Result<Autoencoder> {
        let (encoder, decoder) =
            nets::encoder_decoder(p, cfg.encoder, &cfg.keys.decoder_widths, data.shape)?;
        Ok(Autoencoder {
            encoder,
            decoder,
            corrupt,
        })
    }
}

impl Method for Autoencoder {
    fn loss(&mut self, images: &[Tensor], _labels: &Tensor, _ctx: &StepCtx) -> Tensor {
        let images = &images[0]; // [B, C, H, W]
        let input = match &self.corrupt {
            Some(f) => f(images),
            None => images.shallow_clone(),
        };
        let z = self.encoder.forward_t(&input, true); // [B, D]
        let recon = self.decoder.forward_t(&z, true); // [B, C, H, W]
        precision::in_fp32([&recon, images], |[r, x]| losses::mse(&r, &x))
    }
    fn encoder(&self) -> &Encoder {
        &self.encoder
    }
}
