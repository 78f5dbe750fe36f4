//! Fine-tuning (`selfsup finetune`): a pretrained encoder and a new linear head trained end
//! to end with cross-entropy on the labeled images (a class-balanced `finetune_labels`
//! fraction of them, chosen by the training loop), on random views: a random resized crop
//! of `finetune_crop_scale` of the image and a flip, as the semi-supervised protocols of
//! SimCLR and of the MAE paper train. The network is the supervised baseline's
//! (`supervised::Supervised`); the encoder starts from the run's weights (the loop's
//! `init_encoder`), or from its random initialisation for the from-scratch baseline.

use super::supervised::Supervised;
use super::{DataInfo, MethodConfig, MethodSpec};
use crate::augment::{Op, Pipeline, Views};
use std::sync::Arc;

pub const SPEC: MethodSpec = MethodSpec {
    name: "finetune",
    summary: "fine-tuning: the encoder and a linear head, end to end on labeled images (selfsup finetune)",
    keys: &[],
    validate: super::no_own_keys,
    uses_labels: true,
    encoders: super::ANY_ENCODER,
    build: |p, cfg, data| {
        Ok(Box::new(Supervised::with_views(
            p,
            cfg,
            data,
            Some(views(cfg, data)),
        )?))
    },
};

/// The fine-tuning's views: a random resized crop and a flip, at the images' size.
fn views(cfg: &MethodConfig, data: &DataInfo) -> Arc<Views> {
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
    Arc::new(Views {
        pipelines: vec![crop],
    })
}
