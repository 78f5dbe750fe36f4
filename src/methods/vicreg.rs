//! VICReg (Bardes, Ponce & LeCun 2022): two random views, encoder and the 3-layer expander
//! of Barlow Twins, and a loss of three terms with weights `vicreg_weights` (paper: 25, 25,
//! 1): invariance (mean squared error between the views' embeddings), variance (a hinge
//! keeping every dimension's standard deviation over the batch at 1) and covariance (the
//! off-diagonal covariances pushed to 0). No negatives, no momentum encoder, no
//! normalisation of the embeddings. On several ranks the variance and covariance are those
//! of the global batch, as in the paper (the embeddings are gathered from every rank).

use super::{DataInfo, Method, MethodConfig, MethodSpec, StepCtx, barlow_twins, views};
use crate::augment::Views;
use crate::config::check;
use crate::losses;
use crate::nets::{self, Encoder};
use anyhow::Result;
use std::sync::Arc;
use tch::Tensor;
use tch::nn;

pub const SPEC: MethodSpec = MethodSpec {
    name: "vicreg",
    summary: "invariance, variance and covariance terms on two views' embeddings, no negatives",
    keys: KEYS,
    validate,
    uses_labels: false,
    encoders: super::ANY_ENCODER,
    build: |p, cfg, data| Ok(Box::new(Vicreg::new(p, cfg, data))),
};

const KEYS: &[&[&str]] = &[
    views::AUG_KEYS,
    &["proj_hidden_dim", "proj_dim", "vicreg_weights"],
];

fn validate(cfg: &MethodConfig) -> Result<()> {
    for w in cfg.keys.vicreg_weights {
        check::non_negative("vicreg_weights", w)?;
    }
    Ok(())
}

pub struct Vicreg {
    encoder: Encoder,
    projector: nn::SequentialT,
    weights: [f64; 3],
    views: Arc<Views>,
}

impl Vicreg {
    pub fn new(p: &nn::Path, cfg: &MethodConfig, data: &DataInfo) -> Vicreg {
        let encoder = nets::build_encoder(&(p / "encoder"), cfg.encoder, data.shape[0]);
        Vicreg {
            projector: barlow_twins::expander(&(p / "projector"), cfg, encoder.dim),
            encoder,
            weights: cfg.keys.vicreg_weights,
            views: views::two_views(cfg.aug, data),
        }
    }
}

impl Method for Vicreg {
    /// The loss of the whole global batch on every rank (see `BarlowTwins::loss`): the
    /// invariance term's mean over the global batch is the mean of the ranks' local ones.
    fn loss(&mut self, images: &[Tensor], _labels: &Tensor, _ctx: &StepCtx) -> Tensor {
        let images = &images[0]; // [2B, C, H, W]: the two views
        let z = barlow_twins::projections(&self.encoder, &self.projector, images);
        let [sim, var, cov] = self.weights;
        barlow_twins::global_loss(z, |z1, z2| losses::vicreg(z1, z2, sim, var, cov))
    }
    fn encoder(&self) -> &Encoder {
        &self.encoder
    }
    fn views(&self) -> Option<Arc<Views>> {
        Some(self.views.clone())
    }
}
