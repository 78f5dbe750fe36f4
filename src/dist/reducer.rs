//! The gradients of a data-parallel step averaged over the ranks while the backward pass
//! runs, as PyTorch DDP's reducer does: the parameters, in the order their gradients become
//! ready (the reverse of the forward pass's), are cut into buckets, each a flat buffer of one
//! dtype and device; a hook on each parameter's gradient accumulator (in the shim) copies the
//! gradient into its bucket, and a bucket whose every gradient is in is all-reduced at once,
//! asynchronously, while autograd computes the gradients of the layers before it. After the
//! backward pass the buckets are waited for, divided by the world size and written into the
//! gradients.
//!
//! The result is what averaging the gradients after the backward pass gives: a parameter
//! that the loss does not reach keeps the gradient it holds (zeroed by the optimizer, which
//! then averages as zeros) or none (it stays without one and adds zeros to the others' sums).

use super::{ProcessGroup, buckets};
use crate::native::{self, check};
use anyhow::{Context, Result};
use std::ffi::c_int;
use std::rc::Rc;
use tch::Tensor;

/// PyTorch DDP's first bucket (`dist._DEFAULT_FIRST_BUCKET_BYTES`): small, so that the first
/// all-reduce starts early in the backward pass.
pub const FIRST_BUCKET_BYTES: usize = 1 << 20;

/// A reducer for one list of parameters over a process group. Its hooks stay on the
/// parameters' gradient accumulators until it is dropped, and act only inside `backward`.
pub struct Reducer {
    raw: *mut native::Reducer,
    group: Rc<ProcessGroup>,
}

/// How the buckets of the last backward pass were launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launches {
    pub buckets: usize,
    /// Launched before the backward pass ran: every parameter of the bucket is outside the
    /// graph of the loss.
    pub before: usize,
    /// Launched during the backward pass, by the hook of the last of its gradients to come.
    pub during: usize,
}

impl Reducer {
    /// A reducer of `params`: leaves that require grad, in the order the forward pass uses
    /// them (a model's creation order), the same on every rank. The reversed list is cut into
    /// runs of one dtype and device of up to `bucket_bytes` (the first up to
    /// `FIRST_BUCKET_BYTES`; a larger tensor alone).
    pub fn new(group: Rc<ProcessGroup>, params: &[Tensor], bucket_bytes: usize) -> Result<Reducer> {
        let order: Vec<Tensor> = params.iter().rev().map(Tensor::shallow_clone).collect();
        let first = FIRST_BUCKET_BYTES.min(bucket_bytes);
        let sizes: Vec<i64> = buckets(&order, first, bucket_bytes)
            .iter()
            .map(|r| r.len() as i64)
            .collect();
        let ptrs = native::ptrs(&order);
        let n = c_int::try_from(ptrs.len()).context("too many parameters")?;
        let nb = c_int::try_from(sizes.len()).context("too many buckets")?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: n live tensors and nb sizes for the call's duration; `raw` receives an owned
        // reducer, which holds its own references to the tensors.
        check(unsafe {
            native::selfsup_reducer_create(
                group.raw,
                ptrs.as_ptr(),
                n,
                sizes.as_ptr(),
                nb,
                &mut raw,
            )
        })
        .context("creating the gradient reducer")?;
        Ok(Reducer { raw, group })
    }

    /// Whether this reducer was made for `params` (the same tensors in the same order) and
    /// they are unchanged (dtype, device, size; a new dtype gives a parameter a new gradient
    /// accumulator, without the hook).
    pub fn covers(&self, params: &[Tensor]) -> bool {
        let ptrs = native::ptrs(params.iter().rev());
        let Ok(n) = c_int::try_from(ptrs.len()) else {
            return false;
        };
        // SAFETY: n live tensors for the call's duration.
        unsafe { native::selfsup_reducer_matches(self.raw, ptrs.as_ptr(), n) != 0 }
    }

    /// The backward pass of `loss` with every bucket all-reduced as soon as its gradients are
    /// in; then each parameter's gradient is its mean over the ranks. Every rank must call
    /// this for a graph of the same shape (the same collectives in the same order).
    pub fn backward(&self, loss: &Tensor) -> Result<()> {
        // SAFETY: a live reducer and tensor.
        check(unsafe { native::selfsup_reducer_prepare(self.raw, loss.as_ptr()) })
            .context("averaging the gradients")?;
        if let Err(e) = loss.f_backward() {
            // SAFETY: a live reducer; it is disarmed and leaves its collectives.
            unsafe { native::selfsup_reducer_abort(self.raw) };
            return Err(self.group.failure("the backward pass", &e.to_string()));
        }
        // SAFETY: a live reducer, prepared above.
        check(unsafe { native::selfsup_reducer_finish(self.raw) })
            .context("averaging the gradients")
    }

    /// How the buckets of the last backward pass were launched.
    pub fn launches(&self) -> Launches {
        let mut out = [0i64; 3];
        // SAFETY: a live reducer; the shim writes three numbers.
        unsafe { native::selfsup_reducer_stats(self.raw, out.as_mut_ptr()) };
        let [buckets, before, during] = out.map(|n| n as usize);
        Launches {
            buckets,
            before,
            during,
        }
    }
}

impl std::fmt::Debug for Reducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reducer({:?})", self.launches())
    }
}

impl Drop for Reducer {
    /// Takes the hooks off the gradient accumulators (a later backward pass over the same
    /// parameters must not reach a freed reducer), then frees it.
    fn drop(&mut self) {
        // SAFETY: owned, not used after this.
        unsafe { native::selfsup_reducer_destroy(self.raw) };
    }
}
