//! Where `selfsup eval --run DIR` spends its time: features of both splits, the linear
//! probe, and kNN, each timed alone, with its slowest operators.
//! `cargo run --release --example eval_parts -- DIR [--set K=V ...]`
use anyhow::Context;
use selfsup::OpTime;
use selfsup::eval::{self, knn, linear};
use std::time::Instant;
use tch::Device;

/// One part's line and its `n` slowest operators.
fn show(part: &str, start: Instant, ops: &[OpTime], n: usize) {
    println!("{part} {:.2}s", start.elapsed().as_secs_f64());
    for o in ops.iter().take(n) {
        println!("  {:<40} {:>7} {:>8.3}s", o.name, o.calls, o.self_secs);
    }
}

fn main() -> anyhow::Result<()> {
    // As selfsup's own main: no fresh mmap per large buffer.
    selfsup::tune_malloc();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args
        .first()
        .context("usage: eval_parts RUN_DIR [--set KEY=VALUE ...]")?;
    let sets: Vec<String> = args[1..]
        .iter()
        .filter(|a| *a != "--set")
        .cloned()
        .collect();
    let t = Instant::now();
    let r = selfsup::run::LoadedRun::load(dir.as_ref(), None, &sets, Device::Cpu)?;
    show("load", t, &[], 0);
    r.ds.require_labels()?;
    let classes = r.ds.num_classes as i64;
    let t = Instant::now();
    let (f, ops) = selfsup::profile(|| eval::run_features(&r, Device::Cpu))?;
    let f = f?;
    show("features", t, &ops, 15);
    let v = r.cfg.eval_view();
    let probe = linear::ProbeConfig::of(&v);
    let t = Instant::now();
    let ((top1, _), ops) = selfsup::profile(|| {
        linear::linear_probe(
            &f.train.0, &f.train.1, &f.test.0, &f.test.1, classes, &probe,
        )
    })?;
    show(&format!("probe (top-1 {top1})"), t, &ops, 25);
    let t = Instant::now();
    let (top1, ops) = selfsup::profile(|| {
        knn::knn_accuracy(
            &f.train.0,
            &f.train.1,
            &f.test.0,
            &f.test.1,
            classes,
            v.probe.knn_k,
            v.probe.knn_temperature,
            v.precision,
        )
    })?;
    show(&format!("knn (top-1 {top1})"), t, &ops, 10);
    Ok(())
}
