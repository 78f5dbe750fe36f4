//! BYOL (Grill et al. 2020): the online network (encoder, projector, predictor) predicts
//! the target network's projection of the other view; the target (encoder, projector) is
//! an EMA of the online one with momentum rising from `ema_momentum` (paper: 0.996) to 1
//! along a cosine. Loss: 2 - 2 cos(p, z') for both view orders. The target runs in
//! training mode (batch statistics), as in the paper. Views are asymmetric as in the
//! paper: blur always on the first view and with p = 0.1 on the second, solarization only
//! on the second (p = 0.2); other ops follow the `aug_*` keys.

use super::{DataInfo, Method, MethodSpec, StepCtx};
use crate::augment::{self, Op, Views};
use crate::config::Config;
use crate::losses;
use crate::nets::{self, Encoder, momentum::MomentumPairs};
use crate::train::schedule::cosine_momentum;
use anyhow::Result;
use std::sync::Arc;
use tch::Tensor;
use tch::nn::{self, ModuleT};

pub const SPEC: MethodSpec = MethodSpec {
    name: "byol",
    summary: "online network predicts an EMA target network's projection of the other view",
    build: |p, cfg, data| Ok(Box::new(Byol::new(p, cfg, data)?)),
};

pub struct Byol {
    encoder: Encoder,
    projector: nn::SequentialT,
    predictor: nn::SequentialT,
    target_encoder: Encoder,
    target_projector: nn::SequentialT,
    momentum: MomentumPairs,
    base_m: f64,
    views: Arc<Views>,
}

/// BYOL's asymmetric pair of views built on the `aug_*` pipeline.
pub fn byol_views(cfg: &Config, data: &DataInfo) -> Arc<Views> {
    let base = augment::contrastive_pipeline(cfg, data.shape[1] as usize, data.shape[2] as usize);
    let with = |blur_p: f64, solarize_p: f64| {
        let mut p = base.clone();
        for op in &mut p.ops {
            match op {
                Op::GaussianBlur { p, .. } => *p = blur_p,
                Op::Solarize { p, .. } => *p = solarize_p,
                _ => {}
            }
        }
        p
    };
    Arc::new(Views {
        pipelines: vec![with(1.0, 0.0), with(0.1, 0.2)],
    })
}

impl Byol {
    pub fn new(p: &nn::Path, cfg: &Config, data: &DataInfo) -> Result<Byol> {
        let encoder = nets::build_encoder(&(p / "encoder"), cfg, data.shape[0])?;
        let proj = [encoder.dim, cfg.proj_hidden_dim, cfg.proj_dim];
        let projector = nets::mlp(&(p / "projector"), &proj, true, false);
        let predictor = nets::mlp(
            &(p / "predictor"),
            &[cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim],
            true,
            false,
        );
        let t = p / "target";
        let target_encoder = nets::build_encoder(&(&t / "encoder"), cfg, data.shape[0])?;
        let target_projector = nets::mlp(&(&t / "projector"), &proj, true, false);
        Ok(Byol {
            encoder,
            projector,
            predictor,
            target_encoder,
            target_projector,
            momentum: MomentumPairs::default(),
            base_m: cfg.ema_momentum,
            views: byol_views(cfg, data),
        })
    }
}

impl Method for Byol {
    fn loss(&mut self, images: &Tensor, _labels: &Tensor, _ctx: &StepCtx) -> Tensor {
        let x = images.chunk(2, 0); // 2 x [B, C, H, W]
        let p: Vec<Tensor> = x
            .iter()
            .map(|v| {
                self.predictor
                    .forward_t(&self.projector.forward_t(&self.encoder.forward_t(v, true), true), true)
            })
            .collect();
        let z: Vec<Tensor> = tch::no_grad(|| {
            x.iter()
                .map(|v| {
                    self.target_projector
                        .forward_t(&self.target_encoder.forward_t(v, true), true)
                })
                .collect()
        });
        // 2 - 2 cos = 2 + 2 * negative_cosine, for (p1, z2') and (p2, z1')
        (losses::negative_cosine(&p[0], &z[1]) + losses::negative_cosine(&p[1], &z[0])) * 2.0 + 4.0
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_are_asymmetric_as_in_the_paper() {
        let v = byol_views(
            &Config::default(),
            &DataInfo {
                shape: [3, 32, 32],
                num_classes: 10,
            },
        );
        let probs = |i: usize| -> (f64, f64) {
            let mut out = (-1.0, -1.0);
            for op in &v.pipelines[i].ops {
                match op {
                    Op::GaussianBlur { p, .. } => out.0 = *p,
                    Op::Solarize { p, .. } => out.1 = *p,
                    _ => {}
                }
            }
            out
        };
        assert_eq!(probs(0), (1.0, 0.0));
        assert_eq!(probs(1), (0.1, 0.2));
    }
}
