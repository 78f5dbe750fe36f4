//! SimCLR (Chen et al. 2020): two random views of every image, encoder h = f(x), MLP
//! projection z = g(h), NT-Xent on z (not h) with the other 2N - 2 samples as negatives
//! (on several ranks, N is the global batch: negatives are gathered from every rank).
//! Views come from the `aug_*` config keys (see presets/ for the paper's settings adapted
//! to each resolution). With multi-crop (`multicrop_local` > 0) the loss is NT-Xent over
//! every crop, with every other crop of the same image as a positive (solo-learn's
//! formulation).

use super::{DataInfo, Method, MethodConfig, MethodSpec, StepCtx, views};
use crate::augment::Views;
use crate::dist::current as dist;
use crate::nets::{self, Encoder, MlpNorm};
use crate::{losses, precision};
use anyhow::Result;
use std::sync::Arc;
use tch::Tensor;
use tch::nn::{self, ModuleT};

pub const SPEC: MethodSpec = MethodSpec {
    name: "simclr",
    summary: "two augmented views, MLP projection head, NT-Xent with in-batch negatives",
    keys: KEYS,
    validate: super::no_own_keys,
    uses_labels: false,
    encoders: super::ANY_ENCODER,
    build: |p, cfg, data| Ok(Box::new(SimClr::new(p, cfg, data)?)),
};

const KEYS: &[&[&str]] = &[
    views::AUG_KEYS,
    views::MULTICROP_KEYS,
    &["proj_hidden_dim", "proj_dim", "temperature"],
];

pub struct SimClr {
    encoder: Encoder,
    projector: nn::SequentialT,
    temperature: f64,
    views: Arc<Views>,
}

impl SimClr {
    pub fn new(p: &nn::Path, cfg: &MethodConfig, data: &DataInfo) -> Result<SimClr> {
        let encoder = nets::build_encoder(&(p / "encoder"), cfg.encoder, data.shape[0]);
        // SimCLR v1's head: Linear -> ReLU -> Linear.
        let projector = nets::mlp(
            &(p / "projector"),
            &[encoder.dim, cfg.keys.proj_hidden_dim, cfg.keys.proj_dim],
            MlpNorm::None,
        );
        Ok(SimClr {
            encoder,
            projector,
            temperature: cfg.keys.temperature,
            views: views::two_views_and_local_crops(cfg.aug, data),
        })
    }
}

impl Method for SimClr {
    fn loss(&mut self, images: &[Tensor], _labels: &Tensor, _ctx: &StepCtx) -> Tensor {
        // The encoder once per crop size, the projector on every crop together.
        let h = views::encode(&self.encoder, images); // [V B, D]
        let z = self.projector.forward_t(&h, true); // [V B, proj_dim]
        let v = self.views.pipelines.len() as i64;
        let (t, offset) = (self.temperature, dist::rank() as i64 * (z.size()[0] / v));
        // Negatives from every rank: the global batch (gathered in float32), with gradients
        // back to each rank.
        match v {
            // Two views: the 2-view NT-Xent, which the multi-crop loss equals up to rounding.
            2 => {
                let zs = z.chunk(2, 0); // 2 x [B, proj_dim]
                precision::in_fp32([&zs[0], &zs[1]], |[z1, z2]| {
                    let (all1, all2) = (dist::all_gather(&z1), dist::all_gather(&z2)); // [W B, proj_dim]
                    losses::nt_xent_global(&z1, &z2, &all1, &all2, offset, t)
                })
            }
            _ => precision::in_fp32([&z], |[z]| {
                let zs = z.chunk(v, 0); // V x [B, proj_dim]
                let all: Vec<Tensor> = zs.iter().map(dist::all_gather).collect(); // V x [W B, proj_dim]
                losses::nt_xent_multi_global(&zs, &all, offset, t)
            }),
        }
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

    #[test]
    fn simclr_trains_on_two_views_and_its_loss_falls() {
        let _rng = crate::torch_rng_lock();
        let ds = crate::train::tests::tiny_dataset();
        let cfg = {
            let mut c = crate::train::tests::tiny_config("simclr");
            c.train.epochs = 6;
            c.keys.proj_hidden_dim = 16;
            c.keys.proj_dim = 8;
            c.aug.aug_crop_scale = [0.5, 1.0];
            c
        };
        let losses = crate::train::tests::train_losses(&cfg, &ds);
        // Starts near log(2N - 1) = log(31) = 3.43 for batches of 16 and must come down.
        assert!(losses[0] > 3.0 && losses[0] < 4.0, "{losses:?}");
        assert!(losses[5] < losses[0] - 0.4, "{losses:?}");
    }
}
