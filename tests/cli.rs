//! End-to-end checks of the `selfsup` binary: a tiny pretrain + eval on a synthetic
//! MNIST-format folder, and clear errors on bad options and bad data.

use std::path::Path;
use std::process::{Command, Output};

fn selfsup(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_selfsup"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("the selfsup binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// An MNIST-format folder of 8x8 images: class k has a bright 4x4 square in quadrant k.
fn write_tiny_mnist(dir: &Path) {
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

#[test]
fn pretrain_then_eval_on_a_tiny_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    write_tiny_mnist(&data);
    let run = tmp.path().join("run");
    let data_arg = format!("data=\"mnist:{}\"", data.display());
    let common = [
        "--set",
        &data_arg,
        "--set",
        "cnn_widths=[4, 8]",
        "--set",
        "decoder_widths=[8, 4]",
        "--set",
        "batch_size=32",
    ];
    let mut args = vec![
        "--device",
        "cpu",
        "pretrain",
        "--quiet",
        "--method",
        "denoising-autoencoder",
        "--out",
        run.to_str().unwrap(),
        "--set",
        "epochs=2",
        "--set",
        "noise=masking",
    ];
    args.extend(common);
    let o = selfsup(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("2 epochs, 8 steps"), "{}", stdout(&o));
    assert!(run.join("checkpoint.safetensors").is_file() && run.join("metrics.jsonl").is_file());

    // Running into the same folder again needs --resume; resuming with more epochs continues.
    let o = selfsup(&args);
    assert!(
        !o.status.success() && stderr(&o).contains("--resume"),
        "{}",
        stderr(&o)
    );
    let o = selfsup(&[
        "pretrain",
        "--quiet",
        "--out",
        run.to_str().unwrap(),
        "--resume",
        "--set",
        "epochs=3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("3 epochs, 12 steps"), "{}", stdout(&o));

    let o = selfsup(&[
        "eval",
        "--run",
        run.to_str().unwrap(),
        "--set",
        "knn_k=5",
        "--set",
        "probe_epochs=5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("linear probe") && out.contains("kNN"), "{out}");
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval.json")).unwrap()).unwrap();
    let top1 = eval["scores"]["linear_top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1));

    // Raw pixels separate these four classes perfectly with a linear probe.
    let o = selfsup(&[
        "eval",
        "--baseline",
        "raw",
        "--set",
        &data_arg,
        "--set",
        "knn_k=5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("top-1 100.00%"), "{}", stdout(&o));
    let mut a = vec!["eval", "--baseline", "random"];
    a.extend(common);
    let o = selfsup(&a);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn bad_options_get_clear_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["--device", "tpu", "methods"], "--device 'tpu'"),
        (&["--device", "cuda:x", "methods"], "--device 'cuda:x'"),
        (
            &["--device", "tpu", "eval", "--baseline", "raw"],
            "--device 'tpu'",
        ),
        (
            &["eval", "--baseline", "raw", "--set", "lr=-1"],
            "option lr",
        ),
        (
            &["eval", "--baseline", "raw", "--set", "colour=blue"],
            "unknown key 'colour'",
        ),
        (
            &[
                "eval",
                "--baseline",
                "raw",
                "--set",
                "data=mnist:/no/such/folder",
            ],
            "/no/such/folder",
        ),
        (
            &["eval", "--baseline", "raw", "--set", "data=cifar11"],
            "data 'cifar11'",
        ),
        (
            &["eval", "--run", "/no/such/run"],
            "no checkpoint in /no/such/run",
        ),
        (&["eval", "--baseline", "pixels"], "pixels"),
        (
            &["pretrain", "--method", "nope", "--out", "/tmp/x"],
            "unknown method 'nope'",
        ),
        (&["pretrain", "--out", "/tmp/x"], "--method"),
        (
            &["eval", "--baseline", "raw", "--config", "/no/such.toml"],
            "/no/such.toml",
        ),
        (&["--threads", "0", "methods"], "--threads 0"),
    ];
    for (args, want) in cases {
        let o = selfsup(args);
        assert!(!o.status.success(), "{args:?} should fail");
        let e = stderr(&o);
        assert!(e.contains(want), "{args:?}: expected '{want}' in: {e}");
        assert!(!e.contains("panicked"), "{args:?} panicked: {e}");
    }
}

#[test]
fn methods_lists_the_registry() {
    let o = selfsup(&["methods"]);
    let out = stdout(&o);
    for name in [
        "autoencoder",
        "denoising-autoencoder",
        "context-encoder",
        "rotation",
        "jigsaw",
        "relative-patch",
        "colorization",
    ] {
        assert!(out.lines().any(|l| l.starts_with(name)), "{name}: {out}");
    }
}

#[test]
fn pretext_methods_run_from_the_cli_and_colorization_refuses_grey_data() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    write_tiny_mnist(&data);
    let data_arg = format!("data=\"mnist:{}\"", data.display());
    let pretrain = |method: &str, run: &Path, extra: &[&str]| {
        let mut args = vec![
            "--device",
            "cpu",
            "pretrain",
            "--quiet",
            "--method",
            method,
            "--out",
            run.to_str().unwrap(),
            "--set",
            &data_arg,
            "--set",
            "cnn_widths=[4]",
            "--set",
            "decoder_widths=[4]",
            "--set",
            "batch_size=64",
            "--set",
            "epochs=1",
        ];
        args.extend(extra);
        selfsup(&args)
    };
    // The context encoder saves its inpaintings as a PNG.
    let run = tmp.path().join("ce");
    let o = pretrain("context-encoder", &run, &["--set", "ce_mask=random-blocks"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let png = std::fs::read(run.join("examples.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // Grey data: colorization refuses at build time and leaves no run folder.
    let run = tmp.path().join("col");
    let o = pretrain("colorization", &run, &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("method colorization needs colour images")
            && stderr(&o).contains("1 channel(s)"),
        "{}",
        stderr(&o)
    );
    assert!(!run.exists());
    // The tile methods refuse tiles larger than their cells (8x8 images: 2-pixel cells).
    let o = pretrain("jigsaw", &tmp.path().join("jig"), &[]);
    assert!(
        !o.status.success() && stderr(&o).contains("option tile_size = 7"),
        "{}",
        stderr(&o)
    );
}
