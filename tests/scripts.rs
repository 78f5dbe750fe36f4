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
