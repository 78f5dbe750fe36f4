//! Fine-tuning (`selfsup finetune`): a pretrained encoder and a new linear head trained end
//! to end with cross-entropy on the labeled images (a class-balanced `finetune_labels`
//! fraction of them, chosen by the training loop), on random views: a random resized crop
//! of `finetune_crop_scale` of the image and a flip, as the semi-supervised protocols of
//! SimCLR and of the MAE paper train. The encoder starts from the run's weights (the loop's
//! `init_encoder`), or from its random initialisation for the from-scratch baseline.

use super::{DataInfo, Method, MethodConfig, MethodSpec, StepCtx};
use crate::augment::{Op, Pipeline, Views};
use crate::nets::{self, Encoder};
use crate::{losses, precision};
use anyhow::{Result, bail};
use std::sync::Arc;
use tch::Tensor;
use tch::nn::{self, Module};

pub const SPEC: MethodSpec = MethodSpec {
    name: "finetune",
    summary: "fine-tuning: the encoder and a linear head, end to end on labeled images (selfsup finetune)",
    keys: &[],
    validate: super::no_own_keys,
    uses_labels: true,
    encoders: super::ANY_ENCODER,
    build: |p, cfg, data| Ok(Box::new(Finetune::new(p, cfg, data)?)),
};

pub struct Finetune {
    encoder: Encoder,
    classifier: nn::Linear,
    views: Arc<Views>,
}

impl Finetune {
    pub fn new(p: &nn::Path, cfg: &MethodConfig, data: &DataInfo) -> Result<Finetune> {
        if data.num_classes < 2 {
            bail!(
                "fine-tuning needs labelled data with at least 2 classes, found {}",
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
        let f = cfg.finetune;
        let crop = Pipeline {
            ops: vec![
                Op::ResizedCrop {
                    size: (data.shape[1] as usize, data.shape[2] as usize),
                    scale: (f.finetune_crop_scale[0], f.finetune_crop_scale[1]),
                    ratio: (3.0 / 4.0, 4.0 / 3.0),
                },
                Op::HFlip {
                    p: f.finetune_flip_p,
                },
            ],
        };
        Ok(Finetune {
            encoder,
            classifier,
            views: Arc::new(Views {
                pipelines: vec![crop],
            }),
        })
    }
}

impl Method for Finetune {
    fn loss(&mut self, images: &Tensor, labels: &Tensor, _ctx: &StepCtx) -> Tensor {
        let logits = self
            .classifier
            .forward(&self.encoder.forward_t(images, true)); // [B, K]
        precision::in_fp32([&logits], |[l]| losses::cross_entropy(&l, labels))
    }
    fn encoder(&self) -> &Encoder {
        &self.encoder
    }
    fn views(&self) -> Option<Arc<Views>> {
        Some(self.views.clone())
    }
    fn logits(&self, images: &Tensor) -> Option<Tensor> {
        Some(
            self.classifier
                .forward(&self.encoder.forward_t(images, false)),
        )
    }
}
