//! selfsup: self-supervised visual representation learning on libtorch.
//!
//! data -> method (one file each, behind `methods::Method`) -> training loop -> evaluation.
//! `dist` (PyTorch's c10d) and `precision` (libtorch's autocast) sit over `native`, the one
//! C++ shim.

pub mod augment;
pub mod cli;
pub mod config;
pub mod data;
pub mod dist;
pub mod eval;
pub mod faults;
pub mod launch;
pub mod losses;
pub mod methods;
pub mod metrics;
mod native;
pub mod nets;
pub mod optim;
pub mod plots;
pub mod precision;
pub mod report;
pub mod run;
pub mod rundir;
pub mod schedule;
pub mod tensor_io;
pub mod train;
pub mod venv;

/// The op profiler of `bench-step --profile`, for any code on libtorch (the examples).
pub use native::{OpTime, profile};

/// Keeps glibc from serving libtorch's large activation buffers with fresh mmaps (and
/// unmapping them on free): every batch would otherwise pay for page faults and zeroing,
/// which doubled the wall time of a CNN forward pass here. For a program's `main` (the
/// binary's, the examples'), before any thread starts.
pub fn tune_malloc() {
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Tests that seed or draw from libtorch's global random generator hold this lock, so that
/// tests running on parallel threads cannot interleave their draws (the exact-resume test
/// needs a run to be reproducible).
#[cfg(test)]
pub(crate) fn torch_rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `deadline::within(limit, f)`: a test body that could block for ever (a loader waiting on
/// its producer thread) fails after `limit` instead of hanging `cargo test`. The file is
/// shared with the end-to-end tests.
#[cfg(test)]
#[path = "../tests/common/deadline.rs"]
pub(crate) mod deadline;
