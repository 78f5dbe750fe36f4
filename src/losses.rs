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

/// NT-Xent over V crops of each image (SimCLR with multi-crop; solo-learn's
/// `simclr_loss_func` with `indexes`): every other crop of the same image is a positive,
/// every crop of another image a negative, and each anchor's loss is
/// -log(Σ_pos e^s / Σ_{all but itself} e^s), s = cosine / `temperature`. `z[v]` `[b, D]`:
/// this rank's projections of crop v of its b images (rows `offset..offset + b` of the
/// global batch); `all[v]` `[N, D]`: crop v of the whole global batch (gathered from every
/// rank). The mean over the V b local anchors; as for `nt_xent_global`, its mean over the
/// ranks is the one-process loss. With 2 crops it is `nt_xent_global` (up to rounding).
pub fn nt_xent_multi_global(z: &[Tensor], all: &[Tensor], offset: i64, temperature: f64) -> Tensor {
    let (v, b, n) = (z.len() as i64, z[0].size()[0], all[0].size()[0]);
    let ints = (Kind::Int64, z[0].device());
    let anchors = l2_normalize(&Tensor::cat(z, 0)); // [V b, D]
    let candidates = l2_normalize(&Tensor::cat(all, 0)); // [V N, D]
    // The global image of every anchor and every candidate, and each anchor's own column.
    let anchor_image = Tensor::arange_start(offset, offset + b, ints).repeat([v]); // [V b]
    let candidate_image = Tensor::arange(n, ints).repeat([v]); // [V N]
    let own = &anchor_image + Tensor::arange(v, ints).repeat_interleave_self_int(b, 0, None) * n; // [V b]
    let itself = own
        .unsqueeze(1)
        .eq_tensor(&Tensor::arange(v * n, ints).unsqueeze(0)); // [V b, V N]
    let other_image = anchor_image
        .unsqueeze(1)
        .ne_tensor(&candidate_image.unsqueeze(0)); // [V b, V N]
    let sim =
        (anchors.matmul(&candidates.tr()) / temperature).masked_fill(&itself, f64::NEG_INFINITY); // [V b, V N]
    let positives = sim.masked_fill(&other_image, f64::NEG_INFINITY); // [V b, V N]
    let dim = &[1i64][..];
    (sim.logsumexp(dim, false) - positives.logsumexp(dim, false)).mean(sim.kind())
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

/// Standardises each column of `z` `[N, D]` over the batch: BatchNorm without affine
/// parameters in training mode (biased variance, eps 1e-5), as Barlow Twins applies it to
/// the projections before their cross-correlation.
fn standardize(z: &Tensor) -> Tensor {
    let mean = z.mean_dim(&[0i64][..], true, z.kind()); // [1, D]
    let var = z.var_correction(&[0i64][..], 0, true); // [1, D]
    (z - mean) / (var + 1e-5).sqrt()
}

/// The off-diagonal entries of a square matrix `m` `[D, D]`, zeroed diagonal kept: `[D, D]`.
fn off_diagonal(m: &Tensor) -> Tensor {
    let d = m.size()[0];
    m * (1.0 - Tensor::eye(d, (m.kind(), m.device())))
}

/// Barlow Twins (Zbontar et al. 2021). `z1`, `z2` `[N, D]`: projections of two views of N
/// images. Each column is standardised over the batch, C = z1ᵀ z2 / N is their
/// cross-correlation `[D, D]`, and the loss pulls C towards the identity:
/// Σ_i (1 - C_ii)² + `lambda` Σ_{i≠j} C_ij². Pass the global batch (gathered from every
/// rank) for the paper's cross-correlation over all ranks.
pub fn barlow_twins(z1: &Tensor, z2: &Tensor, lambda: f64) -> Tensor {
    let n = z1.size()[0] as f64;
    let c = standardize(z1).tr().matmul(&standardize(z2)) / n; // [D, D]
    let on = (c.diagonal(0, 0, 1) - 1.0).square().sum(c.kind());
    on + off_diagonal(&c).square().sum(c.kind()) * lambda
}

/// VICReg (Bardes et al. 2022) with weights `sim` (invariance), `var` and `cov` (paper:
/// 25, 25, 1). `z1`, `z2` `[N, D]`. Invariance: mean squared error between the views.
/// Variance: mean over dimensions of relu(1 - sqrt(Var + 1e-4)) per view (unbiased
/// variance over the batch), halved per view. Covariance: the squared off-diagonal entries
/// of each view's covariance matrix (divided by N - 1), summed and divided by D. Pass the
/// global batch (gathered from every rank) for statistics over all ranks, as the paper does.
pub fn vicreg(z1: &Tensor, z2: &Tensor, sim: f64, var: f64, cov: f64) -> Tensor {
    let (n, d) = (z1.size()[0] as f64, z1.size()[1] as f64);
    let variance = |z: &Tensor| {
        let std = (z.var_correction(&[0i64][..], 1, false) + 1e-4).sqrt(); // [D]
        (-std + 1.0).relu().mean(z.kind()) / 2.0
    };
    let covariance = |z: &Tensor| {
        let c = z - z.mean_dim(&[0i64][..], true, z.kind()); // [N, D]
        let m = c.tr().matmul(&c) / (n - 1.0); // [D, D]
        off_diagonal(&m).square().sum(z.kind()) / d
    };
    mse(z1, z2) * sim
        + (variance(z1) + variance(z2)) * var
        + (covariance(z1) + covariance(z2)) * cov
}

/// Sinkhorn-Knopp (SwAV's online codes, Caron et al. 2020): the equipartitioned soft
/// assignment of N samples to K prototypes from their `scores` `[N, K]` (cosine
/// similarities): Q = exp(scores / `epsilon`), alternately normalised `iterations` times so
/// that every prototype gets 1/K of the mass and every sample 1/N, and returned with rows
/// summing to 1: `[N, K]`, without gradient. Pass the scores of the global batch (and of
/// the queue, if any): the prototype sums run over every sample.
pub fn sinkhorn_knopp(scores: &Tensor, epsilon: f64, iterations: usize) -> Tensor {
    let _guard = tch::no_grad_guard();
    let (n, k) = (scores.size()[0] as f64, scores.size()[1] as f64);
    // exp(s / eps) with the global maximum subtracted: the first normalisation below
    // removes the constant factor, and scores near 1 / eps no longer overflow.
    let s = scores.detach() / epsilon;
    let mut q = (&s - s.max()).exp(); // [N, K]
    q /= q.sum(q.kind());
    for _ in 0..iterations {
        q /= q.sum_dim_intlist(&[0i64][..], true, q.kind()) * k; // each prototype: 1/K
        q /= q.sum_dim_intlist(&[1i64][..], true, q.kind()) * n; // each sample: 1/N
    }
    q * n
}

/// Mean over rows of the cross-entropy of the distributions `target` `[N, K]` (rows sum to
/// 1, no gradient flows to them) and softmax(`logits`) `[N, K]`: mean_i -Σ_k t_ik log p_ik.
pub fn soft_cross_entropy(target: &Tensor, logits: &Tensor) -> Tensor {
    -(target.detach() * logits.log_softmax(-1, logits.kind()))
        .sum_dim_intlist(&[1i64][..], false, logits.kind())
        .mean(logits.kind())
}

/// SwAV's swapped prediction. `scores[v]` `[N, K]`: crop v's prototype scores (cosine of
/// the normalised projection with each normalised prototype), for every crop (large crops
/// first); `codes[a]` `[N, K]`: the Sinkhorn codes of crop a (the first `codes.len()`
/// crops, usually the 2 large ones). Each code is predicted from every other crop's
/// softmax(scores / `temperature`); the cross-entropies are averaged over the other crops,
/// then over the coded crops.
pub fn swav(scores: &[Tensor], codes: &[Tensor], temperature: f64) -> Tensor {
    mean_of(codes.iter().enumerate().map(|(a, q)| {
        let others = scores.iter().enumerate().filter(|(v, _)| *v != a);
        mean_of(others.map(|(_, s)| soft_cross_entropy(q, &(s / temperature))))
    }))
}

/// The mean of `loss(crops[v], targets[g])` over every target crop g and every crop v ≠ g,
/// where `targets[g]` comes from crop g (the first `targets.len()` crops, usually the 2
/// global ones) and `crops` holds every crop's output (global crops first): solo-learn's
/// `for v1 in range(num_large_crops): for v2 in delete(range(num_crops), v1)` loop, as a
/// mean. BYOL, SimSiam and MoCo v3 with multi-crop, DINO.
pub fn mean_over_crop_pairs(
    crops: &[Tensor],
    targets: &[Tensor],
    loss: impl Fn(&Tensor, &Tensor) -> Tensor,
) -> Tensor {
    mean_of(targets.iter().enumerate().flat_map(|(g, t)| {
        let others = crops.iter().enumerate().filter(move |(v, _)| *v != g);
        others.map(|(_, c)| loss(c, t)).collect::<Vec<_>>()
    }))
}

/// SimSiam's loss (Chen & He 2021): the negative cosine D(p, z) of each crop's prediction
/// `p[v]` `[N, dim]` against every other global crop's projection `z[g]` `[N, dim]` (the
/// first `z.len()` crops; the caller stops their gradient), averaged over the pairs: with
/// two crops 0.5 (D(p1, z2) + D(p2, z1)).
pub fn simsiam(p: &[Tensor], z: &[Tensor]) -> Tensor {
    mean_over_crop_pairs(p, z, negative_cosine)
}

/// BYOL's loss (Grill et al. 2020): 2 - 2 cos(p, z) of each crop's online prediction `p[v]`
/// against every other global crop's target projection `z[g]`, summed over the two views
/// as the paper sums L + L~: the mean over the pairs, times 2 (multi-crop too).
pub fn byol(p: &[Tensor], z: &[Tensor]) -> Tensor {
    simsiam(p, z) * 4.0 + 4.0
}

/// MoCo v3's loss (Chen, Xie and He 2021): ctr(q, k) = 2T InfoNCE(q, k) (cosine / T, the
/// other keys of the global batch as negatives) of each crop's queries against every other
/// global crop's keys, summed as the paper sums ctr(q1, k2) + ctr(q2, k1): the mean over
/// the pairs, times 2. `q[v]` `[b, dim]`: this rank's queries of crop v, rows
/// `offset..offset + b` of the global batch; `k[g]` `[N, dim]`: global crop g's keys of the
/// whole global batch (gathered from every rank).
pub fn moco_v3(q: &[Tensor], k: &[Tensor], offset: i64, temperature: f64) -> Tensor {
    let nce = |q: &Tensor, k: &Tensor| info_nce_global(q, k, offset, temperature);
    mean_over_crop_pairs(q, k, nce) * 2.0 * (2.0 * temperature)
}

/// The mean of scalar tensors (at least one).
fn mean_of(terms: impl Iterator<Item = Tensor>) -> Tensor {
    let terms: Vec<Tensor> = terms.collect();
    Tensor::stack(&terms, 0).mean(terms[0].kind())
}

/// DINO's self-distillation loss (Caron et al. 2021). `student[v]` `[N, K]`: the student's
/// head outputs for crop v (global crops first); `teacher[g]` `[N, K]`: the teacher's for
/// global crop g. The teacher is centred and sharpened, softmax((t - `center`) /
/// `teacher_temp`) (no gradient), the student softmax(s / `student_temp`); the mean over
/// every pair (g, v) with v ≠ g of their cross-entropy.
pub fn dino(
    student: &[Tensor],
    teacher: &[Tensor],
    center: &Tensor,
    student_temp: f64,
    teacher_temp: f64,
) -> Tensor {
    let q: Vec<Tensor> = teacher
        .iter()
        .map(|t| ((t - center) / teacher_temp).softmax(-1, t.kind())) // [N, K]
        .collect();
    mean_over_crop_pairs(student, &q, |s, q| {
        soft_cross_entropy(q, &(s / student_temp))
    })
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
/// MAE's loss (He et al. 2021, facebookresearch/mae `forward_loss`): the mean squared error
/// of `pred` `[N, L, P]` against the patches `target` `[N, L, P]`, averaged per patch, then
/// over the masked patches only (`mask` `[N, L]`, 1 = masked). With `norm_pix`, each target
/// patch is first normalised by its mean and (unbiased) variance, + 1e-6.
pub fn mae(pred: &Tensor, target: &Tensor, mask: &Tensor, norm_pix: bool) -> Tensor {
    let target = if norm_pix {
        let mean = target.mean_dim(&[-1i64][..], true, target.kind());
        let var = target.var_dim(&[-1i64][..], true, true);
        (target - mean) / (var + 1e-6).sqrt()
    } else {
        target.shallow_clone()
    };
    let kind = pred.kind();
    let per_patch = (pred - target).square().mean_dim(&[-1i64][..], false, kind); // [N, L]
    (per_patch * mask).sum(kind) / mask.sum(kind)
}

pub fn bce_with_logits(logits: &Tensor, target: f64) -> Tensor {
    logits.binary_cross_entropy_with_logits::<&Tensor>(
        &logits.full_like(target),
        None,
        None,
        Reduction::Mean,
    )
}

/// Reference values of the losses, written once by the scripts that name them and read by
/// the tests without Python: tests/fixtures/ssl_losses.json (scripts/make_loss_fixtures.py,
/// the papers' reference implementations) and tests/fixtures/lightly_losses.json
/// (scripts/make_lightly_fixtures.py, lightly's loss classes). Float64 throughout.
#[cfg(test)]
pub(crate) mod fixtures {
    use tch::Tensor;

    /// The fixture `name` of tests/fixtures/`file`.
    pub fn load(file: &str, name: &str) -> serde_json::Value {
        let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
        let all: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(all[name].is_object(), "no fixture {name} in {path}");
        all[name].clone()
    }

    /// `v[key]` (a flat list of numbers) as a float64 tensor of `shape`.
    pub fn tensor(v: &serde_json::Value, key: &str, shape: &[i64]) -> Tensor {
        let xs: Vec<f64> = serde_json::from_value(v[key].clone()).unwrap();
        Tensor::from_slice(&xs).view(shape)
    }

    pub fn num(v: &serde_json::Value, key: &str) -> f64 {
        v[key].as_f64().unwrap()
    }

    pub fn int(v: &serde_json::Value, key: &str) -> i64 {
        v[key].as_i64().unwrap()
    }

    /// A scalar tensor equal to `want` to 1e-9, relative (a NaN is never close).
    pub fn close(got: &Tensor, want: f64) {
        let got = got.double_value(&[]);
        assert!(
            (got - want).abs() < 1e-9 * (1.0 + want.abs()),
            "{got} vs {want}"
        );
    }
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
        // Multi-crop NT-Xent, three crops (k as the third).
        let all = [a1.shallow_clone(), a2.shallow_clone(), k.shallow_clone()];
        let split = mean_over_ranks(&|r| {
            let local: Vec<Tensor> = all.iter().map(|c| slice(c, r)).collect();
            nt_xent_multi_global(&local, &all, r * b, t)
        });
        agree(
            split,
            nt_xent_multi_global(&all, &all, 0, t),
            &[&a1, &a2, &k],
        );
    }

    #[test]
    fn multi_crop_nt_xent_with_two_crops_is_nt_xent() {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(13);
        let opts = (Kind::Double, tch::Device::Cpu);
        let (a1, a2) = (Tensor::randn([6, 4], opts), Tensor::randn([6, 4], opts));
        let multi = nt_xent_multi_global(&[a1.copy(), a2.copy()], &[a1.copy(), a2.copy()], 0, 0.3);
        close(&multi, nt_xent(&a1, &a2, 0.3).double_value(&[]));
        // A rank's slice of the global batch too.
        let (z1, z2) = (a1.narrow(0, 2, 2), a2.narrow(0, 2, 2));
        let multi = nt_xent_multi_global(&[z1.copy(), z2.copy()], &[a1.copy(), a2.copy()], 2, 0.3);
        close(
            &multi,
            nt_xent_global(&z1, &z2, &a1, &a2, 2, 0.3).double_value(&[]),
        );
    }

    #[test]
    fn multi_crop_nt_xent_matches_hand_computation() {
        // 2 images, 3 crops, T = 1. Image 0's crops are [e1, e1, e2], image 1's [e2, e2, e1].
        // Anchor e1 of image 0 (crop 0 or 1): positives e1 (e) and e2 (1), negatives e2, e2,
        // e1 (1, 1, e): -log((e + 1) / (2e + 3)). Anchor e2 of image 0 (crop 2): positives
        // e1, e1 (1, 1), negatives (e, e, 1): -log(2 / (2e + 3)). Image 1 is the mirror image.
        let rows = |v: &[f64]| Tensor::from_slice(v).view([-1, 2]);
        let crops = [
            rows(&[1., 0., 0., 1.]),
            rows(&[1., 0., 0., 1.]),
            rows(&[0., 1., 1., 0.]),
        ];
        let e = 1f64.exp();
        let want =
            (4.0 * -((e + 1.0) / (2.0 * e + 3.0)).ln() + 2.0 * -(2.0 / (2.0 * e + 3.0)).ln()) / 6.0;
        close(&nt_xent_multi_global(&crops, &crops, 0, 1.0), want);
        // Rank 1 of 2 holds image 1 (offset 1): the same value by symmetry, and its anchors
        // must find their own image's columns (offset 0 would score image 0's as positives).
        let local: Vec<Tensor> = crops.iter().map(|c| c.narrow(0, 1, 1)).collect();
        close(&nt_xent_multi_global(&local, &crops, 1, 1.0), want);
        let unshifted = nt_xent_multi_global(&local, &crops, 0, 1.0).double_value(&[]);
        assert!((unshifted - want).abs() > 0.1, "{unshifted}");
        // Every crop of every image alike: only positives are near, the bound of 4 images.
        let z = Tensor::eye(4, (Kind::Double, tch::Device::Cpu));
        let a = 10f64.exp();
        let want = -(2.0 * a / (2.0 * a + 9.0)).ln();
        close(
            &nt_xent_multi_global(
                &[z.copy(), z.copy(), z.copy()],
                &[z.copy(), z.copy(), z],
                0,
                0.1,
            ),
            want,
        );
    }

    #[test]
    fn mean_over_crop_pairs_takes_every_other_crop_of_each_target() {
        let s = |x: f64| Tensor::from_slice(&[x]).sum(Kind::Double);
        let crops = [s(1.0), s(10.0), s(100.0)];
        let targets = [s(0.5), s(0.25)];
        // (target 0: crops 1, 2), (target 1: crops 0, 2), each term crop * target.
        let want = (10.0 * 0.5 + 100.0 * 0.5 + 1.0 * 0.25 + 100.0 * 0.25) / 4.0;
        close(&mean_over_crop_pairs(&crops, &targets, |c, t| c * t), want);
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
        // Multi-crop NT-Xent of rank 1's slice (offset 2) of 3 crops, through a local crop
        // and through the gathered crops.
        let z3 = Tensor::randn([2, 3], opts);
        let all3 = Tensor::randn([4, 3], opts);
        let multi = |z3: &Tensor, all1: &Tensor| {
            let z = [z1.copy(), z2.copy(), z3.copy()];
            nt_xent_multi_global(&z, &[all1.copy(), all2.copy(), all3.copy()], 2, 0.5)
        };
        gradcheck::check(|x| multi(x, &all1), &z3, 1e-5);
        gradcheck::check(|x| multi(&z3, x), &all1, 1e-5);
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

    use fixtures::{close, int, num, tensor};

    /// A fixture of tests/fixtures/ssl_losses.json (scripts/make_loss_fixtures.py: the
    /// reference implementations in PyTorch, float64).
    fn fixture(name: &str) -> serde_json::Value {
        fixtures::load("ssl_losses.json", name)
    }

    /// Four samples of two standardised, uncorrelated dimensions.
    fn square() -> Tensor {
        Tensor::from_slice(&[1f64, 1., 1., -1., -1., 1., -1., -1.]).view([4, 2])
    }

    #[test]
    fn barlow_twins_matches_hand_computation() {
        let z = square();
        // Identical views: C = I / (1 + 1e-5) (BatchNorm's eps): almost nothing to pay.
        let c: f64 = 1.0 / (1.0 + 1e-5);
        close(&barlow_twins(&z, &z, 0.5), 2.0 * (1.0 - c).powi(2));
        // Opposite views: C = -c I, 2 (1 + c)^2 whatever lambda.
        close(&barlow_twins(&z, &(-&z), 0.5), 2.0 * (1.0 + c).powi(2));
        // Swapped dimensions: C = c [[0, 1], [1, 0]]: 2 + 2 c^2 lambda (a shift does not matter).
        let swapped = z.flip([1]) + 5.0;
        close(&barlow_twins(&z, &swapped, 0.5), 2.0 + 2.0 * c * c * 0.5);
    }

    #[test]
    fn vicreg_matches_hand_computation() {
        let z = square() * 0.5;
        // Unbiased variance 1/3 per dimension, uncorrelated: invariance 1 (shifted by 1),
        // variance (1 - std) per view halved, twice; no covariance.
        let std = (1.0f64 / 3.0 + 1e-4).sqrt();
        close(
            &vicreg(&z, &(&z + 1.0), 25.0, 25.0, 1.0),
            25.0 + 25.0 * (1.0 - std),
        );
        // Two samples [1, 1], [-1, -1]: covariance [[2, 2], [2, 2]], std > 1: 2 * 4 / 2 per view.
        let c = Tensor::from_slice(&[1f64, 1., -1., -1.]).view([2, 2]);
        close(&vicreg(&c, &c, 25.0, 25.0, 1.0), 8.0);
        close(&vicreg(&c, &c, 25.0, 25.0, 0.5), 4.0);
    }

    #[test]
    fn redundancy_reduction_losses_match_the_reference_implementations() {
        let f = fixture("barlow_twins");
        let shape: Vec<i64> = serde_json::from_value(f["shape"].clone()).unwrap();
        let (z1, z2) = (tensor(&f, "z1", &shape), tensor(&f, "z2", &shape));
        close(&barlow_twins(&z1, &z2, num(&f, "lambda")), num(&f, "loss"));
        close(&barlow_twins(&z1, &z2, 1.0), num(&f, "loss_lambda_1"));
        let f = fixture("vicreg");
        let (z1, z2) = (tensor(&f, "z1", &shape), tensor(&f, "z2", &shape));
        close(&vicreg(&z1, &z2, 25.0, 25.0, 1.0), num(&f, "loss"));
        close(&vicreg(&z1, &z2, 1.0, 2.0, 3.0), num(&f, "loss_1_2_3"));
    }

    #[test]
    fn sinkhorn_spreads_samples_evenly_over_the_prototypes() {
        // Equal scores: every sample split evenly over the K prototypes.
        let q = sinkhorn_knopp(
            &Tensor::zeros([6, 3], (Kind::Double, tch::Device::Cpu)),
            0.05,
            3,
        );
        assert!(
            q.allclose(&q.full_like(1.0 / 3.0), 1e-12, 1e-12, false),
            "{q}"
        );
        // Every sample prefers prototype 0: the codes still give each prototype 1/K of the
        // mass (nearly, after 3 iterations) and each sample a distribution.
        let s = Tensor::from_slice(&[0.9f64, 0.1, 0.0])
            .view([1, 3])
            .repeat([6, 1])
            + Tensor::arange(6, (Kind::Double, tch::Device::Cpu)).view([6, 1]) * 0.01;
        let q = sinkhorn_knopp(&s, 0.05, 3);
        let rows = q.sum_dim_intlist(&[1i64][..], false, Kind::Double);
        assert!(
            rows.allclose(&rows.ones_like(), 1e-9, 1e-9, false),
            "{rows}"
        );
        let cols = q.sum_dim_intlist(&[0i64][..], false, Kind::Double);
        assert!(
            cols.allclose(&cols.full_like(2.0), 0.05, 0.05, false),
            "{cols}"
        );
        assert!(!q.requires_grad());
    }

    #[test]
    fn swav_and_dino_match_hand_computation() {
        let opts = (Kind::Double, tch::Device::Cpu);
        // Uniform codes against flat scores: log K for every pair.
        let flat = Tensor::zeros([4, 5], opts);
        let codes = sinkhorn_knopp(&flat, 0.05, 3);
        let scores = [flat.copy(), flat.copy(), flat.copy()];
        close(&swav(&scores, &[codes.copy(), codes], 0.1), 5f64.ln());
        // A teacher whose centre is its own rows is uniform: log K against a flat student.
        let t = Tensor::from_slice(&[0.3f64, -0.2, 0.5, 0.0, 0.1])
            .view([1, 5])
            .repeat([4, 1]);
        let centre = t.narrow(0, 0, 1);
        let student = [flat.copy(), flat.copy(), flat.copy()];
        close(
            &dino(&student, &[t.copy(), t], &centre, 0.1, 0.04),
            5f64.ln(),
        );
        // One-hot teacher (sharpened hard): -log softmax of the student at that class.
        let teacher = Tensor::from_slice(&[10f64, 0.0]).view([1, 2]);
        let s = Tensor::from_slice(&[0f64, 3f64.ln() * 0.1]).view([1, 2]); // p = [1/4, 3/4]
        let zero = Tensor::zeros([1, 2], opts);
        let got = dino(&[s.copy(), s], &[teacher], &zero, 0.1, 0.01);
        close(&got, 4f64.ln());
    }

    #[test]
    fn clustering_and_distillation_losses_match_the_reference_implementations() {
        let f = fixture("swav");
        let (b, k, v) = (int(&f, "batch"), int(&f, "prototypes"), int(&f, "crops"));
        let scores = tensor(&f, "scores", &[v * b, k]).chunk(v, 0);
        let (eps, iters) = (num(&f, "epsilon"), int(&f, "iterations") as usize);
        let codes: Vec<Tensor> = (0..2)
            .map(|c| sinkhorn_knopp(&scores[c], eps, iters))
            .collect();
        let want = tensor(&f, "codes_crop0", &[b, k]);
        assert!(
            codes[0].allclose(&want, 1e-9, 1e-12, false),
            "{} vs {want}",
            codes[0]
        );
        close(
            &swav(&scores, &codes, num(&f, "temperature")),
            num(&f, "loss"),
        );
        let f = fixture("dino");
        let (b, k, v) = (int(&f, "batch"), int(&f, "dim"), int(&f, "crops"));
        let student = tensor(&f, "student", &[v * b, k]).chunk(v, 0);
        let teacher = tensor(&f, "teacher", &[2 * b, k]).chunk(2, 0);
        let centre = tensor(&f, "center", &[1, k]);
        let st = num(&f, "student_temp");
        close(
            &dino(&student, &teacher, &centre, st, num(&f, "teacher_temp")),
            num(&f, "loss"),
        );
        close(
            &dino(&student, &teacher, &centre, st, 0.07),
            num(&f, "loss_teacher_temp_07"),
        );
    }

    #[test]
    fn self_supervised_loss_gradients_match_finite_differences() {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(21);
        let opts = (Kind::Double, tch::Device::Cpu);
        let z1 = Tensor::randn([5, 3], opts);
        let z2 = &z1 + Tensor::randn([5, 3], opts) * 0.5;
        gradcheck::check(|x| barlow_twins(x, &z2, 0.3), &z1, 1e-5);
        gradcheck::check(|x| barlow_twins(&z1, x, 0.3), &z2, 1e-5);
        // Scaled down, so that every dimension's std is below 1 (the hinge is active).
        let (s1, s2) = (&z1 * 0.3, &z2 * 0.3);
        gradcheck::check(|x| vicreg(x, &s2, 25.0, 25.0, 1.0), &s1, 1e-5);
        gradcheck::check(|x| vicreg(&s1, x, 2.0, 3.0, 4.0), &s2, 1e-5);
        let scores: Vec<Tensor> = (0..3).map(|_| Tensor::randn([4, 3], opts)).collect();
        let codes: Vec<Tensor> = (0..2)
            .map(|c| sinkhorn_knopp(&scores[c], 0.05, 3))
            .collect();
        let with = |x: &Tensor, i: usize| {
            let mut s: Vec<Tensor> = scores.iter().map(|t| t.shallow_clone()).collect();
            s[i] = x.shallow_clone();
            s
        };
        gradcheck::check(|x| swav(&with(x, 0), &codes, 0.1), &scores[0], 1e-5);
        gradcheck::check(|x| swav(&with(x, 2), &codes, 0.1), &scores[2], 1e-5);
        let centre = Tensor::randn([1, 3], opts) * 0.1;
        let teacher = [Tensor::randn([4, 3], opts), Tensor::randn([4, 3], opts)];
        gradcheck::check(
            |x| dino(&with(x, 1), &teacher, &centre, 0.1, 0.04),
            &scores[1],
            1e-5,
        );
        // No gradient reaches the teacher (nor SwAV's codes): they are targets.
        let t = teacher[0].copy().set_requires_grad(true);
        let l = dino(&scores, &[t, teacher[1].copy()], &centre, 0.1, 0.04);
        assert!(!l.requires_grad());
        let q = codes[0].copy().set_requires_grad(true);
        assert!(!swav(&scores, &[q], 0.1).requires_grad());
    }

    /// A fixture of tests/fixtures/lightly_losses.json (scripts/make_lightly_fixtures.py).
    fn lightly(name: &str) -> serde_json::Value {
        fixtures::load("lightly_losses.json", name)
    }

    #[test]
    fn contrastive_losses_match_lightly() {
        let f = lightly("nt_xent");
        let shape: Vec<i64> = serde_json::from_value(f["shape"].clone()).unwrap();
        let (z1, z2) = (tensor(&f, "z1", &shape), tensor(&f, "z2", &shape));
        close(&nt_xent(&z1, &z2, 0.5), num(&f, "loss_t_0_5"));
        close(&nt_xent(&z1, &z2, 0.1), num(&f, "loss_t_0_1"));
        // MoCo v3: ctr(q, k) = 2T info_nce_batch(q, k, T), the loss ctr(q1, k2) + ctr(q2, k1).
        let f = lightly("moco_v3");
        let shape: Vec<i64> = serde_json::from_value(f["shape"].clone()).unwrap();
        let [q1, q2, k1, k2] = ["q1", "q2", "k1", "k2"].map(|k| tensor(&f, k, &shape));
        let t = num(&f, "temperature");
        close(
            &(info_nce_batch(&q1, &k2, t) * 2.0 * t),
            num(&f, "ctr_q1_k2"),
        );
        close(&moco_v3(&[q1, q2], &[k1, k2], 0, t), num(&f, "loss"));
    }

    #[test]
    fn negative_cosine_matches_lightly() {
        let f = lightly("negative_cosine");
        let shape: Vec<i64> = serde_json::from_value(f["shape"].clone()).unwrap();
        let [p1, p2, z1, z2] = ["p1", "p2", "z1", "z2"].map(|k| tensor(&f, k, &shape));
        close(&negative_cosine(&p1, &z2), num(&f, "loss_p1_z2"));
        close(&negative_cosine(&p2, &z1), num(&f, "loss_p2_z1"));
        let (p, z) = ([p1, p2], [z1, z2]);
        close(&simsiam(&p, &z), num(&f, "simsiam"));
        close(&byol(&p, &z), num(&f, "byol"));
    }
}
