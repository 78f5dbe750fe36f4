//! MoCo v1 (He et al. 2020) and v2 (Chen et al. 2020): a query encoder trained by InfoNCE
//! against the key of the other view, produced by a momentum (EMA) key encoder, and a
//! queue of the K most recent keys as negatives. v1 has a linear head; v2 an MLP head
//! (with blur in its augmentation preset and the cosine schedule of the training loop).
//! BatchNorm runs on `shuffle_bn_groups` sub-batches of the global batch, the key
//! encoder's on shuffled ones, as the paper's shuffling BN across GPUs. These sub-batch
//! BatchNorms stay local (never synchronised, whatever `sync_bn` says: that is the point of
//! them); on W ranks each runs `shuffle_bn_groups / W` of them, and the key encoder's
//! shuffle is across ranks (`nets::split_bn_forward`), so that W ranks with G groups compute
//! what one process with G groups does. Every rank enqueues the keys of the global batch.

use super::{DataInfo, Method, MethodConfig, MethodSpec, StepCtx, views};
use crate::augment::Views;
use crate::config::check;
use crate::dist::current as dist;
use crate::nets::{self, Encoder, MlpNorm, momentum::MomentumPairs};
use crate::{losses, precision};
use anyhow::{Result, bail};
use std::sync::Arc;
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

pub const SPEC_V1: MethodSpec = MethodSpec {
    name: "moco-v1",
    summary: "momentum key encoder and a queue of negative keys, linear head (InfoNCE)",
    keys: KEYS_V1,
    validate,
    uses_labels: false,
    encoders: super::ANY_ENCODER,
    build: |p, cfg, data| Ok(Box::new(Moco::new(p, cfg, data, false)?)),
};

pub const SPEC_V2: MethodSpec = MethodSpec {
    name: "moco-v2",
    summary: "MoCo with an MLP head (use with blur and the cosine schedule)",
    keys: KEYS_V2,
    validate,
    uses_labels: false,
    encoders: super::ANY_ENCODER,
    build: |p, cfg, data| Ok(Box::new(Moco::new(p, cfg, data, true)?)),
};

/// MoCo's keys: v1's head is linear (`proj_dim`), v2's an MLP (`proj_hidden_dim` too).
const MOCO_KEYS: &[&str] = &[
    "proj_dim",
    "temperature",
    "ema_momentum",
    "moco_queue",
    "shuffle_bn_groups",
];
const KEYS_V1: &[&[&str]] = &[views::AUG_KEYS, MOCO_KEYS];
const KEYS_V2: &[&[&str]] = &[views::AUG_KEYS, MOCO_KEYS, &["proj_hidden_dim"]];

fn validate(cfg: &MethodConfig) -> Result<()> {
    check::at_least("moco_queue", cfg.keys.moco_queue, 1)?;
    if cfg.keys.shuffle_bn_groups < 1 || cfg.batch_size as i64 % cfg.keys.shuffle_bn_groups != 0 {
        bail!(
            "option shuffle_bn_groups = {} must be at least 1 and divide batch_size = {}",
            cfg.keys.shuffle_bn_groups,
            cfg.batch_size
        );
    }
    Ok(())
}

pub struct Moco {
    encoder: Encoder,
    head: nn::SequentialT,
    key_encoder: Encoder,
    key_head: nn::SequentialT,
    /// `[K, dim]`, L2-normalised keys; `queue_ptr` is where the next key goes.
    queue: Tensor,
    queue_ptr: RingPtr,
    pending_keys: Option<Tensor>,
    momentum: MomentumPairs,
    m: f64,
    temperature: f64,
    groups: i64,
    views: Arc<Views>,
}

impl Moco {
    pub fn new(p: &nn::Path, cfg: &MethodConfig, data: &DataInfo, mlp_head: bool) -> Result<Moco> {
        let head_dims = |d: i64| {
            if mlp_head {
                vec![d, cfg.keys.proj_hidden_dim, cfg.keys.proj_dim]
            } else {
                vec![d, cfg.keys.proj_dim]
            }
        };
        let encoder = nets::build_encoder(&(p / "encoder"), cfg.encoder, data.shape[0]);
        let head = nets::mlp(&(p / "projector"), &head_dims(encoder.dim), MlpNorm::None);
        let t = p / "target";
        let key_encoder = nets::build_encoder(&(&t / "encoder"), cfg.encoder, data.shape[0]);
        let key_head = nets::mlp(
            &(&t / "projector"),
            &head_dims(key_encoder.dim),
            MlpNorm::None,
        );
        let init = losses::l2_normalize(&Tensor::randn(
            [cfg.keys.moco_queue, cfg.keys.proj_dim],
            (Kind::Float, p.device()),
        ));
        let queue = p.add("queue", init, false);
        let queue_ptr = RingPtr::new(p.add(
            "queue_ptr",
            Tensor::zeros([], (Kind::Int64, p.device())),
            false,
        ));
        Ok(Moco {
            encoder,
            head,
            key_encoder,
            key_head,
            queue,
            queue_ptr,
            pending_keys: None,
            momentum: MomentumPairs::default(),
            m: cfg.keys.ema_momentum,
            temperature: cfg.keys.temperature,
            groups: cfg.keys.shuffle_bn_groups,
            views: views::two_views(cfg.aug, data),
        })
    }
}

/// Where a ring buffer's next key goes: the `queue_ptr` variable, which checkpoints carry,
/// and its value on the host, read from the variable once (at the first enqueue, after any
/// checkpoint was loaded into it) and then kept in step with it, so that no step waits for
/// the device to read it.
pub struct RingPtr {
    var: Tensor,
    host: Option<i64>,
}

impl RingPtr {
    pub fn new(var: Tensor) -> RingPtr {
        RingPtr { var, host: None }
    }
}

/// Writes `keys` `[B, dim]` into the ring buffer `queue` `[K, dim]` at `ptr`, replacing
/// the oldest keys, and advances `ptr`. With B > K only the newest K keys are kept.
pub fn enqueue(queue: &Tensor, ptr: &mut RingPtr, keys: &Tensor) {
    let k = queue.size()[0];
    let keys = if keys.size()[0] > k {
        keys.narrow(0, keys.size()[0] - k, k)
    } else {
        keys.shallow_clone()
    };
    let b = keys.size()[0];
    let mut at = *ptr.host.get_or_insert_with(|| ptr.var.int64_value(&[]));
    let mut written = 0;
    tch::no_grad(|| {
        while written < b {
            let n = (b - written).min(k - at);
            queue.narrow(0, at, n).copy_(&keys.narrow(0, written, n));
            written += n;
            at = (at + n) % k;
        }
        let _ = ptr.var.shallow_clone().fill_(at);
    });
    ptr.host = Some(at);
}

impl Method for Moco {
    fn loss(&mut self, images: &[Tensor], _labels: &Tensor, _ctx: &StepCtx) -> Tensor {
        let images = &images[0]; // [2B, C, H, W]: the two views
        let x = images.chunk(2, 0); // 2 x [B, C, H, W]
        let q_net = |t: &Tensor| self.head.forward_t(&self.encoder.forward_t(t, true), true);
        let q = nets::split_bn_forward(q_net, &x[0], self.groups, false); // [B, dim]
        let k = tch::no_grad(|| {
            let k_net = |t: &Tensor| {
                self.key_head
                    .forward_t(&self.key_encoder.forward_t(t, true), true)
            };
            let k = nets::split_bn_forward(k_net, &x[1], self.groups, true); // [B, dim]
            precision::in_fp32([&k], |[k]| losses::l2_normalize(&k))
        });
        let (queue, t) = (self.queue.detach(), self.temperature);
        let loss = precision::in_fp32([&q, &k, &queue], |[q, k, queue]| {
            losses::info_nce(&losses::l2_normalize(&q), &k, &queue, t, None)
        });
        // Every rank enqueues the keys of the whole global batch: the queues stay equal.
        self.pending_keys = Some(dist::all_gather(&k)); // [W B, dim]
        loss
    }
    fn after_step(&mut self, _ctx: &StepCtx) {
        self.momentum.update(self.m);
        if let Some(k) = self.pending_keys.take() {
            enqueue(&self.queue, &mut self.queue_ptr, &k);
        }
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
    fn check_world_size(&self, world_size: usize) -> Result<()> {
        if self.groups % world_size as i64 != 0 {
            bail!(
                "option shuffle_bn_groups = {} must be divisible by the number of processes ({world_size}): each runs an equal share of the BatchNorm sub-batches",
                self.groups
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use tch::Device;

    /// MoCo v2 with a small CNN and heads, a queue of 8 keys and 2 BatchNorm sub-batches.
    fn tiny_config() -> Config {
        let mut c = Config {
            method: "moco-v2".into(),
            ..Config::default()
        };
        c.encoder.cnn_widths = vec![4, 8];
        c.keys.proj_hidden_dim = 8;
        c.keys.proj_dim = 4;
        c.keys.moco_queue = 8;
        c.keys.shuffle_bn_groups = 2;
        c.keys.ema_momentum = 0.9;
        c
    }

    fn rows(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.select(1, 0)).unwrap()
    }

    #[test]
    fn queue_enqueues_newest_and_dequeues_oldest() {
        let queue = Tensor::zeros([6, 2], (Kind::Float, Device::Cpu));
        let mut ptr = RingPtr::new(Tensor::zeros([], (Kind::Int64, Device::Cpu)));
        let keys = |from: i64| {
            Tensor::arange_start(from, from + 4, (Kind::Float, Device::Cpu))
                .unsqueeze(1)
                .repeat([1, 2])
        };
        enqueue(&queue, &mut ptr, &keys(1)); // keys 1..=4
        assert_eq!(rows(&queue), vec![1., 2., 3., 4., 0., 0.]);
        assert_eq!(ptr.var.int64_value(&[]), 4);
        enqueue(&queue, &mut ptr, &keys(5)); // keys 5..=8: the two oldest (1, 2) go
        assert_eq!(rows(&queue), vec![7., 8., 3., 4., 5., 6.]);
        assert_eq!(ptr.var.int64_value(&[]), 2);
        let mut held = rows(&queue);
        held.sort_by(f32::total_cmp);
        assert_eq!(
            held,
            vec![3., 4., 5., 6., 7., 8.],
            "the queue holds the newest K keys"
        );
        // More keys than the queue holds: only the newest K stay.
        enqueue(
            &queue,
            &mut ptr,
            &Tensor::arange_start(10, 18, (Kind::Float, Device::Cpu))
                .unsqueeze(1)
                .repeat([1, 2]),
        );
        let mut held = rows(&queue);
        held.sort_by(f32::total_cmp);
        assert_eq!(held, vec![12., 13., 14., 15., 16., 17.]);
    }

    /// MoCo's loss and queue over two steps against lightly's NTXentLoss with a memory bank
    /// (tests/fixtures/lightly_losses.json): the InfoNCE of normalised queries and keys
    /// against the queue, the keys enqueued after the step, the second step scored against
    /// them.
    #[test]
    fn loss_and_queue_match_lightlys_memory_bank() {
        use crate::losses::fixtures::{close, int, load, num, tensor};
        let f = load("lightly_losses.json", "info_nce_queue");
        let (b, d, k) = (int(&f, "batch"), int(&f, "dim"), int(&f, "queue_size"));
        let t = num(&f, "temperature");
        let queue = tensor(&f, "queue", &[k, d]);
        let mut ptr = RingPtr::new(Tensor::zeros([], (Kind::Int64, Device::Cpu)));
        for step in ["1", "2"] {
            let q = losses::l2_normalize(&tensor(&f, &format!("q{step}"), &[b, d]));
            let keys = losses::l2_normalize(&tensor(&f, &format!("k{step}"), &[b, d]));
            close(
                &losses::info_nce(&q, &keys, &queue, t, None),
                num(&f, &format!("loss_step{step}")),
            );
            enqueue(&queue, &mut ptr, &keys);
            let want = tensor(&f, &format!("queue_after_step{step}"), &[k, d]);
            assert!(
                queue.allclose(&want, 1e-12, 1e-12, false),
                "step {step}: {queue} vs {want}"
            );
        }
    }

    /// MoCo's shuffling BN: the key encoder runs on sub-batches of a random permutation of
    /// the batch (so that BatchNorm statistics cannot leak which key belongs to which
    /// query), and each key comes back to its own image's row.
    #[test]
    fn the_key_encoder_runs_on_shuffled_sub_batches() {
        let _rng = crate::torch_rng_lock();
        let cfg = tiny_config();
        let info = DataInfo {
            shape: [1, 8, 8],
            num_classes: 2,
        };
        let vs = nn::VarStore::new(Device::Cpu);
        tch::manual_seed(0);
        let mut m = Moco::new(&vs.root(), &cfg.method_view(), &info, true).unwrap();
        let x = Tensor::rand([8, 1, 8, 8], (Kind::Float, Device::Cpu)); // 2 views of 4 images
        let ctx = StepCtx {
            epoch: 0,
            step: 0,
            total_steps: 1,
        };
        // The key encoder's permutation is the loss's first random draw after the seed.
        tch::manual_seed(1);
        let _ = m.loss(
            std::slice::from_ref(&x),
            &Tensor::zeros([4], (Kind::Int64, Device::Cpu)),
            &ctx,
        );
        let keys = m.pending_keys.take().unwrap(); // [4, dim], one process: this batch's
        tch::manual_seed(1);
        let perm = Vec::<i64>::try_from(Tensor::randperm(4, (Kind::Int64, Device::Cpu))).unwrap();
        // The keys of the second view's images when `groups` (each a list of images) are
        // the sub-batches, by image.
        let keys_of = |groups: &[&[i64]]| {
            let view = x.narrow(0, 4, 4);
            let mut out: Vec<Option<Tensor>> = (0..4).map(|_| None).collect();
            tch::no_grad(|| {
                for g in groups {
                    let images = view.index_select(0, &Tensor::from_slice(g));
                    let k = m
                        .key_head
                        .forward_t(&m.key_encoder.forward_t(&images, true), true);
                    for (row, &i) in g.iter().enumerate() {
                        out[i as usize] = Some(losses::l2_normalize(&k).get(row as i64));
                    }
                }
            });
            Tensor::stack(&out.into_iter().map(Option::unwrap).collect::<Vec<_>>(), 0)
        };
        let shuffled = keys_of(&[&perm[..2], &perm[2..]]);
        assert!(
            keys.allclose(&shuffled, 1e-5, 1e-6, false),
            "{keys} vs {shuffled}"
        );
        // With this permutation the sub-batches differ from the unshuffled ones, and so do
        // the keys: the test tells shuffled from unshuffled BatchNorm.
        let plain = keys_of(&[&[0, 1], &[2, 3]]);
        assert!(!keys.allclose(&plain, 1e-3, 1e-3, false), "{perm:?}");
    }

    #[test]
    fn a_step_enqueues_keys_and_moves_the_key_encoder_by_ema() {
        let _rng = crate::torch_rng_lock();
        let cfg = tiny_config();
        let model = crate::run::Model::build(
            &cfg,
            &DataInfo {
                shape: [1, 8, 8],
                num_classes: 2,
            },
            Device::Cpu,
        )
        .unwrap();
        let mut m = model.method;
        let vars = model.vs.variables();
        let (online, target) = (
            &vars["encoder.stage0.conv1.weight"],
            &vars["target.encoder.stage0.conv1.weight"],
        );
        assert!(online.equal(target) && !target.requires_grad());
        let ctx = StepCtx {
            epoch: 0,
            step: 0,
            total_steps: 1,
        };
        let x = Tensor::rand([8, 1, 8, 8], (Kind::Float, Device::Cpu)); // 2 views of 4 images
        let loss = m.loss(
            std::slice::from_ref(&x),
            &Tensor::zeros([4], (Kind::Int64, Device::Cpu)),
            &ctx,
        );
        loss.backward();
        let before_target = target.copy();
        tch::no_grad(|| online.shallow_clone().copy_(&(online + 1.0)));
        m.after_step(&ctx);
        // target <- 0.9 target + 0.1 (online + 1) = target + 0.1 (since online == target before)
        assert!(target.allclose(&(&before_target + 0.1), 1e-5, 1e-6, false));
        assert_eq!(vars["queue_ptr"].int64_value(&[]), 4);
        let norms = vars["queue"]
            .narrow(0, 0, 4)
            .norm_scalaropt_dim(2, &[1i64][..], false);
        assert!(
            norms.allclose(&norms.ones_like(), 1e-5, 1e-5, false),
            "enqueued keys are unit vectors"
        );
    }
}
