//! The setup venv's Python (the one `scripts/setup.sh` makes and whose torch wheel provides
//! libtorch), found the way the build found libtorch: `build.rs` records the libtorch it
//! linked, `<venv>/lib/pythonX.Y/site-packages/torch/lib`. Reference scripts (the
//! torchvision and PyTorch comparisons, the export check) run with it. A leaf.

use anyhow::{Context, Result, bail};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The libtorch `lib` folder this binary was built against.
pub const LIBTORCH_LIB: &str = env!("SELFSUP_LIBTORCH_LIB");

/// A file of the source tree (a reference script, a preset), for the commands that run
/// them (the bench commands): under `SELFSUP_SOURCE` when set (a checkout next to a binary
/// carried to another machine), else in the tree this binary was built from.
pub fn source_file(relative: &str) -> PathBuf {
    std::env::var_os("SELFSUP_SOURCE")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join(relative)
}

/// `SELFSUP_PYTHON` when set, else `bin/python` of the venv that holds the linked libtorch.
pub fn python() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SELFSUP_PYTHON") {
        return Ok(p.into());
    }
    // torch/lib -> torch -> site-packages -> pythonX.Y -> lib -> the venv
    let lib = PathBuf::from(LIBTORCH_LIB);
    let found = lib.ancestors().nth(5).map(|venv| venv.join("bin/python"));
    match found {
        Some(p) if p.is_file() => Ok(p),
        _ => bail!(
            "no Python next to the libtorch this binary was built with ({LIBTORCH_LIB}); \
             run scripts/setup.sh, or set SELFSUP_PYTHON"
        ),
    }
}

/// Runs `script` with `python` and `args`; the JSON object on each line it prints. A failed
/// run is an error with the script's stderr, a line that is not JSON one naming the line.
pub fn run_json_lines<I, S>(python: &Path, script: &Path, args: I) -> Result<Vec<serde_json::Value>>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = std::process::Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed: {}",
            python.display(),
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str(line).with_context(|| format!("unexpected output line '{line}'"))
        })
        .collect()
}

/// A script kept running between requests: each request is one line on its stdin, answered
/// by JSON lines on its stdout up to the one that ends the answer. What it builds once
/// (models, compiled graphs) then serves every request. Its stderr is kept (the last
/// `STDERR_KEPT` bytes) for the error when it fails; dropped, it is asked to end (its stdin
/// closed) and killed if it does not.
pub struct Server {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    name: String,
}

/// How much of a server's stderr is kept for its error message.
const STDERR_KEPT: usize = 16 * 1024;

impl Server {
    /// Starts `script` with `python` and `args`.
    pub fn start<I, S>(python: &Path, script: &Path, args: I) -> Result<Server>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        use std::process::Stdio;
        let mut child = std::process::Command::new(python)
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", python.display()))?;
        let (stdin, stdout, mut err) = (
            child.stdin.take(),
            child.stdout.take().context("no stdout")?,
            child.stderr.take().context("no stderr")?,
        );
        // Drained all the time, so that a chatty stderr never fills its pipe and blocks it.
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut err, &mut buf) {
                let mut k = kept.lock().unwrap_or_else(|e| e.into_inner());
                k.extend_from_slice(&buf[..n]);
                let excess = k.len().saturating_sub(STDERR_KEPT);
                k.drain(..excess);
            }
        });
        Ok(Server {
            child,
            stdin,
            stdout: std::io::BufReader::new(stdout),
            stderr,
            name: format!("{} {}", python.display(), script.display()),
        })
    }

    /// Sends `request` (a line; none: only reads) and returns the JSON lines of the answer,
    /// up to and including the first for which `last` holds.
    pub fn request(
        &mut self,
        request: Option<&str>,
        last: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<Vec<serde_json::Value>> {
        use std::io::{BufRead, Write};
        if let Some(r) = request {
            let stdin = self
                .stdin
                .as_mut()
                .context("the server's stdin is closed")?;
            writeln!(stdin, "{r}")
                .and_then(|()| stdin.flush())
                .map_err(|e| self.failed(&format!("cannot send '{r}': {e}")))?;
        }
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.stdout.read_line(&mut line)? == 0 {
                return Err(self.failed("ended before its answer was complete"));
            }
            let v: serde_json::Value = serde_json::from_str(line.trim())
                .with_context(|| format!("unexpected output line '{}'", line.trim()))?;
            let end = last(&v);
            lines.push(v);
            if end {
                return Ok(lines);
            }
        }
    }

    /// The error of a server that failed: what happened, its exit status and its stderr.
    fn failed(&mut self, what: &str) -> anyhow::Error {
        self.stdin = None;
        let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
        // The drain thread ends with the process; give it a moment to take the last bytes.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let err = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        anyhow::anyhow!(
            "{} {what} ({status}): {}",
            self.name,
            String::from_utf8_lossy(&err).trim()
        )
    }
}

impl Drop for Server {
    /// Closes its stdin (the end of its requests) and gives it 10 s to end by itself, so that
    /// it can stop what it started (torch.compile's worker processes); then kills it.
    fn drop(&mut self) {
        self.stdin = None;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(10) {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_setup_venv_python_with_torch() {
        let py = super::python().unwrap();
        let out = std::process::Command::new(&py)
            .args(["-c", "import torch; print(torch.__version__)"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("2.11.0"),
            "{py:?}"
        );
    }
}
