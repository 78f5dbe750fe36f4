//! Pure loss functions: tensors in, scalar tensor out. No state lives here; queues,
//! momentum encoders and memory banks belong to the methods.

use tch::{Kind, Reduction, Tensor};

/// Mean squared error over all elements. `pred`, `target`: same shape.
pub fn mse(pred: &Tensor, target: &Tensor) -> Tensor {
    pred.mse_loss(target, Reduction::Mean)
}

/// Squared error weighted per element, normalised by the total weight:
/// sum(w * (pred - target)^2) / sum(w). `weight` broadcasts against `pred`.
pub fn weighted_mse(pred: &Tensor, target: &Tensor, weight: &Tensor) -> Tensor {
    let w = weight.expand_as(pred);
    ((pred - target).square() * &w).sum(pred.kind()) / w.sum(pred.kind()).clamp_min(1e-12)
}

/// Mean cross-entropy of `logits` `[B, K]` against class indices `targets` `[B]`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    logits.log_softmax(-1, logits.kind()).nll_loss(targets)
}

/// InfoNCE (van den Oord et al. 2018) with a shared set of negatives, as in CPC and MoCo.
///
/// `query` `[N, D]` is scored against its own `positive` `[N, D]` (row i with row i) and
/// against every row of `negatives` `[M, D]`, by dot product / `temperature`; the loss is
/// the mean cross-entropy of picking the positive among the 1 + M candidates.
/// `exclude` `[N, M]` (bool), when given, removes candidates from the denominator: e.g.
/// a negative that is the query's own positive.
pub fn info_nce(
    query: &Tensor,
    positive: &Tensor,
    negatives: &Tensor,
    temperature: f64,
    exclude: Option<&Tensor>,
) -> Tensor {
    let pos = (query * positive).sum_dim_intlist(&[1i64][..], true, query.kind()); // [N, 1]
    let mut neg = query.matmul(&negatives.tr()); // [N, M]
    if let Some(mask) = exclude {
        neg = neg.masked_fill(mask, f64::NEG_INFINITY);
    }
    let logits = Tensor::cat(&[pos, neg], 1) / temperature; // [N, 1 + M]
    let targets = Tensor::zeros([query.size()[0]], (Kind::Int64, query.device()));
    cross_entropy(&logits, &targets)
}

/// L2-normalises the rows of `x` `[N, D]`.
pub fn l2_normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, &[1i64][..], true).clamp_min(1e-12)
}

/// NT-Xent (SimCLR, Chen et al. 2020). `z1`, `z2` `[N, D]`: projections of two views of
/// the same N images. Each of the 2N samples has its other view as positive and the
/// remaining 2N - 2 samples as negatives; similarity is cosine / `temperature`.
pub fn nt_xent(z1: &Tensor, z2: &Tensor, temperature: f64) -> Tensor {
    nt_xent_global(z1, z2, z1, z2, 0, temperature)
}

/// NT-Xent of one rank's share of a global batch (SimCLR with negatives from every rank).
/// `z1`, `z2` `[b, D]`: this rank's projections of two views of its b images, which are
/// rows `offset..offset + b` of the global batch; `all1`, `all2` `[N, D]`: the projections of
/// the whole global batch (gathered from every rank, this rank's rows included). Each of
/// the 2b local samples is scored against all 2N global samples but itself: its other view
/// is the positive, the other 2N - 2 are negatives. The mean over the 2b local samples; the
/// mean of it over the ranks is `nt_xent(all1, all2)` (and so is its gradient, when the
/// gather passes every rank's gradient back to each slice). With one rank (`all = z`,
/// offset 0) it is `nt_xent`.
pub fn nt_xent_global(
    z1: &Tensor,
    z2: &Tensor,
    all1: &Tensor,
    all2: &Tensor,
    offset: i64,
    temperature: f64,
) -> Tensor {
    let (b, n) = (z1.size()[0], all1.size()[0]);
    let anchors = l2_normalize(&Tensor::cat(&[z1, z2], 0)); // [2b, D]
    let candidates = l2_normalize(&Tensor::cat(&[all1, all2], 0)); // [2N, D]
    let rows = Tensor::arange_start(offset, offset + b, (Kind::Int64, z1.device())); // [b]
    let own = Tensor::cat(&[&rows, &(&rows + n)], 0); // [2b]: each anchor's own column
    let positive = Tensor::cat(&[&rows + n, rows], 0); // [2b]: its other view's column
    let itself = own
        .unsqueeze(1)
        .eq_tensor(&Tensor::arange(2 * n, (Kind::Int64, z1.device())).unsqueeze(0)); // [2b, 2N]
    let sim =
        (anchors.matmul(&candidates.tr()) / temperature).masked_fill(&itself, f64::NEG_INFINITY); // [2b, 2N]
    cross_entropy(&sim, &positive)
}

/// InfoNCE over a batch (MoCo v3's contrastive loss before its 2T scaling): row i of
/// `q` `[N, D]` has row i of `k` `[N, D]` as positive and the other rows of `k` as
/// negatives; cosine similarity / `temperature`.
pub fn info_nce_batch(q: &Tensor, k: &Tensor, temperature: f64) -> Tensor {
    info_nce_global(q, k, 0, temperature)
}

/// `info_nce_batch` of one rank's share of a global batch: row i of `q` `[b, D]` (this
/// rank's queries, rows `offset..offset + b` of the global batch) has row `offset + i` of
/// `all_k` `[N, D]` (the keys of the whole global batch, gathered from every rank) as
/// positive and the other N - 1 as negatives. The mean over the b local queries; its mean
/// over the ranks is `info_nce_batch` of the global batch.
pub fn info_nce_global(q: &Tensor, all_k: &Tensor, offset: i64, temperature: f64) -> Tensor {
    let logits = l2_normalize(q).matmul(&l2_normalize(all_k).tr()) / temperature; // [b, N]
    let b = q.size()[0];
    let targets = Tensor::arange_start(offset, offset + b, (Kind::Int64, q.device())); // [b]
    cross_entropy(&logits, &targets)
}

/// Negative cosine similarity, mean over rows (BYOL, SimSiam): -cos(p, z). Stopping the
/// gradient through `z` is the caller's choice (`z.detach()`).
pub fn negative_cosine(p: &Tensor, z: &Tensor) -> Tensor {
    -(l2_normalize(p) * l2_normalize(z))
        .sum_dim_intlist(&[1i64][..], false, p.kind())
        .mean(p.kind())
}

#[cfg(test)]
pub(crate) mod gradcheck {
    use tch::{Kind, Tensor};

    /// Compares autograd's gradient of `f` at `x` with central finite differences, in f64.
    pub fn check(f: impl Fn(&Tensor) -> Tensor, x: &Tensor, tol: f64) {
        // A fresh leaf, so gradients from earlier checks on the same tensor do not add up.
        let x = x
            .to_kind(Kind::Double)
            .detach()
            .copy()
            .set_requires_grad(true);
        f(&x).backward();
        let analytic = Vec::<f64>::try_from(x.grad().flatten(0, -1)).unwrap();
        let base = Vec::<f64>::try_from(x.detach().flatten(0, -1)).unwrap();
        let eps = 1e-6;
        for i in 0..base.len() {
            let at = |d: f64| {
                let mut v = base.clone();
                v[i] += d;
                let xi = Tensor::from_slice(&v).view_as(&x);
                f(&xi).double_value(&[])
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (numeric - analytic[i]).abs() < tol * (1.0 + numeric.abs()),
                "d/dx[{i}] of {:?}: finite differences {numeric}, autograd {}",
                x.size(),
                analytic[i]
            );
        }
    }
}

/// Mean cross-entropy of `logits` `[N, K]` against `targets` `[N]`, each row weighted by the
/// weight of its target class: mean(class_weight[t] * ce). `class_weight`: `[K]`.
pub fn class_weighted_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    class_weight: &Tensor,
) -> Tensor {
    let ce = logits.cross_entropy_loss::<&Tensor>(targets, None, Reduction::None, -100, 0.0); // [N]
    (ce * class_weight.index_select(0, targets)).mean(Kind::Float)
}

/// Mean cross-entropy per pixel of `logits` `[B, K, H, W]` against class indices `target`
/// `[B, H, W]`, over the pixels whose target is not `ignore` (0 when every pixel is
/// ignored, where torch's mean would give NaN).
pub fn pixel_cross_entropy(logits: &Tensor, target: &Tensor, ignore: i64) -> Tensor {
    let sum = logits.cross_entropy_loss::<&Tensor>(target, None, Reduction::Sum, ignore, 0.0);
    let counted = target.ne(ignore).sum(Kind::Float).clamp_min(1.0);
    sum / counted
}

/// Mean binary cross-entropy of `logits` (any shape) against one constant `target` in [0, 1].
pub fn bce_with_logits(logits: &Tensor, target: f64) -> Tensor {
    logits.binary_cross_entropy_with_logits::<&Tensor>(
        &logits.full_like(target),
        None,
        None,
        Reduction::Mean,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    #[test]
    fn mse_matches_hand_computation() {
        // ((1-0)^2 + (2-4)^2 + (3-3)^2) / 3 = 5/3
        let l = mse(&t(&[1., 2., 3.]), &t(&[0., 4., 3.]));
        assert!((l.double_value(&[]) - 5.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn weighted_mse_counts_only_weighted_elements() {
        // weights pick elements 1 and 2: (4 + 0) / 2 = 2
        let l = weighted_mse(&t(&[1., 2., 3.]), &t(&[0., 4., 3.]), &t(&[0., 1., 1.]));
        assert!((l.double_value(&[]) - 2.0).abs() < 1e-6);
    }

    #[test]
    fn cross_entropy_matches_hand_computation() {
        // logits [0, ln 3] -> p = [1/4, 3/4]; target 1 -> -ln(3/4)
        let logits = Tensor::from_slice(&[0f32, 3f32.ln()]).view([1, 2]);
        let l = cross_entropy(&logits, &Tensor::from_slice(&[1i64]));
        assert!((l.double_value(&[]) - (4.0f64 / 3.0).ln()).abs() < 1e-6);
    }

    #[test]
    fn info_nce_matches_hand_computation() {
        // q = [1, 0]; positive [1, 0] (score 1); negatives [0, 1] (0) and [-1, 0] (-1); T = 0.5
        // loss = -log(e^2 / (e^2 + e^0 + e^-2))
        let q = Tensor::from_slice(&[1f32, 0.]).view([1, 2]);
        let p = Tensor::from_slice(&[1f32, 0.]).view([1, 2]);
        let n = Tensor::from_slice(&[0f32, 1., -1., 0.]).view([2, 2]);
        let want = -(2f64.exp() / (2f64.exp() + 1.0 + (-2f64).exp())).ln();
        assert!((info_nce(&q, &p, &n, 0.5, None).double_value(&[]) - want).abs() < 1e-6);
        // Excluding the second negative drops its e^-2 term.
        let mask = Tensor::from_slice(&[false, true]).view([1, 2]);
        let want = -(2f64.exp() / (2f64.exp() + 1.0)).ln();
        assert!((info_nce(&q, &p, &n, 0.5, Some(&mask)).double_value(&[]) - want).abs() < 1e-6);
    }

    #[test]
    fn info_nce_is_near_zero_when_positives_dominate() {
        // Perfectly aligned, well separated: positives score 100 / T, negatives 0.
        let q = Tensor::eye(4, (Kind::Float, tch::Device::Cpu)) * 10.0;
        let negs = Tensor::zeros([6, 4], (Kind::Float, tch::Device::Cpu));
        assert!(info_nce(&q, &q, &negs, 1.0, None).double_value(&[]) < 1e-30f64.max(1e-6));
        // With nothing to tell apart (all scores equal) the loss is log(1 + M).
        let z = Tensor::zeros([3, 4], (Kind::Float, tch::Device::Cpu));
        assert!((info_nce(&z, &z, &negs, 1.0, None).double_value(&[]) - 7f64.ln()).abs() < 1e-6);
    }

    #[test]
    fn info_nce_gradient_matches_finite_differences() {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(5);
        let opts = (Kind::Double, tch::Device::Cpu);
        let q = Tensor::randn([3, 4], opts);
        let p = Tensor::randn([3, 4], opts);
        let n = Tensor::randn([5, 4], opts);
        let mask = Tensor::from_slice(&[true, false, false, false, false])
            .view([1, 5])
            .expand([3, 5], false);
        gradcheck::check(|x| info_nce(x, &p, &n, 0.7, Some(&mask)), &q, 1e-5);
        gradcheck::check(|x| info_nce(&q, x, &n, 0.7, None), &p, 1e-5);
        gradcheck::check(|x| info_nce(&q, &p, x, 0.7, None), &n, 1e-5);
    }

    #[test]
    fn nt_xent_matches_hand_computation() {
        // N = 2 in 2-D: view 1 = [e1, e2], view 2 = [e1, e2] (aligned), T = 1.
        // For sample 0: positive cos 1; negatives: e2 (0) and e2 (0) -> -log(e / (e + 2)).
        let e = Tensor::eye(2, (Kind::Float, tch::Device::Cpu));
        let want = -(1f64.exp() / (1f64.exp() + 2.0)).ln();
        assert!((nt_xent(&e, &e, 1.0).double_value(&[]) - want).abs() < 1e-6);
        // Scaling the projections changes nothing (cosine similarity).
        assert!((nt_xent(&(&e * 3.0), &e, 1.0).double_value(&[]) - want).abs() < 1e-6);
        // Non-aligned case: view 2 = [e2, e1], T = 0.5. Sample 0 (e1): positive e2 (0),
        // negatives e2 (0) and e1 (1): -log(1 / (1 + 1 + e^2)); every sample is alike.
        let swapped = Tensor::from_slice(&[0f32, 1., 1., 0.]).view([2, 2]);
        let want = -(1.0 / (2.0 + 2f64.exp())).ln();
        assert!((nt_xent(&e, &swapped, 0.5).double_value(&[]) - want).abs() < 1e-6);
    }

    #[test]
    fn nt_xent_perfectly_aligned_views_reach_the_bound() {
        // N orthogonal samples, views identical: -log(e^(1/T) / (e^(1/T) + 2N - 2)).
        let (n, t) = (4, 0.1);
        let z = Tensor::eye(n, (Kind::Float, tch::Device::Cpu));
        let a = (1.0f64 / t).exp();
        let want = -(a / (a + (2 * n - 2) as f64)).ln();
        assert!((nt_xent(&z, &z, t).double_value(&[]) - want).abs() < 1e-6);
    }

    #[test]
    fn nt_xent_and_cosine_gradients_match_finite_differences() {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(9);
        let opts = (Kind::Double, tch::Device::Cpu);
        let z1 = Tensor::randn([3, 4], opts);
        let z2 = Tensor::randn([3, 4], opts);
        gradcheck::check(|x| nt_xent(x, &z2, 0.5), &z1, 1e-5);
        gradcheck::check(|x| nt_xent(&z1, x, 0.5), &z2, 1e-5);
        gradcheck::check(|x| negative_cosine(x, &z2), &z1, 1e-5);
    }

    #[test]
    fn negative_cosine_values() {
        let a = Tensor::from_slice(&[1f32, 0., 0., 2.]).view([2, 2]);
        let b = Tensor::from_slice(&[3f32, 0., 1., 0.]).view([2, 2]);
        // row 0: cos 1; row 1: cos 0 -> mean -0.5
        assert!((negative_cosine(&a, &b).double_value(&[]) + 0.5).abs() < 1e-6);
        assert!((negative_cosine(&a, &a).double_value(&[]) + 1.0).abs() < 1e-6);
    }

    #[test]
    fn info_nce_batch_matches_hand_computation() {
        let _rng = crate::torch_rng_lock();
        // q = k = [e1, e2], T = 1: each row -log(e / (e + 1)).
        let e = Tensor::eye(2, (Kind::Float, tch::Device::Cpu));
        let want = -(1f64.exp() / (1f64.exp() + 1.0)).ln();
        assert!((info_nce_batch(&e, &e, 1.0).double_value(&[]) - want).abs() < 1e-6);
        tch::manual_seed(2);
        let opts = (Kind::Double, tch::Device::Cpu);
        let k = Tensor::randn([3, 4], opts);
        gradcheck::check(
            |x| info_nce_batch(x, &k, 0.3),
            &Tensor::randn([3, 4], opts),
            1e-5,
        );
    }

    #[test]
    fn global_losses_score_the_local_rows_against_the_whole_batch() {
        // Rank 1 of 2 holds image 1 of a global batch of 2 (offset 1), T = 1. Views 1 are
        // [e1, e2], views 2 are [e2, e2]; its anchors are e2 (view 1) and e2 (view 2).
        let rows = |v: &[f32]| Tensor::from_slice(v).view([-1, 2]);
        let (all1, all2) = (rows(&[1., 0., 0., 1.]), rows(&[0., 1., 0., 1.]));
        let (z1, z2) = (all1.narrow(0, 1, 1), all2.narrow(0, 1, 1));
        // Candidates: e1, e2 | e2, e2. View-1 anchor (column 1 is itself): positive column
        // 3 (cos 1), negatives e1 (0) and e2 (1). View-2 anchor (column 3): positive column 1
        // (1), negatives e1 (0) and e2 (1). Both -log(e / (e + 1 + e)).
        let e = 1f64.exp();
        let want = -(e / (2.0 * e + 1.0)).ln();
        let got = nt_xent_global(&z1, &z2, &all1, &all2, 1, 1.0).double_value(&[]);
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // Without the rank's offset its anchors would take image 0's columns: another value.
        let unshifted = nt_xent_global(&z1, &z2, &all1, &all2, 0, 1.0).double_value(&[]);
        assert!((unshifted - want).abs() > 0.1, "{unshifted}");
        // InfoNCE: query e2 of rank 1 against keys [e1, e2]: positive is key 1, -log(e / (e + 1)).
        let got = info_nce_global(&z1, &all1, 1, 1.0).double_value(&[]);
        assert!((got + (e / (e + 1.0)).ln()).abs() < 1e-6, "{got}");
        let unshifted = info_nce_global(&z1, &all1, 0, 1.0).double_value(&[]);
        assert!(
            (unshifted + (1.0 / (e + 1.0)).ln()).abs() < 1e-6,
            "{unshifted}"
        );
    }

    /// The mean over W ranks of a global loss of each rank's slice equals the one-process
    /// loss of the whole batch, in value and in gradient, when every slice's gradient reaches
    /// the whole batch (as the differentiable all-gather makes it).
    #[test]
    fn global_losses_over_the_ranks_equal_the_one_process_loss() {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(11);
        let opts = (Kind::Double, tch::Device::Cpu);
        let (n, world) = (6, 3);
        let b = n / world;
        let leaf = || Tensor::randn([n, 4], opts).set_requires_grad(true);
        let (a1, a2, k) = (leaf(), leaf(), leaf());
        let slice = |t: &Tensor, r: i64| t.narrow(0, r * b, b);
        let mean_over_ranks = |f: &dyn Fn(i64) -> Tensor| {
            (0..world)
                .map(f)
                .fold(Tensor::zeros([], opts), |acc, l| acc + l)
                / world as f64
        };
        // The same value and the same gradients for `leaves`.
        let agree = |split: Tensor, whole: Tensor, leaves: &[&Tensor]| {
            assert!((split.double_value(&[]) - whole.double_value(&[])).abs() < 1e-12);
            let grads = |loss: Tensor| Tensor::run_backward(&[loss], leaves, false, false);
            for (g, h) in grads(split).iter().zip(grads(whole)) {
                assert!(g.allclose(&h, 1e-12, 1e-12, false), "{g} vs {h}");
            }
        };
        let t = 0.4;
        let split = mean_over_ranks(&|r| {
            nt_xent_global(&slice(&a1, r), &slice(&a2, r), &a1, &a2, r * b, t)
        });
        agree(split, nt_xent(&a1, &a2, t), &[&a1, &a2]);
        let split = mean_over_ranks(&|r| info_nce_global(&slice(&a1, r), &k, r * b, t));
        agree(split, info_nce_batch(&a1, &k, t), &[&a1, &k]);
    }

    #[test]
    fn global_loss_gradients_match_finite_differences() {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(12);
        let opts = (Kind::Double, tch::Device::Cpu);
        let (z1, z2) = (Tensor::randn([2, 3], opts), Tensor::randn([2, 3], opts));
        let (all1, all2) = (Tensor::randn([4, 3], opts), Tensor::randn([4, 3], opts));
        gradcheck::check(|x| nt_xent_global(x, &z2, &all1, &all2, 2, 0.5), &z1, 1e-5);
        gradcheck::check(|x| nt_xent_global(&z1, &z2, x, &all2, 2, 0.5), &all1, 1e-5);
        gradcheck::check(|x| nt_xent_global(&z1, x, &all1, &all2, 1, 0.5), &z2, 1e-5);
        gradcheck::check(|x| info_nce_global(x, &all1, 2, 0.3), &z1, 1e-5);
        gradcheck::check(|x| info_nce_global(&z1, x, 2, 0.3), &all1, 1e-5);
    }

    #[test]
    fn class_weighted_cross_entropy_weights_each_row_by_its_target() {
        // Row 0: uniform over 2 classes, target 0 (weight 3): 3 ln 2.
        // Row 1: logits [0, ln 3], target 1 (weight 0.5): 0.5 ln(4/3).
        let logits = Tensor::from_slice(&[0f32, 0.0, 0.0, 3f32.ln()]).view([2, 2]);
        let w = Tensor::from_slice(&[3f32, 0.5]);
        let l = class_weighted_cross_entropy(&logits, &Tensor::from_slice(&[0i64, 1]), &w);
        let want = (3.0 * 2f64.ln() + 0.5 * (4.0f64 / 3.0).ln()) / 2.0;
        assert!((l.double_value(&[]) - want).abs() < 1e-6);
    }

    #[test]
    fn pixel_cross_entropy_averages_over_the_pixels_not_ignored() {
        // One image of 1x3 pixels, 2 classes: logits [0, 0] (ln 2), [0, ln 3] with target 1
        // (ln 4/3), and an ignored pixel whose logits would cost a lot.
        let logits = Tensor::from_slice(&[0f32, 0.0, -9.0, 0.0, 3f32.ln(), 9.0]).view([1, 2, 1, 3]);
        let target = Tensor::from_slice(&[0i64, 1, 255]).view([1, 1, 3]);
        let l = pixel_cross_entropy(&logits, &target, 255);
        let want = (2f64.ln() + (4.0f64 / 3.0).ln()) / 2.0;
        assert!((l.double_value(&[]) - want).abs() < 1e-6);
        let none = Tensor::from_slice(&[255i64, 255, 255]).view([1, 1, 3]);
        assert_eq!(
            pixel_cross_entropy(&logits, &none, 255).double_value(&[]),
            0.0
        );
    }

    #[test]
    fn bce_with_logits_matches_hand_computation() {
        // sigmoid(0) = 1/2: -ln(1/2) whatever the target; logit ln 3 -> p = 3/4.
        let l = bce_with_logits(&t(&[0.0, 3f32.ln()]), 1.0);
        let want = (2f64.ln() + (4.0f64 / 3.0).ln()) / 2.0;
        assert!((l.double_value(&[]) - want).abs() < 1e-6);
        let l0 = bce_with_logits(&t(&[3f32.ln()]), 0.0);
        assert!((l0.double_value(&[]) - 4f64.ln()).abs() < 1e-6);
    }
}
