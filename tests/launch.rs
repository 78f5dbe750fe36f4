//! Data-parallel runs of the real binary on 2 processes over Gloo on loopback: `selfsup
//! launch` ends with the checkpoint a single process writes; a run resumes on another
//! number of processes than the one that checkpointed it; a killed or hung rank makes the
//! other fail, naming it, well within the timeout, and leaves the last checkpoint whole.

mod common;

use common::*;
use selfsup::run::checkpoint;
use selfsup::rundir::RunDir;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

/// SimCLR (global negatives, SyncBN) on the tiny data: 128 images in global batches of 32
/// are 4 steps per epoch, 8 in all, with a checkpoint every 2 steps.
fn run_args(data: &Path, epochs: usize) -> Vec<String> {
    [
        "method=\"simclr\"".to_string(),
        format!("data=\"mnist:{}\"", data.display()),
        "cnn_widths=[4, 8]".into(),
        "batch_size=32".into(),
        format!("epochs={epochs}"),
        "proj_hidden_dim=16".into(),
        "proj_dim=8".into(),
        "aug_crop_scale=[0.5, 1.0]".into(),
        "checkpoint_every=2".into(),
    ]
    .into_iter()
    .flat_map(|s| ["--set".to_string(), s])
    .collect()
}

/// `selfsup [launch --nproc-per-node N --] pretrain --quiet --out RUN` (with the run's
/// `--set`s, or `--resume`), with `SELFSUP_FAULT` armed when `fault` is given.
fn pretrain(nproc: usize, run: &Path, data: &Path, resume: bool, fault: Option<&str>) -> Output {
    pretrain_with(nproc, run, data, resume, fault, &[])
}

/// `pretrain` with the run's `--set`s followed by `sets` (`key=value`).
fn pretrain_with(
    nproc: usize,
    run: &Path,
    data: &Path,
    resume: bool,
    fault: Option<&str>,
    sets: &[&str],
) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_selfsup"));
    c.args(["--device", "cpu"]);
    if nproc > 1 {
        c.args(["launch", "--nproc-per-node", &nproc.to_string(), "--"]);
    }
    c.args(["pretrain", "--quiet", "--out"]).arg(run);
    match resume {
        true => c.arg("--resume"),
        false => c.args(run_args(data, 2)),
    };
    c.args(sets.iter().flat_map(|s| ["--set", s]));
    c.env("RAYON_NUM_THREADS", "1")
        .env("OMP_NUM_THREADS", "1")
        .env_remove(selfsup::faults::ENV);
    if let Some(f) = fault {
        c.env(selfsup::faults::ENV, f);
    }
    output_within(&mut c, COMMAND_LIMIT)
}

fn succeeded(o: &Output, what: &str) {
    assert!(o.status.success(), "{what}: {}\n{}", o.status, stderr(o));
}

/// The largest relative difference max|a - b| / max|b| of a tensor of two checkpoints
/// (model and optimizer state), with its name; infinity when a tensor holds a NaN or an
/// infinity. The step counts must be equal.
fn checkpoint_difference(a: &Path, b: &Path) -> (f64, String) {
    checkpoint_difference_in(a, b, true)
}

/// `checkpoint_difference` of the model's tensors, and of the optimizer's with `optim`.
fn checkpoint_difference_in(a: &Path, b: &Path, optim: bool) -> (f64, String) {
    let (a, b) = (checkpoint::load(a).unwrap(), checkpoint::load(b).unwrap());
    assert_eq!((a.meta.epoch, a.meta.step), (b.meta.epoch, b.meta.step));
    let (oa, ob) = match optim {
        true => (&a.optim[..], &b.optim[..]),
        false => (&[][..], &[][..]),
    };
    let (ta, tb) = (a.model.iter().chain(oa), b.model.iter().chain(ob));
    let mut worst = (0.0, String::new());
    for ((ka, x), (kb, y)) in ta.zip(tb) {
        assert_eq!(ka, kb);
        // Infinity for a NaN or an infinity in either: the largest difference of all.
        let d = relative_difference(x, y);
        if d >= worst.0 {
            worst = (d, ka.clone());
        }
    }
    worst
}

/// Float32 on 2 ranks sums each gradient in another order than one process (per rank, then
/// across ranks), which moves the last bits; 8 AdamW steps of this run stay near 1e-6 (the
/// largest seen: 1.4e-6), while a real error (a gradient not averaged, a gather that drops
/// the other ranks' gradient, a wrong label offset) moves weights by 1e-2 and more.
const FLOAT32_TOLERANCE: f64 = 1e-4;

fn assert_close(a: &Path, b: &Path, what: &str) {
    let (d, at) = checkpoint_difference(a, b);
    println!("{what}: max relative difference {d:.2e} (in {at})");
    assert!(d < FLOAT32_TOLERANCE, "{what}: {d:.3e} in {at}");
}

#[test]
fn launch_equals_one_process_and_resumes_on_another_number_of_processes() {
    let (tmp, data) = tiny_mnist_in_temp_dir();
    let dir = |name: &str| tmp.path().join(name);

    let one = dir("one");
    succeeded(&pretrain(1, &one, &data, false, None), "1 process");
    let two = dir("two");
    let o = pretrain(2, &two, &data, false, None);
    succeeded(&o, "launch, 2 ranks");
    // Rank 0 prints the summary once and writes the run folder.
    assert_eq!(
        stdout(&o)
            .matches("pretrained simclr: 2 epochs, 8 steps")
            .count(),
        1,
        "{}",
        stdout(&o)
    );
    for f in [
        RunDir::CONFIG,
        "metrics.jsonl",
        "loss.png",
        "checkpoint.safetensors",
    ] {
        assert!(two.join(f).exists(), "{f} missing");
    }
    assert_close(&one, &two, "2 ranks (selfsup launch) vs 1 process");
    let losses = |run: &Path| -> Vec<f64> {
        let m = selfsup::metrics::Metrics::read(&run.join("metrics.jsonl")).unwrap();
        m.epochs.iter().map(|e| e.loss).collect()
    };
    for (a, b) in losses(&one).iter().zip(losses(&two)) {
        assert!((a - b).abs() < 1e-4 * a.abs(), "epoch losses {a} vs {b}");
    }

    // Checkpointed by 1 process at step 2 (killed after step 3), resumed on 2 ranks.
    let run = dir("one-then-two");
    let o = pretrain(1, &run, &data, false, Some("step:3"));
    assert_eq!(o.status.signal(), Some(libc::SIGKILL), "{}", stderr(&o));
    assert_eq!(checkpoint::load(&run).unwrap().meta.step, 2);
    succeeded(&pretrain(2, &run, &data, true, None), "resume on 2 ranks");
    assert_close(&one, &run, "1 process to step 2, then 2 ranks");

    // Checkpointed by 2 ranks at step 2 (both killed after step 3), resumed by 1 process.
    let run = dir("two-then-one");
    let o = pretrain(2, &run, &data, false, Some("step:3"));
    assert!(!o.status.success(), "the launch of killed ranks must fail");
    assert!(stderr(&o).contains("launch: rank"), "{}", stderr(&o));
    assert_eq!(checkpoint::load(&run).unwrap().meta.step, 2);
    succeeded(&pretrain(1, &run, &data, true, None), "resume on 1 process");
    assert_close(&one, &run, "2 ranks to step 2, then 1 process");
}

#[test]
fn bf16_runs_train_on_2_ranks_as_in_1_process() {
    // Autocast wraps the data-parallel forward pass: SimCLR's gathered negatives and
    // SyncBatchNorm, MoCo v2's shuffled BatchNorm across ranks, in bfloat16. Rounding
    // differs with the split of the batch, so the two runs agree to bf16's precision only,
    // and both differ from the float32 run by more than float32's rounding.
    let (tmp, data) = tiny_mnist_in_temp_dir();
    for method in ["simclr", "moco-v2"] {
        let m = format!("method=\"{method}\"");
        let run = |nproc: usize, precision: &str| {
            let out = tmp.path().join(format!("{method}-{nproc}-{precision}"));
            let p = format!("precision=\"{precision}\"");
            let o = pretrain_with(nproc, &out, &data, false, None, &[&m, &p]);
            succeeded(&o, &format!("{method}, {nproc} processes, {precision}"));
            out
        };
        let (fp32, one, two) = (run(1, "fp32"), run(1, "bf16"), run(2, "bf16"));
        let models = |a: &Path, b: &Path| checkpoint_difference_in(a, b, false);
        let ((d, at), (d32, at32)) = (models(&one, &two), models(&fp32, &two));
        println!("{method} bf16, 2 ranks vs 1 process: {d:.2e} (in {at}); vs fp32 {d32:.2e}");
        assert!(d < BF16_TOLERANCE, "{method}: {d:.3e} in {at}");
        // Different from fp32, but finite: NaN weights differ from everything too.
        assert!(
            d32 > FLOAT32_TOLERANCE && d32.is_finite(),
            "{method}: bf16 = fp32 or not finite ({d32:.3e} in {at32})"
        );
    }
}

/// Of the models of two bf16 runs of 8 steps that differ in rounding only (see above).
const BF16_TOLERANCE: f64 = 1e-1;

#[test]
fn a_global_batch_that_does_not_split_is_a_clear_error() {
    let (tmp, data) = tiny_mnist_in_temp_dir();
    let o = output_within(
        Command::new(env!("CARGO_BIN_EXE_selfsup"))
            .args([
                "--device",
                "cpu",
                "launch",
                "--nproc-per-node",
                "3",
                "--",
                "pretrain",
                "--quiet",
                "--out",
            ])
            .arg(tmp.path().join("run"))
            .args(run_args(&data, 1)),
        COMMAND_LIMIT,
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("batch_size = 32 is the global batch and must be divisible by the number of processes (3)"),
        "{e}"
    );
    assert!(e.contains("of 3 failed (exit status 1)"), "{e}");
    let o = selfsup(&[
        "launch",
        "--nproc-per-node",
        "2",
        "--",
        "eval",
        "--baseline",
        "raw",
    ]);
    assert!(
        stderr(&o).contains("launch runs `selfsup pretrain` on every rank"),
        "{}",
        stderr(&o)
    );
}

/// Rank `rank` of 2 started by hand (as torchrun would), training for long enough to be
/// killed or stopped in mid-run; `fault` arms SELFSUP_FAULT in it.
fn start_rank(
    rank: usize,
    port: u16,
    run: &Path,
    data: &Path,
    timeout: &str,
    fault: Option<&str>,
) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_selfsup"));
    c.args([
        "--device",
        "cpu",
        "pretrain",
        "--quiet",
        "--dist-timeout",
        timeout,
        "--out",
    ])
    .arg(run)
    .args(run_args(data, 50))
    .args(["--set", "checkpoint_every=1"])
    .envs(selfsup::launch::rank_env(rank, 2, port, 1, |_| None))
    .env_remove(selfsup::faults::ENV)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(f) = fault {
        c.env(selfsup::faults::ENV, f);
    }
    c.spawn().unwrap()
}

/// Rank 0's end when rank 1 carries `fault`: its output and the seconds it took.
fn rank0_when_rank1_fails(fault: &str, timeout: &str) -> (Output, f64, tempfile::TempDir) {
    let (tmp, data) = tiny_mnist_in_temp_dir();
    let run = tmp.path().join("run");
    let port = selfsup::launch::free_port().unwrap();
    let t0 = Instant::now();
    let rank0 = start_rank(0, port, &run, &data, timeout, None);
    // Killed when rank 0 has ended (a stopped rank is still there), or when the test fails.
    let rank1 = KillOnDrop(start_rank(1, port, &run, &data, timeout, Some(fault)));
    let out = wait_within(rank0, COMMAND_LIMIT, "rank 0");
    let secs = t0.elapsed().as_secs_f64();
    drop(rank1);
    (out, secs, tmp)
}

fn assert_fails_naming_rank1(out: &Output, secs: f64, limit: f64) {
    let e = stderr(out);
    println!("rank 0 ended after {secs:.1} s: {}", e.trim());
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains("failed on rank 0") && e.contains("lost rank 1"),
        "{e}"
    );
    assert!(secs < limit, "{secs} s");
}

/// The last checkpoint, written by rank 0 before the failure, loads.
fn assert_checkpoint_whole(run: &Path) {
    let ck = checkpoint::load(run).unwrap();
    assert!((1..=4).contains(&ck.meta.step), "step {}", ck.meta.step);
}

#[test]
fn a_killed_rank_makes_the_other_fail_naming_it() {
    // Rank 1 is SIGKILLed after its 3rd step; its connections close at once.
    let (out, secs, tmp) = rank0_when_rank1_fails("step:3", "60s");
    assert_fails_naming_rank1(&out, secs, 30.0);
    assert_checkpoint_whole(&tmp.path().join("run"));
}

#[test]
fn a_hung_rank_makes_the_other_fail_after_the_timeout() {
    // Rank 1 is SIGSTOPped after its 3rd step: alive, connections open, no heartbeat. Rank
    // 0 waits out the 5 s timeout, then the 2 s heartbeat check.
    let (out, secs, tmp) = rank0_when_rank1_fails("step:3:stop", "5s");
    assert_fails_naming_rank1(&out, secs, 30.0);
    assert!(
        stderr(&out).contains("Timed out") || stderr(&out).contains("timed out"),
        "{}",
        stderr(&out)
    );
    assert_checkpoint_whole(&tmp.path().join("run"));
}
