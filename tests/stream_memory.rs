//! Streaming keeps memory bounded: the same `max_steps` pretraining at 224 px on an image
//! folder of 4x more images peaks at (nearly) the same resident memory. Decoding the
//! folder up front, as selfsup did before streaming, held 150 kB per image at 224 px: 90 MB
//! more for the larger folder here, far beyond the margin.

use std::path::Path;
use std::process::Command;

/// Writes `n` JPEGs of 320 x 240 into two class folders.
fn folder(root: &Path, n: usize) {
    for i in 0..n {
        let class = if i % 2 == 0 { "a" } else { "b" };
        std::fs::create_dir_all(root.join(class)).unwrap();
        let img = image::RgbImage::from_fn(320, 240, |x, y| {
            image::Rgb([
                (x + i as u32) as u8,
                (y * 2) as u8,
                ((x ^ y) + 3 * i as u32) as u8,
            ])
        });
        img.save(root.join(class).join(format!("{i:04}.jpg")))
            .unwrap();
    }
}

/// The peak resident memory (kB) of a pretraining run on `data`, read from the kernel's
/// accounting of the finished child (wait4's rusage).
fn peak_rss_kb(data: &Path, out: &Path) -> i64 {
    #[allow(clippy::zombie_processes)] // reaped by wait4 below
    let child = Command::new(env!("CARGO_BIN_EXE_selfsup"))
        .args([
            "--device", "cpu", "pretrain", "--quiet", "--method", "simclr", "--out",
        ])
        .arg(out)
        .arg("--data")
        .arg(format!("folder:{}", data.display()))
        .args([
            "--set",
            "image_size=224",
            "--set",
            "aug_crop_size=32",
            "--set",
            "cnn_widths=[4, 8]",
            "--set",
            "proj_hidden_dim=16",
            "--set",
            "proj_dim=8",
            "--set",
            "batch_size=8",
            "--set",
            "max_steps=4",
        ])
        .env("RAYON_NUM_THREADS", "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain data, filled by wait4 for our own child, reaped here (the Child
    // handle is not waited on again).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status}"
    );
    usage.ru_maxrss
}

#[test]
fn peak_memory_does_not_grow_with_the_number_of_images() {
    let tmp = tempfile::tempdir().unwrap();
    let (small, large) = (tmp.path().join("small"), tmp.path().join("large"));
    folder(&small, 150);
    folder(&large, 600);
    let a = peak_rss_kb(&small, &tmp.path().join("run-small"));
    let b = peak_rss_kb(&large, &tmp.path().join("run-large"));
    assert!(a > 0 && b > 0);
    assert!(
        b - a < 25_000,
        "peak RSS {a} kB on 150 images but {b} kB on 600: it grows with the number of images"
    );
}
