//! SimSiam (Chen & He 2021): one encoder for both views, a projector (3 layers, BN on
//! every layer including the output) and a bottleneck predictor (BN only in its hidden
//! layer); loss 1/2 D(p1, stopgrad(z2)) + 1/2 D(p2, stopgrad(z1)) with D the negative
//! cosine similarity. No momentum encoder, no negatives.
//!
//! Multi-crop (`multicrop_local` > 0): the encoder runs once per crop size, the heads on
//! every crop together; the stop-gradient targets are the 2 global crops' projections, and
//! D is averaged over every (global crop, other crop) pair (with 2 crops, the loss above).

use super::{DataInfo, Method, MethodConfig, MethodSpec, StepCtx, views};
use crate::augment::Views;
use crate::nets::{self, Encoder, MlpNorm};
use crate::{losses, precision};
use anyhow::Result;
use std::sync::Arc;
use tch::Tensor;
use tch::nn::{self, ModuleT};

pub const SPEC: MethodSpec = MethodSpec {
    name: "simsiam",
    summary: "siamese views, predictor and stop-gradient (negative cosine), no negatives",
    keys: KEYS,
    validate: super::no_own_keys,
    uses_labels: false,
    encoders: super::ANY_ENCODER,
    build: |p, cfg, data| Ok(Box::new(SimSiam::new(p, cfg, data)?)),
};

const KEYS: &[&[&str]] = &[
    views::AUG_KEYS,
    views::MULTICROP_KEYS,
    &["proj_hidden_dim", "proj_dim", "pred_hidden_dim"],
];

pub struct SimSiam {
    encoder: Encoder,
    projector: nn::SequentialT,
    predictor: nn::SequentialT,
    views: Arc<Views>,
}

impl SimSiam {
    pub fn new(p: &nn::Path, cfg: &MethodConfig, data: &DataInfo) -> Result<SimSiam> {
        let encoder = nets::build_encoder(&(p / "encoder"), cfg.encoder, data.shape[0]);
        let proj = [
            encoder.dim,
            cfg.keys.proj_hidden_dim,
            cfg.keys.proj_hidden_dim,
            cfg.keys.proj_dim,
        ];
        let projector = nets::mlp(&(p / "projector"), &proj, MlpNorm::All);
        let predictor = nets::mlp(
            &(p / "predictor"),
            &[
                cfg.keys.proj_dim,
                cfg.keys.pred_hidden_dim,
                cfg.keys.proj_dim,
            ],
            MlpNorm::Hidden,
        );
        Ok(SimSiam {
            encoder,
            projector,
            predictor,
            views: views::two_views_and_local_crops(cfg.aug, data),
        })
    }
}

impl Method for SimSiam {
    fn loss(&mut self, images: &[Tensor], _labels: &Tensor, _ctx: &StepCtx) -> Tensor {
        let h = views::encode(&self.encoder, images); // [V B, D]
        let z = self.projector.forward_t(&h, true); // [V B, dim]
        let p = self.predictor.forward_t(&z, true); // [V B, dim]
        let v = self.views.pipelines.len() as i64;
        let b = z.size()[0] / v;
        let targets = z.narrow(0, 0, 2 * b).detach(); // [2B, dim]: the global crops'
        precision::in_fp32([&p, &targets], |[p, z]| {
            losses::simsiam(&p.chunk(v, 0), &z.chunk(2, 0))
        })
    }
    fn encoder(&self) -> &Encoder {
        &self.encoder
    }
    fn views(&self) -> Option<Arc<Views>> {
        Some(self.views.clone())
    }
}
