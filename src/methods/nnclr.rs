//! NNCLR (Dwibedi et al. 2021): "with a little help from my friends". Two views, an
//! encoder, a projector (3 layers, BatchNorm after each, as the paper's and lightly's
//! `NNCLRProjectionHead`) and a predictor (2 layers, BatchNorm in the hidden one). The
//! positive of a view's prediction is not the other view's projection but its nearest
//! neighbour (cosine) in a support queue of past projections (`nnclr_queue`, filled
//! first-in first-out with the second view's projections of every rank, as MoCo's keys):
//! loss = (NT-Xent(NN(z1), p2) + NT-Xent(NN(z2), p1)) / 2, with the other images of the
//! global batch as negatives (`temperature`, the paper's 0.1 in the presets). The queue
//! starts as random unit vectors and lives in the checkpoint.

use super::moco::RingPtr;
use super::{DataInfo, Method, MethodConfig, MethodSpec, StepCtx, views};
use crate::augment::Views;
use crate::config::check;
use crate::dist::current as dist;
use crate::nets::{self, Encoder, MlpNorm};
use crate::{losses, precision};
use anyhow::Result;
use std::sync::Arc;
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

pub const SPEC: MethodSpec = MethodSpec {
    name: "nnclr",
    summary: "nearest neighbour in a support queue as the positive of the other view's prediction (NT-Xent)",
    keys: &[
        views::AUG_KEYS,
        &[
            "proj_hidden_dim",
            "proj_dim",
            "pred_hidden_dim",
            "temperature",
            "nnclr_queue",
        ],
    ],
    validate,
    uses_labels: false,
    encoders: super::ANY_ENCODER,
    build: |p, cfg, data| Ok(Box::new(Nnclr::new(p, cfg, data))),
};

fn validate(cfg: &MethodConfig) -> Result<()> {
    check::at_least("nnclr_queue", cfg.keys.nnclr_queue, 1)
}

/// The nearest neighbour (cosine) in `queue` `[K, D]` of each row of `z` `[B, D]`: `[B, D]`
/// rows of the queue, as lightly's `NNMemoryBankModule` returns them.
pub fn nearest_neighbours(z: &Tensor, queue: &Tensor) -> Tensor {
    let sim = losses::l2_normalize(z).matmul(&losses::l2_normalize(queue).tr()); // [B, K]
    queue.index_select(0, &sim.argmax(1, false))
}

pub struct Nnclr {
    encoder: Encoder,
    projector: nn::SequentialT,
    predictor: nn::SequentialT,
    /// `[K, proj_dim]`: past projections; `queue_ptr` is where the next one goes.
    queue: Tensor,
    queue_ptr: RingPtr,
    pending: Option<Tensor>,
    temperature: f64,
    views: Arc<Views>,
}

impl Nnclr {
    pub fn new(p: &nn::Path, cfg: &MethodConfig, data: &DataInfo) -> Nnclr {
        let k = cfg.keys;
        let encoder = nets::build_encoder(&(p / "encoder"), cfg.encoder, data.shape[0]);
        let projector = nets::mlp(
            &(p / "projector"),
            &[
                encoder.dim,
                k.proj_hidden_dim,
                k.proj_hidden_dim,
                k.proj_dim,
            ],
            MlpNorm::All,
        );
        let predictor = nets::mlp(
            &(p / "predictor"),
            &[k.proj_dim, k.pred_hidden_dim, k.proj_dim],
            MlpNorm::Hidden,
        );
        let init = losses::l2_normalize(&Tensor::randn(
            [k.nnclr_queue, k.proj_dim],
            (Kind::Float, p.device()),
        ));
        Nnclr {
            encoder,
            projector,
            predictor,
            queue: p.add("queue", init, false),
            queue_ptr: RingPtr::new(p.add(
                "queue_ptr",
                Tensor::zeros([], (Kind::Int64, p.device())),
                false,
            )),
            pending: None,
            temperature: k.temperature,
            views: views::two_views(cfg.aug, data),
        }
    }
}

impl Method for Nnclr {
    fn loss(&mut self, images: &[Tensor], _labels: &Tensor, _ctx: &StepCtx) -> Tensor {
        let images = &images[0]; // [2B, C, H, W]: the two views
        let x = images.chunk(2, 0); // 2 x [B, C, H, W]
        let project = |t: &Tensor| {
            self.projector
                .forward_t(&self.encoder.forward_t(t, true), true)
        };
        let (z1, z2) = (project(&x[0]), project(&x[1])); // [B, proj_dim]
        let (p1, p2) = (
            self.predictor.forward_t(&z1, true),
            self.predictor.forward_t(&z2, true),
        );
        let queue = self.queue.detach();
        let (t, offset) = (self.temperature, dist::rank() as i64 * z1.size()[0]);
        let loss = precision::in_fp32([&z1, &z2, &p1, &p2, &queue], |[z1, z2, p1, p2, queue]| {
            let nn1 = nearest_neighbours(&z1.detach(), &queue);
            let nn2 = nearest_neighbours(&z2.detach(), &queue);
            let half = |nn: &Tensor, p: &Tensor| {
                let (all_nn, all_p) = (dist::all_gather(nn), dist::all_gather(p));
                losses::nt_xent_global(nn, p, &all_nn, &all_p, offset, t)
            };
            (half(&nn1, &p2) + half(&nn2, &p1)) * 0.5
        });
        // The queue takes the second view's projections of the whole global batch, so the
        // queues of every rank stay equal.
        self.pending = Some(dist::all_gather(&z2.detach().to_kind(Kind::Float)));
        loss
    }
    fn after_step(&mut self, _ctx: &StepCtx) {
        if let Some(z) = self.pending.take() {
            super::moco::enqueue(
                &self.queue,
                &mut self.queue_ptr,
                &z.to_kind(self.queue.kind()),
            );
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
    use super::*;
    use crate::methods::tests::{fixture, fixture_tensor as tensor};

    /// lightly's `NNMemoryBankModule` and `NTXentLoss` on fixed inputs, in float64
    /// (scripts/make_method_fixtures.py): the neighbours, the loss, and the bank after the
    /// second view's update.
    #[test]
    fn neighbours_loss_and_queue_match_lightly_in_float64() {
        let f = &fixture("nnclr");
        let (z1, z2, p1, p2, bank) = (
            tensor(&f["z0"]),
            tensor(&f["z1"]),
            tensor(&f["p0"]),
            tensor(&f["p1"]),
            tensor(&f["bank"]),
        );
        let (nn1, nn2) = (
            nearest_neighbours(&z1, &bank),
            nearest_neighbours(&z2, &bank),
        );
        assert!(nn1.equal(&tensor(&f["nn0"])) && nn2.equal(&tensor(&f["nn1"])));
        let t = f["temperature"].as_f64().unwrap();
        let loss = ((losses::nt_xent(&nn1, &p2, t) + losses::nt_xent(&nn2, &p1, t)) * 0.5)
            .double_value(&[]);
        let want = f["loss"].as_f64().unwrap();
        assert!((loss - want).abs() < 1e-12, "{loss} vs {want}");
        let t = Tensor::zeros([], (Kind::Int64, tch::Device::Cpu));
        super::super::moco::enqueue(&bank, &mut RingPtr::new(t.shallow_clone()), &z2);
        assert!(
            bank.equal(&tensor(&f["bank_after"])),
            "the second view's projections enqueued"
        );
        assert_eq!(t.int64_value(&[]), z2.size()[0]);
    }
}
