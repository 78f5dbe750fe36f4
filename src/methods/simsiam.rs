//! SimSiam (Chen & He 2021): one encoder for both views, a projector (3 layers, BN on
//! every layer including the output) and a bottleneck predictor (BN only in its hidden
//! layer); loss 1/2 D(p1, stopgrad(z2)) + 1/2 D(p2, stopgrad(z1)) with D the negative
//! cosine similarity. No momentum encoder, no negatives.

use super::{DataInfo, Method, MethodSpec, StepCtx, views};
use crate::augment::Views;
use crate::config::Config;
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
    build: |p, cfg, data| Ok(Box::new(SimSiam::new(p, cfg, data)?)),
};

const KEYS: &[&[&str]] = &[
    views::AUG_KEYS,
    &["proj_hidden_dim", "proj_dim", "pred_hidden_dim"],
];

pub struct SimSiam {
    encoder: Encoder,
    projector: nn::SequentialT,
    predictor: nn::SequentialT,
    views: Arc<Views>,
}

impl SimSiam {
    pub fn new(p: &nn::Path, cfg: &Config, data: &DataInfo) -> Result<SimSiam> {
        let encoder = nets::build_encoder(&(p / "encoder"), cfg, data.shape[0]);
        let proj = [
            encoder.dim,
            cfg.proj_hidden_dim,
            cfg.proj_hidden_dim,
            cfg.proj_dim,
        ];
        let projector = nets::mlp(&(p / "projector"), &proj, MlpNorm::All);
        let predictor = nets::mlp(
            &(p / "predictor"),
            &[cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim],
            MlpNorm::Hidden,
        );
        Ok(SimSiam {
            encoder,
            projector,
            predictor,
            views: views::two_views(cfg, data),
        })
    }
}

impl Method for SimSiam {
    fn loss(&mut self, images: &Tensor, _labels: &Tensor, _ctx: &StepCtx) -> Tensor {
        let z = self
            .projector
            .forward_t(&self.encoder.forward_t(images, true), true); // [2B, dim]
        let p = self.predictor.forward_t(&z, true); // [2B, dim]
        let (z, p) = (z.chunk(2, 0), p.chunk(2, 0));
        let (z0, z1) = (z[0].detach(), z[1].detach());
        precision::in_fp32([&p[0], &p[1], &z0, &z1], |[p0, p1, z0, z1]| {
            (losses::negative_cosine(&p0, &z1) + losses::negative_cosine(&p1, &z0)) * 0.5
        })
    }
    fn encoder(&self) -> &Encoder {
        &self.encoder
    }
    fn views(&self) -> Option<Arc<Views>> {
        Some(self.views.clone())
    }
}
