//! SwAV (Caron et al. 2020): multi-crop views (2 global, `multicrop_local` local), encoder
//! (run once per crop size) and an MLP projector to L2-normalised embeddings, scored
//! against `swav_prototypes` prototypes (normalised before every step). The codes of each
//! global crop come from Sinkhorn-Knopp on the scores (`swav_epsilon`, `swav_iterations`)
//! of the global batch (gathered from every rank) and, once it is full, of a queue of the
//! last `swav_queue` embeddings; every other crop predicts them (swapped prediction,
//! softmax at `temperature`). The prototypes stay frozen for the first
//! `swav_freeze_epochs` epochs, as in the paper.

use super::{DataInfo, Method, MethodConfig, MethodSpec, StepCtx, views};
use crate::augment::Views;
use crate::config::check;
use crate::dist::current as dist;
use crate::losses::{self, l2_normalize};
use crate::nets::{self, Encoder, MlpNorm};
use crate::precision;
use anyhow::{Result, bail};
use std::sync::Arc;
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

pub const SPEC: MethodSpec = MethodSpec {
    name: "swav",
    summary: "online clustering: Sinkhorn codes of global crops predicted from every other crop",
    keys: KEYS,
    validate,
    uses_labels: false,
    encoders: super::ANY_ENCODER,
    build: |p, cfg, data| Ok(Box::new(Swav::new(p, cfg, data))),
};

const KEYS: &[&[&str]] = &[
    views::AUG_KEYS,
    views::MULTICROP_KEYS,
    &[
        "proj_hidden_dim",
        "proj_dim",
        "temperature",
        "swav_prototypes",
        "swav_epsilon",
        "swav_iterations",
        "swav_freeze_epochs",
        "swav_queue",
    ],
];

fn validate(cfg: &MethodConfig) -> Result<()> {
    check::at_least("swav_prototypes", cfg.keys.swav_prototypes, 2)?;
    check::positive("swav_epsilon", cfg.keys.swav_epsilon)?;
    check::in_range("swav_iterations", cfg.keys.swav_iterations, 1..=100)?;
    if cfg.keys.swav_queue != 0 && cfg.keys.swav_queue < cfg.batch_size as i64 {
        bail!(
            "option swav_queue = {} must be 0 (no queue) or at least batch_size = {}",
            cfg.keys.swav_queue,
            cfg.batch_size
        );
    }
    Ok(())
}

/// The two global crops carry codes (the paper's crops_for_assign).
const CODED: usize = 2;

pub struct Swav {
    encoder: Encoder,
    projector: nn::SequentialT,
    /// `[K, proj_dim]`, rows normalised before every step.
    prototypes: Tensor,
    /// `[2, L, proj_dim]`: the last L embeddings of each global crop, newest first (zeros
    /// until filled); a variable without gradient, so that checkpoints carry it.
    queue: Option<Tensor>,
    /// The embeddings of this step's global crops, queued after the step.
    pending: Option<Tensor>,
    /// How many rows of the queue hold embeddings (a prefix, newest first): counted in the
    /// queue once, after any checkpoint was loaded into it, then on the host, so that no
    /// step waits to read the queue.
    filled: Option<i64>,
    temperature: f64,
    epsilon: f64,
    iterations: usize,
    freeze_epochs: usize,
    views: Arc<Views>,
}

impl Swav {
    pub fn new(p: &nn::Path, cfg: &MethodConfig, data: &DataInfo) -> Swav {
        let encoder = nets::build_encoder(&(p / "encoder"), cfg.encoder, data.shape[0]);
        // SwAV's head: Linear -> BatchNorm -> ReLU -> Linear.
        let dims = [encoder.dim, cfg.keys.proj_hidden_dim, cfg.keys.proj_dim];
        let projector = nets::mlp(&(p / "projector"), &dims, MlpNorm::Hidden);
        let prototypes = p.var(
            "prototypes",
            &[cfg.keys.swav_prototypes, cfg.keys.proj_dim],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        );
        let queue = (cfg.keys.swav_queue > 0).then(|| {
            p.zeros_no_train(
                "queue",
                &[CODED as i64, cfg.keys.swav_queue, cfg.keys.proj_dim],
            )
        });
        let views = views::two_views_and_local_crops(cfg.aug, data);
        Swav {
            encoder,
            projector,
            prototypes,
            queue,
            pending: None,
            filled: None,
            temperature: cfg.keys.temperature,
            epsilon: cfg.keys.swav_epsilon,
            iterations: cfg.keys.swav_iterations,
            freeze_epochs: cfg.keys.swav_freeze_epochs,
            views,
        }
    }

    /// Whether the queue is full (false without one).
    fn queue_full(&mut self) -> bool {
        let Some(queue) = &self.queue else {
            return false;
        };
        let filled = *self.filled.get_or_insert_with(|| {
            // Embeddings are unit vectors, never zero: the rows set are those not zero.
            let norms = queue
                .get(0)
                .abs()
                .sum_dim_intlist(&[1i64][..], false, Kind::Float); // [L]
            norms.gt(0.0).sum(Kind::Int64).int64_value(&[])
        });
        filled >= queue.size()[1]
    }

    /// The Sinkhorn codes `[B, K]` of this rank's crop `a` from its scores `[B, K]`: the
    /// assignment is solved over the global batch and, when the queue is `full`, the queue.
    fn codes(&self, a: usize, scores: &Tensor, full: bool) -> Tensor {
        let _guard = tch::no_grad_guard();
        let b = scores.size()[0];
        let queued = (self.queue.as_ref())
            .filter(|_| full)
            .map(|q| q.get(a as i64));
        let local = match &queued {
            Some(q) => Tensor::cat(&[q.matmul(&self.prototypes.tr()), scores.detach()], 0),
            None => scores.detach(),
        }; // [L + B, K]
        let all = dist::all_gather(&local); // [W (L + B), K]
        let q = losses::sinkhorn_knopp(&all, self.epsilon, self.iterations);
        let rows = local.size()[0];
        q.narrow(0, dist::rank() as i64 * rows + rows - b, b)
    }
}

impl Method for Swav {
    fn loss(&mut self, images: &[Tensor], _labels: &Tensor, ctx: &StepCtx) -> Tensor {
        tch::no_grad(|| {
            let normalised = l2_normalize(&self.prototypes);
            self.prototypes.shallow_clone().copy_(&normalised);
        });
        // The encoder once per crop size, the projector on every crop together.
        let h = views::encode(&self.encoder, images); // [V B, D]
        let z = self.projector.forward_t(&h, true); // [V B, D]
        let full = self.queue_full();
        // Scores, codes and loss in float32 whatever the training precision.
        precision::in_fp32([&z], |[z]| {
            let z = l2_normalize(&z);
            let v = self.views.pipelines.len() as i64;
            // Frozen prototypes take no gradient, so the optimizer leaves them alone (as the
            // paper's `p.grad = None`): no step, no moments, no weight decay.
            let prototypes = match ctx.epoch < self.freeze_epochs {
                true => self.prototypes.detach(),
                false => self.prototypes.shallow_clone(),
            };
            let scores = z.matmul(&prototypes.tr()).chunk(v, 0); // V x [B, K]
            let codes: Vec<Tensor> = (0..CODED)
                .map(|a| self.codes(a, &scores[a], full))
                .collect();
            if self.queue.is_some() {
                let (b, coded) = (z.size()[0] / v, CODED as i64);
                self.pending = Some(z.narrow(0, 0, coded * b).detach().view([coded, b, -1]));
            }
            losses::swav(&scores, &codes, self.temperature)
        })
    }
    fn after_step(&mut self, _ctx: &StepCtx) {
        tch::no_grad(|| {
            if let (Some(queue), Some(new)) = (&self.queue, self.pending.take()) {
                // [2, L, D]: the newest B embeddings first, the oldest B dropped.
                let (l, b) = (queue.size()[1], new.size()[1]);
                let kept = queue.narrow(1, 0, l - b).copy();
                queue.shallow_clone().narrow(1, b, l - b).copy_(&kept);
                queue.shallow_clone().narrow(1, 0, b).copy_(&new);
                self.filled = self.filled.map(|f| (f + b).min(l));
            }
        });
    }
    /// The queue holds this rank's embeddings and the checkpoint only rank 0's, so a
    /// resumed run on several ranks would not continue exactly: refused.
    fn check_world_size(&self, world_size: usize) -> Result<()> {
        if world_size > 1 && self.queue.is_some() {
            bail!(
                "swav_queue > 0 trains on one process only (each rank's queue is its own); set swav_queue = 0"
            );
        }
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
    use crate::run::Model;
    use tch::Device;

    fn tiny(freeze: usize, queue: i64) -> (Model, Vec<Tensor>) {
        let cfg = {
            let mut c = crate::train::tests::tiny_config("swav");
            c.keys.proj_hidden_dim = 16;
            c.keys.proj_dim = 8;
            c.aug.multicrop_local = 2;
            c.keys.swav_prototypes = 10;
            c.keys.swav_freeze_epochs = freeze;
            c.keys.swav_queue = queue;
            c
        };
        let info = DataInfo {
            shape: [1, 8, 8],
            num_classes: 4,
        };
        let model = Model::build(&cfg, &info, Device::Cpu).unwrap();
        let groups = crate::data::loader::size_groups([1, 8, 8], model.method.views().as_deref());
        let numel: usize = groups.iter().map(|(n, [c, h, w])| 16 * n * c * h * w).sum();
        let x = Tensor::rand([numel as i64], (Kind::Float, Device::Cpu));
        (model, crate::data::loader::pack(&x, &groups))
    }

    /// One SGD-like step on the prototypes; returns them before and after (after the
    /// normalisation of the next step).
    fn step(model: &mut Model, x: &[Tensor], epoch: usize) -> (Tensor, Tensor) {
        let ctx = StepCtx {
            epoch,
            step: 0,
            total_steps: 10,
        };
        let vars = model.vs.variables();
        let protos = vars["prototypes"].shallow_clone();
        let labels = Tensor::zeros([16], (Kind::Int64, Device::Cpu));
        let loss = model.method.loss(x, &labels, &ctx);
        let before = protos.detach().copy();
        loss.backward();
        if protos.grad().defined() {
            tch::no_grad(|| {
                let mut p = protos.shallow_clone();
                let _ = p.g_sub_(&(protos.grad() * 10.0));
            });
        }
        model.method.after_step(&ctx);
        (before, l2_normalize(&protos.detach()))
    }

    #[test]
    fn prototypes_stay_frozen_for_the_first_epochs_and_are_unit_vectors() {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(3);
        let (mut model, x) = tiny(1, 0);
        let (before, after) = step(&mut model, &x, 0);
        let norms = before.norm_scalaropt_dim(2, &[1i64][..], false);
        assert!(
            norms.allclose(&norms.ones_like(), 1e-6, 1e-6, false),
            "{norms}"
        );
        assert!(
            !model.vs.variables()["prototypes"].grad().defined(),
            "a gradient in epoch 0"
        );
        assert!(
            after.allclose(&before, 1e-6, 1e-6, false),
            "moved in epoch 0"
        );
        let (before, after) = step(&mut model, &x, 1);
        assert!(
            !after.allclose(&before, 1e-3, 1e-3, false),
            "frozen in epoch 1"
        );
    }

    #[test]
    fn queue_is_refused_on_several_ranks_and_fills_newest_first() {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(4);
        let (mut model, x) = tiny(0, 32);
        assert!(model.method.check_world_size(1).is_ok());
        let e = model.method.check_world_size(2).unwrap_err().to_string();
        assert!(e.contains("swav_queue"), "{e}");
        let _ = step(&mut model, &x, 0);
        let queue = model.vs.variables()["queue"].shallow_clone(); // [2, 32, 8]
        let filled = |r: i64| queue.get(0).get(r).abs().sum(Kind::Float).double_value(&[]) > 0.0;
        // 16 images queued: rows 0..16 set, the rest still empty.
        assert!(filled(0) && filled(15) && !filled(16) && !filled(31));
        let _ = step(&mut model, &x, 0);
        assert!(filled(31));
    }
}
