//! MoCo v3 (Chen, Xie & He 2021): no queue. Query = predictor(projector(encoder(x))),
//! key = momentum projector(momentum encoder(x)) of the other view; symmetric InfoNCE
//! over the batch (on several ranks, the global batch: keys are gathered from every rank),
//! each direction scaled by 2T as in the paper. The momentum rises from
//! `ema_momentum` to 1 along a cosine.
//!
//! Multi-crop (`multicrop_local` > 0, local views of the `aug_*` pipeline): keys come from
//! the 2 global crops only; every crop's query is scored against the keys of each global
//! crop other than itself, and the InfoNCE terms are averaged over those pairs, times 2 (with
//! 2 crops, exactly the sum of the two directions above).

use super::{DataInfo, Method, MethodConfig, MethodSpec, StepCtx, views};
use crate::augment::Views;
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
    encoders: super::ANY_ENCODER,
    build: |p, cfg, data| Ok(Box::new(MocoV3::new(p, cfg, data)?)),
};

const KEYS: &[&[&str]] = &[
    views::AUG_KEYS,
    views::MULTICROP_KEYS,
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
    pub fn new(p: &nn::Path, cfg: &MethodConfig, data: &DataInfo) -> Result<MocoV3> {
        let nets = OnlineTarget::new(
            p,
            cfg.encoder,
            data.shape[0],
            cfg.keys.head_dims(),
            MlpNorm::All,
        );
        Ok(MocoV3 {
            nets,
            base_m: cfg.keys.ema_momentum,
            temperature: cfg.keys.temperature,
            views: views::two_views_and_local_crops(cfg.aug, data),
        })
    }
}

impl Method for MocoV3 {
    fn loss(&mut self, images: &[Tensor], labels: &Tensor, _ctx: &StepCtx) -> Tensor {
        let x = views::crops(images, labels.size()[0]); // V x [B, C, h, w]
        // Every crop's query on its own (its own BatchNorm statistics), keys of the 2 global
        // crops.
        let q: Vec<Tensor> = x.iter().map(|x| self.nets.online(x)).collect(); // V x [B, dim]
        let k: Vec<Tensor> = x[..2].iter().map(|x| self.nets.target(x)).collect(); // 2 x [B, dim]
        let v = x.len() as i64;
        // Keys of the global batch from every rank; this rank's queries are its rows.
        let offset = dist::rank() as i64 * q[0].size()[0];
        let t = self.temperature;
        let (q, k) = (Tensor::cat(&q, 0), Tensor::cat(&k, 0)); // [V B, dim], [2B, dim]
        // The keys are gathered in float32, inside the loss boundary.
        precision::in_fp32([&q, &k], |[q, k]| {
            let k: Vec<Tensor> = k.chunk(2, 0).iter().map(dist::all_gather).collect(); // 2 x [W B, dim]
            losses::moco_v3(&q.chunk(v, 0), &k, offset, t)
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
