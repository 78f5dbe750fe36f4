//! The scripts of scripts/: the quickstart, run on tiny data through its environment
//! options (the job itself pretrains on Fashion-MNIST for minutes), and every shell and
//! Python script parses.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

fn scripts() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

#[test]
fn quickstart_runs_on_tiny_data() {
    let (tmp, data) = tiny_mnist_in_temp_dir();
    let run = tmp.path().join("run");
    let sets = format!(
        "data=mnist:{} cnn_widths=[4,8] batch_size=16 proj_hidden_dim=16 proj_dim=8",
        data.display()
    );
    let o = output_within(
        Command::new("bash")
            .arg(scripts().join("quickstart.sh"))
            .env("SELFSUP_BIN", env!("CARGO_BIN_EXE_selfsup"))
            .env("QUICKSTART_OUT", &run)
            .env("QUICKSTART_EPOCHS", "1")
            .env("QUICKSTART_SUBSET", "64")
            .env("QUICKSTART_SETS", sets)
            .env("QUICKSTART_EVAL_SETS", "knn_k=5 probe_epochs=2")
            .env("RAYON_NUM_THREADS", "2"),
        COMMAND_LIMIT,
    );
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    // The preset's SimCLR on 64 images in batches of 16.
    assert!(
        out.starts_with("pretrained simclr: 1 epochs, 4 steps"),
        "{out}"
    );
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        config.contains("temperature = 0.2") && config.contains("cnn_pool = 3"),
        "{config}"
    );
    // The table it printed is compare.md: the run next to both baselines.
    let table = run.join("compare/compare.md");
    let md = std::fs::read_to_string(&table)
        .unwrap_or_else(|e| panic!("{}: {e}\n{out}", table.display()));
    assert!(out.contains(&md), "{out}\n---\n{md}");
    for row in ["| raw pixels |", "| random-init cnn |", "| simclr |"] {
        assert!(md.contains(row), "{row}: {md}");
    }
    let last = out.lines().last().unwrap();
    assert_eq!(
        last,
        format!("HTML report: {}", run.join("index.html").display())
    );
    let html = std::fs::read_to_string(run.join("index.html")).unwrap();
    assert!(
        html.contains("<img src=\"loss.png\"") && html.contains("simclr"),
        "{html}"
    );
}

/// A syntax error in a script that no test runs is found here (`bash -n`, Python's parser).
#[test]
fn every_script_parses() {
    let mut files: Vec<_> = std::fs::read_dir(scripts())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let (sh, py): (Vec<_>, Vec<_>) = files
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "sh" || e == "py"))
        .partition(|f| f.extension().is_some_and(|e| e == "sh"));
    assert!(
        sh.iter().any(|f| f.ends_with("kill_campaign.sh"))
            && py.iter().any(|f| f.ends_with("check_torch_export.py")),
        "{sh:?} {py:?}"
    );
    for f in &sh {
        let o = output_within(Command::new("bash").arg("-n").arg(f), COMMAND_LIMIT);
        assert!(o.status.success(), "{}: {}", f.display(), stderr(&o));
    }
    let o = output_within(
        Command::new(selfsup::venv::python().unwrap())
            .args([
                "-c",
                "import ast, sys\nfor f in sys.argv[1:]:\n    ast.parse(open(f).read(), f)",
            ])
            .args(&py),
        COMMAND_LIMIT,
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

/// The GPU check's every step, run on the CPU with --quick: each section of its one
/// summary file has a result, and each result is ok.
#[test]
fn gpu_check_runs_every_step_on_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gpu-out");
    let o = output_within(
        Command::new("bash")
            .arg(scripts().join("gpu_check.sh"))
            .args([
                "--device",
                "cpu",
                "--quick",
                "--bin",
                env!("CARGO_BIN_EXE_selfsup"),
            ])
            .arg("--python")
            .arg(selfsup::venv::python().unwrap())
            .arg("--out")
            .arg(&out)
            .env("RAYON_NUM_THREADS", "2"),
        COMMAND_LIMIT,
    );
    let summary = out.join("gpu_check.md");
    let md = std::fs::read_to_string(&summary)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", summary.display(), stderr(&o)));
    assert!(o.status.success(), "{md}\n{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), summary.display().to_string());
    let sections = [
        "Environment",
        "Generated CIFAR-10 data (320 + 80 images)",
        "Devices: what selfsup reports for --device auto and --device cpu",
        "bench-step: CIFAR ResNet-18 SimCLR step, selfsup vs PyTorch eager and compiled",
        "Process group of one rank (Gloo), one epoch of 64 images",
        "One epoch of presets/cifar10-simclr.toml (320 images)",
        "selfsup eval of that run",
        "2 processes on one CPU",
        "CUDA settings: selfsup's step with each on and off",
    ];
    for title in sections {
        let row = md.lines().find(|l| l.starts_with(&format!("| {title} | ")));
        assert!(
            row.is_some_and(|r| r.contains("| ok |")),
            "{title}: {row:?}\n{md}"
        );
        assert!(
            md.contains(&format!("## {title}\n\nresult: ok (")),
            "{title}\n{md}"
        );
    }
    // What each step measured or did, as the summary shows it.
    for part in [
        "torch 2.11.0",
        "selfsup --device auto: Cpu",
        "selfsup --device cpu: Cpu",
        "selfsup  bf16      channels-last -",
        "PyTorch  bf16      channels-last eager",
        "bf16: selfsup / PyTorch's best (eager, ",
        "device Cpu, 1 processes",
        "device Cpu, 2 processes",
        "pretrained simclr: 1 epochs, 10 steps",
        "linear probe   top-1",
        "| tf32 = false | ",
    ] {
        assert!(md.contains(part), "{part}\n{md}");
    }
    let settings: Vec<_> = md
        .lines()
        .filter(|l| {
            l.starts_with("| default: ")
                || l.starts_with("| tf32 = ")
                || l.starts_with("| deterministic = ")
        })
        .collect();
    assert_eq!(settings.len(), 3, "{md}");
    for row in settings {
        // | setting | fp32 compute / end-to-end | bf16 compute / end-to-end |
        let figures: Vec<f64> = row
            .split(['|', '/'])
            .skip(2)
            .filter_map(|f| f.trim().parse().ok())
            .collect();
        assert!(
            figures.len() == 4 && figures.iter().all(|&x| x > 0.0),
            "{row}"
        );
    }
    for log in ["environment", "bench-step", "settings", "eval"] {
        assert!(out.join(format!("logs/{log}.log")).is_file(), "{log}");
    }
}
