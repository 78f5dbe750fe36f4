//! Supervised baseline: the same encoder trained with labels (a linear classifier on its
//! features, cross-entropy) on plain images. Its frozen features are the upper bound the
//! self-supervised methods are compared against.

use super::{DataInfo, Method, MethodConfig, MethodSpec, StepCtx};
use crate::augment::Views;
use crate::nets::{self, Encoder};
use crate::{losses, precision};
use anyhow::{Result, bail};
use std::sync::Arc;
use tch::Tensor;
use tch::nn::{self, Module};

pub const SPEC: MethodSpec = MethodSpec {
    name: "supervised",
    summary: "baseline: the same encoder trained with the labels (cross-entropy), the upper bound",
    keys: &[],
    validate: super::no_own_keys,
    uses_labels: true,
    encoders: super::ANY_ENCODER,
    build: |p, cfg, data| Ok(Box::new(Supervised::new(p, cfg, data)?)),
};

/// An encoder and a linear classifier trained with cross-entropy; fine-tuning
/// (`finetune.rs`) is the same network on random views.
pub struct Supervised {
    encoder: Encoder,
    classifier: nn::Linear,
    views: Option<Arc<Views>>,
}

impl Supervised {
    pub fn new(p: &nn::Path, cfg: &MethodConfig, data: &DataInfo) -> Result<Supervised> {
        Supervised::with_views(p, cfg, data, None)
    }

    /// The classifier trained on `views` of the images (plain images with None).
    pub fn with_views(
        p: &nn::Path,
        cfg: &MethodConfig,
        data: &DataInfo,
        views: Option<Arc<Views>>,
    ) -> Result<Supervised> {
        if data.num_classes < 2 {
            bail!(
                "training with labels needs labelled data with at least 2 classes, found {}",
                data.num_classes
            );
        }
        let encoder = nets::build_encoder(&(p / "encoder"), cfg.encoder, data.shape[0]);
        let classifier = nn::linear(
            p / "classifier",
            encoder.dim,
            data.num_classes,
            Default::default(),
        );
        Ok(Supervised {
            encoder,
            classifier,
            views,
        })
    }
}

impl Method for Supervised {
    fn loss(&mut self, images: &[Tensor], labels: &Tensor, _ctx: &StepCtx) -> Tensor {
        let images = &images[0]; // [B, C, H, W]
        let logits = self
            .classifier
            .forward(&self.encoder.forward_t(images, true)); // [B, K]
        precision::in_fp32([&logits], |[l]| losses::cross_entropy(&l, labels))
    }
    fn encoder(&self) -> &Encoder {
        &self.encoder
    }
    fn views(&self) -> Option<Arc<Views>> {
        self.views.clone()
    }
    fn logits(&self, images: &Tensor) -> Option<Tensor> {
        Some(
            self.classifier
                .forward(&self.encoder.forward_t(images, false)),
        )
    }
}
