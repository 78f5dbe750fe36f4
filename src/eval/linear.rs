//! Linear probe: multinomial logistic regression on frozen features, trained with the
//! engine (Adam through libtorch's fused kernel, cosine schedule, mini-batches). Features
//! are standardised with the training set's mean and standard deviation first.

use crate::config::{EvalView, OptimizerKind};
use crate::optim::Optimizer;
use crate::schedule::cosine_with_warmup;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use tch::{Kind, Tensor, nn, nn::Module};

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub weight_decay: f64,
    pub seed: u64,
}

impl ProbeConfig {
    /// The probe of the `probe_*` keys.
    pub fn of(v: &EvalView) -> ProbeConfig {
        ProbeConfig {
            epochs: v.probe.probe_epochs,
            lr: v.probe.probe_lr,
            batch_size: v.probe.probe_batch_size,
            weight_decay: v.probe.probe_weight_decay,
            seed: v.seed,
        }
    }
}

/// Trains on (train_x `[N, D]`, train_y `[N]`), returns (top-1, top-5) on the test set.
pub fn linear_probe(
    train_x: &Tensor,
    train_y: &Tensor,
    test_x: &Tensor,
    test_y: &Tensor,
    num_classes: i64,
    cfg: &ProbeConfig,
) -> (f64, f64) {
    let device = train_x.device();
    let mean = train_x.mean_dim(&[0i64][..], true, Kind::Float); // [1, D]
    // The population standard deviation, as std_dim(unbiased = false), whose reduction
    // down the columns took ~10x longer than these two means.
    let centred = train_x - &mean; // [N, D]
    let std = centred
        .square()
        .mean_dim(&[0i64][..], true, Kind::Float)
        .sqrt()
        .clamp_min(1e-6);
    let xtr = (centred / &std).detach(); // [N, D]
    let xte = ((test_x - &mean) / &std).detach();
    tch::manual_seed(cfg.seed as i64);
    let vs = nn::VarStore::new(device);
    let lin = nn::linear(
        vs.root() / "probe",
        xtr.size()[1],
        num_classes,
        Default::default(),
    );
    let mut opt = Optimizer::new(&vs, OptimizerKind::Adam, 0.0, cfg.weight_decay);
    let n = xtr.size()[0] as usize;
    let steps_per_epoch = n.div_ceil(cfg.batch_size);
    let total = steps_per_epoch * cfg.epochs;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<i64> = (0..n as i64).collect();
    let mut step = 0;
    for _ in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let perm = Tensor::from_slice(&order).to_device(device);
        for idx in perm.split(cfg.batch_size as i64, 0) {
            let loss = lin
                .forward(&xtr.index_select(0, &idx)) // [b, classes]
                .cross_entropy_for_logits(&train_y.index_select(0, &idx));
            opt.zero_grad();
            loss.backward();
            opt.step(cosine_with_warmup(step, total, 0, cfg.lr, 0.0))
                .expect("the fused Adam step of the probe's float32 weights");
            step += 1;
        }
    }
    let scores = tch::no_grad(|| lin.forward(&xte));
    (
        super::topk_accuracy(&scores, test_y, 1),
        super::topk_accuracy(&scores, test_y, 5),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_data_scores_above_90_percent_and_random_labels_stay_at_chance() {
        let _rng = crate::torch_rng_lock();
        // 8 classes: Gaussian blobs around distinct centres in 8-D, linearly separable.
        tch::manual_seed(3);
        let opts = (Kind::Float, tch::Device::Cpu);
        let centres = Tensor::randn([8, 8], opts) * 4.0;
        let make = |n: i64| {
            let y = Tensor::randint(8, [n], (Kind::Int64, tch::Device::Cpu));
            let x = centres.index_select(0, &y) + Tensor::randn([n, 8], opts) * 0.5;
            (x, y)
        };
        let (xtr, ytr) = make(1600);
        let (xte, yte) = make(800);
        let cfg = ProbeConfig {
            epochs: 20,
            lr: 1e-2,
            batch_size: 64,
            weight_decay: 0.0,
            seed: 0,
        };
        let (top1, top5) = linear_probe(&xtr, &ytr, &xte, &yte, 8, &cfg);
        assert!(top1 > 0.9, "top-1 {top1}");
        assert!(top5 >= top1 && top5 > 0.99, "top-5 {top5}");
        // Labels unrelated to the features stay near chance: 1/8 for top-1, 5/8 for top-5.
        let random = |n| Tensor::randint(8, [n], (Kind::Int64, tch::Device::Cpu));
        let (t1, t5) = linear_probe(&xtr, &random(1600), &xte, &random(800), 8, &cfg);
        assert!(t1 < 0.2, "random labels scored top-1 {t1}");
        assert!((0.5..0.75).contains(&t5), "random labels scored top-5 {t5}");
    }
}
