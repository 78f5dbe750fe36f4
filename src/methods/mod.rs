//! Pretraining methods: one file each, all behind the `Method` trait, listed in `REGISTRY`.
//! Adding a method means one new file and one line in `REGISTRY`.

pub mod autoencoder;
pub mod byol;
pub mod colorization;
pub mod context_encoder;
pub mod cpc;
pub mod denoising;
pub mod jigsaw;
pub mod moco;
pub mod moco_v3;
pub mod patches;
pub mod relative_patch;
pub mod rotation;
pub mod simclr;
pub mod simsiam;
pub mod supervised;

use crate::augment::Views;
use crate::config::Config;
use crate::nets::Encoder;
use anyhow::{Result, bail};
use std::sync::Arc;
use tch::{Kind, Tensor, nn};

/// Where training is, passed to every step (schedules such as BYOL's momentum use it).
#[derive(Debug, Clone, Copy)]
pub struct StepCtx {
    pub epoch: usize,
    pub step: usize,
    pub total_steps: usize,
}

/// What a method knows of the data it is built for.
#[derive(Debug, Clone, Copy)]
pub struct DataInfo {
    /// `[C, H, W]`
    pub shape: [i64; 3],
    pub num_classes: i64,
}

pub trait Method {
    /// The scalar training loss for a batch. `images`: `[B, C, H, W]` in [0, 1];
    /// `labels`: `[B]` (only the supervised baseline may look at them).
    fn loss(&mut self, images: &Tensor, labels: &Tensor, ctx: &StepCtx) -> Tensor;
    /// The encoder whose frozen features are evaluated.
    fn encoder(&self) -> &Encoder;
    /// Runs after each optimizer step, without gradients (momentum updates, queues).
    fn after_step(&mut self, _ctx: &StepCtx) {}
    /// Called once after `build` with the store holding every variable: methods with
    /// momentum networks pair online and target variables here (see nets::momentum).
    fn bind(&mut self, _vs: &nn::VarStore) -> Result<()> {
        Ok(())
    }
    /// Whether `loss` uses the labels (only the supervised baseline): training then takes
    /// the labelled training split instead of the pretraining split.
    fn uses_labels(&self) -> bool {
        false
    }
    /// Random views the loader should make of each image. With V views, `loss` receives
    /// `[V * B, C, h, w]`: all first views, then all second views, and so on.
    fn views(&self) -> Option<Arc<Views>> {
        None
    }
    /// What the evaluated encoder sees of a batch of data images `[B, C, H, W]` in [0, 1].
    /// The identity, except for methods whose encoder takes another input (colorization
    /// encodes the L channel of colour images).
    fn eval_input(&self, images: &Tensor) -> Tensor {
        images.shallow_clone()
    }
    /// A picture of the method at work on a few images `[N, C, H, W]`, as an image
    /// `[C', H', W']` in [0, 1] (for example inpaintings next to their input and
    /// original); the training loop saves it as `examples.png` at the end of pretraining.
    /// Called without gradients; `None` for methods with nothing to show.
    fn examples(&self, _images: &Tensor) -> Option<Tensor> {
        None
    }
}

/// A registry entry. `build` creates the method's variables under the given path; the
/// encoder must live under `encoder` so evaluation and export can find it.
pub struct MethodSpec {
    pub name: &'static str,
    pub summary: &'static str,
    pub build: fn(&nn::Path, &Config, &DataInfo) -> Result<Box<dyn Method>>,
}

pub const REGISTRY: &[MethodSpec] = &[
    autoencoder::SPEC,
    denoising::SPEC,
    cpc::SPEC,
    simclr::SPEC,
    moco::SPEC_V1,
    moco::SPEC_V2,
    moco_v3::SPEC,
    byol::SPEC,
    simsiam::SPEC,
    supervised::SPEC,
    context_encoder::SPEC,
    rotation::SPEC,
    jigsaw::SPEC,
    relative_patch::SPEC,
    colorization::SPEC,
];

/// Puts the batches in `columns` (each `[N, C, H, W]`, same shape, values in [0, 1]) side
/// by side, one image per row, with a 2-pixel white gap: `[C, N*(H+2)-2, k*(W+2)-2]`.
pub fn side_by_side(columns: &[Tensor]) -> Tensor {
    let gap = |t: &Tensor, dim: i64| {
        let mut s = t.size();
        s[dim as usize] = 2;
        Tensor::ones(s.as_slice(), (Kind::Float, t.device()))
    };
    let mut parts = Vec::new();
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            parts.push(gap(c, 3));
        }
        parts.push(c.to_kind(Kind::Float));
    }
    let rows = Tensor::cat(&parts, 3); // [N, C, H, k*(W+2)-2]
    let mut out = Vec::new();
    for i in 0..rows.size()[0] {
        let r = rows.get(i); // [C, H, W']
        if i > 0 {
            out.push(gap(&r, 1));
        }
        out.push(r);
    }
    Tensor::cat(&out, 1)
}

pub fn find(name: &str) -> Result<&'static MethodSpec> {
    match REGISTRY.iter().find(|m| m.name == name) {
        Some(m) => Ok(m),
        None => {
            let names: Vec<&str> = REGISTRY.iter().map(|m| m.name).collect();
            bail!("unknown method '{name}'; available: {}", names.join(", "))
        }
    }
}
