//! BatchNorm for data-parallel training. In one process it is libtorch's `batch_norm`. When
//! a process group is current (`dist::current`, a training step on several ranks) a
//! BatchNorm layer in training mode is one of:
//!
//! - **synchronised** (the `sync_bn` key, the default): it normalises with the mean and
//!   variance of the global batch. Each rank's per-channel count, mean and sum of squared
//!   deviations go through the differentiable all-gather and are combined (`combine_moments`),
//!   so the gradient reaches every rank's inputs, and the running statistics are updated
//!   with the global mean and unbiased variance exactly as libtorch's `batch_norm` updates
//!   them. Built from generic ops, it runs on CPU (Gloo) as on CUDA (NCCL).
//! - **local**, inside `bn_local`: it normalises with the statistics of what it is given on
//!   this rank alone (MoCo's per-sub-batch BatchNorm, or `sync_bn = false`). Its running
//!   statistics are not updated on the spot: the updates are gathered at the end of the
//!   scope and applied on every rank in rank order, as one process running every rank's
//!   sub-batches one after another updates them; so every rank keeps the same buffers.
//!
//! The variables are tch's (`weight`, `bias`, `running_mean`, `running_var`), so
//! checkpoints and the PyTorch export do not change.

use crate::dist::current as dist;
use crate::native;
use std::borrow::Borrow;
use std::cell::RefCell;
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

/// tch's default momentum, which every BatchNorm here uses (and its epsilon, `BatchNorm::EPS`).
const MOMENTUM: f64 = 0.1;

#[derive(Debug)]
pub struct BatchNorm {
    bn: nn::BatchNorm,
}

impl BatchNorm {
    /// The epsilon of every layer here (libtorch's default).
    pub const EPS: f64 = 1e-5;

    /// (weight, bias, running mean, running variance) `[C]` each: the affine map the layer
    /// applies in evaluation, `(x - mean) / sqrt(var + EPS) * weight + bias`.
    pub fn eval_affine(&self) -> Option<(&Tensor, &Tensor, &Tensor, &Tensor)> {
        let (w, b) = (self.bn.ws.as_ref()?, self.bn.bs.as_ref()?);
        Some((w, b, &self.bn.running_mean, &self.bn.running_var))
    }
}

thread_local! {
    /// Whether `relu_train` fuses (on by default; off to compare with the two steps).
    static FUSE_RELU: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Turns the fused training batch norm + ReLU on or off on this thread (`native::bn_relu_train`;
/// on by default): off runs libtorch's batch_norm and relu, for comparisons.
pub fn set_fused_relu(on: bool) {
    FUSE_RELU.with(|f| f.set(on));
}

impl BatchNorm {
    /// relu(self(xs) + residual) in training mode, the residual optional (a ResNet block's
    /// shortcut). In one process (libtorch's batch_norm, as `forward_t`) they run fused, as one
    /// autograd function (`native::bn_relu_train`; on the CPU over channels-last float32 or
    /// bfloat16, libtorch's steps elsewhere); on several ranks, the layer's synchronised or local
    /// forward, the sum and a ReLU.
    pub fn relu_train(&self, xs: &Tensor, residual: Option<&Tensor>) -> Tensor {
        if dist::world_size() == 1
            && FUSE_RELU.with(|f| f.get())
            && let (Some(w), Some(b)) = self.weight_bias()
        {
            return native::bn_relu_train(
                xs,
                w,
                b,
                residual,
                &self.bn.running_mean,
                &self.bn.running_var,
                MOMENTUM,
                Self::EPS,
            )
            .unwrap_or_else(|e| panic!("fused batch norm + ReLU: {e}"));
        }
        let ys = self.forward_t(xs, true);
        match residual {
            Some(r) => ys + r,
            None => ys,
        }
        .relu()
    }
}

/// BatchNorm over `[N, C]` (or `[N, C, L]`) with the variables of `nn::batch_norm1d`.
pub fn batch_norm1d<'a, P: Borrow<nn::Path<'a>>>(p: P, channels: i64) -> BatchNorm {
    BatchNorm {
        bn: nn::batch_norm1d(p, channels, Default::default()),
    }
}

/// BatchNorm over `[N, C, H, W]` with the variables of `nn::batch_norm2d`.
pub fn batch_norm2d<'a, P: Borrow<nn::Path<'a>>>(p: P, channels: i64) -> BatchNorm {
    BatchNorm {
        bn: nn::batch_norm2d(p, channels, Default::default()),
    }
}

/// A running-statistics update held back by `bn_local`: the layer's buffers and the batch
/// mean and unbiased variance `[C]` of one call.
struct Update {
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
}

thread_local! {
    /// The updates of each open `bn_local` scope, innermost last.
    static LOCAL: RefCell<Vec<Vec<Update>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with its BatchNorm layers local to this rank: each normalises with the batch
/// statistics of the input it is given here, never with the other ranks'. Every rank must
/// enter the scope at the same point (its end gathers the held-back running-statistic
/// updates when a group of several ranks is current). Without one it changes nothing.
pub fn bn_local<R>(f: impl FnOnce() -> R) -> R {
    struct Open;
    impl Drop for Open {
        fn drop(&mut self) {
            LOCAL.with(|l| l.borrow_mut().pop());
        }
    }
    LOCAL.with(|l| l.borrow_mut().push(Vec::new()));
    let open = Open;
    let out = f();
    let updates = LOCAL.with(|l| std::mem::take(l.borrow_mut().last_mut().expect("open")));
    drop(open);
    apply_in_rank_order(&updates);
    out
}

fn in_local_scope() -> bool {
    LOCAL.with(|l| !l.borrow().is_empty())
}

/// Gathers the updates of every rank and applies them to the buffers in rank order (each
/// rank's in the order they were made), the same on every rank.
fn apply_in_rank_order(updates: &[Update]) {
    if updates.is_empty() {
        return;
    }
    let parts: Vec<Tensor> = updates
        .iter()
        .flat_map(|u| [&u.mean, &u.var])
        .map(|t| t.to_kind(Kind::Double))
        .collect();
    let mine = Tensor::cat(&parts, 0).unsqueeze(0); // [1, total]
    let all = dist::all_gather(&mine); // [world, total]
    tch::no_grad(|| {
        for r in 0..all.size()[0] {
            let row = all.get(r);
            let mut at = 0;
            for u in updates {
                let c = u.mean.numel() as i64;
                for (running, stat) in [(&u.running_mean, at), (&u.running_var, at + c)] {
                    let value = row.narrow(0, stat, c).to_kind(running.kind());
                    ema_(running, &value);
                }
                at += 2 * c;
            }
        }
    });
}

/// running <- (1 - momentum) running + momentum value, as libtorch's batch_norm.
fn ema_(running: &Tensor, value: &Tensor) {
    let _ = running
        .shallow_clone()
        .g_mul_scalar_(1.0 - MOMENTUM)
        .g_add_(&(value * MOMENTUM));
}

/// Combines per-rank moments `[W, 1 + 2C]` (each row: count, mean `[C]`, sum of squared
/// deviations from that mean `[C]`) into the moments of the union: (mean `[C]`, biased
/// variance `[C]`, count `[]`). Chan et al.'s pairwise formula, which stays accurate where
/// E[x²] - E[x]² would cancel. Differentiable in the means and sums. All on the device: the
/// host never waits for the count.
pub fn combine_moments(all: &Tensor, channels: i64) -> (Tensor, Tensor, Tensor) {
    let n = all.narrow(1, 0, 1); // [W, 1]
    let means = all.narrow(1, 1, channels); // [W, C]
    let m2 = all.narrow(1, 1 + channels, channels); // [W, C]
    let kind = all.kind();
    let total = n.sum(kind); // []
    let mean = (&means * &n).sum_dim_intlist(&[0i64][..], false, kind) / &total; // [C]
    let spread = (&means - mean.unsqueeze(0)).square() * &n; // [W, C]
    let var = (m2 + spread).sum_dim_intlist(&[0i64][..], false, kind) / &total; // [C]
    (mean, var, total)
}

impl BatchNorm {
    fn weight_bias(&self) -> (Option<&Tensor>, Option<&Tensor>) {
        (self.bn.ws.as_ref(), self.bn.bs.as_ref())
    }

    /// `[N, C, ...]` -> the dims to reduce (all but 1) and the shape `[1, C, 1, ...]`.
    fn layout(xs: &Tensor) -> (Vec<i64>, Vec<i64>) {
        let d = xs.dim() as i64;
        let dims = (0..d).filter(|&i| i != 1).collect();
        let mut shape = vec![1; d as usize];
        shape[1] = xs.size()[1];
        (dims, shape)
    }

    /// Batch statistics of this rank's input; the running-statistic update is held back
    /// for the end of the `bn_local` scope.
    fn local(&self, xs: &Tensor) -> Tensor {
        let (w, b) = self.weight_bias();
        let ys = Tensor::batch_norm(xs, w, b, None, None, true, MOMENTUM, Self::EPS, true);
        let (dims, _) = Self::layout(xs);
        let (var, mean) = tch::no_grad(|| xs.var_mean_dim(&dims[..], true, false));
        let update = Update {
            running_mean: self.bn.running_mean.shallow_clone(),
            running_var: self.bn.running_var.shallow_clone(),
            mean,
            var,
        };
        LOCAL.with(|l| l.borrow_mut().last_mut().expect("open").push(update));
        ys
    }

    /// Statistics of the global batch, gathered from every rank.
    fn synced(&self, xs: &Tensor) -> Tensor {
        let (dims, shape) = Self::layout(xs);
        let c = shape[1];
        let kind = super::float_kind(xs.kind());
        let x = xs.to_kind(kind);
        let mean = x.mean_dim(&dims[..], false, kind); // [C]
        let m2 = (&x - mean.view(&shape[..]))
            .square()
            .sum_dim_intlist(&dims[..], false, kind); // [C]
        let count = Tensor::full([1], (x.numel() as i64 / c) as f64, (kind, x.device()));
        let mine = Tensor::cat(&[count, mean, m2], 0).unsqueeze(0); // [1, 1 + 2C]
        let all = dist::all_gather(&mine); // [W, 1 + 2C]
        let (mean, var, n) = combine_moments(&all, c);
        tch::no_grad(|| {
            ema_(
                &self.bn.running_mean,
                &mean.to_kind(self.bn.running_mean.kind()),
            );
            let n = n.to_kind(Kind::Double); // []
            let unbiased = var.to_kind(Kind::Double) * (&n / (&n - 1.0).clamp_min(1.0));
            ema_(
                &self.bn.running_var,
                &unbiased.to_kind(self.bn.running_var.kind()),
            );
        });
        let mut ys = (x - mean.view(&shape[..])) * (var + Self::EPS).rsqrt().view(&shape[..]);
        if let (Some(w), Some(b)) = self.weight_bias() {
            ys = ys * w.view(&shape[..]) + b.view(&shape[..]);
        }
        ys.to_kind(xs.kind())
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        if !train || dist::world_size() == 1 {
            self.bn.forward_t(xs, train)
        } else if in_local_scope() {
            self.local(xs)
        } else if dist::sync_bn() {
            self.synced(xs)
        } else {
            // Only code outside a training step's scopes gets here: plain local BatchNorm.
            self.bn.forward_t(xs, train)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn moments_of_parts_combine_into_those_of_the_whole() {
        // Parts [1, 2, 3] and [10, 20] of one channel: the whole has mean 36 / 5 = 7.2 and
        // squared deviations 38.44 + 27.04 + 17.64 + 7.84 + 163.84 = 254.8, var 50.96.
        let part = |v: &[f64]| {
            let t = Tensor::from_slice(v);
            let mean = t.mean(Kind::Double);
            let m2 = (&t - &mean).square().sum(Kind::Double);
            Tensor::stack(&[Tensor::from(v.len() as f64), mean, m2], 0) // [3]
        };
        let all = Tensor::stack(&[part(&[1., 2., 3.]), part(&[10., 20.])], 0); // [2, 3]
        let (mean, var, n) = combine_moments(&all, 1);
        assert_eq!(n.double_value(&[]), 5.0);
        assert!((mean.double_value(&[0]) - 7.2).abs() < 1e-12);
        assert!((var.double_value(&[0]) - 50.96).abs() < 1e-12);
    }

    #[test]
    fn in_one_process_it_is_libtorchs_batch_norm() {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let ours = batch_norm2d(vs.root() / "a", 3);
        let theirs = nn::batch_norm2d(vs.root() / "b", 3, Default::default());
        tch::no_grad(|| {
            theirs
                .ws
                .as_ref()
                .unwrap()
                .shallow_clone()
                .copy_(ours.bn.ws.as_ref().unwrap())
        });
        let x = Tensor::randn([4, 3, 2, 2], (Kind::Float, Device::Cpu));
        for train in [true, false] {
            // Inside bn_local too: without a group it changes nothing.
            let y = bn_local(|| ours.forward_t(&x, train));
            assert!(y.equal(&theirs.forward_t(&x, train)));
            assert!(ours.bn.running_var.equal(&theirs.running_var));
        }
        let names: Vec<String> = vs
            .variables()
            .into_keys()
            .filter(|k| k.starts_with("a."))
            .collect();
        let mut names = names;
        names.sort();
        assert_eq!(
            names,
            ["a.bias", "a.running_mean", "a.running_var", "a.weight"]
        );
    }
}
