//! End-to-end checks of the `selfsup` binary: a tiny pretrain + eval on a synthetic
//! MNIST-format folder, and clear errors on bad options and bad data.

mod common;

use common::*;
use selfsup::methods::REGISTRY;
use selfsup::rundir::RunDir;
use std::path::Path;

/// Pretrains the tiny autoencoder for `epochs` on `root/data` (from
/// `tiny_mnist_in_temp_dir`) into `root/run`, which it returns.
fn tiny_autoencoder_run(root: &Path, epochs: usize) -> std::path::PathBuf {
    let run = root.join("run");
    let data_arg = format!("data=\"mnist:{}\"", root.join("data").display());
    let epochs = format!("epochs={epochs}");
    let mut args = vec![
        "--device",
        "cpu",
        "pretrain",
        "--quiet",
        "--method",
        "autoencoder",
        "--out",
        run.to_str().unwrap(),
        "--set",
        &data_arg,
        "--set",
        &epochs,
    ];
    args.extend(TINY_NET);
    let o = selfsup(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    run
}

/// The scores `eval` (or `report`) printed, as fractions: [linear top-1, linear top-5, kNN
/// top-1], from its `top-1 xx.xx%` lines.
fn printed_scores(out: &str) -> [f64; 3] {
    let pct: Vec<f64> = out
        .lines()
        .filter(|l| l.contains("top-1"))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|w| w.strip_suffix('%')?.parse::<f64>().ok())
        .map(|p| p / 100.0)
        .collect();
    pct.try_into()
        .unwrap_or_else(|p| panic!("expected 3 scores, got {p:?} in: {out}"))
}

/// The scores of an `eval.json` (or a run's entry): [linear top-1, linear top-5, kNN top-1].
fn json_scores(v: &serde_json::Value) -> [f64; 3] {
    ["linear_top1", "linear_top5", "knn_top1"].map(|k| {
        v["scores"][k]
            .as_f64()
            .unwrap_or_else(|| panic!("no {k} in {v}"))
    })
}

/// Scores equal to those printed with 2 decimals in percent.
fn assert_same_scores(a: [f64; 3], printed: [f64; 3], what: &str) {
    for (x, p) in a.iter().zip(printed) {
        assert!(
            (x - p).abs() <= 0.00005 + 1e-12,
            "{what}: {a:?} vs {printed:?}"
        );
    }
}

/// The test images of the tiny data in `data`, as the encoder sees them: `[N, 1, 8, 8]` in
/// [0, 1], in the data's order.
fn tiny_test_images(data: &Path) -> tch::Tensor {
    let spec = format!("mnist:{}", data.display());
    let ds = selfsup::data::DataSpec::parse(&spec)
        .unwrap()
        .load(&selfsup::data::DataOptions::default())
        .unwrap();
    let n = ds.test.len() as i64;
    tch::Tensor::from_slice(ds.test.memory().unwrap()).view([n, 1, 8, 8]) / 255.0
}

#[test]
fn pretrain_then_eval_on_a_tiny_folder() {
    let (tmp, data) = tiny_mnist_in_temp_dir();
    let run = tmp.path().join("run");
    let data_arg = format!("data=\"mnist:{}\"", data.display());
    let mut common = vec!["--set", &data_arg];
    common.extend(TINY_NET);
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
        "--set",
        "temperature=0.3",
    ];
    args.extend(&common);
    let o = selfsup(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("2 epochs, 8 steps"), "{}", stdout(&o));
    assert!(run.join("checkpoint.safetensors").is_file() && run.join("metrics.jsonl").is_file());
    // A key the method does not read is a warning, and config.toml holds only what it reads.
    assert!(
        stderr(&o).contains(
            "warning: option temperature is not read by method denoising-autoencoder and is ignored"
        ),
        "{}",
        stderr(&o)
    );
    let saved = std::fs::read_to_string(run.join(RunDir::CONFIG)).unwrap();
    assert!(
        saved.contains("noise = \"masking\"") && !saved.contains("\ntemperature ="),
        "{saved}"
    );

    // Running into the same folder again needs --resume; resuming with more epochs continues.
    let o = selfsup(&args);
    assert_fails_with(&o, "--resume");
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
    assert!(
        out.contains("eval denoising-autoencoder (3 epochs) on mnist: 128 train / 40 test images, 8-d features"),
        "{out}"
    );
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval.json")).unwrap()).unwrap();
    let scores = json_scores(&eval);
    assert_same_scores(
        scores,
        printed_scores(&out),
        "eval.json against the printed scores",
    );
    // 4 classes of the 10 of MNIST's format: 5 guesses of an under-trained probe (5 epochs)
    // may miss; the 5 nearest neighbours of an image of a square in one quadrant are
    // images of squares there (seen: 100%).
    assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)), "{eval}");
    assert!(scores[2] >= 0.75, "kNN top-1 {}", scores[2]);
    assert_eq!(eval["epochs"], 3, "{eval}");

    // A config file that names the method needs no --method.
    let toml = tmp.path().join("ae.toml");
    std::fs::write(&toml, format!("method = \"autoencoder\"\ndata = \"mnist:{}\"\ncnn_widths = [4, 8]\ndecoder_widths = [8, 4]\nbatch_size = 32\nepochs = 1\n", data.display())).unwrap();
    let run2 = tmp.path().join("run2");
    let o = selfsup(&[
        "pretrain",
        "--quiet",
        "--config",
        toml.to_str().unwrap(),
        "--out",
        run2.to_str().unwrap(),
    ]);
    assert!(
        o.status.success() && stdout(&o).contains("pretrained autoencoder: 1 epochs, 4 steps"),
        "{}",
        stderr(&o)
    );

    // Embeddings as .npy, neighbour pictures and PyTorch weights from the same run.
    let emb = tmp.path().join("emb");
    let o = selfsup(&[
        "embed",
        "--run",
        run.to_str().unwrap(),
        "--split",
        "test",
        "--out",
        emb.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let npy = std::fs::read(emb.join("embeddings_test.npy")).unwrap();
    assert!(
        npy.starts_with(b"\x93NUMPY") && String::from_utf8_lossy(&npy[..128]).contains("(40, 8,"),
        "{:?}",
        &npy[..64]
    );
    let o = selfsup(&[
        "neighbors",
        "--run",
        run.to_str().unwrap(),
        "--queries",
        "3",
        "--k",
        "4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("/12 neighbours share the query's label"),
        "{}",
        stdout(&o)
    );
    let png = image::open(run.join("neighbors.png")).unwrap();
    assert_eq!(
        (png.width(), png.height()),
        (2 + 5 * 66, 2 + 3 * 66),
        "8x8 tiles enlarged to 64 px"
    );
    let o = selfsup(&["neighbors", "--run", run.to_str().unwrap(), "--k", "0"]);
    assert_fails_with(&o, "--k 0");
    let weights = tmp.path().join("enc.safetensors");
    let o = selfsup(&[
        "export",
        "--run",
        run.to_str().unwrap(),
        "--out",
        weights.to_str().unwrap(),
    ]);
    assert!(o.status.success() && weights.is_file(), "{}", stderr(&o));
    // The exported encoder, loaded into PyTorch's module, gives the embeddings `embed`
    // wrote for the test images.
    let npy = npyz::NpyFile::new(&npy[..]).unwrap();
    assert_eq!(npy.shape(), &[40, 8]);
    let features: Vec<f32> = npy.into_vec().unwrap();
    let io = tmp.path().join("io.safetensors");
    tch::Tensor::write_safetensors(
        &[
            ("input", &tiny_test_images(&data)),
            ("output", &tch::Tensor::from_slice(&features).view([40, 8])),
        ],
        &io,
    )
    .unwrap();
    let (matched, text) = check_torch_export(&[(weights.clone(), io)]);
    assert!(matched, "{text}");
    assert!(
        text.contains("denoising-autoencoder: cnn on image"),
        "{text}"
    );

    // Raw pixels separate these four classes perfectly with a linear probe.
    let o = selfsup(&[
        "eval",
        "--baseline",
        "raw",
        "--set",
        &data_arg,
        "--set",
        "knn_k=5",
        "--set",
        "probe_batch_size=32",
        "--set",
        "probe_epochs=100",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let linear = out.lines().find(|l| l.contains("linear probe")).unwrap();
    assert!(linear.contains("top-1 100.00%"), "{out}");
    // The randomly initialised CNN (8 channels, globally pooled: only the borders tell
    // where the square is): well above chance (25%) on these four classes, its label always
    // among the top 5 of the probe's 10 outputs (seen: 72.5%, 100%, kNN 100%).
    let mut a = vec![
        "eval",
        "--baseline",
        "random",
        "--set",
        "knn_k=5",
        "--set",
        "probe_batch_size=32",
        "--set",
        "probe_epochs=100",
    ];
    a.extend(&common);
    let o = selfsup(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("eval random-init cnn on mnist: 128 train / 40 test images, 8-d features"),
        "{out}"
    );
    let [top1, top5, knn] = printed_scores(&out);
    assert!(
        (0.5..=1.0).contains(&top1) && top5 == 1.0 && knn >= 0.75,
        "{out}"
    );
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
        (
            &["data", "inspect", "--data", "cifar10"],
            "cifar10 needs a folder",
        ),
        (
            &["data", "inspect", "--data", "stl10:/no/such/stl"],
            "/no/such/stl",
        ),
        (
            &["eval", "--run", "/tmp/x", "--data", "mnist:/tmp"],
            "--data",
        ),
        (
            &["eval", "--baseline", "raw", "--set", "optimizer=lion"],
            "`sgd`, `adam`, `adamw`",
        ),
        (
            &[
                "pretrain",
                "--method",
                "moco-v2",
                "--set",
                "batch_size=6",
                "--out",
                "/tmp/x",
            ],
            "method moco-v2: option shuffle_bn_groups = 4 must be at least 1 and divide batch_size = 6",
        ),
        (
            &[
                "pretrain",
                "--resume",
                "--config",
                "/tmp/c.toml",
                "--out",
                "/tmp/x",
            ],
            "--resume continues with the config saved in /tmp/x",
        ),
        (
            &[
                "pretrain",
                "--method",
                "simclr",
                "--set",
                "checkpoint_every=10x",
                "--out",
                "/tmp/x",
            ],
            "option checkpoint_every = \"10x\": expected a number of steps",
        ),
        (
            &[
                "pretrain",
                "--out",
                "/tmp/x",
                "--checkpoint",
                "checkpoint-epoch1.safetensors",
            ],
            "--resume",
        ),
        (
            &[
                "eval",
                "--run",
                "/no/such/run",
                "--checkpoint",
                "checkpoint-epoch2.safetensors",
            ],
            "no checkpoint file /no/such/run/checkpoint-epoch2.safetensors",
        ),
    ];
    for (args, want) in cases {
        let o = selfsup(args);
        assert!(!o.status.success(), "{args:?} should fail");
        let e = stderr(&o);
        assert!(e.contains(want), "{args:?}: expected '{want}' in: {e}");
        assert!(!e.contains("panicked"), "{args:?} panicked: {e}");
    }
}

/// `selfsup methods` lists every method of the registry, in its order, with its summary,
/// and the README's method table names the same methods.
#[test]
fn methods_lists_every_registered_method_and_the_readme_names_them_all() {
    let o = selfsup(&["methods"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let listed: Vec<(&str, &str)> = out
        .lines()
        .map(|l| {
            let (name, summary) = l.split_once(' ').unwrap_or((l, ""));
            (name, summary.trim_start())
        })
        .collect();
    let registry: Vec<(&str, &str)> = REGISTRY.iter().map(|m| (m.name, m.summary)).collect();
    assert_eq!(listed, registry, "{out}");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split_once('`').map(|(name, _)| name))
        .collect();
    let names: Vec<&str> = REGISTRY.iter().map(|m| m.name).collect();
    assert_eq!(table, names, "README.md's method table");
    let count = format!("holds {} pretraining methods", names.len());
    assert!(readme.contains(&count), "README.md should say it {count}");
}

#[test]
fn pretext_methods_run_from_the_cli_and_colorization_refuses_grey_data() {
    let (tmp, data) = tiny_mnist_in_temp_dir();
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
    assert_fails_with(&o, "option tile_size = 7");
}

/// Tiny CIFAR-10 (one record per file), STL-10 and image folders, each with a known first
/// image, for `data inspect` and `--data`.
fn write_tiny_formats(root: &Path) {
    let cifar = root.join("cifar10");
    std::fs::create_dir_all(&cifar).unwrap();
    for (i, name) in [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
    ]
    .iter()
    .chain(&["data_batch_5", "test_batch"])
    .enumerate()
    {
        let mut rec = vec![i as u8];
        rec.extend((0..3072).map(|p| if p < 1024 { 200 } else { 10 })); // red
        std::fs::write(cifar.join(format!("{name}.bin")), rec).unwrap();
    }
    let stl = root.join("stl10").join("stl10_binary");
    std::fs::create_dir_all(&stl).unwrap();
    let stl_images = |n: usize| vec![90u8; n * 27648];
    std::fs::write(stl.join("train_X.bin"), stl_images(2)).unwrap();
    std::fs::write(stl.join("train_y.bin"), [1, 10]).unwrap();
    std::fs::write(stl.join("test_X.bin"), stl_images(1)).unwrap();
    std::fs::write(stl.join("test_y.bin"), [5]).unwrap();
    std::fs::write(stl.join("unlabeled_X.bin"), stl_images(3)).unwrap();
    for (class, colour) in [("apples", [220, 30, 30]), ("leaves", [30, 200, 30])] {
        let d = root.join("folder").join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..5u32 {
            image::RgbImage::from_fn(12 + i, 10, |_, _| image::Rgb(colour))
                .save(d.join(format!("{i}.png")))
                .unwrap();
        }
    }
    let flat = root.join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    for i in 0..16u8 {
        image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * 30 + y) as u8 + i]))
            .save(flat.join(format!("{i:02}.png")))
            .unwrap();
    }
}

#[test]
fn data_inspect_works_on_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_formats(tmp.path());
    let mnist = tmp.path().join("mnist");
    std::fs::create_dir(&mnist).unwrap();
    write_tiny_mnist(&mnist);
    // (kind, folder, counts, shape)
    let cases = [
        (
            "mnist",
            "mnist",
            "128 train / 40 test / 0 unlabeled",
            "[1, 8, 8]",
        ),
        (
            "cifar10",
            "cifar10",
            "5 train / 1 test / 0 unlabeled",
            "[3, 32, 32]",
        ),
        (
            "stl10",
            "stl10",
            "2 train / 1 test / 3 unlabeled",
            "[3, 96, 96]",
        ),
        (
            "folder",
            "folder",
            "8 train / 2 test / 0 unlabeled",
            "[3, 32, 32]",
        ),
        (
            "folder",
            "flat",
            "0 train / 0 test / 16 unlabeled",
            "[3, 32, 32]",
        ),
    ];
    let at = |p: &str| tmp.path().join(p).display().to_string();
    for (i, (kind, dir, counts, shape)) in cases.iter().enumerate() {
        let spec = &format!("{kind}:{}", at(dir));
        let png = tmp.path().join(format!("grid{i}.png"));
        let o = selfsup(&[
            "data",
            "inspect",
            "--data",
            spec,
            "--out",
            png.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{spec}: {}", stderr(&o));
        let out = stdout(&o);
        assert!(out.contains(counts) && out.contains(shape), "{spec}: {out}");
        let grid = image::open(&png).unwrap().to_rgb8();
        assert!(grid.width() > 100, "{spec}");
    }
    // CIFAR: the first image is all red (200, 10, 10); its cell starts at (2, 2).
    let grid = image::open(tmp.path().join("grid1.png")).unwrap().to_rgb8();
    assert_eq!(grid.get_pixel(2, 2).0, [200, 10, 10]);
    // The folder's class histogram, and the --set path for the same key.
    let o = selfsup(&[
        "data",
        "inspect",
        "--set",
        &format!("data=folder:{}", at("folder")),
        "--set",
        "image_size=8",
        "--out",
        tmp.path().join("g.png").to_str().unwrap(),
    ]);
    let out = stdout(&o);
    assert!(out.contains("[3, 8, 8]") && out.contains("apples"), "{out}");
}

#[test]
fn pretrain_on_an_unlabeled_folder_and_refuse_to_evaluate_it() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_formats(tmp.path());
    let flat = format!("folder:{}", tmp.path().join("flat").display());
    let run = tmp.path().join("run");
    let o = selfsup(&[
        "--device",
        "cpu",
        "pretrain",
        "--quiet",
        "--method",
        "autoencoder",
        "--data",
        &flat,
        "--out",
        run.to_str().unwrap(),
        "--set",
        "image_size=8",
        "--set",
        "batch_size=8",
        "--set",
        "epochs=1",
        "--set",
        "cnn_widths=[4, 8]",
        "--set",
        "decoder_widths=[8, 4]",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("1 epochs, 2 steps"), "{}", stdout(&o));
    let o = selfsup(&["eval", "--baseline", "raw", "--data", &flat]);
    assert_fails_with(&o, "cannot be evaluated");
}

#[test]
fn compare_trains_methods_and_adds_the_three_baselines() {
    let (tmp, data) = tiny_mnist_in_temp_dir();
    let out = tmp.path().join("cmp");
    let data_arg = format!("mnist:{}", data.display());
    let mut args = vec![
        "compare",
        "--quiet",
        "--methods",
        "autoencoder",
        "--data",
        &data_arg,
        "--set",
        "epochs=2",
        "--set",
        "knn_k=5",
        "--set",
        "probe_batch_size=32",
        "--set",
        "probe_epochs=100",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(TINY_NET);
    let o = selfsup(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    for row in [
        "| raw pixels | 100.00 |",
        "| random-init cnn |",
        "| autoencoder |",
        "| supervised |",
    ] {
        assert!(md.contains(row), "missing {row} in:\n{md}");
    }
    let csv = std::fs::read_to_string(out.join("compare.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    // Every row's numbers are what `eval` gives for it alone, with the same eval keys: the
    // eval.json of `eval --run` for the runs compare trained, `eval --baseline`'s printed
    // scores for the baselines.
    let eval_sets = [
        "--set",
        "knn_k=5",
        "--set",
        "probe_batch_size=32",
        "--set",
        "probe_epochs=100",
    ];
    let row = |method: &str| -> [f64; 3] {
        let line = csv
            .lines()
            .find(|l| l.split(',').next() == Some(method))
            .unwrap_or_else(|| panic!("no row {method} in:\n{csv}"));
        let cells: Vec<f64> = line
            .split(',')
            .skip(1)
            .take(3)
            .map(|c| c.parse::<f64>().unwrap() / 100.0)
            .collect();
        cells.try_into().unwrap()
    };
    for method in ["autoencoder", "supervised"] {
        let dir = out.join(method);
        let mut a = vec!["eval", "--run", dir.to_str().unwrap()];
        a.extend(eval_sets);
        let o = selfsup(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        let eval: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("eval.json")).unwrap()).unwrap();
        assert_same_scores(json_scores(&eval), row(method), method);
    }
    for (baseline, label) in [("raw", "raw pixels"), ("random", "random-init cnn")] {
        let mut a = vec!["eval", "--baseline", baseline, "--data", &data_arg];
        a.extend(eval_sets);
        a.extend(TINY_NET);
        let o = selfsup(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_same_scores(printed_scores(&stdout(&o)), row(label), label);
    }
    // The supervised upper bound learns these four classes (seen: 100%).
    assert!(row("supervised")[0] >= 0.9, "{csv}");
    // A second call reuses the finished runs instead of training again.
    let o = selfsup(&args);
    assert!(
        o.status.success() && !stderr(&o).contains("pretraining"),
        "{}",
        stderr(&o)
    );
    let o = selfsup(&["compare", "--out", out.to_str().unwrap()]);
    assert_fails_with(&o, "--runs");
}

#[test]
fn report_writes_metrics_plots_and_a_page_into_the_run() {
    let (tmp, _) = tiny_mnist_in_temp_dir();
    let run = tiny_autoencoder_run(tmp.path(), 2);
    // Pretraining draws the loss curve itself.
    assert!(run.join("loss.png").is_file());
    std::fs::remove_file(run.join("loss.png")).unwrap();

    let o = selfsup(&[
        "--device",
        "cpu",
        "report",
        "--run",
        run.to_str().unwrap(),
        "--points",
        "30",
        "--set",
        "knn_k=5",
        "--set",
        "probe_epochs=5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("linear probe")
            && out.contains("kNN")
            && out.contains("t-SNE map of 30 test images")
            && out.contains("/64 share the query's label")
            && out.contains("index.html"),
        "{out}"
    );
    for (file, size) in [
        ("loss.png", (960, 720)),
        ("embedding.png", (1000, 760)),
        ("neighbors.png", (2 + 9 * 66, 2 + 8 * 66)),
    ] {
        let img = image::open(run.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .to_rgb8();
        assert_eq!(img.dimensions(), size, "{file}");
        let first = *img.get_pixel(0, 0);
        assert!(img.pixels().any(|p| *p != first), "{file} is one colour");
    }
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval.json")).unwrap()).unwrap();
    // What the report printed, what eval.json holds and what the page shows agree.
    let scores = json_scores(&m);
    assert_same_scores(
        scores,
        printed_scores(&out),
        "eval.json against the printed scores",
    );
    assert!(
        scores.iter().all(|s| (0.0..=1.0).contains(s)) && scores[2] >= 0.75,
        "{m}"
    );
    let top1 = scores[0];
    assert_eq!(m["pretraining"]["epochs"], 2, "{m}");
    let html = std::fs::read_to_string(run.join("index.html")).unwrap();
    let shown = format!("{:.2}%", 100.0 * top1);
    for needle in [
        "<img src=\"loss.png\"",
        "<img src=\"embedding.png\"",
        "<img src=\"neighbors.png\"",
        "method = &quot;autoencoder&quot;",
        shown.as_str(),
    ] {
        assert!(html.contains(needle), "{needle} missing from index.html");
    }

    let o = selfsup(&["report", "--run", run.to_str().unwrap(), "--points", "0"]);
    assert_fails_with(&o, "--points 0");
    let o = selfsup(&["report", "--run", run.to_str().unwrap(), "--set", "lr=1"]);
    assert_fails_with(&o, "only the eval keys");
}

#[test]
fn segment_a_run_and_a_random_encoder_then_report_and_compare_them() {
    let (tmp, data) = tiny_mnist_in_temp_dir();
    let run = tiny_autoencoder_run(tmp.path(), 1);

    // Scenes of the tiny 8x8 "garments" on a 16x16 canvas.
    let scenes = format!("fashion-scenes:{}", data.display());
    let seg_sets = [
        "--set",
        "seg_image_size=16",
        "--set",
        "seg_train_scenes=64",
        "--set",
        "seg_test_scenes=16",
        "--set",
        "seg_frozen_epochs=2",
        "--set",
        "seg_finetune_epochs=2",
        "--set",
        "seg_batch_size=16",
    ];
    let mut args = vec![
        "--device",
        "cpu",
        "segment",
        "--quiet",
        "--run",
        run.to_str().unwrap(),
        "--seg-data",
        &scenes,
    ];
    args.extend(seg_sets);
    let o = selfsup(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("segment autoencoder (1 epochs) on fashion-scenes (16x16): 64 train / 16 test images, 11 classes, head linear")
            && out.contains("frozen    mIoU")
            && out.contains("finetune  mIoU")
            && out.contains("background"),
        "{out}"
    );
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("segment.json")).unwrap()).unwrap();
    for p in ["frozen", "finetune"] {
        let r = &rec["results"][p];
        let miou = r["mean_iou"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&miou), "{rec}");
        assert_eq!(r["iou"].as_array().unwrap().len(), 11, "{rec}");
        // Garments 4..9 never occur in the tiny data: absent classes have no IoU.
        assert!(r["iou"][10].is_null(), "{rec}");
        assert_eq!(r["settings"]["epochs"], 2, "{rec}");
    }
    assert_eq!(
        rec["results"]["finetune"]["settings"]["encoder_lr_scale"],
        0.1
    );
    // 6 rows of image, truth, frozen, finetune.
    let pic = image::open(run.join("segmentation.png")).unwrap().to_rgb8();
    assert_eq!(pic.dimensions(), (8 + 4 * 136 + 190, 64 + 6 * 136));

    // The report shows the result and the picture.
    let o = selfsup(&[
        "--device",
        "cpu",
        "report",
        "--run",
        run.to_str().unwrap(),
        "--points",
        "20",
        "--set",
        "knn_k=5",
        "--set",
        "probe_epochs=2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let html = std::fs::read_to_string(run.join("index.html")).unwrap();
    assert!(
        html.contains("<img src=\"segmentation.png\"") && html.contains("segmentation mIoU ("),
        "{html}"
    );

    // The random baseline, one protocol, into its own folder.
    let base = tmp.path().join("random");
    let mut args = vec![
        "--device",
        "cpu",
        "segment",
        "--quiet",
        "--baseline",
        "random",
        "--protocol",
        "frozen",
        "--out",
        base.to_str().unwrap(),
        "--seg-data",
        &scenes,
        "--set",
        "cnn_widths=[4, 8]",
    ];
    args.extend(seg_sets);
    let o = selfsup(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("segment random-init cnn on") && !stdout(&o).contains("finetune"),
        "{}",
        stdout(&o)
    );

    // compare --segmentation reuses the run's results and adds the random encoder's.
    let cmp = tmp.path().join("cmp");
    let seg_data = format!("seg_data=\"{scenes}\"");
    let mut args = vec![
        "--device",
        "cpu",
        "compare",
        "--quiet",
        "--runs",
        run.to_str().unwrap(),
        "--baselines",
        "raw,random",
        "--segmentation",
        "--out",
        cmp.to_str().unwrap(),
        "--set",
        "knn_k=5",
        "--set",
        "probe_epochs=2",
        "--set",
        &seg_data,
    ];
    args.extend(seg_sets);
    let o = selfsup(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("segmenting with random-init cnn")
            && !err.contains("segmenting with autoencoder"),
        "{err}"
    );
    let md = std::fs::read_to_string(cmp.join("compare.md")).unwrap();
    assert!(
        md.contains("seg frozen mIoU %")
            && md.contains("| raw pixels |")
            && md.contains("| - | - | - | - |"),
        "{md}"
    );
    assert!(cmp.join("random-init/segment.json").is_file());

    // Bad input: a missing folder, a colour folder for a grey encoder.
    let o = selfsup(&[
        "--device",
        "cpu",
        "segment",
        "--run",
        run.to_str().unwrap(),
        "--seg-data",
        "seg-folder:/no/such/dir",
    ]);
    assert_fails_with(&o, "/no/such/dir");
    let colour = tmp.path().join("colour");
    for d in ["images", "masks"] {
        std::fs::create_dir_all(colour.join(d)).unwrap();
    }
    for k in 0..5 {
        image::RgbImage::from_pixel(8, 8, image::Rgb([200, 10, 10]))
            .save(colour.join(format!("images/{k}.png")))
            .unwrap();
        image::GrayImage::from_pixel(8, 8, image::Luma([1]))
            .save(colour.join(format!("masks/{k}.png")))
            .unwrap();
    }
    let folder = format!("seg-folder:{}", colour.display());
    let o = selfsup(&[
        "--device",
        "cpu",
        "segment",
        "--run",
        run.to_str().unwrap(),
        "--seg-data",
        &folder,
        "--set",
        "seg_image_size=8",
    ]);
    assert!(
        !o.status.success()
            && stderr(&o).contains("takes 1-channel images")
            && stderr(&o).contains("3-channel"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bench_step_measures_the_default_preset_on_a_tiny_configuration() {
    let (_tmp, data) = tiny_mnist_in_temp_dir();
    let data_arg = format!("mnist:{}", data.display());
    // The Fashion-MNIST SimCLR preset (the default) with a tiny net on 8x8 images.
    let mut args = vec![
        "--device",
        "cpu",
        "bench-step",
        "--data",
        &data_arg,
        "--steps",
        "1",
        "--warmup",
        "0",
        // The compiled rows take a compilation each (src/train/bench.rs tests one).
        "--no-compile",
        "--set",
        "proj_hidden_dim=16",
        "--set",
        "proj_dim=8",
    ];
    args.extend(TINY_NET);
    let o = selfsup(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("simclr on mnist (1x8x8), cnn [4, 8] pool 3, batch 32"),
        "{out}"
    );
    for row in [
        "selfsup  fp32      channels-last -",
        "selfsup  bf16      channels-last -",
        "PyTorch  fp32      contiguous    eager",
        "PyTorch  bf16      contiguous    eager",
        "PyTorch  fp32      channels-last eager",
        "PyTorch  bf16      channels-last eager",
    ] {
        assert!(out.contains(row), "{row}: {out}");
    }
    assert!(!out.contains("compiled"), "{out}");
    assert!(
        out.contains("bf16: selfsup / PyTorch's best (eager, "),
        "{out}"
    );
    // selfsup's rows alone.
    args.push("--no-pytorch");
    let o = selfsup(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("selfsup  bf16      channels-last -"), "{out}");
    assert!(!out.contains("PyTorch"), "{out}");
    assert!(out.contains("selfsup bf16 / fp32"), "{out}");
    args.extend(["--python", "python3"]);
    let e = stderr(&selfsup(&args));
    assert!(e.contains("cannot be used with"), "{e}");
    for option in ["--steps", "--rounds"] {
        let o = selfsup(&["bench-step", "--data", &data_arg, option, "0"]);
        let e = stderr(&o);
        assert!(
            !o.status.success() && e.contains(&format!("{option} must be at least 1")),
            "{e}"
        );
    }
}

/// `eval` of a run on a streamed data set computes its features once: the second `eval`
/// (and `neighbors`) reads them back from features.safetensors and prints the same scores;
/// a later checkpoint of the run computes them anew. `data pack` through the command line.
#[test]
fn a_streamed_runs_features_are_computed_once_and_packed_shards_train_alike() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_formats(tmp.path());
    let folder = tmp.path().join("folder");
    let run = tmp.path().join("run");
    let pretrain = |extra: &[&str]| {
        let mut args = vec![
            "pretrain",
            "--quiet",
            "--method",
            "autoencoder",
            "--out",
            run.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = selfsup(&args);
        assert!(o.status.success(), "{}", stderr(&o));
    };
    let data = format!("folder:{}", folder.display());
    pretrain(&[
        "--data",
        &data,
        "--set",
        "image_size=8",
        "--set",
        "cnn_widths=[4]",
        "--set",
        "decoder_widths=[4]",
        "--set",
        "batch_size=4",
        "--set",
        "epochs=1",
    ]);
    let eval = || {
        let o = selfsup(&[
            "eval",
            "--run",
            run.to_str().unwrap(),
            "--set",
            "probe_epochs=2",
            "--set",
            "knn_k=3",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
            .lines()
            .filter(|l| l.contains("top-1"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    use std::os::unix::fs::MetadataExt;
    let inode = || {
        std::fs::metadata(run.join("features.safetensors"))
            .unwrap()
            .ino()
    };
    let first = eval();
    let written = inode();
    assert_eq!(eval(), first, "scores from the cached features");
    assert_eq!(inode(), written, "the cache was not written again");
    let o = selfsup(&[
        "neighbors",
        "--run",
        run.to_str().unwrap(),
        "--queries",
        "2",
        "--k",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(inode(), written);
    // Another epoch: another checkpoint, other features.
    pretrain(&["--resume", "--set", "epochs=2"]);
    eval();
    assert_ne!(
        inode(),
        written,
        "a new checkpoint's features are computed anew"
    );

    let shards = tmp.path().join("shards");
    let o = selfsup(&[
        "data",
        "pack",
        "--data",
        &data,
        "--out",
        shards.to_str().unwrap(),
        "--max-side",
        "64",
        "--shard-size",
        "2kB",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("packed 10 samples"), "{}", stdout(&o));
    let o = selfsup(&[
        "data",
        "inspect",
        "--data",
        &format!("wds:{}", shards.display()),
        "--out",
        tmp.path().join("g.png").to_str().unwrap(),
    ]);
    assert!(
        stdout(&o).contains("8 train / 2 test / 0 unlabeled"),
        "{}",
        stdout(&o)
    );
    let o = selfsup(&[
        "data",
        "pack",
        "--data",
        &data,
        "--out",
        shards.to_str().unwrap(),
    ]);
    assert_fails_with(&o, "already holds .tar shards");
}

/// `finetune` fine-tunes a run's encoder on fractions of the labels and records test
/// top-1/top-5; a second call reuses the finished fine-tunings; `compare --finetune` adds a
/// column from them (and fine-tunes the random encoder); `report` shows them; bad fractions
/// are clear errors.
#[test]
fn finetune_on_fractions_of_the_labels_then_compare_and_report_them() {
    let (tmp, _) = tiny_mnist_in_temp_dir();
    let run = tiny_autoencoder_run(tmp.path(), 1);
    let finetune = |labels: &str| {
        selfsup(&[
            "--device",
            "cpu",
            "finetune",
            "--quiet",
            "--run",
            run.to_str().unwrap(),
            "--labels",
            labels,
            "--set",
            "finetune_epochs=2",
            "--set",
            "finetune_batch_size=16",
        ])
    };
    let o = finetune("10%,100%");
    assert!(o.status.success(), "{}", stderr(&o));
    let printed = stdout(&o);
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("finetune.json")).unwrap()).unwrap();
    // 10% of the 32 training images of each of the 4 classes: 3 each.
    for (name, images) in [("10%", 12), ("100%", 128)] {
        let r = &record[name];
        assert_eq!(r["images"], images, "{record}");
        assert_eq!(r["epochs"], 2);
        let (top1, top5) = (r["top1"].as_f64().unwrap(), r["top5"].as_f64().unwrap());
        assert!(
            (0.0..=1.0).contains(&top1) && top1.is_finite() && top5 >= top1,
            "{record}"
        );
        let line = format!("on {name} of the labels ({images} images, 2 epochs");
        let shown = printed
            .lines()
            .find(|l| l.contains(&line))
            .unwrap_or_else(|| panic!("{printed}"));
        assert!(
            shown.contains(&format!("test top-1 {:.2}%", 100.0 * top1)),
            "{shown}"
        );
    }
    // It trains: the fine-tuning's loss falls from the first step to the last epoch.
    let m = selfsup::metrics::Metrics::read(&run.join("finetune-100pct").join("metrics.jsonl"))
        .unwrap();
    let (first, last) = (m.steps[0].loss, m.epochs.last().unwrap().loss);
    assert!(last < first, "fine-tuning loss {first} -> {last}");
    use std::os::unix::fs::MetadataExt;
    let ck = run.join("finetune-10pct").join("checkpoint.safetensors");
    let inode = std::fs::metadata(&ck).unwrap().ino();
    let again = finetune("10%");
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        std::fs::metadata(&ck).unwrap().ino(),
        inode,
        "a finished fine-tuning is reused"
    );
    assert!(stdout(&again).contains(&format!(
        "{:.2}%",
        100.0 * record["10%"]["top1"].as_f64().unwrap()
    )));

    let cmp = tmp.path().join("cmp");
    let o = selfsup(&[
        "--device",
        "cpu",
        "compare",
        "--quiet",
        "--runs",
        run.to_str().unwrap(),
        "--baselines",
        "raw,random",
        "--finetune",
        "10",
        "--set",
        "probe_epochs=2",
        "--set",
        "finetune_epochs=2",
        "--set",
        "finetune_batch_size=16",
        "--out",
        cmp.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::read_to_string(cmp.join("compare.md")).unwrap();
    // The cell of a row's column, by the header's names.
    let cells =
        |line: &str| -> Vec<String> { line.split('|').map(|c| c.trim().to_string()).collect() };
    let header = cells(md.lines().next().unwrap());
    let cell = |method: &str, column: &str| -> String {
        let col = header
            .iter()
            .position(|h| h == column)
            .unwrap_or_else(|| panic!("{column}: {md}"));
        let line = md
            .lines()
            .find(|l| l.starts_with(&format!("| {method}")))
            .unwrap();
        cells(line)[col].clone()
    };
    let pct = |v: &serde_json::Value| format!("{:.2}", 100.0 * v["top1"].as_f64().unwrap());
    assert_eq!(
        cell("autoencoder", "fine-tuned 10% top-1 %"),
        pct(&record["10%"]),
        "{md}"
    );
    assert_eq!(
        cell("autoencoder", "fine-tuned 100% top-1 %"),
        pct(&record["100%"]),
        "{md}"
    );
    let random: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cmp.join("random-init").join("finetune.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        cell("random-init", "fine-tuned 10% top-1 %"),
        pct(&random["10%"]),
        "{md}"
    );
    assert_eq!(cell("raw pixels", "fine-tuned 10% top-1 %"), "-", "{md}");

    let o = selfsup(&[
        "--device",
        "cpu",
        "report",
        "--run",
        run.to_str().unwrap(),
        "--points",
        "20",
        "--set",
        "probe_epochs=2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let html = std::fs::read_to_string(run.join("index.html")).unwrap();
    assert!(
        html.contains("fine-tuned on 10% of the labels (12 images, 2 epochs)"),
        "report"
    );

    for (labels, says) in [
        ("0%", "must be in (0%, 100%]"),
        ("1%", "without any"),
        ("ten", "a percentage"),
    ] {
        let o = finetune(labels);
        assert!(!o.status.success(), "{labels}");
        assert!(stderr(&o).contains(says), "{labels}: {}", stderr(&o));
    }
}

/// `selfsup config` prints the effective config: the defaults with a config file and
/// `--set`s applied, as TOML that reads back to itself.
#[test]
fn config_prints_the_effective_config_as_toml_that_reads_back() {
    let o = selfsup(&["config", "--set", "epochs=5", "--set", "method=\"byol\""]);
    assert!(o.status.success(), "{}", stderr(&o));
    let printed = stdout(&o);
    let got: toml::Table = toml::from_str(&printed).unwrap();
    // Every key with its default, but the two set.
    let mut want: toml::Table =
        toml::from_str(&toml::to_string(&selfsup::config::Config::default()).unwrap()).unwrap();
    want.insert("epochs".into(), toml::Value::Integer(5));
    want.insert("method".into(), toml::Value::String("byol".into()));
    assert_eq!(got, want, "{printed}");
    // As a config file, with one more --set on top.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("c.toml");
    std::fs::write(&file, &printed).unwrap();
    let o = selfsup(&["config", "--config", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), printed);
    let o = selfsup(&[
        "config",
        "--config",
        file.to_str().unwrap(),
        "--set",
        "lr=0.5",
    ]);
    let again: toml::Table = toml::from_str(&stdout(&o)).unwrap();
    want.insert("lr".into(), toml::Value::Float(0.5));
    assert_eq!(again, want);
    let o = selfsup(&["config", "--set", "epochs=-1"]);
    assert_fails_with(&o, "epochs");
}

/// `selfsup bench-augment` with a few images: every shape on 1 thread and on all of them,
/// selfsup's and torchvision's throughput (the comparison ran: a torchvision failure would
/// leave `-` and a note) and their ratio.
#[test]
fn bench_augment_measures_selfsup_and_torchvision_on_every_shape() {
    let o = selfsup(&["bench-augment", "--images", "4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(!err.contains("skipped"), "{err}");
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: Vec<usize> = if all > 1 { vec![1, all] } else { vec![1] };
    let mut lines = out.lines();
    assert!(
        lines.next().unwrap().split_whitespace().eq([
            "shape",
            "threads",
            "selfsup",
            "img/s",
            "torchvision",
            "img/s",
            "ratio"
        ]),
        "{out}"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    let mut want = Vec::new();
    for shape in ["1x28x28", "3x32x32", "3x96x96"] {
        for t in &threads {
            want.push((shape.to_string(), t.to_string()));
        }
    }
    let got: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r[0].to_string(), r[1].to_string()))
        .collect();
    assert_eq!(got, want, "{out}");
    for r in &rows {
        let ours: f64 = r[2].parse().unwrap();
        let theirs: f64 = r[3]
            .parse()
            .unwrap_or_else(|_| panic!("no torchvision figure: {out}"));
        let ratio: f64 = r[4].strip_suffix('x').unwrap().parse().unwrap();
        assert!(ours > 0.0 && theirs > 0.0, "{out}");
        // The ratio of the unrounded figures: within the rounding of the printed ones.
        let (lo, hi) = (
            (ours - 0.5) / (theirs + 0.5),
            (ours + 0.5) / (theirs - 0.5).max(0.5),
        );
        assert!((lo - 0.005..=hi + 0.005).contains(&ratio), "{r:?}");
    }
}
