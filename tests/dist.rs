//! Process groups of two ranks over Gloo on loopback. Each test runs this test binary twice
//! more, only itself (`--exact`), as rank 0 and rank 1 with the launcher's variables set; those
//! children do the worker part and print `RESULT` lines, which the test checks.
mod common;

use selfsup::config::{Config, OptimizerKind};
use selfsup::data::Split;
use selfsup::data::loader::{Batch, Loader, ViewSpec, epoch_order};
use selfsup::dist::{Backend, DistEnv, ProcessGroup, Reducer};
use selfsup::methods::{DataInfo, StepCtx};
use selfsup::optim::Optimizer;
use selfsup::run::Model;
use selfsup::schedule::cosine_with_warmup;
use selfsup::train::data_parallel::{DataParallel, rank_order};
use selfsup::train::train_step;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor, nn};

const WORKER: &str = "SELFSUP_DIST_TEST_WORKER";

/// In a child: this rank's group, joined with `timeout`. In the test itself: None.
fn worker_group(timeout: Duration) -> Option<ProcessGroup> {
    std::env::var_os(WORKER)?;
    let env = DistEnv::from_env()
        .unwrap()
        .expect("the launcher's variables are set");
    Some(ProcessGroup::new(&env, Backend::Gloo, timeout).unwrap())
}

struct Rank {
    status: ExitStatus,
    output: String,
}

impl Rank {
    fn results(&self) -> Vec<&str> {
        self.output
            .lines()
            .filter_map(|l| l.strip_prefix("RESULT "))
            .collect()
    }

    fn assert_success(&self, rank: usize) {
        assert!(
            self.status.success(),
            "rank {rank} failed ({}):\n{}",
            self.status,
            self.output
        );
    }
}

/// Runs the test `name` as ranks 0 and 1 on a free port and waits for both (120 s at most).
fn run_ranks(name: &str) -> Vec<Rank> {
    run_ranks_with(name, &[])
}

/// `run_ranks` with more variables for the children.
fn run_ranks_with(name: &str, env: &[(&str, &str)]) -> Vec<Rank> {
    let port = selfsup::launch::free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut children: Vec<_> = (0..2)
        .map(|rank| {
            let log_path = dir.path().join(format!("rank{rank}.log"));
            let log = std::fs::File::create(&log_path).unwrap();
            let child = Command::new(std::env::current_exe().unwrap())
                .args([name, "--exact", "--nocapture"])
                .env(WORKER, "1")
                .envs(selfsup::launch::rank_env(rank, 2, port, 1, |_| None))
                .envs(env.iter().copied())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            (child, log_path)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut statuses = vec![None; children.len()];
    while statuses.iter().any(Option::is_none) {
        for ((child, _), status) in children.iter_mut().zip(&mut statuses) {
            if status.is_none() {
                *status = child.try_wait().unwrap();
            }
        }
        if Instant::now() > deadline {
            children
                .iter_mut()
                .for_each(|(child, _)| drop(child.kill()));
            let logs: Vec<_> = children
                .iter()
                .map(|(_, log)| std::fs::read_to_string(log).unwrap())
                .collect();
            panic!(
                "the ranks did not finish within 120 s:\n{}",
                logs.join("\n---\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let logs = children
        .iter()
        .map(|(_, log)| std::fs::read_to_string(log).unwrap());
    statuses
        .into_iter()
        .zip(logs)
        .map(|(status, output)| Rank {
            status: status.unwrap(),
            output,
        })
        .collect()
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

#[test]
fn collectives() {
    if let Some(pg) = worker_group(Duration::from_secs(30)) {
        let r = pg.rank() as f64;
        let t = Tensor::from_slice(&[1f32, 2., 3.]) * (r + 1.);
        pg.all_reduce_sum_(&t).unwrap();
        println!("RESULT all-reduce {:?}", values(&t));

        let t = Tensor::full([2], 10. * r + 5., (Kind::Float, Device::Cpu));
        pg.broadcast_(&t, 1).unwrap();
        println!("RESULT broadcast {:?}", values(&t));

        let x = Tensor::arange(6, (Kind::Float, Device::Cpu)).view([2, 3]) + 100. * r; // [B, D] = [2, 3]
        let gathered = pg.all_gather(&x).unwrap(); // [2B, D]
        println!(
            "RESULT all-gather {:?} {:?}",
            gathered.size(),
            values(&gathered)
        );
        pg.barrier().unwrap();

        // Different weights and buffers on each rank; rank 0's everywhere after the broadcast.
        tch::manual_seed(pg.rank() as i64);
        let vs = nn::VarStore::new(Device::Cpu);
        let _linear = nn::linear(vs.root() / "fc", 3, 2, Default::default());
        let _bn = nn::batch_norm1d(vs.root() / "bn", 2, Default::default());
        let running_mean = &vs.variables()["bn.running_mean"];
        tch::no_grad(|| drop(running_mean.shallow_clone().fill_(r + 1.)));
        pg.broadcast_var_store(&vs).unwrap();
        let mut names: Vec<_> = vs.variables().into_iter().collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let flat = Tensor::cat(
            &names
                .iter()
                .map(|(_, t)| t.reshape([1, -1]))
                .collect::<Vec<_>>(),
            1,
        ); // [1, P]
        let both = pg.all_gather(&flat).unwrap(); // [2, P]
        let same = values(&both.get(0)) == values(&both.get(1));
        println!(
            "RESULT var store equal on both ranks: {same}, running mean {:?}",
            values(running_mean)
        );
        pg.shutdown().unwrap();
        return;
    }
    let ranks = run_ranks("collectives");
    let gathered =
        "[4, 3] [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 100.0, 101.0, 102.0, 103.0, 104.0, 105.0]";
    for (r, rank) in ranks.iter().enumerate() {
        rank.assert_success(r);
        assert_eq!(
            rank.results(),
            [
                "all-reduce [3.0, 6.0, 9.0]".to_string(),
                "broadcast [15.0, 15.0]".into(),
                format!("all-gather {gathered}"),
                "var store equal on both ranks: true, running mean [1.0, 1.0]".into(),
            ],
            "rank {r}"
        );
    }
}

#[test]
fn gradients() {
    if let Some(pg) = worker_group(Duration::from_secs(30)) {
        let r = pg.rank() as f64;
        // loss_r = sum(gathered * w_r) with w_r = (r + 1) * base, base = 1..=12 as [4, 3]. The
        // gradient of rank s's rows over both ranks' losses is (1 + 2) * base[2s..2s + 2].
        let base = Tensor::arange_start(1, 13, (Kind::Float, Device::Cpu)).view([4, 3]);
        let w = &base * (r + 1.); // [2B, D]
        let x = (Tensor::arange(6, (Kind::Float, Device::Cpu)).view([2, 3]) + 10. * r)
            .set_requires_grad(true); // [B, D]
        let gathered = pg.all_gather_autograd(&x).unwrap(); // [2B, D]
        let forward_same = values(&gathered) == values(&pg.all_gather(&x.detach()).unwrap());
        (&gathered * &w).sum(Kind::Float).backward();
        println!(
            "RESULT forward = all_gather: {forward_same}, grad {:?}",
            values(&x.grad())
        );
        // The same loss through a transpose: the gradient reaching the gather is non-contiguous.
        let x = x.detach().set_requires_grad(true);
        let gathered = pg.all_gather_autograd(&x).unwrap(); // [2B, D]
        (gathered.tr() * w.tr().contiguous())
            .sum(Kind::Float)
            .backward(); // [D, 2B] inside
        println!("RESULT transposed grad {:?}", values(&x.grad()));
        return;
    }
    let ranks = run_ranks("gradients");
    // The classic bug, keeping only the gradient of the local loss for the local rows, gives
    // rank 0 [1, 2, 3, 4, 5, 6] and rank 1 [14, 16, 18, 20, 22, 24] instead.
    let grads = [
        "[3.0, 6.0, 9.0, 12.0, 15.0, 18.0]",
        "[21.0, 24.0, 27.0, 30.0, 33.0, 36.0]",
    ];
    for (r, rank) in ranks.iter().enumerate() {
        rank.assert_success(r);
        assert_eq!(
            rank.results(),
            [
                format!("forward = all_gather: true, grad {}", grads[r]),
                format!("transposed grad {}", grads[r]),
            ],
            "rank {r}"
        );
    }
}

/// The largest difference between two lists of tensors, as f64 (infinite where one is
/// undefined or the shapes differ).
fn max_difference(a: &[Tensor], b: &[Tensor]) -> f64 {
    a.iter().zip(b).fold(0.0, |worst: f64, (x, y)| {
        let d = match x.defined() && y.defined() && x.size() == y.size() {
            true => (x.to_kind(Kind::Double) - y.to_kind(Kind::Double))
                .abs()
                .max()
                .double_value(&[]),
            false => f64::INFINITY,
        };
        worst.max(d)
    })
}

/// The reducer's gradients are the mean of the ranks' gradients (as averaging them after the
/// backward pass gives), with the buckets all-reduced during the backward pass: 32-byte
/// buckets (six), float32 and float64, a parameter the loss does not reach that holds a
/// gradient (averaged, as a zeroed gradient is) and one without (left without).
#[test]
fn reducer_averages_buckets_during_the_backward_pass() {
    if let Some(pg) = worker_group(Duration::from_secs(30)) {
        let (rank, pg) = (pg.rank(), Rc::new(pg));
        let (f32_, f64_) = ((Kind::Float, Device::Cpu), (Kind::Double, Device::Cpu));
        tch::manual_seed(7); // the same parameters on both ranks
        let leaf = |t: Tensor| t.set_requires_grad(true);
        // In the forward pass's order: [3, 5] and [5] (f32), [5, 4] and [4] (f32), a scale [4]
        // (f64); then two parameters the loss does not use.
        let params = [
            leaf(Tensor::randn([3, 5], f32_)),
            leaf(Tensor::randn([5], f32_)),
            leaf(Tensor::randn([5, 4], f32_)),
            leaf(Tensor::randn([4], f32_)),
            leaf(Tensor::randn([4], f64_)),
            leaf(Tensor::ones([3], f32_)),
            leaf(Tensor::ones([2], f32_)),
        ];
        let loss = || {
            tch::manual_seed(100 + rank as i64); // each rank its own batch
            let x = Tensor::randn([6, 3], f32_);
            let h = (x.matmul(&params[0]) + &params[1]).relu();
            let y = h.matmul(&params[2]) + &params[3]; // [6, 4]
            (y.to_kind(Kind::Double) * &params[4])
                .square()
                .sum(Kind::Double)
        };
        // A gradient of (rank + 1) for the unused params[5], as a previous step would leave.
        (&params[5] * (rank as f64 + 1.))
            .sum(Kind::Float)
            .backward();
        // The reference: this rank's gradients, and their mean over the ranks by all-gather.
        loss().backward();
        let grads = |ps: &[Tensor]| -> Vec<Tensor> { ps.iter().map(|p| p.grad().copy()).collect() };
        let local = grads(&params[..6]);
        let mean: Vec<Tensor> = (local.iter())
            .map(|g| {
                pg.all_gather(&g.unsqueeze(0))
                    .unwrap()
                    .sum_dim_intlist(0, false, None)
                    / 2.
            })
            .collect();
        let zero_used = || params[..5].iter().for_each(|p| drop(p.grad().zero_()));

        let reducer = Reducer::new(pg.clone(), &params, 32).unwrap();
        for step in 0..2 {
            zero_used(); // as the optimizer does; params[5] keeps its gradient
            reducer.backward(&loss()).unwrap();
            let reduced = grads(&params[..6]);
            println!(
                "RESULT step {step}: the mean within 1e-6: {}, unused without a gradient: {}, \
                 differs from the local gradients: {}, {:?}",
                max_difference(&reduced, &mean) < 1e-6,
                !params[6].grad().defined(),
                max_difference(&reduced[..5], &local[..5]) > 1e-3,
                reducer.launches()
            );
            // The reduced params[5] is 1.5 on both ranks; back to this rank's for the next step.
            params[5].grad().copy_(&local[5]);
        }
        // Outside `backward` the hooks do nothing: a plain backward pass keeps the local ones.
        zero_used();
        loss().backward();
        println!(
            "RESULT after: plain backward gives the local gradients: {}, covers: {}",
            max_difference(&grads(&params[..5]), &local[..5]) == 0.,
            reducer.covers(&params)
        );
        drop(reducer);
        Rc::try_unwrap(pg).unwrap().shutdown().unwrap();
        return;
    }
    let ranks = run_ranks("reducer_averages_buckets_during_the_backward_pass");
    for (r, rank) in ranks.iter().enumerate() {
        rank.assert_success(r);
        // Reversed: [the two unused] (before the backward pass), [scale f64], [4], [5, 4], [5],
        // [3, 5], each launched by the hook of its last gradient.
        let step = |s| {
            format!(
                "step {s}: the mean within 1e-6: true, unused without a gradient: true, \
                 differs from the local gradients: true, \
                 Launches {{ buckets: 6, before: 1, during: 5 }}"
            )
        };
        assert_eq!(
            rank.results(),
            [
                step(0),
                step(1),
                "after: plain backward gives the local gradients: true, covers: true".into()
            ],
            "rank {r}"
        );
    }
}

/// Runs an all-reduce that must fail and prints its error and time for `error_and_seconds`.
fn print_failed_all_reduce(pg: &ProcessGroup) {
    let start = Instant::now();
    let e = pg
        .all_reduce_sum_(&Tensor::ones([4], (Kind::Float, Device::Cpu)))
        .unwrap_err();
    let seconds = start.elapsed().as_secs_f64();
    println!("RESULT error after {seconds:.2}s: {e}");
}

/// A rank's all-reduce error and its time in seconds, from its RESULT line.
fn error_and_seconds(rank: &Rank) -> (String, f64) {
    let line = rank
        .results()
        .into_iter()
        .find_map(|l| l.strip_prefix("error after "))
        .expect("an error line");
    let (seconds, error) = line.split_once("s: ").unwrap();
    (error.to_string(), seconds.parse().unwrap())
}

#[test]
fn killed_peer_is_an_error_not_a_hang() {
    if let Some(pg) = worker_group(Duration::from_secs(20)) {
        if pg.rank() == 1 {
            std::thread::sleep(Duration::from_secs(1)); // rank 0 is waiting in its all-reduce
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        print_failed_all_reduce(&pg);
        return;
    }
    let ranks = run_ranks("killed_peer_is_an_error_not_a_hang");
    assert_eq!(
        ranks[1].status.signal(),
        Some(libc::SIGKILL),
        "{}",
        ranks[1].output
    );
    ranks[0].assert_success(0);
    let (error, seconds) = error_and_seconds(&ranks[0]);
    // Rank 1 dies 1 s into the all-reduce; Gloo sees the closed connection at once, and the
    // heartbeat check takes 2 s more: about 3 s in all.
    println!("rank 0's all-reduce, rank 1 killed after 1 s: error after {seconds} s: {error}");
    assert!(error.contains("all-reduce failed on rank 0"), "{error}");
    assert!(error.contains("lost rank 1: no heartbeat"), "{error}");
    assert!(seconds < 10., "{seconds} s, with a 20 s timeout");
}

/// A bucket whose peer died fails the reducer's backward pass with the all-reduce's clear
/// error (the lost rank named), not a hang or a crash.
#[test]
fn reducer_with_a_killed_peer_is_an_error_not_a_hang() {
    if let Some(pg) = worker_group(Duration::from_secs(20)) {
        let (rank, pg) = (pg.rank(), Rc::new(pg));
        let params: Vec<Tensor> = (0..4)
            .map(|_| Tensor::ones([8], (Kind::Float, Device::Cpu)).set_requires_grad(true))
            .collect();
        let reducer = Reducer::new(pg.clone(), &params, 32).unwrap();
        if rank == 1 {
            std::thread::sleep(Duration::from_secs(1)); // rank 0 is waiting for its buckets
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        let loss = params
            .iter()
            .fold(Tensor::from(0f32), |l, p| l + p.sum(Kind::Float));
        let start = Instant::now();
        let e = reducer.backward(&loss).unwrap_err();
        let seconds = start.elapsed().as_secs_f64();
        println!("RESULT error after {seconds:.2}s: {e:#}");
        println!("RESULT {:?}", reducer.launches());
        return;
    }
    let ranks = run_ranks("reducer_with_a_killed_peer_is_an_error_not_a_hang");
    assert_eq!(ranks[1].status.signal(), Some(libc::SIGKILL));
    ranks[0].assert_success(0);
    let (error, seconds) = error_and_seconds(&ranks[0]);
    println!("rank 0's reducer, rank 1 killed after 1 s: error after {seconds} s: {error}");
    assert!(
        error.starts_with("averaging the gradients: all-reduce failed on rank 0"),
        "{error}"
    );
    assert!(error.contains("lost rank 1: no heartbeat"), "{error}");
    assert!(seconds < 10., "{seconds} s, with a 20 s timeout");
    // Four buckets of one parameter each, all launched by the hooks.
    let launches = "Launches { buckets: 4, before: 0, during: 4 }";
    assert_eq!(ranks[0].results()[1], launches);
}

#[test]
fn stuck_peer_times_out() {
    if let Some(pg) = worker_group(Duration::from_secs(2)) {
        if pg.rank() == 1 {
            // Alive but elsewhere until rank 0 has given up and left; then too late itself.
            std::thread::sleep(Duration::from_secs(6));
        }
        print_failed_all_reduce(&pg);
        return;
    }
    let ranks = run_ranks("stuck_peer_times_out");
    ranks
        .iter()
        .enumerate()
        .for_each(|(r, rank)| rank.assert_success(r));
    let (error, seconds) = error_and_seconds(&ranks[0]);
    // The 2 s timeout, then the 2 s heartbeat check.
    println!("rank 0's all-reduce, rank 1 alive elsewhere: error after {seconds} s: {error}");
    assert!(error.contains("Timed out"), "{error}");
    assert!(
        error.contains("every rank's heartbeat is still alive"),
        "{error}"
    );
    assert!((2.0..10.).contains(&seconds), "{seconds} s");
    let (late, _) = error_and_seconds(&ranks[1]);
    assert!(late.contains("all-reduce failed on rank 1"), "{late}");
}

/// The data of the equivalence runs: 48 1x8x8 images of a bright square in one quadrant.
fn tiny_split() -> Split {
    let mut images = vec![0u8; 48 * 64];
    for (i, img) in images.chunks_mut(64).enumerate() {
        let (r, c) = [(0, 0), (0, 4), (4, 0), (4, 4)][i % 4];
        for y in r..r + 4 {
            for x in c..c + 4 {
                img[y * 8 + x] = 150 + (i * 7 % 100) as u8;
            }
        }
    }
    Split::new(images, (0..48).map(|i| i % 4).collect(), [1, 8, 8]).unwrap()
}

/// A small run of `method`: global batches of 16 (3 steps per epoch), MoCo's queue of 40
/// keys (it wraps), 4 BatchNorm groups (2 per rank on 2 ranks), 2 global and 2 local crops
/// for the methods that read them (SwAV, DINO, SimCLR, MoCo v3, BYOL; SwAV's prototypes
/// frozen in the first of the 2 epochs). SGD passes gradients on
/// as they are; Adam would divide the rounding noise of the gradients that are zero
/// analytically (a BatchNorm bias followed by a Linear and another BatchNorm, which removes
/// any shift) by sqrt(v) + eps ~ 1e-8, turning 1e-17 into steps of 1e-9 x lr, which are
/// different in any two runs, distributed or not.
fn equivalence_config(method: &str) -> Config {
    {
        let mut c = Config {
            method: method.into(),
            ..Config::default()
        };
        c.encoder.cnn_widths = vec![4, 8];
        c.train.batch_size = 16;
        c.train.epochs = 2;
        c.train.optimizer = OptimizerKind::Sgd;
        c.train.lr = 0.05;
        c.keys.proj_hidden_dim = 16;
        c.keys.proj_dim = 8;
        c.keys.pred_hidden_dim = 8;
        c.keys.moco_queue = 40;
        c.keys.nnclr_queue = 40;
        c.keys.shuffle_bn_groups = 4;
        c.keys.ema_momentum = 0.9;
        c.aug.aug_crop_scale = [0.5, 1.0];
        c.aug.multicrop_local = 2;
        c.keys.swav_prototypes = 10;
        c.keys.dino_out_dim = 16;
        match method {
            // MAE needs a ViT: patches of 2 on the 8x8 images.
            "mae" => c.with_tiny_vit(),
            _ => c,
        }
    }
}

/// Trains `cfg` for every step of its epochs in float64 through the real code path: each
/// rank's slice of every global batch (`rank_order`), the loader's views, `train_step` (with
/// gradient averaging and the group current when `dp` is given). Returns every variable,
/// the optimizer state and the step losses, by name, and `dp` for the next run.
fn train_f64(
    cfg: &Config,
    dp: Option<DataParallel>,
) -> (Vec<(String, Tensor)>, Option<DataParallel>) {
    let split = Arc::new(tiny_split());
    let info = DataInfo {
        shape: [1, 8, 8],
        num_classes: 4,
    };
    let mut model = Model::build(cfg, &info, Device::Cpu).unwrap();
    model.vs.double();
    let (rank, world) = dp.as_ref().map_or((0, 1), |d| (d.rank(), d.world_size()));
    if let Some(dp) = &dp {
        dp.broadcast_model(&model.vs).unwrap();
    }
    let mut opt = Optimizer::new(
        &model.vs,
        cfg.train.optimizer,
        cfg.train.momentum,
        cfg.train.weight_decay,
    );
    let views = model.method.views();
    let spe = split.len() / cfg.train.batch_size;
    let total_steps = spe * cfg.train.epochs;
    let mut losses = Vec::new();
    for epoch in 0..cfg.train.epochs {
        let order = epoch_order(split.len(), cfg.train.seed, epoch);
        let order = rank_order(&order, cfg.train.batch_size, world, rank);
        let spec = views.as_ref().map(|v| ViewSpec {
            views: v.clone(),
            seed: cfg.train.seed,
            epoch,
        });
        let local_batch = cfg.train.batch_size / world;
        for batch in Loader::with_views(
            split.clone(),
            order,
            local_batch,
            true,
            2,
            Device::Cpu,
            spec,
        ) {
            let batch = batch.unwrap();
            let batch = Batch {
                images: batch
                    .images
                    .iter()
                    .map(|t| t.to_kind(Kind::Double))
                    .collect(),
                ..batch
            };
            let step = losses.len();
            let ctx = StepCtx {
                epoch,
                step,
                total_steps,
            };
            let lr = cosine_with_warmup(step, total_steps, spe, cfg.train.lr, 0.0);
            losses.push(
                train_step(
                    &mut model,
                    dp.as_ref(),
                    &mut opt,
                    &batch,
                    &ctx,
                    lr,
                    cfg.train.seed,
                )
                .unwrap()
                .double_value(&[]),
            );
        }
    }
    assert_eq!(losses.len(), total_steps);
    let mut state: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    state.extend(
        opt.state_tensors()
            .into_iter()
            .map(|(k, t)| (format!("optim.{k}"), t)),
    );
    state.push(("losses".into(), Tensor::from_slice(&losses)));
    state.sort_by(|a, b| a.0.cmp(&b.0));
    (state, dp)
}

/// How far two states are apart: (the largest relative difference max|a - b| / max|b| of a
/// tensor, and where), over the tensors of magnitude above 1e-6, infinity for a tensor that
/// holds a NaN or an infinity; and (the largest absolute difference of the others, and
/// where). Those are the parameters whose gradient is zero analytically, such as the bias of a BatchNorm followed by a Linear and another BatchNorm
/// (which removes any constant shift): they hold rounding noise (a gradient of ~1e-17 that
/// AdamW turns into steps of ~lr * 1e-17 / eps), different in any two runs.
fn difference(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> ((f64, String), (f64, String)) {
    assert_eq!(
        a.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        b.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    let (mut relative, mut absolute) = ((0.0, String::new()), (0.0, String::new()));
    for ((name, x), (_, y)) in a.iter().zip(b) {
        let (worst, d) = if !(common::all_finite(x) && common::all_finite(y)) {
            // A NaN compares false with everything: non-finite is the largest difference.
            (&mut relative, f64::INFINITY)
        } else {
            let (x, y) = (x.to_kind(Kind::Double), y.to_kind(Kind::Double));
            let scale = y.abs().max().double_value(&[]);
            let d = (&x - &y).abs().max().double_value(&[]);
            match scale > 1e-6 {
                true => (&mut relative, d / scale),
                false => (&mut absolute, d),
            }
        };
        if d > worst.0 || worst.1.is_empty() {
            *worst = (d, name.clone());
        }
    }
    (relative, absolute)
}

const EQUIVALENCE_METHODS: [&str; 10] = [
    "simclr",
    "moco-v2",
    "moco-v3",
    "byol",
    "barlow-twins",
    "vicreg",
    "swav",
    "dino",
    "mae",
    "nnclr",
];

/// The runs that must agree on 2 ranks and 1 process, by name: every method of
/// `EQUIVALENCE_METHODS` (multi-crop where a method reads it), and the methods that gained
/// multi-crop with their 2 views alone.
fn equivalence_runs() -> Vec<(String, Config)> {
    let methods = EQUIVALENCE_METHODS
        .iter()
        .map(|m| (m.to_string(), equivalence_config(m)));
    let two_views = ["simclr", "moco-v3", "byol"].map(|m| {
        let cfg = {
            let mut c = equivalence_config(m);
            c.aug.multicrop_local = 0;
            c
        };
        (format!("{m}-two-views"), cfg)
    });
    methods.chain(two_views).collect()
}

/// 2 ranks with global batch B end with the same parameters, BatchNorm buffers, MoCo queue,
/// optimizer state and losses as 1 process with batch B, for the methods whose losses and
/// BatchNorm span the ranks. Float64 throughout, so that the only differences are the
/// order of floating-point sums; SyncBN on (the default).
#[test]
fn data_parallel_training_equals_one_process() {
    if let Some(pg) = worker_group(Duration::from_secs(60)) {
        let dir = PathBuf::from(std::env::var("SELFSUP_TEST_OUT").unwrap());
        let rank = pg.rank();
        let mut dp = Some(DataParallel::new(pg, Device::Cpu, true));
        // Buckets of 1 kB (these models hold 10 to 60 kB in float64): many buckets, each
        // all-reduced during the backward pass, stand between the two runs.
        dp.as_mut().unwrap().bucket_bytes = 1024;
        let runs = equivalence_runs()
            .into_iter()
            .chain([("simclr-local-bn".to_string(), {
                let mut c = equivalence_config("simclr");
                c.train.sync_bn = false;
                c
            })]);
        for (name, cfg) in runs {
            dp.as_mut().unwrap().sync_bn = cfg.train.sync_bn;
            let two;
            (two, dp) = train_f64(&cfg, dp);
            let l = dp.as_ref().unwrap().launches().unwrap();
            println!(
                "RESULT {name}: {} buckets, {} launched before the backward pass, {} during it",
                l.buckets, l.before, l.during
            );
            let file = dir.join(format!("{name}-rank{rank}.safetensors"));
            Tensor::write_safetensors(&two, file).unwrap();
            if rank == 0 {
                let (one, _) = train_f64(&cfg, None);
                Tensor::write_safetensors(&one, dir.join(format!("{name}-one.safetensors")))
                    .unwrap();
            }
        }
        dp.unwrap().shutdown().unwrap();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let ranks = run_ranks_with(
        "data_parallel_training_equals_one_process",
        &[("SELFSUP_TEST_OUT", out)],
    );
    for (r, rank) in ranks.iter().enumerate() {
        rank.assert_success(r);
        // The last step of every run: several buckets, every one launched before the backward
        // pass returned, most by the hooks while it ran.
        for line in rank.results() {
            println!("rank {r}: {line}");
            let numbers: Vec<usize> = (line.split(' ')).filter_map(|w| w.parse().ok()).collect();
            let [buckets, before, during] = numbers[..] else {
                panic!("{line}")
            };
            assert!(buckets > 1 && during > 0, "{line}");
            assert_eq!(before + during, buckets, "{line}");
        }
    }
    let read = |name: String| {
        let mut t = Tensor::read_safetensors(dir.path().join(name)).unwrap();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    let same = |a: &[(String, Tensor)], b: &[(String, Tensor)]| {
        a.len() == b.len() && a.iter().zip(b).all(|((k, x), (l, y))| k == l && x.equal(y))
    };
    // Every figure first (the closing note quotes them), then the checks.
    let figures: Vec<_> = equivalence_runs()
        .into_iter()
        .map(|(method, _)| {
            let [r0, r1, one] =
                ["rank0", "rank1", "one"].map(|r| read(format!("{method}-{r}.safetensors")));
            let ((rel, at), (abs, abs_at)) = difference(&r0, &one);
            let noise = match abs_at.as_str() {
                "" => "none".to_string(),
                _ => format!("max absolute difference {abs:.2e} (in {abs_at})"),
            };
            println!(
                "{method}: 2 ranks vs 1 process, float64: max relative difference {rel:.2e} \
                 (in {at}); tensors of rounding noise (< 1e-6): {noise}"
            );
            (method, same(&r0, &r1), r0.len(), (rel, at), (abs, abs_at))
        })
        .collect();
    for (method, ranks_same, tensors, (rel, at), (abs, abs_at)) in figures {
        assert!(ranks_same, "{method}: the two ranks hold different states");
        assert!(tensors > 20, "{method}: {tensors} tensors");
        assert!(
            rel < 1e-10,
            "{method}: 2 ranks differ from 1 process by {rel:.3e} in {at}"
        );
        assert!(
            abs < 1e-12,
            "{method}: 2 ranks differ from 1 process by {abs:.3e} in {abs_at}"
        );
    }
    // Without SyncBN the ranks still agree (the running statistics are merged in rank
    // order), but they normalise with half-batch statistics: not what one process computes.
    let [r0, r1, one] =
        ["rank0", "rank1", "one"].map(|r| read(format!("simclr-local-bn-{r}.safetensors")));
    assert!(same(&r0, &r1), "sync_bn = false: the ranks differ");
    let ((rel, at), _) = difference(&r0, &one);
    println!(
        "simclr with sync_bn = false: 2 ranks vs 1 process, max relative difference {rel:.2e} (in {at})"
    );
    assert!(
        rel > 1e-6,
        "sync_bn = false should differ from one process: {rel:.3e}"
    );
}

/// A collective that failed outside the shim (a backward's reduce-scatter) is reported with
/// the same diagnosis as the shim's own failures.
#[test]
fn a_failure_outside_the_shim_names_the_lost_ranks_too() {
    if let Some(pg) = worker_group(Duration::from_secs(20)) {
        let e = pg.failure("the backward pass", "Connection closed by peer");
        println!("RESULT {e}");
        return; // the group is marked broken: no barrier at teardown
    }
    let ranks = run_ranks("a_failure_outside_the_shim_names_the_lost_ranks_too");
    for (r, rank) in ranks.iter().enumerate() {
        rank.assert_success(r);
        let want = format!(
            "the backward pass failed on rank {r}: Connection closed by peer; every rank's heartbeat is still alive"
        );
        assert!(rank.results()[0].starts_with(&want), "{:?}", rank.results());
    }
}
