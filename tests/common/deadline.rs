//! A deadline for test code that could block for ever. Shared by the end-to-end tests
//! (`tests/common`) and the library's own tests (`crate::deadline` in src/lib.rs).

use std::sync::mpsc;
use std::time::Duration;

/// Runs `f` on a thread of its own and returns its result; the test fails when `f` runs
/// longer than `limit` (for in-process code that could block for ever, such as a loader
/// waiting on its producer thread), or with `f`'s own panic.
pub fn within<R: Send + 'static>(limit: Duration, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || drop(tx.send(f())));
    match rx.recv_timeout(limit) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(worker.join().expect_err("f panicked"))
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("did not finish within {} s", limit.as_secs())
        }
    }
}
