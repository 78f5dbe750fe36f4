//! The process group of the forward pass running on this thread. A training step installs
//! it (`enter`) around its forward pass, so that the code deep inside that pass, which
//! cannot be handed a group (BatchNorm layers, a method's loss), can gather from every
//! rank. Outside such a scope (a single process, evaluation) the functions here act as the
//! only rank of a world of one: `all_gather` and `broadcast` return their input, `rank` is 0.
//!
//! A forward pass returns tensors, not results, so a collective that fails here does not
//! unwind: its error is kept, the later collectives of the pass are skipped (they return
//! filler of the right shape, which is never used for an update), and `Scope::finish`
//! returns the first error.

use super::ProcessGroup;
use anyhow::{Error, Result};
use std::cell::RefCell;
use std::rc::Rc;
use tch::Tensor;

struct Current {
    group: Rc<ProcessGroup>,
    sync_bn: bool,
    error: Option<Error>,
}

thread_local! {
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// The group is current on this thread until `finish` (or drop).
#[must_use = "the group is current only while the scope lives"]
pub struct Scope {
    // Not Send: the group is current on the thread that entered it.
    _thread: std::marker::PhantomData<*const ()>,
}

/// Makes `group` the current group of this thread; `sync_bn` says whether BatchNorm layers
/// normalise with the statistics of the global batch (see `nets::norm`).
pub fn enter(group: Rc<ProcessGroup>, sync_bn: bool) -> Scope {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        assert!(c.is_none(), "a process group is current already");
        *c = Some(Current {
            group,
            sync_bn,
            error: None,
        });
    });
    Scope {
        _thread: std::marker::PhantomData,
    }
}

impl Scope {
    /// Ends the scope: the first collective that failed in it, if any.
    pub fn finish(self) -> Result<()> {
        match CURRENT.with(|c| c.borrow_mut().take()) {
            Some(Current { error: Some(e), .. }) => Err(e),
            _ => Ok(()),
        }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        CURRENT.with(|c| c.borrow_mut().take());
    }
}

fn with_current<R>(f: impl FnOnce(Option<&mut Current>) -> R) -> R {
    CURRENT.with(|c| f(c.borrow_mut().as_mut()))
}

/// This process's rank (0 without a current group).
pub fn rank() -> usize {
    with_current(|c| c.map_or(0, |c| c.group.rank()))
}

/// The number of ranks (1 without a current group).
pub fn world_size() -> usize {
    with_current(|c| c.map_or(1, |c| c.group.world_size()))
}

/// Whether BatchNorm layers synchronise their batch statistics now: a group of more than
/// one rank is current and its training step asked for it.
pub fn sync_bn() -> bool {
    with_current(|c| c.is_some_and(|c| c.sync_bn))
}

/// Runs `op` on the current group, or returns `t` itself without one. After a failure
/// (this one or an earlier one of the scope) it returns `filler(t, world_size)` instead.
fn collective(
    t: &Tensor,
    op: impl FnOnce(&ProcessGroup, &Tensor) -> Result<Tensor>,
    filler: impl FnOnce(&Tensor, usize) -> Tensor,
) -> Tensor {
    with_current(|c| {
        let Some(c) = c else {
            return t.shallow_clone();
        };
        if c.error.is_none() {
            match op(&c.group, t) {
                Ok(out) => return out,
                Err(e) => c.error = Some(e),
            }
        }
        filler(t, c.group.world_size())
    })
}

/// `[B, ...]` from every rank -> `[world_size * B, ...]`, rank-major (rank r's rows are
/// `r * B..(r + 1) * B`). Differentiable when `t` requires a gradient: each rank's `t` then
/// receives the gradient of its rows summed over every rank's loss
/// (`ProcessGroup::all_gather_autograd`).
pub fn all_gather(t: &Tensor) -> Tensor {
    collective(
        t,
        |g, t| match t.requires_grad() {
            true => g.all_gather_autograd(t),
            false => g.all_gather(t),
        },
        |t, world| {
            Tensor::cat(
                &(0..world).map(|_| t.shallow_clone()).collect::<Vec<_>>(),
                0,
            )
        },
    )
}

/// Rank 0's `t` (same shape and dtype on every rank), outside autograd.
pub fn broadcast(t: &Tensor) -> Tensor {
    let t = t.detach().copy();
    collective(
        &t,
        |g, t| g.broadcast_(t, 0).map(|()| t.shallow_clone()),
        |t, _| t.shallow_clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_group_this_is_a_world_of_one() {
        let t = Tensor::from_slice(&[1f32, 2., 3.]).view([3, 1]);
        assert_eq!((rank(), world_size(), sync_bn()), (0, 1, false));
        assert!(all_gather(&t).equal(&t));
        assert!(broadcast(&t).equal(&t));
        let x = t.set_requires_grad(true);
        all_gather(&x).sum(tch::Kind::Float).backward();
        assert_eq!(
            Vec::<f32>::try_from(x.grad().view([-1])).unwrap(),
            [1., 1., 1.]
        );
    }
}
