//! Data-parallel training over a c10d process group (`dist`). Each of W processes (ranks)
//! trains on a contiguous slice of every global batch of `batch_size` images and makes only
//! its own images' views; the forward pass runs with the group current, so that losses
//! gather their negatives and BatchNorm its statistics from every rank; the gradients are
//! averaged over the ranks during the backward pass (`dist::Reducer`: buckets all-reduced as
//! their gradients become ready, as PyTorch DDP does), so every rank takes the same step and
//! holds the same model, which starts as rank 0's (parameters and buffers broadcast).
//! W ranks then compute what one process computes with the whole batch.

use crate::dist::{
    Backend, DEFAULT_BUCKET_BYTES, DistEnv, Launches, ProcessGroup, Reducer, current,
};
use crate::nets::norm;
use anyhow::{Context, Result, ensure};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use tch::{Device, Tensor, nn};

/// How long a collective waits for the other ranks by default before the run fails (the
/// default of `pretrain --dist-timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// This process's part in a data-parallel run.
#[derive(Debug)]
pub struct DataParallel {
    /// None once `shutdown` has taken it.
    group: Option<Rc<ProcessGroup>>,
    /// Where the group's tensors live: the CPU (Gloo) or this rank's CUDA device (NCCL).
    device: Device,
    /// BatchNorm over the global batch (the `sync_bn` key); else local to each rank.
    pub sync_bn: bool,
    /// The gradient buckets' size (DDP's `bucket_cap_mb`): `DEFAULT_BUCKET_BYTES`.
    pub bucket_bytes: usize,
    /// The reducer of the model being trained, made by its first backward pass.
    reducer: RefCell<Option<Reducer>>,
}

impl DataParallel {
    /// Joins the process group of `env` for training on `device`: Gloo for the CPU, NCCL for
    /// a CUDA device (one per rank). Collectives fail after `timeout`.
    pub fn join(
        env: &DistEnv,
        device: Device,
        timeout: Duration,
        sync_bn: bool,
    ) -> Result<DataParallel> {
        let backend = match device {
            Device::Cuda(cuda_device) => Backend::Nccl { cuda_device },
            _ => Backend::Gloo,
        };
        let group = ProcessGroup::new(env, backend, timeout)
            .with_context(|| format!("rank {} of {}", env.rank, env.world_size))?;
        Ok(DataParallel::new(group, device, sync_bn))
    }

    pub fn new(group: ProcessGroup, device: Device, sync_bn: bool) -> DataParallel {
        DataParallel {
            group: Some(Rc::new(group)),
            device,
            sync_bn,
            bucket_bytes: DEFAULT_BUCKET_BYTES,
            reducer: RefCell::new(None),
        }
    }

    fn group(&self) -> &Rc<ProcessGroup> {
        self.group.as_ref().expect("the group lives until shutdown")
    }

    pub fn rank(&self) -> usize {
        self.group().rank()
    }

    pub fn world_size(&self) -> usize {
        self.group().world_size()
    }

    /// Gives every rank rank 0's variables of `vs` (parameters and buffers).
    pub fn broadcast_model(&self, vs: &nn::VarStore) -> Result<()> {
        self.group()
            .broadcast_var_store(vs)
            .context("broadcasting rank 0's model")
    }

    /// Runs the forward pass `f` with the group current: losses gather from every rank, and
    /// BatchNorm is synchronised (`sync_bn`) or local to each rank (`norm::bn_local`).
    pub fn forward<R>(&self, f: impl FnOnce() -> R) -> Result<R> {
        let scope = current::enter(self.group().clone(), self.sync_bn);
        let out = if self.sync_bn { f() } else { norm::bn_local(f) };
        scope.finish().context("the forward pass")?;
        Ok(out)
    }

    /// The backward pass of `loss` (whose gathers reduce-scatter their gradients to every
    /// rank), with the gradients of `vs`'s trainable variables that require grad averaged
    /// over the ranks as they become ready (in buckets of `bucket_bytes`); then each of them
    /// holds its mean over the ranks. The reducer is made on the first call, and again when
    /// the variables change (another model, a new dtype).
    pub fn backward(&self, loss: &Tensor, vs: &nn::VarStore) -> Result<()> {
        // In creation order, the order the forward pass uses them: the reducer fills its
        // buckets from the end, where the backward pass starts.
        let params: Vec<Tensor> = (vs.trainable_variables().into_iter())
            .filter(Tensor::requires_grad)
            .collect();
        let mut reducer = self.reducer.borrow_mut();
        if !reducer.as_ref().is_some_and(|r| r.covers(&params)) {
            *reducer = None; // its hooks off first
            *reducer = Some(Reducer::new(
                self.group().clone(),
                &params,
                self.bucket_bytes,
            )?);
        }
        reducer.as_ref().expect("made above").backward(loss)
    }

    /// How the gradient buckets of the last backward pass were launched; None before the
    /// first.
    pub fn launches(&self) -> Option<Launches> {
        self.reducer.borrow().as_ref().map(Reducer::launches)
    }

    /// The mean of `value` (on this rank's device) over the ranks, on the device.
    pub fn mean(&self, value: &Tensor) -> Result<Tensor> {
        let t = value.to_device(self.device).copy(); // all-reduced in place
        self.group()
            .all_reduce_sum_(&t)
            .context("averaging the loss")?;
        Ok(t / self.world_size() as f64)
    }

    /// Waits for every rank (none may tear down while another's last collective still needs
    /// it), then leaves the group.
    pub fn shutdown(mut self) -> Result<()> {
        self.reducer.take(); // it holds the group too
        let group = self.group.take().expect("shutdown once");
        Rc::try_unwrap(group)
            .expect("no forward pass holds the group")
            .shutdown()
    }
}

impl Drop for DataParallel {
    /// A run that ends in an error on this rank leaves its group to the process's exit: a
    /// barrier would wait (until the timeout) for peers that are in other collectives, and
    /// tearing c10d down while a peer's collective is in flight can abort the process before
    /// its error is printed. The peers see this rank go when its connections close.
    fn drop(&mut self) {
        if let Some(group) = self.group.take() {
            std::mem::forget(group);
        }
    }
}

/// This rank's share of an epoch's `order` for global batches of `batch_size`: the
/// `batch_size / world` images at `rank`'s place in each full batch (the last partial batch
/// is dropped, as training does). The loader cuts it into local batches of that size.
pub fn rank_order(order: &[usize], batch_size: usize, world: usize, rank: usize) -> Vec<usize> {
    let local = batch_size / world;
    order
        .chunks_exact(batch_size)
        .flat_map(|batch| &batch[rank * local..(rank + 1) * local])
        .copied()
        .collect()
}

/// The libtorch seed of a step on `rank`, from the run's `step_seed`: rank 0 draws what a
/// single process draws; every other rank its own stream, so that the random draws of
/// their images (masks, noise, patch positions) are not copies of rank 0's. What must be
/// shared (MoCo's shuffle) is drawn by rank 0 and broadcast.
pub fn rank_seed(step_seed: i64, rank: usize) -> i64 {
    if rank == 0 {
        return step_seed;
    }
    (step_seed as u64 ^ (rank as u64).wrapping_mul(0x94d0_49bb_1331_11eb)) as i64 & i64::MAX
}

/// The checks of a data-parallel run's config: the global batch splits evenly.
pub fn check_batch(batch_size: usize, world: usize) -> Result<()> {
    ensure!(
        batch_size.is_multiple_of(world),
        "option batch_size = {batch_size} is the global batch and must be divisible by the number of processes ({world})"
    );
    Ok(())
}
