//! Helpers of the end-to-end tests: running the `selfsup` binary (and any other program)
//! with a deadline, comparisons that fail on NaN and infinity, and a tiny MNIST-format data
//! set. Each test file uses part of them.
#![allow(dead_code)]

mod deadline;

#[allow(unused_imports)] // used by some of the test files that include this module
pub use deadline::within;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long one command of a test may run before the test kills it and fails: a command
/// that hangs (on a lock, a collective, the loader) fails its test instead of hanging
/// `cargo test`. The slowest command of the suite takes well under a minute.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(300);

/// Runs `c` to its end with stdout and stderr captured, like `Command::output`; when it
/// runs longer than `limit` it is killed (SIGKILL; `selfsup launch`'s ranks die with their
/// launcher) and the test fails with what it printed so far.
pub fn output_within(c: &mut Command, limit: Duration) -> Output {
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{c:?} does not start: {e}"));
    wait_within(child, limit, &format!("{c:?}"))
}

/// `Child::wait_with_output` for a child spawned with piped output, with `output_within`'s
/// deadline; `what` names it in the failure.
pub fn wait_within(child: Child, limit: Duration, what: &str) -> Output {
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || drop(tx.send(child.wait_with_output())));
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: signals our own child, which is not reaped before the output is read
            // below, so its pid cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let out = rx.recv().unwrap().unwrap();
            panic!(
                "{what} did not finish within {} s; killed. Its output:\n{}{}",
                limit.as_secs(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A child process that is killed (and reaped) when this goes out of scope, also when the
/// test fails before it ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn selfsup(args: &[&str]) -> Output {
    output_within(
        Command::new(env!("CARGO_BIN_EXE_selfsup"))
            .args(args)
            .env("RAYON_NUM_THREADS", "2"),
        COMMAND_LIMIT,
    )
}

/// Runs scripts/check_torch_export.py with the setup venv's Python on (exported weights,
/// input/output) pairs: whether every pair's PyTorch features matched, and what it printed.
pub fn check_torch_export(pairs: &[(PathBuf, PathBuf)]) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_torch_export.py");
    let out = output_within(
        Command::new(selfsup::venv::python().unwrap())
            .arg(&script)
            .args(pairs.iter().flat_map(|(w, io)| [w, io])),
        COMMAND_LIMIT,
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Whether every element of `t` is finite: no NaN, no infinity.
pub fn all_finite(t: &tch::Tensor) -> bool {
    t.isfinite().all().int64_value(&[]) == 1
}

/// max |a - b| / max |b| (float64; max |b| at least 1e-30), or infinity when `a` or `b`
/// holds a NaN or an infinity: a NaN compares false with everything and would pass a
/// `d > worst` maximum unseen, so non-finite values are the largest difference of all.
pub fn relative_difference(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    if !(all_finite(a) && all_finite(b)) {
        return f64::INFINITY;
    }
    let (a, b) = (a.to_kind(tch::Kind::Double), b.to_kind(tch::Kind::Double));
    let scale = b.abs().max().double_value(&[]).max(1e-30);
    (&a - &b).abs().max().double_value(&[]) / scale
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts that the command failed with `needle` in its error output (shown when not).
#[track_caller]
pub fn assert_fails_with(o: &Output, needle: &str) {
    assert!(
        !o.status.success() && stderr(o).contains(needle),
        "{}",
        stderr(o)
    );
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A small CNN and decoder with batches that fit the tiny data sets below.
pub const TINY_NET: [&str; 6] = [
    "--set",
    "cnn_widths=[4, 8]",
    "--set",
    "decoder_widths=[8, 4]",
    "--set",
    "batch_size=32",
];

pub fn idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// An MNIST-format folder of 8x8 images: class k has a bright 4x4 square in quadrant k.
pub fn write_tiny_mnist(dir: &Path) {
    let make = |n: usize| {
        let mut imgs = vec![0u8; n * 64];
        let mut labels = vec![0u8; n];
        for i in 0..n {
            let k = i % 4;
            let (r, c) = [(0, 0), (0, 4), (4, 0), (4, 4)][k];
            for y in r..r + 4 {
                for x in c..c + 4 {
                    imgs[i * 64 + y * 8 + x] = 180 + (i % 70) as u8;
                }
            }
            labels[i] = k as u8;
        }
        (imgs, labels)
    };
    let (ti, tl) = make(128);
    let (vi, vl) = make(40);
    std::fs::write(dir.join("train-images-idx3-ubyte"), idx(&[128, 8, 8], &ti)).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), idx(&[128], &tl)).unwrap();
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), idx(&[40, 8, 8], &vi)).unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), idx(&[40], &vl)).unwrap();
}

/// A temporary folder holding `data/`, a tiny MNIST-format data set.
pub fn tiny_mnist_in_temp_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    write_tiny_mnist(&data);
    (tmp, data)
}
