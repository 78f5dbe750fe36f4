//! MoCo v3 (Chen, Xie & He 2021): no queue. Query = predictor(projector(encoder(x))),
//! key = momentum projector(momentum encoder(x)) of the other view; symmetric InfoNCE
//! over the batch (on several ranks, the global batch: keys are gathered from every rank),
//! each direction scaled by 2T as in the paper. The momentum rises from
//! `ema_momentum` to 1 along a cosine.

use super::{DataInfo, Method, MethodSpec, StepCtx, views};
use crate::augment::Views;
use crate::config::Config;
use crate::dist::current as dist;
use crate::nets::{Encoder, MlpNorm, momentum::OnlineTarget};
use crate::schedule::cosine_momentum;
use crate::{losses, precision};
use anyhow::Result;
use std::sync::Arc;
use tch::Tensor;
use tch::nn;

pub const SPEC: MethodSpec = MethodSpec {
    name: "moco-v3",
    summary: "momentum encoder and predictor, symmetric in-batch InfoNCE, no queue",
    keys: KEYS,
    validate: super::no_own_keys,
    uses_labels: false,
    build: |p, cfg, data| Ok(Box::new(MocoV3::new(p, cfg, data)?)),
};

const KEYS: &[&[&str]] = &[
    views::AUG_KEYS,
    &[
        "proj_hidden_dim",
        "proj_dim",
        "pred_hidden_dim",
        "temperature",
        "ema_momentum",
    ],
];

pub struct MocoV3 {
    nets: OnlineTarget,
    base_m: f64,
    temperature: f64,
    views: Arc<Views>,
}

impl MocoV3 {
    pub fn new(p: &nn::Path, cfg: &Config, data: &DataInfo) -> Result<MocoV3> {
        let nets = OnlineTarget::new(p, cfg, data.shape[0], MlpNorm::All);
        Ok(MocoV3 {
            nets,
            base_m: cfg.ema_momentum,
            temperature: cfg.temperature,
            views: views::two_views(cfg, data),
        })
    }
}

impl Method for MocoV3 {
    fn loss(&mut self, images: &Tensor, _labels: &Tensor, _ctx: &StepCtx) -> Tensor {
        let x = images.chunk(2, 0); // 2 x [B, C, H, W]
        let (q1, q2) = (self.nets.online(&x[0]), self.nets.online(&x[1])); // [B, dim] each
        let (k1, k2) = (self.nets.target(&x[0]), self.nets.target(&x[1]));
        // Keys of the global batch from every rank; this rank's queries are its rows.
        let offset = dist::rank() as i64 * q1.size()[0];
        let t = self.temperature;
        // The keys are gathered in float32, inside the loss boundary.
        precision::in_fp32([&q1, &k2, &q2, &k1], |[q1, k2, q2, k1]| {
            let (k1, k2) = (dist::all_gather(&k1), dist::all_gather(&k2)); // [W B, dim]
            let nce = |q: &Tensor, k: &Tensor| losses::info_nce_global(q, k, offset, t);
            (nce(&q1, &k2) + nce(&q2, &k1)) * (2.0 * t)
        })
    }
    fn after_step(&mut self, ctx: &StepCtx) {
        self.nets
            .update(cosine_momentum(ctx.step, ctx.total_steps, self.base_m));
    }
    fn bind(&mut self, vs: &nn::VarStore) -> Result<()> {
        self.nets.bind(vs)
    }
    fn encoder(&self) -> &Encoder {
        &self.nets.encoder
    }
    fn views(&self) -> Option<Arc<Views>> {
        Some(self.views.clone())
    }
}
