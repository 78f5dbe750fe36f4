//! NCCL, the process group of multi-GPU runs: a real all-reduce (and broadcast and
//! all-gather) on one rank where a GPU exists, and clear errors where there is none or
//! selfsup was built without NCCL. Where the build has NCCL but the machine no GPU (CI), the
//! collectives cannot run: they are reported as SKIPPED, not as passed. libtest can only skip a test
//! when it is compiled (`#[ignore]`), not when it runs, so this file has its own small
//! harness (`harness = false` in Cargo.toml) that prints libtest's lines plus the skips.

mod common;

use selfsup::dist::{Backend, DistEnv, ProcessGroup};
use std::process::ExitCode;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

/// How a test ended.
enum Outcome {
    Passed,
    Skipped(String),
}

type Test = (&'static str, fn() -> Outcome);

/// Each machine runs the tests that apply to it and reports the others as skipped: a GPU
/// machine the collectives, CI (NCCL compiled in, no GPU) the error without a GPU, a build
/// without the CUDA headers the error without NCCL.
const TESTS: [Test; 3] = [
    (
        "nccl_all_reduce_broadcast_and_all_gather_on_one_rank",
        one_rank_collectives,
    ),
    ("nccl_without_a_gpu_is_a_clear_error", no_gpu),
    (
        "nccl_in_a_build_without_nccl_is_a_clear_error",
        build_without_nccl,
    ),
];

/// Rank 0 of `world_size`, its store on a free loopback port.
fn env(world_size: usize) -> DistEnv {
    DistEnv {
        rank: 0,
        world_size,
        local_rank: 0,
        master_addr: "127.0.0.1".into(),
        master_port: selfsup::launch::free_port().unwrap(),
        agent_store_prefix: None,
    }
}

/// The error of rank 0 of `world_size` joining an NCCL group on cuda:0, which must fail.
fn nccl_error(world_size: usize) -> String {
    let group = ProcessGroup::new(
        &env(world_size),
        Backend::Nccl { cuda_device: 0 },
        Duration::from_secs(5),
    );
    match group {
        Ok(_) => panic!("joining an NCCL group succeeded"),
        Err(e) => format!("{e:#}"),
    }
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_device(Device::Cpu).to_kind(Kind::Double)).unwrap()
}

fn one_rank_collectives() -> Outcome {
    if !selfsup::dist::nccl_compiled() {
        return Outcome::Skipped("this selfsup build has no NCCL support".into());
    }
    let gpus = tch::Cuda::device_count();
    if gpus == 0 {
        return Outcome::Skipped("no CUDA device (tch::Cuda::device_count() = 0)".into());
    }
    let pg = ProcessGroup::new(
        &env(1),
        Backend::Nccl { cuda_device: 0 },
        Duration::from_secs(60),
    )
    .unwrap();
    let cuda = (Kind::Float, Device::Cuda(0));
    let t = Tensor::from_slice(&[1f32, -2.5, 3.0]).to_device(Device::Cuda(0));
    pg.all_reduce_sum_(&t).unwrap();
    assert_eq!(t.device(), Device::Cuda(0));
    assert_eq!(values(&t), [1.0, -2.5, 3.0], "the sum over one rank");
    let b = Tensor::full([2], 7.0, cuda);
    pg.broadcast_(&b, 0).unwrap();
    assert_eq!(values(&b), [7.0, 7.0]);
    let x = Tensor::arange(6, cuda).view([2, 3]);
    let g = pg.all_gather(&x).unwrap();
    assert_eq!(g.size(), [2, 3]);
    assert_eq!(values(&g.flatten(0, -1)), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    pg.barrier().unwrap();
    pg.shutdown().unwrap();
    eprintln!("NCCL on cuda:0 of {gpus}: all-reduce, broadcast and all-gather ran");
    Outcome::Passed
}

fn no_gpu() -> Outcome {
    if !selfsup::dist::nccl_compiled() {
        return Outcome::Skipped("this selfsup build has no NCCL support".into());
    }
    if tch::Cuda::device_count() > 0 {
        return Outcome::Skipped("this machine has a CUDA device".into());
    }
    let e = nccl_error(1);
    assert!(e.contains("no GPUs found"), "{e}");
    Outcome::Passed
}

fn build_without_nccl() -> Outcome {
    if selfsup::dist::nccl_compiled() {
        return Outcome::Skipped("this selfsup build has NCCL".into());
    }
    let e = nccl_error(2);
    assert!(e.contains("this selfsup build has no NCCL support"), "{e}");
    Outcome::Passed
}

/// libtest's options that take a value (which is then no filter).
const WITH_VALUE: [&str; 6] = [
    "--test-threads",
    "--format",
    "--color",
    "--logfile",
    "--skip",
    "-Z",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut filters, mut skips) = (Vec::new(), Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--skip" {
            skips.extend(it.next().cloned());
        } else if WITH_VALUE.contains(&a.as_str()) {
            it.next();
        } else if !a.starts_with('-') {
            filters.push(a.clone());
        }
    }
    let flag = |f: &str| args.iter().any(|a| a == f);
    let exact = flag("--exact");
    let matches = |name: &str, f: &String| {
        if exact {
            name == f
        } else {
            name.contains(f.as_str())
        }
    };
    let chosen: Vec<&Test> = TESTS
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| matches(name, f)))
        .filter(|(name, _)| !skips.iter().any(|f| matches(name, f)))
        // None of these is #[ignore]d: `--ignored` runs none of them.
        .filter(|_| !flag("--ignored"))
        .collect();
    if flag("--list") {
        chosen.iter().for_each(|(name, _)| println!("{name}: test"));
        return ExitCode::SUCCESS;
    }
    let plural = if chosen.len() == 1 { "" } else { "s" };
    println!("\nrunning {} test{plural}", chosen.len());
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (name, test) in chosen {
        // A failed assertion panics (its message goes to stderr); a hang fails after 120 s.
        let outcome = std::panic::catch_unwind(|| common::within(Duration::from_secs(120), *test));
        match outcome {
            Ok(Outcome::Passed) => {
                passed += 1;
                println!("test {name} ... ok");
            }
            Ok(Outcome::Skipped(why)) => {
                skipped += 1;
                println!("test {name} ... SKIPPED: {why}");
            }
            Err(_) => {
                failed += 1;
                println!("test {name} ... FAILED");
            }
        }
    }
    let result = if failed == 0 { "ok" } else { "FAILED" };
    println!("\ntest result: {result}. {passed} passed; {failed} failed; {skipped} skipped\n");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
