//! Deterministic crashes for the kill-and-resume tests: with the hidden environment variable
//! `SELFSUP_FAULT=POINT:N` the process SIGKILLs itself the N-th time it reaches the named
//! point (`POINT:N:stop` stops itself with SIGSTOP instead, so that a test can act while
//! it holds its run folder). The points: `step` (after each training step, its record
//! and its checkpoint), `metrics-line` (half-way through writing a record of
//! `metrics.jsonl`) and `atomic-write` (half-way through writing the temporary file of a
//! checkpoint). Without the variable every point is a no-op. A leaf: the writers of
//! `metrics.jsonl` and of safetensors files call it.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The environment variable that arms a fault.
pub const ENV: &str = "SELFSUP_FAULT";

struct Fault {
    point: String,
    at: usize,
    stop: bool,
}

/// Parses `POINT:N[:stop]` (N >= 1).
fn parse(spec: &str) -> Option<Fault> {
    let mut parts = spec.split(':');
    let point = parts.next()?.to_string();
    let at = parts.next()?.parse().ok().filter(|&n| n >= 1)?;
    let stop = match parts.next() {
        None => false,
        Some("stop") => true,
        Some(_) => return None,
    };
    (parts.next().is_none() && !point.is_empty()).then_some(Fault { point, at, stop })
}

fn armed() -> Option<&'static Fault> {
    static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
    FAULT
        .get_or_init(|| {
            let spec = std::env::var(ENV).ok()?;
            let fault = parse(&spec);
            if fault.is_none() {
                eprintln!("warning: {ENV}={spec} is not POINT:N or POINT:N:stop; ignored");
            }
            fault
        })
        .as_ref()
}

/// Whether this pass through `point` is the armed one (counting passes of that point only).
fn fires(point: &str) -> Option<&'static Fault> {
    static PASSES: AtomicUsize = AtomicUsize::new(0);
    let f = armed().filter(|f| f.point == point)?;
    (PASSES.fetch_add(1, Ordering::SeqCst) + 1 == f.at).then_some(f)
}

fn strike(f: &Fault) {
    let signal = if f.stop { libc::SIGSTOP } else { libc::SIGKILL };
    // SAFETY: sends a signal to this very process; nothing else is touched.
    unsafe {
        libc::kill(libc::getpid(), signal);
    }
}

/// A point where an armed fault may kill (or stop) the process.
pub fn point(name: &str) {
    if let Some(f) = fires(name) {
        strike(f);
    }
}

/// `out.write_all(bytes)`, except that when the fault armed at `name` fires, the process dies
/// (or stops) after the first half of `bytes`, as a kill in mid-write leaves the file.
pub fn write_all(out: &mut impl Write, bytes: &[u8], name: &str) -> std::io::Result<()> {
    let mut done = 0;
    if let Some(f) = fires(name) {
        done = bytes.len() / 2;
        out.write_all(&bytes[..done])?;
        out.flush()?;
        strike(f);
    }
    out.write_all(&bytes[done..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_or_are_refused() {
        let f = parse("step:7").unwrap();
        assert_eq!((f.point.as_str(), f.at, f.stop), ("step", 7, false));
        assert!(parse("metrics-line:2:stop").unwrap().stop);
        for bad in [
            "",
            "step",
            "step:0",
            "step:x",
            ":3",
            "step:3:pause",
            "step:3:stop:1",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}
