//! Barlow Twins (Zbontar et al. 2021): two random views, encoder and a 3-layer projector
//! (Linear -> BatchNorm -> ReLU twice, then Linear), and a loss that drives the
//! cross-correlation of the two views' standardised projections towards the identity:
//! invariance on the diagonal, redundancy reduction off it (weight `barlow_lambda`). No
//! negatives, no momentum encoder, no predictor. On several ranks the projections are
//! gathered and the cross-correlation is that of the global batch, as in the paper (its
//! projections' BatchNorm is synchronised; the loss standardises the gathered batch).

use super::{DataInfo, Method, MethodConfig, MethodSpec, StepCtx, views};
use crate::augment::Views;
use crate::config::check;
use crate::dist::current as dist;
use crate::nets::{self, Encoder, MlpNorm};
use crate::{losses, precision};
use anyhow::Result;
use std::sync::Arc;
use tch::Tensor;
use tch::nn::{self, ModuleT};

pub const SPEC: MethodSpec = MethodSpec {
    name: "barlow-twins",
    summary: "cross-correlation of two views' projections driven to the identity, no negatives",
    keys: KEYS,
    validate,
    uses_labels: false,
    encoders: super::ANY_ENCODER,
    build: |p, cfg, data| Ok(Box::new(BarlowTwins::new(p, cfg, data))),
};

const KEYS: &[&[&str]] = &[
    views::AUG_KEYS,
    &["proj_hidden_dim", "proj_dim", "barlow_lambda"],
];

fn validate(cfg: &MethodConfig) -> Result<()> {
    check::non_negative("barlow_lambda", cfg.keys.barlow_lambda)
}

/// The 3-layer projector ("expander") of Barlow Twins and VICReg: Linear -> BatchNorm ->
/// ReLU twice (width `proj_hidden_dim`), then Linear to `proj_dim`.
pub fn expander(p: &nn::Path, cfg: &MethodConfig, input: i64) -> nn::SequentialT {
    let dims = [
        input,
        cfg.keys.proj_hidden_dim,
        cfg.keys.proj_hidden_dim,
        cfg.keys.proj_dim,
    ];
    nets::mlp(p, &dims, MlpNorm::Hidden)
}

/// The projections of the two views of this rank's images: 2 x `[B, proj_dim]`.
pub fn projections(encoder: &Encoder, projector: &nn::SequentialT, images: &Tensor) -> [Tensor; 2] {
    let h = encoder.forward_t(images, true); // [2B, D]
    let z = projector.forward_t(&h, true).chunk(2, 0); // 2 x [B, proj_dim]
    [z[0].shallow_clone(), z[1].shallow_clone()]
}

/// `loss` of the projections `z` of the global batch, gathered from every rank (with
/// gradients back to each rank's rows), in float32 whatever the training precision.
pub fn global_loss(z: [Tensor; 2], loss: impl FnOnce(&Tensor, &Tensor) -> Tensor) -> Tensor {
    precision::in_fp32([&z[0], &z[1]], |[z1, z2]| {
        loss(&dist::all_gather(&z1), &dist::all_gather(&z2)) // [W B, proj_dim] each
    })
}

pub struct BarlowTwins {
    encoder: Encoder,
    projector: nn::SequentialT,
    lambda: f64,
    views: Arc<Views>,
}

impl BarlowTwins {
    pub fn new(p: &nn::Path, cfg: &MethodConfig, data: &DataInfo) -> BarlowTwins {
        let encoder = nets::build_encoder(&(p / "encoder"), cfg.encoder, data.shape[0]);
        BarlowTwins {
            projector: expander(&(p / "projector"), cfg, encoder.dim),
            encoder,
            lambda: cfg.keys.barlow_lambda,
            views: views::two_views(cfg.aug, data),
        }
    }
}

impl Method for BarlowTwins {
    /// Every rank computes the loss of the whole global batch; the gather sums each rank's
    /// gradient into its rows and the all-reduce averages, which gives the global gradient.
    fn loss(&mut self, images: &[Tensor], _labels: &Tensor, _ctx: &StepCtx) -> Tensor {
        let images = &images[0]; // [2B, C, H, W]: the two views
        let z = projections(&self.encoder, &self.projector, images);
        global_loss(z, |z1, z2| losses::barlow_twins(z1, z2, self.lambda))
    }
    fn encoder(&self) -> &Encoder {
        &self.encoder
    }
    fn views(&self) -> Option<Arc<Views>> {
        Some(self.views.clone())
    }
}
