//! Runs that survive kills: the real binary is SIGKILLed at chosen points (after a step,
//! in the middle of a metrics record, in the middle of writing a checkpoint; the hidden
//! `SELFSUP_FAULT` variable makes it kill itself there) and at a random moment from
//! outside, then resumed until done; the result must be bit-identical to an uninterrupted
//! run. And one writer per run folder: a second `pretrain` fails at once naming the pid of
//! the first, and the lock is free again once the first is killed.

mod common;

use common::*;
use selfsup::metrics::Metrics;
use selfsup::run::checkpoint;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// MoCo v2 (views, a queue, a momentum encoder, shuffled BatchNorm: the most state of any
/// method) on the tiny data: 128 images in batches of 8 are 16 steps per epoch, 48 in all,
/// with a checkpoint every 5 steps and the last 2 epochs' checkpoints kept.
fn run_args(data: &Path) -> Vec<String> {
    [
        "method=\"moco-v2\"",
        &format!("data=\"mnist:{}\"", data.display()),
        "cnn_widths=[4, 8]",
        "batch_size=8",
        "epochs=3",
        "proj_hidden_dim=16",
        "proj_dim=8",
        "moco_queue=32",
        "shuffle_bn_groups=2",
        "checkpoint_every=5",
        "keep_checkpoints=2",
    ]
    .iter()
    .flat_map(|s| ["--set".to_string(), s.to_string()])
    .collect()
}

/// `selfsup pretrain --quiet --out RUN` (with `--resume` or the run's `--set`s), with the
/// fault `fault` armed.
fn pretrain(run: &Path, data: &Path, resume: bool, fault: Option<&str>) -> Command {
    pretrain_with(run, &run_args(data), resume, fault, &[])
}

/// `selfsup pretrain --quiet --out RUN` with `args` (a new run) or `--resume`, then the
/// `--set`s of `sets`, with the fault `fault` armed.
fn pretrain_with(
    run: &Path,
    args: &[String],
    resume: bool,
    fault: Option<&str>,
    sets: &[&str],
) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_selfsup"));
    c.args(["--device", "cpu", "pretrain", "--quiet", "--out"])
        .arg(run)
        .env("RAYON_NUM_THREADS", "2")
        .env_remove(selfsup::faults::ENV)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if resume {
        c.arg("--resume");
    } else {
        c.args(args);
    }
    for s in sets {
        c.args(["--set", s]);
    }
    if let Some(f) = fault {
        c.env(selfsup::faults::ENV, f);
    }
    c
}

/// Runs `c` to its end; returns how it ended and its stderr.
fn finish(c: &mut Command) -> (ExitStatus, String) {
    let o = output_within(c, COMMAND_LIMIT);
    (o.status, stderr(&o))
}

/// Waits until `child`, training into `run`, has logged step `step` (it must not end first).
fn wait_for_step(child: &mut std::process::Child, run: &Path, step: u64) {
    let t0 = Instant::now();
    let logged = |run: &Path| {
        Metrics::read(&run.join("metrics.jsonl"))
            .is_ok_and(|m| m.steps.iter().any(|s| s.step >= step))
    };
    while !logged(run) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended before step {step}: {status:?}");
        }
        assert!(
            t0.elapsed() < COMMAND_LIMIT,
            "no step {step} within {COMMAND_LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn assert_killed(status: ExitStatus, err: &str, what: &str) {
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "{what}: {status:?}\n{err}"
    );
}

/// Steps done at the run's last checkpoint.
fn checkpoint_step(run: &Path) -> usize {
    checkpoint::load(run).unwrap().meta.step
}

/// The temporary files in `run` (left by a write that was killed).
fn temp_files(run: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect()
}

/// A safetensors file's tensor table (names, dtypes, shapes, offsets; the metadata, which
/// holds the wall time, left out) and its data bytes: two files with equal parts hold
/// bit-identical tensors.
fn tensors_of(path: &Path) -> (serde_json::Value, Vec<u8>) {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    header.as_object_mut().unwrap().remove("__metadata__");
    (header, b[8 + n..].to_vec())
}

fn assert_same_tensors(a: &Path, b: &Path) {
    let ((ha, da), (hb, db)) = (tensors_of(a), tensors_of(b));
    assert_eq!(
        ha,
        hb,
        "{} and {} hold different tensors",
        a.display(),
        b.display()
    );
    let names = ha.as_object().unwrap();
    assert!(
        names.keys().any(|k| k.starts_with("model."))
            && names.keys().any(|k| k.starts_with("optim."))
    );
    assert!(
        da == db,
        "{} and {} differ in their values",
        a.display(),
        b.display()
    );
}

/// (step, loss, lr) of every step record.
type StepRows = Vec<(u64, f64, f64)>;
/// (epoch, mean loss) of every epoch record.
type EpochRows = Vec<(u64, f64)>;

fn records(run: &Path) -> (StepRows, EpochRows) {
    let m = Metrics::read(&run.join("metrics.jsonl")).unwrap();
    (
        m.steps.iter().map(|s| (s.step, s.loss, s.lr)).collect(),
        m.epochs.iter().map(|e| (e.epoch, e.loss)).collect(),
    )
}

/// Every line of the run's metrics.jsonl is a JSON object, and the file ends its last line.
fn assert_clean_log(run: &Path) {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(text.ends_with('\n'));
    for (i, line) in text.lines().enumerate() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "line {}: {line}",
            i + 1
        );
    }
}

#[test]
fn killed_anywhere_and_resumed_a_run_ends_bit_identical_to_an_uninterrupted_one() {
    let (tmp, data) = tiny_mnist_in_temp_dir();
    let (straight, killed) = (tmp.path().join("straight"), tmp.path().join("killed"));
    let t0 = Instant::now();
    let (status, err) = finish(&mut pretrain(&straight, &data, false, None));
    let straight_time = t0.elapsed();
    assert!(status.success(), "{err}");

    // After step 7 of epoch 1: the checkpoint of step 5 is there, mid-epoch.
    let (status, err) = finish(&mut pretrain(&killed, &data, false, Some("step:7")));
    assert_killed(status, &err, "step:7");
    let ck = checkpoint::load(&killed).unwrap();
    assert_eq!((ck.meta.epoch, ck.meta.step), (0, 5));
    assert!(ck.meta.in_epoch.loss_sum > 0.0);

    // Half-way through the record of step 8 (resumed at 5: records 6, 7, 8): the log's
    // last line is cut, and the reader skips it with a note.
    let (status, err) = finish(&mut pretrain(&killed, &data, true, Some("metrics-line:3")));
    assert_killed(status, &err, "metrics-line:3");
    let text = std::fs::read_to_string(killed.join("metrics.jsonl")).unwrap();
    assert!(!text.ends_with('\n'), "{text}");
    let m = Metrics::read(&killed.join("metrics.jsonl")).unwrap();
    assert_eq!((m.steps.len(), m.notes.len()), (7, 1), "{:?}", m.notes);

    // Half-way through the second checkpoint (step 15): the one of step 10 stays, the cut
    // log line was dropped on resume, and a temporary file is left behind.
    let (status, err) = finish(&mut pretrain(&killed, &data, true, Some("atomic-write:2")));
    assert_killed(status, &err, "atomic-write:2");
    assert!(err.contains("dropped a record cut short"), "{err}");
    assert_eq!(checkpoint_step(&killed), 10);
    assert_eq!(temp_files(&killed).len(), 1);
    assert_clean_log(&killed);

    // Through the end of epoch 1 (its checkpoint kept) to step 22.
    let (status, err) = finish(&mut pretrain(&killed, &data, true, Some("step:12")));
    assert_killed(status, &err, "step:12");
    assert_eq!(checkpoint_step(&killed), 20);
    assert!(temp_files(&killed).is_empty(), "{:?}", temp_files(&killed));
    assert!(killed.join("checkpoint-epoch1.safetensors").is_file());

    // From outside, at a moment the test does not choose: once the resumed run (from step
    // 20) has logged step 23, after a random delay of up to the time 17 steps took in the
    // straight run. So that the run is still there to be killed however long the delay, it
    // stops itself (SIGSTOP) after its 20th step (step 40 of 48): the kill lands in the
    // middle of training or at that step, never after the end, and must be a kill.
    let mut child = KillOnDrop(
        pretrain(&killed, &data, true, Some("step:20:stop"))
            .spawn()
            .unwrap(),
    );
    wait_for_step(&mut child.0, &killed, 23);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let delay = straight_time.mul_f64(17.0 / 48.0 * (nanos % 1000) as f64 / 1000.0);
    std::thread::sleep(delay);
    child.0.kill().unwrap();
    let status = child.0.wait().unwrap();
    assert_killed(status, "", "the outside kill");
    let at = checkpoint_step(&killed);
    eprintln!("killed from outside {delay:?} after step 23; the last checkpoint: step {at}");
    assert!((20..=40).contains(&at), "checkpoint of step {at}");

    let (status, err) = finish(&mut pretrain(&killed, &data, true, None));
    assert!(status.success(), "{err}");
    let (a, b) = (
        straight.join("checkpoint.safetensors"),
        killed.join("checkpoint.safetensors"),
    );
    assert_same_tensors(&a, &b);
    assert_eq!(checkpoint_step(&killed), 48);
    // The log parses and holds what the uninterrupted run logged: every step once, and the
    // epochs' mean losses exactly (the sums of an epoch travel in its mid-epoch checkpoints).
    assert_clean_log(&killed);
    let (steps, epochs) = records(&killed);
    assert_eq!((steps.clone(), epochs.clone()), records(&straight));
    assert_eq!(
        steps.iter().map(|s| s.0).collect::<Vec<_>>(),
        (1..=48).collect::<Vec<_>>()
    );
    assert_eq!(epochs.len(), 3);
    assert!(killed.join("loss.png").is_file());

    // The last 2 epochs' checkpoints are kept; the last is the rolling one.
    assert!(!killed.join("checkpoint-epoch1.safetensors").exists());
    assert_same_tensors(&killed.join("checkpoint-epoch3.safetensors"), &b);
    let epoch2 = killed.join("checkpoint-epoch2.safetensors");
    assert_eq!(checkpoint::load_file(&epoch2).unwrap().meta.step, 32);
    let o = selfsup(&[
        "eval",
        "--run",
        killed.to_str().unwrap(),
        "--checkpoint",
        "checkpoint-epoch2.safetensors",
        "--set",
        "probe_epochs=2",
        "--set",
        "knn_k=5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("moco-v2 (2 epochs)"), "{}", stdout(&o));
    assert!(killed.join("eval-checkpoint-epoch2.json").is_file());
    assert!(!killed.join("eval.json").exists());
}

/// The state of process `pid` in /proc (`T` when stopped).
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[test]
fn a_second_writer_fails_at_once_and_a_killed_writer_leaves_no_lock() {
    let (tmp, data) = tiny_mnist_in_temp_dir();
    let run = tmp.path().join("run");
    // The first writer stops itself after step 7 (a checkpoint at step 5), holding the lock.
    // Killed at the end of the test, also when it fails.
    let mut first = KillOnDrop(
        pretrain(&run, &data, false, Some("step:7:stop"))
            .spawn()
            .unwrap(),
    );
    let pid = first.0.id();
    let t0 = Instant::now();
    while process_state(pid) != Some('T') {
        assert!(
            t0.elapsed() < COMMAND_LIMIT,
            "the first writer never stopped"
        );
        if let Some(status) = first.0.try_wait().unwrap() {
            panic!("the first writer ended: {status:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let lock = std::fs::read_to_string(run.join("pretrain.lock")).unwrap();
    assert_eq!(lock.trim(), pid.to_string());

    // Readers read the last whole checkpoint while training goes on.
    let o = selfsup(&[
        "eval",
        "--run",
        run.to_str().unwrap(),
        "--set",
        "probe_epochs=1",
        "--set",
        "knn_k=5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    // A second writer, resuming or starting over, is refused and told who holds the folder.
    for resume in [true, false] {
        let (status, err) = finish(&mut pretrain(&run, &data, resume, None));
        assert!(
            !status.success()
                && err.contains(&run.display().to_string())
                && err.contains(&format!("pid {pid}")),
            "resume {resume}: {err}"
        );
    }

    // SIGKILL frees the lock (a stopped process dies of it too).
    first.0.kill().unwrap();
    assert_eq!(first.0.wait().unwrap().signal(), Some(libc::SIGKILL));
    let (status, err) = finish(&mut pretrain(&run, &data, true, None));
    assert!(status.success(), "{err}");
    assert_eq!(checkpoint_step(&run), 48);
    assert_eq!(
        std::fs::read_to_string(run.join("pretrain.lock")).unwrap(),
        ""
    );
}

#[test]
fn a_cut_last_metrics_line_is_dropped_on_resume_and_the_loss_plot_drawn() {
    let (tmp, data) = tiny_mnist_in_temp_dir();
    let run = tmp.path().join("run");
    let (status, err) = finish(&mut pretrain(&run, &data, false, Some("metrics-line:9")));
    assert_killed(status, &err, "metrics-line:9");
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(!text.ends_with('\n') && text.lines().count() == 9, "{text}");
    let (status, err) = finish(&mut pretrain(&run, &data, true, None));
    assert!(status.success(), "{err}");
    assert!(err.contains("note:") && !err.contains("warning"), "{err}");
    assert!(run.join("loss.png").is_file());
    assert_clean_log(&run);
    let (steps, epochs) = records(&run);
    assert_eq!((steps.len(), epochs.len()), (48, 3));
}

/// A run killed before its first checkpoint (a requeued job's first try) leaves only its
/// config: `pretrain --resume` runs it from the beginning with a note, to the same end as an
/// uninterrupted run. A folder that holds no run, or another method's run, still fails.
#[test]
fn resume_before_the_first_checkpoint_starts_the_run_over() {
    let (tmp, data) = tiny_mnist_in_temp_dir();
    let (straight, killed) = (tmp.path().join("straight"), tmp.path().join("killed"));
    let (status, err) = finish(&mut pretrain(&straight, &data, false, None));
    assert!(status.success(), "{err}");
    // Step 3 comes before the first checkpoint (every 5 steps).
    let (status, err) = finish(&mut pretrain(&killed, &data, false, Some("step:3")));
    assert_killed(status, &err, "step:3");
    assert!(killed.join("config.toml").is_file());
    assert!(!killed.join("checkpoint.safetensors").exists());
    let (status, err) = finish(&mut pretrain(&killed, &data, true, None));
    assert!(status.success(), "{err}");
    assert!(
        err.contains("stopped before its first checkpoint: starting it from the beginning"),
        "{err}"
    );
    assert_same_tensors(
        &straight.join("checkpoint.safetensors"),
        &killed.join("checkpoint.safetensors"),
    );
    assert_eq!(records(&straight), records(&killed));

    // An empty folder, and one with files but no run, name what is missing.
    for (name, file) in [("empty", None), ("foreign", Some("notes.txt"))] {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        if let Some(f) = file {
            std::fs::write(dir.join(f), "not a run").unwrap();
        }
        let (status, err) = finish(&mut pretrain(&dir, &data, true, None));
        assert!(!status.success());
        assert!(
            err.contains("holds no selfsup run") && err.contains("config.toml"),
            "{err}"
        );
    }
    // Another method than the saved config's.
    std::fs::remove_file(killed.join("checkpoint.safetensors")).unwrap();
    let o = output_within(
        Command::new(env!("CARGO_BIN_EXE_selfsup"))
            .args([
                "--device", "cpu", "pretrain", "--quiet", "--resume", "--method", "simclr", "--out",
            ])
            .arg(&killed),
        COMMAND_LIMIT,
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--method simclr differs from the method 'moco-v2'"),
        "{}",
        stderr(&o)
    );
}

/// SimCLR streamed from an image folder of JPEGs (one of them broken, skipped): 56 images in
/// batches of 8, 7 steps per epoch, 2 epochs, a checkpoint every 3 steps.
fn streamed_args(folder: &Path) -> Vec<String> {
    [
        "method=\"simclr\"",
        &format!("data=\"folder:{}\"", folder.display()),
        "image_size=16",
        "bad_images=\"skip\"",
        "cnn_widths=[4, 8]",
        "proj_hidden_dim=16",
        "proj_dim=8",
        "batch_size=8",
        "epochs=2",
        "checkpoint_every=3",
    ]
    .iter()
    .flat_map(|s| ["--set".to_string(), s.to_string()])
    .collect()
}

fn streamed_pretrain(
    run: &Path,
    folder: &Path,
    resume: bool,
    fault: Option<&str>,
    sets: &[&str],
) -> Command {
    pretrain_with(run, &streamed_args(folder), resume, fault, sets)
}

#[test]
fn a_streamed_folder_run_killed_mid_epoch_or_stopped_by_max_steps_resumes_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("imgs");
    for i in 0..70 {
        let class = ["a", "b", "c", "d"][i % 4];
        std::fs::create_dir_all(folder.join(class)).unwrap();
        let img = image::RgbImage::from_fn(40 + (i % 5) as u32 * 7, 30, |x, y| {
            image::Rgb([(x * 5) as u8, (y * 7) as u8, (i * 3) as u8])
        });
        img.save(folder.join(class).join(format!("{i:03}.jpg")))
            .unwrap();
    }
    // A broken file among them: reported and replaced, the same way in every run.
    std::fs::write(folder.join("b").join("013.jpg"), b"\xff\xd8\xff not a jpeg").unwrap();
    let (straight, killed, stopped) = (
        tmp.path().join("straight"),
        tmp.path().join("killed"),
        tmp.path().join("stopped"),
    );
    let (status, err) = finish(&mut streamed_pretrain(&straight, &folder, false, None, &[]));
    assert!(status.success(), "{err}");
    assert!(err.contains("skipped") && err.contains("013.jpg"), "{err}");
    // Killed after step 5 (the checkpoint of step 3 is there), then resumed.
    let (status, err) = finish(&mut streamed_pretrain(
        &killed,
        &folder,
        false,
        Some("step:5"),
        &[],
    ));
    assert_killed(status, &err, "step:5");
    assert_eq!(checkpoint_step(&killed), 3);
    let (status, err) = finish(&mut streamed_pretrain(&killed, &folder, true, None, &[]));
    assert!(status.success(), "{err}");
    // Stopped by max_steps in the middle of the second epoch, then run on without a limit.
    let (status, err) = finish(&mut streamed_pretrain(
        &stopped,
        &folder,
        false,
        None,
        &["max_steps=10"],
    ));
    assert!(status.success(), "{err}");
    assert_eq!(checkpoint_step(&stopped), 10);
    let (status, err) = finish(&mut streamed_pretrain(
        &stopped,
        &folder,
        true,
        None,
        &["max_steps=0"],
    ));
    assert!(status.success(), "{err}");
    for run in [&killed, &stopped] {
        assert_same_tensors(
            &straight.join("checkpoint.safetensors"),
            &run.join("checkpoint.safetensors"),
        );
        assert_eq!(records(&straight).1, records(run).1, "{}", run.display());
    }
    assert_eq!(checkpoint_step(&straight), 14);
}

/// Fine-tuning runs through the training loop: killed in the middle, the same `finetune`
/// command resumes it and ends bit-identical to an uninterrupted one, with the same scores.
#[test]
fn a_killed_finetuning_resumes_bit_identical() {
    let (tmp, data) = tiny_mnist_in_temp_dir();
    let run = tmp.path().join("run");
    let (status, err) = finish(&mut pretrain_with(
        &run,
        &[
            "method=\"autoencoder\"".to_string(),
            format!("data=\"mnist:{}\"", data.display()),
            "cnn_widths=[4, 8]".into(),
            "decoder_widths=[8, 4]".into(),
            "batch_size=16".into(),
            "epochs=1".into(),
            "checkpoint_every=3".into(),
        ]
        .iter()
        .flat_map(|s| ["--set".to_string(), s.clone()])
        .collect::<Vec<_>>(),
        false,
        None,
        &[],
    ));
    assert!(status.success(), "{err}");
    let copy = tmp.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for f in ["checkpoint.safetensors", "config.toml", "metrics.jsonl"] {
        std::fs::copy(run.join(f), copy.join(f)).unwrap();
    }
    let finetune = |dir: &Path, fault: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_selfsup"));
        c.args([
            "--device", "cpu", "finetune", "--quiet", "--labels", "50%", "--run",
        ])
        .arg(dir)
        .args([
            "--set",
            "finetune_epochs=2",
            "--set",
            "finetune_batch_size=8",
        ])
        .env("RAYON_NUM_THREADS", "2")
        .env_remove(selfsup::faults::ENV)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if let Some(f) = fault {
            c.env(selfsup::faults::ENV, f);
        }
        c
    };
    let (status, err) = finish(&mut finetune(&run, None));
    assert!(status.success(), "{err}");
    // 50% of 128 images in batches of 8: 8 steps per epoch; killed after step 5 (the
    // checkpoint of step 3 is there).
    let (status, err) = finish(&mut finetune(&copy, Some("step:5")));
    assert_killed(status, &err, "finetune step:5");
    assert_eq!(checkpoint_step(&copy.join("finetune-50pct")), 3);
    let (status, err) = finish(&mut finetune(&copy, None));
    assert!(status.success(), "{err}");
    assert_same_tensors(
        &run.join("finetune-50pct").join("checkpoint.safetensors"),
        &copy.join("finetune-50pct").join("checkpoint.safetensors"),
    );
    let score = |d: &Path| {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("finetune.json")).unwrap())
                .unwrap();
        (
            v["50%"]["top1"].as_f64().unwrap(),
            v["50%"]["top5"].as_f64().unwrap(),
        )
    };
    assert_eq!(score(&run), score(&copy));
}

/// With `bad_images = "error"`, an image that turns bad in the middle of a streamed run
/// stops it with an error naming the file, and the run folder keeps its last checkpoint,
/// from which the run resumes once the file is fixed.
#[test]
fn a_bad_image_stops_a_streamed_run_naming_it_and_the_checkpoint_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("imgs");
    for i in 0..30 {
        let class = ["a", "b"][i % 2];
        std::fs::create_dir_all(folder.join(class)).unwrap();
        image::RgbImage::from_fn(24, 20, |x, y| {
            image::Rgb([(x * 9) as u8, (y * 11) as u8, (i * 7) as u8])
        })
        .save(folder.join(class).join(format!("{i:02}.jpg")))
        .unwrap();
    }
    let run = tmp.path().join("run");
    let args: Vec<String> = [
        "method=\"simclr\"".to_string(),
        format!("data=\"folder:{}\"", folder.display()),
        "image_size=16".into(),
        "cnn_widths=[4, 8]".into(),
        "proj_hidden_dim=16".into(),
        "proj_dim=8".into(),
        "batch_size=8".into(),
        "epochs=1".into(),
    ]
    .iter()
    .flat_map(|s| ["--set".to_string(), s.clone()])
    .collect();
    let (status, err) = finish(&mut pretrain_with(&run, &args, false, None, &[]));
    assert!(status.success(), "{err}");
    let before = std::fs::read(run.join("checkpoint.safetensors")).unwrap();
    let bad = folder.join("b").join("07.jpg");
    let good = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &good[..good.len() / 2]).unwrap();
    let (status, err) = finish(&mut pretrain_with(&run, &args, true, None, &["epochs=2"]));
    assert!(!status.success());
    assert!(
        err.contains("07.jpg") && err.contains("bad_images"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(run.join("checkpoint.safetensors")).unwrap(),
        before,
        "the last checkpoint stays"
    );
    assert_eq!(checkpoint::load(&run).unwrap().meta.epoch, 1);
    std::fs::write(&bad, &good).unwrap();
    let (status, err) = finish(&mut pretrain_with(&run, &args, true, None, &["epochs=2"]));
    assert!(status.success(), "{err}");
    assert_eq!(checkpoint::load(&run).unwrap().meta.epoch, 2);
}
