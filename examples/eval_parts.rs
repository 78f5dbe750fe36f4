//! Where `selfsup eval --run DIR` spends its time: features of both splits, the linear
//! probe, and kNN, each timed alone. `cargo run --release --example eval_parts -- DIR [--set K=V]`
use selfsup::eval::{self, knn, linear};
use std::time::Instant;
use tch::Device;

fn main() -> anyhow::Result<()> {
    // As selfsup's main: no fresh mmap per large buffer.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(&args[0]);
    let sets: Vec<String> = args[1..]
        .iter()
        .filter(|a| *a != "--set")
        .cloned()
        .collect();
    let t = Instant::now();
    let r = selfsup::run::LoadedRun::load(&dir, None, &sets, Device::Cpu)?;
    println!("load {:.2}s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let (f, ops) = selfsup::profile(|| eval::run_features(&r, Device::Cpu))?;
    let f = f?;
    println!("features {:.2}s", t.elapsed().as_secs_f64());
    for o in ops.iter().take(15) {
        println!("  {:<40} {:>7} {:>8.3}s", o.name, o.calls, o.self_secs);
    }
    let v = r.cfg.eval_view();
    let probe = linear::ProbeConfig::of(&v);
    let t = Instant::now();
    let ((a, _), ops) = selfsup::profile(|| {
        linear::linear_probe(&f.train.0, &f.train.1, &f.test.0, &f.test.1, 10, &probe)
    })?;
    println!("probe {:.2}s top-1 {a}", t.elapsed().as_secs_f64());
    for o in ops.iter().take(25) {
        println!("  {:<40} {:>7} {:>8.3}s", o.name, o.calls, o.self_secs);
    }
    let t = Instant::now();
    let (k, ops) = selfsup::profile(|| {
        knn::knn_accuracy(
            &f.train.0,
            &f.train.1,
            &f.test.0,
            &f.test.1,
            10,
            v.probe.knn_k,
            v.probe.knn_temperature,
            v.precision,
        )
    })?;
    println!("knn {:.2}s top-1 {k}", t.elapsed().as_secs_f64());
    for o in ops.iter().take(10) {
        println!("  {:<40} {:>7} {:>8.3}s", o.name, o.calls, o.self_secs);
    }
    Ok(())
}
