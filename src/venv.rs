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
