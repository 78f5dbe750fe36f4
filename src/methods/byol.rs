//! BYOL (Grill et al. 2020): the online network (encoder, projector, predictor) predicts
//! the target network's projection of the other view; the target (encoder, projector) is
//! an EMA of the online one with momentum rising from `ema_momentum` (paper: 0.996) to 1
//! along a cosine. Loss: 2 - 2 cos(p, z') for both view orders. The target runs in
//! training mode (batch statistics), as in the paper. Views are asymmetric as in the
//! paper: blur always on the first view and with p = 0.1 on the second, solarization only
//! on the second (p = 0.2); other ops follow the `aug_*` keys.
//!
//! Multi-crop (`multicrop_local` > 0, local views of the `aug_*` pipeline): the target sees
//! the 2 global crops only, and every crop's prediction is matched against the target of
//! each global crop other than itself (solo-learn's pairs). The loss is the mean over those
//! pairs of 2 - 2 cos, times 2: with 2 crops exactly the sum over the two orders above,
//! and a scale that does not grow with the number of crops (solo-learn sums the pairs).

use super::{DataInfo, Method, MethodConfig, MethodSpec, StepCtx, views};
use crate::augment::{Op, Views};
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
    encoders: super::ANY_ENCODER,
    build: |p, cfg, data| Ok(Box::new(Byol::new(p, cfg, data)?)),
};

const KEYS: &[&[&str]] = &[
    views::AUG_KEYS,
    views::MULTICROP_KEYS,
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
pub fn byol_views(cfg: &MethodConfig, data: &DataInfo) -> Arc<Views> {
    let base = views::pipeline(cfg.aug, data);
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
    pub fn new(p: &nn::Path, cfg: &MethodConfig, data: &DataInfo) -> Result<Byol> {
        let nets = OnlineTarget::new(
            p,
            cfg.encoder,
            data.shape[0],
            cfg.keys.head_dims(),
            MlpNorm::Hidden,
        );
        let global = byol_views(cfg, data).pipelines.clone();
        Ok(Byol {
            nets,
            base_m: cfg.keys.ema_momentum,
            views: views::multi_crop(cfg.aug, data, global, views::pipeline(cfg.aug, data)),
        })
    }
}

impl Method for Byol {
    fn loss(&mut self, images: &[Tensor], labels: &Tensor, _ctx: &StepCtx) -> Tensor {
        let x = views::crops(images, labels.size()[0]); // V x [B, C, h, w]
        // Every crop through the online network on its own (its own BatchNorm statistics),
        // the 2 global crops through the target.
        let p: Vec<Tensor> = x.iter().map(|x| self.nets.online(x)).collect(); // V x [B, dim]
        let z: Vec<Tensor> = x[..2].iter().map(|x| self.nets.target(x)).collect(); // 2 x [B, dim]
        let v = x.len() as i64;
        let (p, z) = (Tensor::cat(&p, 0), Tensor::cat(&z, 0)); // [V B, dim], [2B, dim]
        precision::in_fp32([&p, &z], |[p, z]| {
            losses::byol(&p.chunk(v, 0), &z.chunk(2, 0))
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
    use crate::config::Config;

    #[test]
    fn views_are_asymmetric_as_in_the_paper() {
        let v = byol_views(
            &Config::default().method_view(),
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
