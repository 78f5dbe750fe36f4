//! Streamed data sources against files the ecosystem's reference writers make
//! (webdataset's `ShardWriter`, pyarrow's Parquet writer in the Hugging Face layout, run in
//! the setup venv by `scripts/make_reference_data.py`), against selfsup's own `data pack`,
//! and against damaged input.

mod common;

use selfsup::augment::Views;
use selfsup::data::loader::{Loader, ViewSpec, epoch_order};
use selfsup::data::pack::{PackOptions, pack};
use selfsup::data::{DataOptions, DataSpec, Dataset};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::Device;

/// (split, key, label, JPEG size) of each image `make_reference_data.py` wrote.
fn reference_data(dir: &Path) -> Vec<(String, String, i64, usize)> {
    let python = selfsup::venv::python().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make_reference_data.py");
    let o = common::output_within(
        std::process::Command::new(python).arg(script).args([
            "--out",
            dir.to_str().unwrap(),
            "--images",
            "40",
            "--classes",
            "4",
        ]),
        common::COMMAND_LIMIT,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    m.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["split"].as_str().unwrap().to_string(),
                e["key"].as_str().unwrap().to_string(),
                e["label"].as_i64().unwrap(),
                e["bytes"].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

fn load(spec: &str, size: usize, skip_bad: bool) -> anyhow::Result<Dataset> {
    let mut opts = DataOptions::default();
    opts.folder.size = size;
    opts.folder.skip_bad = skip_bad;
    DataSpec::parse(spec)?.load(&opts)
}

/// The raw bytes of every image of a streamed split, in order.
fn split_bytes(ds: &Dataset, test: bool) -> Vec<Vec<u8>> {
    let split = if test { &ds.test } else { &ds.train };
    let s = split.stream().expect("streamed");
    (0..split.len())
        .map(|i| s.source.read(s.items[i]).unwrap())
        .collect()
}

#[test]
fn shards_and_parquet_from_the_reference_writers_read_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = reference_data(tmp.path());
    let wds = load(&format!("wds:{}/wds", tmp.path().display()), 16, false).unwrap();
    let pq = load(
        &format!("parquet:{}/parquet", tmp.path().display()),
        16,
        false,
    )
    .unwrap();
    for ds in [&wds, &pq] {
        assert_eq!(
            (ds.train.len(), ds.test.len(), ds.num_classes),
            (32, 8, 4),
            "{}",
            ds.name
        );
        for (test, split) in [(false, &ds.train), (true, &ds.test)] {
            let want: Vec<&(String, String, i64, usize)> = manifest
                .iter()
                .filter(|m| (m.0 == "test") == test)
                .collect();
            // Labels and JPEG sizes in the written order.
            assert_eq!(
                split.labels,
                want.iter().map(|m| m.2).collect::<Vec<_>>(),
                "{}",
                ds.name
            );
            let sizes: Vec<usize> = split_bytes(ds, test).iter().map(Vec::len).collect();
            assert_eq!(
                sizes,
                want.iter().map(|m| m.3).collect::<Vec<_>>(),
                "{}",
                ds.name
            );
        }
    }
    // The two formats hold the same bytes, and they decode to the written picture: red =
    // 7x, green = 5y at the image's scale (48 x 32 into its central 32 x 32, at 16 x 16).
    assert_eq!(split_bytes(&wds, false), split_bytes(&pq, false));
    assert_eq!(split_bytes(&wds, true), split_bytes(&pq, true));
    let img = wds.train.fixed(3).unwrap();
    assert_eq!(img.len(), 3 * 16 * 16);
    let at = |c: usize, y: usize, x: usize| img[c * 256 + y * 16 + x] as i32;
    // Column 8 of 16 is x = 8 + 2 * 8 + 0.5 = 24.5 of the image: red about 7 * 24.5 = 171.
    assert!((at(0, 4, 8) - 171).abs() <= 12, "{}", at(0, 4, 8));
    assert!((at(1, 8, 4) - 5 * 17).abs() <= 12, "{}", at(1, 8, 4));
    // Parquet rows read out of order and in order give the same bytes (a thread keeps its
    // place in a column chunk; going back starts it again).
    let s = pq.train.stream().unwrap();
    let forward: Vec<Vec<u8>> = (0..pq.train.len())
        .map(|i| s.source.read(s.items[i]).unwrap())
        .collect();
    let backward: Vec<Vec<u8>> = (0..pq.train.len())
        .rev()
        .map(|i| s.source.read(s.items[i]).unwrap())
        .collect();
    assert_eq!(forward, backward.into_iter().rev().collect::<Vec<_>>());
    // A brace pattern names the same shards as the folder.
    let pattern = format!(
        "wds:{}/wds/train-{{000000..000001}}.tar",
        tmp.path().display()
    );
    let by_pattern = load(&pattern, 16, false).unwrap();
    assert_eq!((by_pattern.train.len(), by_pattern.test.len()), (32, 0));
    // Shards without split names: every fifth labeled sample is held out as the test split.
    let plain = tmp.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    for k in 0..2 {
        std::fs::copy(
            tmp.path().join(format!("wds/train-00000{k}.tar")),
            plain.join(format!("shard-{k}.tar")),
        )
        .unwrap();
    }
    let held = load(&format!("wds:{}", plain.display()), 16, false).unwrap();
    assert_eq!((held.train.len(), held.test.len()), (26, 6));
}

/// Writes `n` JPEGs of w x h in two class folders (`a/`, `b/`); returns the folder.
fn jpeg_folder(root: &Path, n: usize, w: u32, h: u32) -> PathBuf {
    for i in 0..n {
        let class = if i % 2 == 0 { "a" } else { "b" };
        std::fs::create_dir_all(root.join(class)).unwrap();
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 3) as u8, (y * 3) as u8, (i * 9) as u8])
        });
        img.save(root.join(class).join(format!("{i:03}.jpg")))
            .unwrap();
    }
    root.to_path_buf()
}

#[test]
fn pack_writes_shards_that_read_back_as_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = jpeg_folder(&tmp.path().join("imgs"), 20, 40, 30);
    let ds = load(&format!("folder:{}", folder.display()), 16, false).unwrap();
    let opts = PackOptions {
        max_side: 64,
        shard_bytes: 8 << 10,
        seed: 1,
    };
    let out = tmp.path().join("shards");
    let p = pack(&ds, &out, &opts).unwrap();
    assert_eq!(
        (p.samples, p.reencoded),
        (20, 0),
        "JPEGs that fit are copied"
    );
    assert!(p.shards.len() > 2, "{:?}", p.shards);
    let back = load(&format!("wds:{}", out.display()), 16, false).unwrap();
    assert_eq!(
        (back.train.len(), back.test.len()),
        (ds.train.len(), ds.test.len())
    );
    // Each packed sample is its folder image, byte for byte, with its label (the key is the
    // image's index in its split).
    for (test, split) in [(false, &back.train), (true, &back.test)] {
        let original = if test { &ds.test } else { &ds.train };
        let os = original.stream().unwrap();
        let bs = split.stream().unwrap();
        for i in 0..split.len() {
            let name = bs.describe(i);
            let key: usize = name.split(": ").nth(1).unwrap()[..9].parse().unwrap();
            assert_eq!(
                bs.source.read(bs.items[i]).unwrap(),
                os.source.read(os.items[key]).unwrap(),
                "{name}"
            );
            assert_eq!(split.labels[i], original.labels[key]);
        }
    }
    // Larger images are scaled down, aspect kept, and re-encoded.
    let small = PackOptions {
        max_side: 20,
        ..opts
    };
    let out2 = tmp.path().join("small");
    assert_eq!(pack(&ds, &out2, &small).unwrap().reencoded, 20);
    let back = load(&format!("wds:{}", out2.display()), 16, false).unwrap();
    let s = back.train.stream().unwrap();
    let bytes = s.source.read(s.items[0]).unwrap();
    assert_eq!(selfsup::data::decode::dimensions(&bytes).unwrap(), (20, 15));
    // Not into a folder that already holds shards.
    let e = pack(&ds, &out, &opts).unwrap_err().to_string();
    assert!(e.contains("already holds"), "{e}");
}

fn tar_with(path: &Path, members: &[(&str, &[u8])]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.finish().unwrap();
}

fn jpeg_bytes(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::RgbImage::from_pixel(w, h, image::Rgb([10, 200, 30]))
        .write_to(
            &mut std::io::Cursor::new(&mut out),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    out
}

#[test]
fn damaged_shards_parquet_and_files_give_clear_errors_or_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let jpg = jpeg_bytes(24, 24);
    // A shard cut in the middle of a member.
    let cut = tmp.path().join("cut");
    std::fs::create_dir(&cut).unwrap();
    tar_with(
        &cut.join("a.tar"),
        &[
            ("0001.jpg", &jpg),
            ("0001.cls", b"1"),
            ("0002.jpg", &jpg),
            ("0002.cls", b"0"),
        ],
    );
    let full = std::fs::read(cut.join("a.tar")).unwrap();
    std::fs::write(cut.join("a.tar"), &full[..512 + jpg.len() / 2]).unwrap();
    let e = format!(
        "{:#}",
        load(&format!("wds:{}", cut.display()), 16, false).unwrap_err()
    );
    assert!(e.contains("a.tar") && e.contains("truncated"), "{e}");
    // A sample without an image member: an error, or left out with "skip".
    let odd = tmp.path().join("odd");
    std::fs::create_dir(&odd).unwrap();
    tar_with(
        &odd.join("s.tar"),
        &[
            ("0001.jpg", &jpg),
            ("0001.cls", b"1"),
            ("0002.txt", b"no image"),
            ("0002.cls", b"0"),
            ("0003.jpg", &jpg),
            ("0003.cls", b"0"),
        ],
    );
    let e = format!(
        "{:#}",
        load(&format!("wds:{}", odd.display()), 16, false).unwrap_err()
    );
    assert!(
        e.contains("s.tar")
            && e.contains("0002")
            && e.contains("no image member")
            && e.contains("txt"),
        "{e}"
    );
    let ds = load(&format!("wds:{}", odd.display()), 16, true).unwrap();
    assert_eq!(ds.train.len() + ds.test.len(), 2);
    // A damaged image inside a shard is found when a batch needs it, named with its shard
    // and offset.
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    tar_with(
        &bad.join("b.tar"),
        &[("0001.jpg", &jpg[..jpg.len() / 3]), ("0002.jpg", &jpg)],
    );
    let ds = load(&format!("wds:{}", bad.display()), 16, false).unwrap();
    let u = ds.pretrain_split();
    let e = format!("{:#}", u.fixed(0).unwrap_err());
    assert!(
        e.contains("b.tar") && e.contains("0001.jpg") && e.contains("at byte 512"),
        "{e}"
    );
    assert!(
        load(&format!("wds:{}", bad.display()), 16, true)
            .unwrap()
            .pretrain_split()
            .fixed(0)
            .is_ok()
    );
    // Folder files: empty, and a header claiming 30000 x 30000 pixels.
    let files = tmp.path().join("files");
    std::fs::create_dir(&files).unwrap();
    std::fs::write(files.join("empty.jpg"), b"").unwrap();
    let mut huge = jpeg_bytes(16, 16);
    let sof = huge.windows(2).position(|w| w == [0xff, 0xc0]).unwrap();
    huge[sof + 5..sof + 9].copy_from_slice(&[0x75, 0x30, 0x75, 0x30]);
    std::fs::write(files.join("huge.jpg"), &huge).unwrap();
    let ds = load(&format!("folder:{}", files.display()), 16, false).unwrap();
    let split = ds.pretrain_split();
    let e = format!("{:#}", split.fixed(0).unwrap_err());
    assert!(e.contains("empty.jpg") && e.contains("empty file"), "{e}");
    let e = format!("{:#}", split.fixed(1).unwrap_err());
    assert!(e.contains("huge.jpg") && e.contains("30000 x 30000"), "{e}");
}

#[test]
fn parquet_rows_without_image_bytes_are_errors_or_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let python = selfsup::venv::python().unwrap();
    let file = tmp.path().join("train-0.parquet");
    let jpg = jpeg_bytes(20, 20);
    std::fs::write(tmp.path().join("img.jpg"), &jpg).unwrap();
    let code = format!(
        "import pyarrow as pa, pyarrow.parquet as pq\n\
         b = open(r'{}', 'rb').read()\n\
         t = pa.table({{'image': pa.array([{{'bytes': b, 'path': 'a'}}, {{'bytes': None, 'path': 'b'}}, {{'bytes': b, 'path': 'c'}}], type=pa.struct([('bytes', pa.binary()), ('path', pa.string())])), 'label': pa.array([0, 1, 1], type=pa.int64())}})\n\
         pq.write_table(t, r'{}')\n",
        tmp.path().join("img.jpg").display(),
        file.display()
    );
    let o = common::output_within(
        std::process::Command::new(python).args(["-c", &code]),
        common::COMMAND_LIMIT,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let spec = format!("parquet:{}", file.display());
    let ds = load(&spec, 8, false).unwrap();
    assert_eq!(ds.train.len(), 3);
    let e = format!("{:#}", ds.train.fixed(1).unwrap_err());
    assert!(
        e.contains("train-0.parquet") && e.contains("row 1") && e.contains("no image bytes"),
        "{e}"
    );
    assert!(ds.train.fixed(2).is_ok());
    let ds = load(&spec, 8, true).unwrap();
    assert!(ds.train.fixed(1).is_ok(), "replaced by row 2");
    // Not Parquet at all.
    std::fs::write(tmp.path().join("junk.parquet"), b"PAR1 but not really").unwrap();
    let e = format!(
        "{:#}",
        load(
            &format!("parquet:{}", tmp.path().join("junk.parquet").display()),
            8,
            false
        )
        .unwrap_err()
    );
    assert!(
        e.contains("junk.parquet") && e.contains("not a readable Parquet file"),
        "{e}"
    );
}

/// Every batch of an epoch of random views, as floats.
fn epoch_batches(ds: &Dataset, threads: usize) -> Vec<Vec<f32>> {
    let crop = selfsup::augment::bench::simclr_pipeline(8);
    let spec = ViewSpec {
        views: Arc::new(Views {
            pipelines: vec![crop.clone(), crop],
        }),
        seed: 5,
        epoch: 2,
    };
    let split = Arc::new(ds.train.clone());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        Loader::with_views(
            split.clone(),
            epoch_order(split.len(), 5, 2),
            8,
            true,
            2,
            Device::Cpu,
            Some(spec),
        )
        .map(|b| Vec::<f32>::try_from(b.unwrap().plain().flatten(0, -1)).unwrap())
        .collect()
    })
}

#[test]
fn the_same_seed_gives_the_same_streamed_batches_on_any_number_of_threads() {
    // Loaders: a producer or consumer blocked for ever fails the test after a minute.
    common::within(std::time::Duration::from_secs(60), same_streamed_batches);
}

fn same_streamed_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = jpeg_folder(&tmp.path().join("imgs"), 30, 50, 36);
    let ds = load(&format!("folder:{}", folder.display()), 16, false).unwrap();
    let one = epoch_batches(&ds, 1);
    assert_eq!(one.len(), 3);
    assert_eq!(one, epoch_batches(&ds, 2));
    assert_eq!(one, epoch_batches(&ds, 3));
    // And the views do depend on the images: a different folder differs.
    let other = jpeg_folder(&tmp.path().join("other"), 30, 60, 36);
    let ds2 = load(&format!("folder:{}", other.display()), 16, false).unwrap();
    assert_ne!(one, epoch_batches(&ds2, 1));
}
