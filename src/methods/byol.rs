//! BYOL (Grill et al. 2020): the online network (encoder, projector, predictor) predicts
//! the target network's projection of the other view; the target (encoder, projector) is
//! an EMA of the online one with momentum rising from `ema_momentum` (paper: 0.996) to 1
//! along a cosine. Loss: 2 - 2 cos(p, z') for both view orders. The target runs in
//! training mode (batch statistics), as in the paper. Views are asymmetric as in the
//! paper: blur always on the first view and with p = 0.1 on the second, solarization only
//! on the second (p = 0.2); other ops follow the `aug_*` keys.

use super::{DataInfo, Method, MethodSpec, StepCtx, views};
use crate::augment::{Op, Views};
use crate::config::Config;
use crate::nets::{Encoder, MlpNorm, momentum::OnlineTarget};
use crate::schedule::cosine_momentum;
use crate::{losses, precision};
use anyhow::Result;
use std::sync::Arc;
use tch::Tensor;
use tch::nn;

pub const SPEC: MethodSpec = MethodSpec {
    name: "byol",
    summary: "online network predicts an EMA target network's projection of the other view",
    keys: KEYS,
    validate: super::no_own_keys,
    uses_labels: false,
    build: |p, cfg, data| Ok(Box::new(Byol::new(p, cfg, data)?)),
};

const KEYS: &[&[&str]] = &[
    views::AUG_KEYS,
    &[
        "proj_hidden_dim",
        "proj_dim",
        "pred_hidden_dim",
        "ema_momentum",
    ],
];

pub struct Byol {
    nets: OnlineTarget,
    base_m: f64,
    views: Arc<Views>,
}

/// BYOL's asymmetric pair of views built on the `aug_*` pipeline.
pub fn byol_views(cfg: &Config, data: &DataInfo) -> Arc<Views> {
    let base = views::pipeline(cfg, data);
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
        let nets = OnlineTarget::new(p, cfg, data.shape[0], MlpNorm::Hidden);
        Ok(Byol {
            nets,
            base_m: cfg.ema_momentum,
            views: byol_views(cfg, data),
        })
    }
}

impl Method for Byol {
    fn loss(&mut self, images: &Tensor, _labels: &Tensor, _ctx: &StepCtx) -> Tensor {
        let x = images.chunk(2, 0); // 2 x [B, C, H, W]
        let (p1, p2) = (self.nets.online(&x[0]), self.nets.online(&x[1])); // [B, dim] each
        let (z1, z2) = (self.nets.target(&x[0]), self.nets.target(&x[1]));
        // 2 - 2 cos = 2 + 2 * negative_cosine, for (p1, z2') and (p2, z1')
        precision::in_fp32([&p1, &z2, &p2, &z1], |[p1, z2, p2, z1]| {
            (losses::negative_cosine(&p1, &z2) + losses::negative_cosine(&p2, &z1)) * 2.0 + 4.0
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
