//! MoCo v3 (Chen, Xie & He 2021): no queue. Query = predictor(projector(encoder(x))),
//! key = momentum projector(momentum encoder(x)) of the other view; symmetric InfoNCE
//! over the batch, each direction scaled by 2T as in the paper. The momentum rises from
//! `ema_momentum` to 1 along a cosine.

use super::{DataInfo, Method, MethodSpec, StepCtx};
use crate::augment::{self, Views};
use crate::config::Config;
use crate::losses;
use crate::nets::{self, Encoder, momentum::MomentumPairs};
use crate::train::schedule::cosine_momentum;
use anyhow::Result;
use std::sync::Arc;
use tch::Tensor;
use tch::nn::{self, ModuleT};

pub const SPEC: MethodSpec = MethodSpec {
    name: "moco-v3",
    summary: "momentum encoder and predictor, symmetric in-batch InfoNCE, no queue",
    build: |p, cfg, data| Ok(Box::new(MocoV3::new(p, cfg, data)?)),
};

pub struct MocoV3 {
    encoder: Encoder,
    projector: nn::SequentialT,
    predictor: nn::SequentialT,
    target_encoder: Encoder,
    target_projector: nn::SequentialT,
    momentum: MomentumPairs,
    base_m: f64,
    temperature: f64,
    views: Arc<Views>,
}

impl MocoV3 {
    pub fn new(p: &nn::Path, cfg: &Config, data: &DataInfo) -> Result<MocoV3> {
        let encoder = nets::build_encoder(&(p / "encoder"), cfg, data.shape[0])?;
        let proj = [encoder.dim, cfg.proj_hidden_dim, cfg.proj_dim];
        let projector = nets::mlp(&(p / "projector"), &proj, true, true);
        let predictor = nets::mlp(
            &(p / "predictor"),
            &[cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim],
            true,
            false,
        );
        let t = p / "target";
        let target_encoder = nets::build_encoder(&(&t / "encoder"), cfg, data.shape[0])?;
        let target_projector = nets::mlp(&(&t / "projector"), &proj, true, true);
        Ok(MocoV3 {
            encoder,
            projector,
            predictor,
            target_encoder,
            target_projector,
            momentum: MomentumPairs::default(),
            base_m: cfg.ema_momentum,
            temperature: cfg.temperature,
            views: augment::two_views(cfg, data),
        })
    }
}

impl Method for MocoV3 {
    fn loss(&mut self, images: &Tensor, _labels: &Tensor, _ctx: &StepCtx) -> Tensor {
        let x = images.chunk(2, 0); // 2 x [B, C, H, W]
        let q: Vec<Tensor> = x
            .iter()
            .map(|v| {
                self.predictor
                    .forward_t(&self.projector.forward_t(&self.encoder.forward_t(v, true), true), true)
            })
            .collect(); // 2 x [B, dim]
        let k: Vec<Tensor> = tch::no_grad(|| {
            x.iter()
                .map(|v| {
                    self.target_projector
                        .forward_t(&self.target_encoder.forward_t(v, true), true)
                })
                .collect()
        });
        let t = self.temperature;
        (losses::info_nce_batch(&q[0], &k[1], t) + losses::info_nce_batch(&q[1], &k[0], t)) * (2.0 * t)
    }
    fn after_step(&mut self, ctx: &StepCtx) {
        self.momentum
            .update(cosine_momentum(ctx.step, ctx.total_steps, self.base_m));
    }
    fn bind(&mut self, vs: &nn::VarStore) -> Result<()> {
        self.momentum = MomentumPairs::bind(vs, &["encoder.", "projector."])?;
        Ok(())
    }
    fn encoder(&self) -> &Encoder {
        &self.encoder
    }
    fn views(&self) -> Option<Arc<Views>> {
        Some(self.views.clone())
    }
}
