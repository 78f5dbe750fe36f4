//! `selfsup launch`: N ranks of one command on this machine, for users without torchrun.
//! Each rank gets the variables torchrun would give it (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`,
//! `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`) and, unless already set, a share of
//! the cores, `OMP_NUM_THREADS` = cores / N (which a rank's data pipeline follows too). Rank 0 keeps the
//! terminal (its progress bar); the others' output is forwarded line by line with a
//! `[rank N]` prefix. When a rank fails, the others get a grace period to notice on their
//! own (their collectives fail and name the lost rank), then are stopped.
//!
//! A leaf: it runs processes and knows nothing of what they do.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the other ranks may take to end by themselves after one failed.
const GRACE: Duration = Duration::from_secs(20);
/// How long a rank may take to end after SIGTERM before it is killed.
const TERM_WAIT: Duration = Duration::from_secs(5);

/// The environment of rank `rank` of `nproc` on this machine, with the rendezvous at
/// 127.0.0.1:`port`; `threads` per rank unless the caller's environment sets
/// `OMP_NUM_THREADS`.
pub fn rank_env(
    rank: usize,
    nproc: usize,
    port: u16,
    threads: usize,
    inherited: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("RANK", rank.to_string()),
        ("LOCAL_RANK", rank.to_string()),
        ("WORLD_SIZE", nproc.to_string()),
        ("LOCAL_WORLD_SIZE", nproc.to_string()),
        ("MASTER_ADDR", "127.0.0.1".to_string()),
        ("MASTER_PORT", port.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if inherited("OMP_NUM_THREADS").is_none() {
        env.push(("OMP_NUM_THREADS".to_string(), threads.to_string()));
    }
    env
}

/// A free TCP port on the loopback interface (the OS picks it; it stays free for the
/// moment it takes rank 0 to bind it, as with torchrun's `--standalone`).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Runs `program args` as `nproc` ranks and waits for them: Ok when every rank succeeds,
/// else an error naming the first rank that failed.
pub fn run(program: &Path, args: &[String], nproc: usize, port: Option<u16>) -> Result<()> {
    run_with_grace(program, args, nproc, port, GRACE)
}

fn run_with_grace(
    program: &Path,
    args: &[String],
    nproc: usize,
    port: Option<u16>,
    grace: Duration,
) -> Result<()> {
    if !(1..=1024).contains(&nproc) {
        bail!("--nproc-per-node {nproc}: must be between 1 and 1024");
    }
    let port = match port {
        Some(p) => p,
        None => free_port()?,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / nproc).max(1);
    let mut ranks = Vec::new();
    let mut forwarders = Vec::new();
    for rank in 0..nproc {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(rank_env(rank, nproc, port, threads, |v| {
                std::env::var(v).ok()
            }))
            .env_remove("TORCHELASTIC_USE_AGENT_STORE");
        // SAFETY: prctl only sets this child's parent-death signal, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // A killed launcher takes its ranks with it.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        if rank > 0 {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                stop(&mut ranks);
                return Err(e)
                    .with_context(|| format!("starting rank {rank}: {}", program.display()));
            }
        };
        if let Some(out) = child.stdout.take() {
            forwarders.push(forward(out, rank, std::io::stdout));
        }
        if let Some(err) = child.stderr.take() {
            forwarders.push(forward(err, rank, std::io::stderr));
        }
        ranks.push(child);
    }
    let failed = wait_all(&mut ranks, grace);
    for f in forwarders {
        let _ = f.join();
    }
    match failed {
        None => Ok(()),
        Some((rank, status)) => bail!("rank {rank} of {nproc} failed ({})", describe(status)),
    }
}

/// Copies `from` line by line to `to` with the rank's prefix.
fn forward<W: Write + 'static>(
    from: impl Read + Send + 'static,
    rank: usize,
    to: fn() -> W,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut line = Vec::new();
        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&line);
            let _ = write!(to(), "[rank {rank}] {}", text);
            if !text.ends_with('\n') {
                let _ = writeln!(to());
            }
            line.clear();
        }
    })
}

/// Waits for every rank; after the first failure the others get `grace` to end, then are
/// stopped. The first rank that failed, with its status.
fn wait_all(ranks: &mut [Child], grace: Duration) -> Option<(usize, ExitStatus)> {
    let mut status: Vec<Option<ExitStatus>> = vec![None; ranks.len()];
    let mut failed: Option<(usize, ExitStatus, Instant)> = None;
    let mut stopping = false;
    while status.iter().any(Option::is_none) {
        for (r, child) in ranks.iter_mut().enumerate() {
            if status[r].is_none()
                && let Ok(Some(s)) = child.try_wait()
            {
                status[r] = Some(s);
                if !s.success() && failed.is_none() {
                    eprintln!(
                        "launch: rank {r} failed ({}); the others get {} s to end",
                        describe(s),
                        grace.as_secs_f64()
                    );
                    failed = Some((r, s, Instant::now()));
                }
            }
        }
        if let Some((_, _, at)) = failed
            && !stopping
            && at.elapsed() > grace
        {
            eprintln!("launch: stopping the ranks still running");
            let running: Vec<&mut Child> = ranks
                .iter_mut()
                .zip(&status)
                .filter(|(_, s)| s.is_none())
                .map(|(c, _)| c)
                .collect();
            terminate(running);
            stopping = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    failed.map(|(r, s, _)| (r, s))
}

/// SIGTERM, then SIGKILL after `TERM_WAIT` for those still running.
fn terminate(mut running: Vec<&mut Child>) {
    for c in &running {
        // SAFETY: a signal to our own child, which has not been waited for (its pid is live).
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = Instant::now() + TERM_WAIT;
    while Instant::now() < deadline && running.iter_mut().any(|c| matches!(c.try_wait(), Ok(None)))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    for c in running {
        let _ = c.kill();
    }
}

/// Kills and reaps the ranks started so far (a later one could not start).
fn stop(ranks: &mut [Child]) {
    for c in ranks.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn describe(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rank_gets_torchruns_variables_and_a_share_of_the_cores() {
        let env = rank_env(1, 4, 29400, 3, |_| None);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("RANK"), Some("1"));
        assert_eq!(get("LOCAL_RANK"), Some("1"));
        assert_eq!(get("WORLD_SIZE"), Some("4"));
        assert_eq!(get("MASTER_ADDR"), Some("127.0.0.1"));
        assert_eq!(get("MASTER_PORT"), Some("29400"));
        assert_eq!(get("OMP_NUM_THREADS"), Some("3"));
        // The caller's own setting wins.
        let env = rank_env(0, 2, 1, 3, |k| (k == "OMP_NUM_THREADS").then(|| "8".into()));
        assert!(!env.iter().any(|(k, _)| k == "OMP_NUM_THREADS"));
    }

    #[test]
    fn a_failing_rank_fails_the_launch_and_the_others_are_stopped() {
        // Rank 0 sleeps far longer than the test; rank 1 fails at once. `sh -c` sees its rank.
        let script = "if [ \"$RANK\" = 1 ]; then echo bad >&2; exit 3; fi; exec sleep 600";
        let t0 = Instant::now();
        let args = ["-c".to_string(), script.into()];
        let grace = Duration::from_secs(1);
        let e = run_with_grace(Path::new("/bin/sh"), &args, 2, None, grace).unwrap_err();
        assert_eq!(e.to_string(), "rank 1 of 2 failed (exit status 3)");
        let secs = t0.elapsed().as_secs_f64();
        assert!(
            secs < 5.0,
            "{secs} s: rank 0 was not stopped after the grace period"
        );
        assert!(
            run(
                Path::new("/bin/sh"),
                &["-c".into(), "exit 0".into()],
                3,
                None
            )
            .is_ok()
        );
    }
}
