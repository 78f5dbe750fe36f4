//! Fuzz-style property tests of the IDX, CIFAR and STL-10 parsers (proptest): arbitrary
//! bytes, and valid files with bytes changed, cut off or appended. Every input must give a
//! value or an error, never a panic, and what parses must be consistent with the input.
//!
//! `cargo test` runs a few cases per parser. For a long run:
//! `SELFSUP_FUZZ_CASES=200000 cargo test --release fuzz_ -- --nocapture`
//! (each test prints how many inputs it ran and how many parsed).

use super::{cifar, idx, stl};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestRunner;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Cases per property: `SELFSUP_FUZZ_CASES`, or a few so that `cargo test` stays fast.
fn cases() -> u32 {
    std::env::var("SELFSUP_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Runs `check` on `cases()` inputs from `strategy` (a panic fails the test, after
/// proptest shrinks the input) and prints how many inputs ran and how many parsed.
fn fuzz<S: Strategy>(name: &str, strategy: S, check: impl Fn(S::Value) -> bool) {
    let (runs, parsed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut runner = TestRunner::new(config());
    let result = runner.run(&strategy, |v| {
        let ok = check(v);
        runs.fetch_add(1, Ordering::Relaxed);
        parsed.fetch_add(ok as usize, Ordering::Relaxed);
        Ok(())
    });
    let runs = runs.load(Ordering::Relaxed);
    eprintln!(
        "fuzz {name}: {runs} inputs, {} parsed, {} panics",
        parsed.load(Ordering::Relaxed),
        if result.is_ok() { "0" } else { "some" }
    );
    if let Err(e) = result {
        panic!("fuzz {name}: {e}");
    }
}

/// Changes of a valid file: overwritten bytes, a cut, appended bytes.
#[derive(Debug, Clone)]
struct Mutation {
    flips: Vec<(Index, u8)>,
    cut: Option<Index>,
    extra: Vec<u8>,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    (
        prop::collection::vec((any::<Index>(), any::<u8>()), 0..4),
        prop::option::weighted(0.3, any::<Index>()),
        prop::collection::vec(any::<u8>(), 0..3),
    )
        .prop_map(|(flips, cut, extra)| Mutation { flips, cut, extra })
}

impl Mutation {
    fn apply(&self, mut b: Vec<u8>) -> Vec<u8> {
        if !b.is_empty() {
            for (i, v) in &self.flips {
                let at = i.index(b.len());
                b[at] = *v;
            }
        }
        if let Some(c) = &self.cut {
            b.truncate(c.index(b.len() + 1));
        }
        b.extend_from_slice(&self.extra);
        b
    }
    fn is_noop(&self) -> bool {
        self.flips.is_empty() && self.cut.is_none() && self.extra.is_empty()
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Checks one IDX input: no panic, and a parsed array holds exactly its dims' bytes.
fn check_idx(bytes: &[u8]) -> Option<idx::IdxArray> {
    let r = idx::parse_idx_maybe_gz(bytes);
    let a = r.ok()?;
    assert_eq!(a.data.len(), a.dims.iter().product::<usize>());
    assert!((1..=4).contains(&a.dims.len()));
    Some(a)
}

/// Checks one CIFAR input against the rule: it parses exactly when its size is a positive
/// multiple of the record and every label byte is in range.
fn check_cifar(bytes: &[u8], layout: cifar::Layout) -> bool {
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    let r = cifar::parse_records(bytes, layout, &mut images, &mut labels);
    let rec = layout.record_bytes();
    let valid = !bytes.is_empty()
        && bytes.len().is_multiple_of(rec)
        && bytes.chunks(rec).all(|r| {
            r.iter()
                .zip(&layout.label_ranges[..layout.label_bytes])
                .all(|(b, lim)| b < lim)
        });
    assert_eq!(r.is_ok(), valid, "{r:?}");
    if valid {
        let n = bytes.len() / rec;
        assert_eq!((images.len(), labels.len()), (n * cifar::IMAGE_BYTES, n));
        assert_eq!(
            &images[..cifar::IMAGE_BYTES],
            &bytes[layout.label_bytes..rec]
        );
    }
    valid
}

/// Checks one STL-10 (images, labels) input; a parsed split encodes back to the input.
fn check_stl(x: &[u8], y: &[u8]) -> bool {
    let r = stl::parse_labeled(x, y);
    let valid = !x.is_empty()
        && x.len().is_multiple_of(stl::IMAGE_BYTES)
        && y.len() == x.len() / stl::IMAGE_BYTES
        && y.iter().all(|b| (1..=10).contains(b));
    // The image count, not the images (27 kB each).
    assert_eq!(r.is_ok(), valid, "{:?}", r.as_ref().map(|s| s.len()));
    if let Ok(s) = r {
        let imgs: Vec<Vec<u8>> = (0..s.len()).map(|i| s.image(i).to_vec()).collect();
        let back = stl::encode_images(&imgs);
        // The first differing byte, not two arrays of 27 kB per image.
        let first = back.iter().zip(x).position(|(a, b)| a != b);
        assert!(
            back.len() == x.len() && first.is_none(),
            "the parsed images encode back to other bytes: lengths {} and {}, first difference at {first:?}",
            back.len(),
            x.len()
        );
        assert!(s.labels.iter().zip(y).all(|(&l, &b)| l == b as i64 - 1));
    }
    valid
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

#[test]
fn fuzz_idx_arbitrary_bytes() {
    fuzz("idx arbitrary", (bytes(512), any::<bool>()), |(b, gz)| {
        let b = if gz { gzip(&b) } else { b };
        // Also the same bytes behind the IDX magic number, to reach the dimension checks.
        let mut framed = vec![0, 0, 8, b.first().map_or(1, |v| v % 6)];
        framed.extend_from_slice(&b);
        check_idx(&framed).is_some() | check_idx(&b).is_some()
    });
}

#[test]
fn fuzz_idx_mutated_files() {
    let s = (
        prop::collection::vec(0usize..7, 1..5),
        any::<u8>(),
        mutation(),
        any::<bool>(),
    );
    fuzz("idx mutated", s, |(dims, seed, m, gz)| {
        let n: usize = dims.iter().product();
        let data: Vec<u8> = (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        let file = idx::encode_idx(&dims, &data);
        let file = if gz { gzip(&file) } else { file };
        let got = check_idx(&m.apply(file));
        if m.is_noop() {
            assert_eq!(got, Some(idx::IdxArray { dims, data }));
        }
        got.is_some()
    });
}

fn cifar_layout() -> impl Strategy<Value = cifar::Layout> {
    prop_oneof![
        Just(cifar::CIFAR10),
        Just(cifar::cifar100(true)),
        Just(cifar::cifar100(false))
    ]
}

#[test]
fn fuzz_cifar_arbitrary_bytes() {
    fuzz(
        "cifar arbitrary",
        (bytes(8000), cifar_layout()),
        |(b, l)| check_cifar(&b, l),
    );
}

#[test]
fn fuzz_cifar_mutated_files() {
    let records = prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 0..4);
    fuzz(
        "cifar mutated",
        (records, cifar_layout(), mutation()),
        |(records, layout, m)| {
            let mut file = Vec::new();
            for &(a, b, fill) in &records {
                file.push(a % layout.label_ranges[0]);
                if layout.label_bytes == 2 {
                    file.push(b % layout.label_ranges[1]);
                }
                file.extend((0..cifar::IMAGE_BYTES).map(|i| (i as u8) ^ fill));
            }
            check_cifar(&m.apply(file), layout)
        },
    );
}

#[test]
fn fuzz_stl_arbitrary_bytes() {
    fuzz("stl arbitrary", (bytes(1000), bytes(4)), |(x, y)| {
        check_stl(&x, &y)
    });
}

/// `n` whole STL-10 images of arbitrary bytes (from `seed`), `delta` bytes more or fewer.
fn stl_image_bytes(n: usize, delta: i64, seed: u64) -> Vec<u8> {
    let len = (n * stl::IMAGE_BYTES) as i64 + delta;
    let mut state = seed | 1;
    (0..len.max(0))
        .map(|_| {
            // xorshift64: arbitrary bytes without proptest holding (and shrinking) 27 kB.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Inputs of whole-image sizes (0 to 3 images of 96x96x3 arbitrary bytes, most often
/// exactly, else a byte or two more or fewer) with label files of about the same count
/// whose bytes lie around the valid 1..=10: both the accepting and the rejecting paths run,
/// and the test says how often each did.
#[test]
fn fuzz_stl_whole_image_sizes() {
    let delta = prop_oneof![6 => Just(0i64), 1 => -2i64..=2];
    let s = (
        0usize..4,
        delta,
        any::<u64>(),
        prop_oneof![6 => Just(0i64), 1 => -1i64..=1],
        prop::collection::vec(prop_oneof![9 => 1u8..=10, 1 => any::<u8>()], 4),
    );
    // Sizes a byte or two off whole images, not left to chance (below, one byte over comes
    // in about 1 input of 50): each must be rejected, however many images and good labels.
    for n in 1..=2 {
        for dx in [-2i64, -1, 1, 2] {
            let x = stl_image_bytes(n, dx, 7);
            let r = stl::parse_labeled(&x, &vec![1u8; n]);
            assert!(
                r.is_err(),
                "{} bytes ({n} images {dx:+}) parsed as {:?} images",
                x.len(),
                r.map(|s| s.len())
            );
        }
    }
    let (accepted, rejected) = (AtomicUsize::new(0), AtomicUsize::new(0));
    fuzz("stl whole images", s, |(n, dx, seed, dy, labels)| {
        let x = stl_image_bytes(n, dx, seed);
        let ny = (n as i64 + dy).clamp(0, 4) as usize;
        let ok = check_stl(&x, &labels[..ny]);
        [&rejected, &accepted][ok as usize].fetch_add(1, Ordering::Relaxed);
        ok
    });
    let (a, r) = (accepted.into_inner(), rejected.into_inner());
    assert!(
        a > 0 && r > 0,
        "{a} parsed, {r} rejected: one path never ran"
    );
}

#[test]
fn fuzz_stl_mutated_files() {
    let s = (
        prop::collection::vec(1u8..=10, 0..3),
        any::<u8>(),
        mutation(),
        mutation(),
    );
    fuzz("stl mutated", s, |(labels, fill, mx, my)| {
        let x: Vec<u8> = (0..labels.len() * stl::IMAGE_BYTES)
            .map(|i| (i % 251) as u8 ^ fill)
            .collect();
        check_stl(&mx.apply(x), &my.apply(labels))
    });
}

#[test]
fn fuzz_stl_unlabeled_file_reads() {
    // File sizes around record multiples; the positioned reader must agree with the rule.
    let s = (0usize..4, 0usize..3, 0usize..6, any::<u64>());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("unlabeled_X.bin");
    fuzz("stl unlabeled file", s, |(n, extra, max, seed)| {
        let x: Vec<u8> = (0..n * stl::IMAGE_BYTES + extra)
            .map(|i| (i % 253) as u8)
            .collect();
        std::fs::write(&p, &x).unwrap();
        let r = stl::read_unlabeled(&p, max, seed);
        assert_eq!(r.is_ok(), n > 0 && extra == 0, "{r:?}");
        if let Ok(s) = &r {
            assert_eq!(s.len(), max.min(n));
            for i in 0..s.len() {
                let file = stl::encode_images(&[s.image(i).to_vec()]);
                assert!(x.chunks_exact(stl::IMAGE_BYTES).any(|r| r == file));
            }
        }
        r.is_ok()
    });
}
