//! One writer per run folder: `pretrain` holds an exclusive advisory lock (`flock`, through
//! `std::fs::File::try_lock`) on `pretrain.lock` in the run folder while it trains. The OS
//! releases it when the process ends, however it ends (a SIGKILL never leaves a stale
//! lock). The holder writes its pid into the file, so that a second writer can name it.
//! Readers (`eval`, `report`, `export`) take no lock: checkpoints are replaced by a rename,
//! so they always read a whole one.

use crate::rundir::RunDir;
use anyhow::{Context, Result, bail};
use std::fs::{File, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The lock on a run folder, held until dropped.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
}

impl RunLock {
    /// Takes the lock of the run folder `dir` (which must exist), or fails at once naming
    /// the folder and the pid of the process that holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        let path = dir.join(RunDir::LOCK);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = match holder.trim() {
                    "" => "a process that has not yet written its pid".to_string(),
                    pid => format!("pid {pid}"),
                };
                bail!(
                    "run folder {} is being written by another selfsup pretrain ({holder}); wait for it to end or stop it (its lock: {})",
                    dir.display(),
                    path.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        file.set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(RunLock { file, path })
    }

    /// Whether another process holds the lock of `dir` now (a check before slow work; the
    /// writer itself takes the lock with `acquire`).
    pub fn check_free(dir: &Path) -> Result<()> {
        if dir.join(RunDir::LOCK).exists() {
            RunLock::acquire(dir)?;
        }
        Ok(())
    }
}

impl Drop for RunLock {
    /// Empties the file (no pid of an ended process stays in it); closing the file releases
    /// the lock.
    fn drop(&mut self) {
        if let Err(e) = self.file.set_len(0) {
            eprintln!("warning: cannot empty {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_pid_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).unwrap();
        let pid = std::fs::read_to_string(dir.path().join(RunDir::LOCK)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        // Another open file description conflicts, even in the same process.
        let e = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains(&dir.path().display().to_string())
                && e.contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        assert!(RunLock::check_free(dir.path()).is_err());
        drop(first);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(RunDir::LOCK)).unwrap(),
            ""
        );
        RunLock::check_free(dir.path()).unwrap();
        let _again = RunLock::acquire(dir.path()).unwrap();
    }
}
