//! PCA and exact t-SNE on tch tensors (CPU), for 2-D maps of embeddings.
//!
//! t-SNE (van der Maaten & Hinton 2008) as scikit-learn's exact method runs it: Gaussian
//! affinities calibrated per point by bisection to the perplexity, symmetrised; a Student-t
//! kernel in the map; gradient descent with momentum 0.5 then 0.8 and per-coordinate gains
//! (delta-bar-delta); early exaggeration (12) of P for the first 250 iterations; the
//! learning rate `max(N / exaggeration / 4, 50)`; initialisation by PCA scaled to a standard
//! deviation of 1e-4. 750 iterations in all by default (openTSNE's 250 + 500; scikit-learn
//! runs 1000), which takes about 10 s for 2000 points on two cores. Nothing is random, so a given input always gives the same map. Memory and time are
//! O(N²): meant for a few thousand points.

use tch::{Device, Kind, Tensor};

/// A fitted principal component analysis (double precision).
pub struct Pca {
    /// Mean of the data `[D]`.
    pub mean: Tensor,
    /// Principal axes `[k, D]`, unit length, by decreasing variance; each signed so that its
    /// largest-magnitude coordinate is positive (a deterministic choice of sign).
    pub components: Tensor,
    /// Variance of the data along each axis `[k]` (sum of squares / (N - 1)).
    pub explained_variance: Tensor,
    /// Fraction of the total variance along each axis `[k]`.
    pub explained_ratio: Tensor,
}

impl Pca {
    /// Fits the first `k` components (fewer when the data has fewer rows or columns) of `x`
    /// `[N, D]`.
    pub fn fit(x: &Tensor, k: i64) -> Pca {
        let x = x.to_kind(Kind::Double).to_device(Device::Cpu);
        let n = x.size()[0];
        let mean = x.mean_dim(0, false, Kind::Double);
        let xc = &x - &mean;
        let (_, s, v) = xc.svd(true, true);
        let k = k.min(s.size()[0]).max(0);
        let axes = v.tr().narrow(0, 0, k);
        let biggest = axes.abs().argmax(1, true);
        let sign = axes.gather(1, &biggest, false).sign();
        let sign = sign.where_self(&sign.ne(0), &sign.ones_like());
        let components = axes * sign;
        let dof = (n - 1).max(1) as f64;
        let var = s.square() / dof;
        let total = var.sum(Kind::Double).clamp_min(f64::MIN_POSITIVE);
        let explained_variance = var.narrow(0, 0, k);
        let explained_ratio = &explained_variance / total;
        Pca {
            mean,
            components,
            explained_variance,
            explained_ratio,
        }
    }

    /// Coordinates of the rows of `x` `[N, D]` along the components: `[N, k]` (double).
    pub fn transform(&self, x: &Tensor) -> Tensor {
        (x.to_kind(Kind::Double).to_device(Device::Cpu) - &self.mean).matmul(&self.components.tr())
    }
}

/// Settings of [`tsne`]; the defaults are scikit-learn's, except for 750 iterations.
#[derive(Debug, Clone)]
pub struct TsneOptions {
    /// Effective number of neighbours of each point (lowered to (N - 1) / 3 for tiny inputs).
    pub perplexity: f64,
    pub iterations: usize,
    /// P is multiplied by this for the first `exaggeration_iterations` iterations.
    pub exaggeration: f64,
    pub exaggeration_iterations: usize,
    /// None: `max(N / exaggeration / 4, 50)`.
    pub learning_rate: Option<f64>,
}

impl Default for TsneOptions {
    fn default() -> Self {
        TsneOptions {
            perplexity: 30.0,
            iterations: 750,
            exaggeration: 12.0,
            exaggeration_iterations: 250,
            learning_rate: None,
        }
    }
}

/// Squared Euclidean distances between the rows of `x` `[N, D]`: `[N, N]`.
fn squared_distances(x: &Tensor) -> Tensor {
    let sq = x.square().sum_dim_intlist(1, true, x.kind());
    (&sq + sq.tr() - x.matmul(&x.tr()) * 2.0).clamp_min(0.0)
}

/// The conditional probabilities P(j | i) `[N, N]` (double, rows sum to 1, zero diagonal)
/// of the points `x` `[N, D]` under Gaussians whose precisions are found by bisection, row
/// by row, so that each row has the given perplexity (2 to the power of its entropy in bits).
pub fn conditional_probabilities(x: &Tensor, perplexity: f64) -> Tensor {
    let x = x.to_kind(Kind::Double).to_device(Device::Cpu);
    let n = x.size()[0];
    let eye = Tensor::eye(n, (Kind::Bool, Device::Cpu));
    let d = squared_distances(&x);
    // Distances from each row's nearest neighbour: the entropy does not change, and exp()
    // cannot underflow to all zeros.
    let nearest = d.masked_fill(&eye, f64::INFINITY).amin(1, true);
    let d = (d - nearest).clamp_min(0.0).masked_fill(&eye, 0.0);
    let target = perplexity.ln();
    let mean_d = d.sum_dim_intlist(1, true, Kind::Double) / (n - 1).max(1) as f64;
    let mut beta = mean_d.clamp_min(1e-12).reciprocal();
    let mut lo = beta.zeros_like();
    let mut hi = beta.full_like(f64::INFINITY);
    // exp(-beta d) with 1 on the diagonal (d_ii = 0), which `sum_off` leaves out.
    let kernel = |beta: &Tensor| (&d * -beta).exp_();
    let sum_off = |p: &Tensor| p.sum_dim_intlist(1, true, Kind::Double) - 1.0;
    for _ in 0..100 {
        let p = kernel(&beta);
        let z = sum_off(&p).clamp_min(1e-300);
        // Entropy in nats: log Z + beta E[d] (the diagonal adds nothing to Σ d p).
        let h = z.log() + &beta * (&d * &p).sum_dim_intlist(1, true, Kind::Double) / &z;
        let diff = &h - target;
        if diff.abs().max().double_value(&[]) < 1e-5 {
            break;
        }
        // Entropy too high: sharpen (raise beta); too low: flatten.
        let up = diff.gt(0.0);
        lo = beta.where_self(&up, &lo);
        hi = hi.where_self(&up, &beta);
        let doubled = &beta * 2.0;
        let middle = (&lo + &hi) / 2.0;
        beta = doubled.where_self(&hi.isinf(), &middle);
    }
    let p = kernel(&beta).masked_fill(&eye, 0.0);
    &p / p.sum_dim_intlist(1, true, Kind::Double).clamp_min(1e-300)
}

/// The symmetric joint probabilities P `[N, N]` (double) of t-SNE:
/// (P(j | i) + P(i | j)) / 2N.
pub fn joint_probabilities(x: &Tensor, perplexity: f64) -> Tensor {
    let n = x.size()[0];
    let p = conditional_probabilities(x, perplexity);
    let eye = Tensor::eye(n, (Kind::Bool, Device::Cpu));
    ((&p + p.tr()) / (2 * n) as f64)
        .clamp_min(1e-12)
        .masked_fill(&eye, 0.0)
}

/// A 2-D t-SNE map `[N, 2]` (float, CPU) of the rows of `x` `[N, D]`.
pub fn tsne(x: &Tensor, opts: &TsneOptions) -> Tensor {
    let n = x.size()[0];
    if n < 3 {
        return Tensor::zeros([n, 2], (Kind::Float, Device::Cpu));
    }
    let perplexity = opts.perplexity.min((n - 1) as f64 / 3.0).max(1.0);
    let p = joint_probabilities(x, perplexity).to_kind(Kind::Float);
    let init = Pca::fit(x, 2).transform(x);
    let init = if init.size()[1] < 2 {
        Tensor::cat(&[&init, &init.zeros_like()], 1).narrow(1, 0, 2)
    } else {
        init
    };
    let std = init
        .select(1, 0)
        .std(true)
        .double_value(&[])
        .max(f64::MIN_POSITIVE);
    let mut y = (init / std * 1e-4).to_kind(Kind::Float);
    let lr = opts
        .learning_rate
        .unwrap_or((n as f64 / opts.exaggeration / 4.0).max(50.0));
    let mut update = y.zeros_like();
    let mut gains = y.ones_like();
    tch::no_grad(|| {
        let mut pe = &p * opts.exaggeration;
        for it in 0..opts.iterations {
            let momentum = if it < opts.exaggeration_iterations {
                0.5
            } else {
                0.8
            };
            if it == opts.exaggeration_iterations {
                pe = p.shallow_clone();
            }
            // Student-t kernel between map points, num_ij = 1 / (1 + |y_i - y_j|²) (1 on
            // the diagonal), in one product: [-2y, |y|² + 1, 1] · [y, 1, |y|²]ᵀ.
            let sq = y.square().sum_dim_intlist(1, true, Kind::Float);
            let ones = sq.ones_like();
            let a = Tensor::cat(&[&y * -2.0, &sq + 1.0, ones.shallow_clone()], 1);
            let b = Tensor::cat(&[y.tr(), ones.tr(), sq.tr()], 0);
            let mut num = a.matmul(&b);
            let _ = num.reciprocal_();
            let z = num.sum(Kind::Float) - n as f64;
            // W = (P - Q) ∘ num with Q = num / Z. The diagonal of W is not zero, but it adds
            // w_ii (y_i - y_i) = 0 to the gradient 4 Σ_j w_ij (y_i - y_j).
            let mut w = &num / -z;
            w += &pe;
            w *= &num;
            let wy = w.matmul(&Tensor::cat(&[&y, &ones], 1)); // [W y, Σ_j w_ij]
            let grad = (wy.narrow(1, 2, 1) * &y - wy.narrow(1, 0, 2)) * 4.0;
            let same_sign = (&grad * &update).ge(0.0);
            gains = (&gains * 0.8)
                .where_self(&same_sign, &(&gains + 0.2))
                .clamp_min(0.01);
            update = &update * momentum - grad * &gains * lr;
            y = &y + &update;
        }
    });
    y
}

/// A 2-D map of embeddings `[N, D]` for a picture: rows scaled to unit length (the cosine
/// geometry the kNN evaluation uses), reduced to at most 50 dimensions by PCA, then t-SNE.
pub fn embedding_map(features: &Tensor, opts: &TsneOptions) -> Tensor {
    let f = features.to_kind(Kind::Double).to_device(Device::Cpu);
    let f = &f / f.norm_scalaropt_dim(2, [1i64], true).clamp_min(1e-12);
    let reduced = if f.size()[1] > 50 {
        Pca::fit(&f, 50).transform(&f)
    } else {
        f
    };
    tsne(&reduced, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vec2(t: &Tensor) -> Vec<Vec<f64>> {
        Vec::<Vec<f64>>::try_from(t.to_kind(Kind::Double)).unwrap()
    }

    #[test]
    fn pca_of_points_on_a_line_recovers_the_line() {
        // Points c + t·u on the line through c = (1, -2, 0.5) with direction u = (1, 2, 2)/3.
        let ts = [-2.0, -1.0, 0.0, 1.0, 2.0, 5.0];
        let u = [1.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0];
        let c = [1.0, -2.0, 0.5];
        let rows: Vec<f64> = ts
            .iter()
            .flat_map(|t| (0..3).map(move |i| c[i] + t * u[i]))
            .collect();
        let x = Tensor::from_slice(&rows).view([6, 3]);
        let pca = Pca::fit(&x, 2);
        let axis = Vec::<f64>::try_from(pca.components.get(0)).unwrap();
        for (a, b) in axis.iter().zip(u) {
            assert!((a - b).abs() < 1e-9, "first axis {axis:?}, want {u:?}");
        }
        // All the variance is along the line: var(t) with N - 1 = 5.
        let mean_t = ts.iter().sum::<f64>() / 6.0;
        let var_t = ts.iter().map(|t| (t - mean_t).powi(2)).sum::<f64>() / 5.0;
        let ev = Vec::<f64>::try_from(&pca.explained_variance).unwrap();
        let ratio = Vec::<f64>::try_from(&pca.explained_ratio).unwrap();
        assert!((ev[0] - var_t).abs() < 1e-9 && ev[1].abs() < 1e-9, "{ev:?}");
        assert!((ratio[0] - 1.0).abs() < 1e-9, "{ratio:?}");
        // The first coordinate is t, centred: same order, same spacing.
        let proj = vec2(&pca.transform(&x));
        for (row, t) in proj.iter().zip(ts) {
            assert!((row[0] - (t - mean_t)).abs() < 1e-9, "{proj:?}");
            assert!(row[1].abs() < 1e-9);
        }
    }

    #[test]
    fn pca_orders_axes_by_variance() {
        // (±3, 0) and (0, ±1): variance 6 along x, 2/3 along y.
        let x = Tensor::from_slice(&[3.0, 0.0, -3.0, 0.0, 0.0, 1.0, 0.0, -1.0]).view([4, 2]);
        let pca = Pca::fit(&x, 5);
        assert_eq!(pca.components.size(), vec![2, 2]);
        assert_eq!(vec2(&pca.components), vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
        let ev = Vec::<f64>::try_from(&pca.explained_variance).unwrap();
        assert!((ev[0] - 6.0).abs() < 1e-9 && (ev[1] - 2.0 / 3.0).abs() < 1e-9);
        let ratio = Vec::<f64>::try_from(&pca.explained_ratio).unwrap();
        assert!((ratio[0] - 0.9).abs() < 1e-9, "{ratio:?}");
    }

    #[test]
    fn calibrated_rows_have_the_perplexity() {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(1);
        // Widely spread points: the first row's scale differs from the others' by 1000x.
        let x = Tensor::randn([60, 5], (Kind::Double, Device::Cpu));
        let x = Tensor::cat(&[x.narrow(0, 0, 1) * 1000.0, x.narrow(0, 1, 59)], 0);
        let c = conditional_probabilities(&x, 10.0);
        let rows = c.sum_dim_intlist(1, false, Kind::Double);
        assert!(rows.allclose(&rows.ones_like(), 1e-12, 1e-12, false));
        // exp(entropy) of every row is the perplexity.
        let h = -(&c * c.clamp_min(1e-300).log()).sum_dim_intlist(1, false, Kind::Double);
        let perp = Vec::<f64>::try_from(h.exp()).unwrap();
        assert!(perp.iter().all(|p| (p - 10.0).abs() < 1e-4), "{perp:?}");
        let p = joint_probabilities(&x, 10.0);
        let sum = p.sum(Kind::Double).double_value(&[]);
        assert!((sum - 1.0).abs() < 1e-9, "P sums to {sum}");
        assert!(p.allclose(&p.tr(), 1e-12, 1e-15, false));
        assert_eq!(p.diagonal(0, 0, 1).abs().max().double_value(&[]), 0.0);
    }

    #[test]
    fn tsne_separates_gaussian_blobs_and_is_deterministic() {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(7);
        // Four blobs in 10-D, 40 points each, centres 8 apart, unit noise.
        let (k, per, d) = (4i64, 40i64, 10i64);
        let centres = Tensor::eye(d, (Kind::Double, Device::Cpu)).narrow(0, 0, k) * 8.0;
        let labels =
            Tensor::arange(k, (Kind::Int64, Device::Cpu)).repeat_interleave_self_int(per, 0, None);
        let x = centres.index_select(0, &labels)
            + Tensor::randn([k * per, d], (Kind::Double, Device::Cpu));
        let opts = TsneOptions {
            iterations: 500,
            ..Default::default()
        };
        let y = tsne(&x, &opts);
        assert_eq!(y.size(), vec![k * per, 2]);
        assert!(y.isfinite().all().int64_value(&[]) == 1);
        // Leave-one-out 1-NN in the map.
        let dist = squared_distances(&y.to_kind(Kind::Double)).masked_fill(
            &Tensor::eye(k * per, (Kind::Bool, Device::Cpu)),
            f64::INFINITY,
        );
        let nn = dist.argmin(1, false);
        let acc = labels
            .index_select(0, &nn)
            .eq_tensor(&labels)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[]);
        assert!(acc >= 0.99, "1-NN accuracy in the t-SNE map {acc}");
        // The map is spread out, not collapsed to the 1e-4 initialisation.
        assert!(y.std(true).double_value(&[]) > 1.0);
        assert!(y.equal(&tsne(&x, &opts)), "same input, same map");
    }

    #[test]
    fn tiny_inputs_do_not_fail() {
        let x = Tensor::from_slice(&[0.0f32, 1.0, 2.0, 3.0, 5.0, 8.0]).view([3, 2]);
        let y = tsne(&x, &TsneOptions::default());
        assert_eq!(y.size(), vec![3, 2]);
        assert!(y.isfinite().all().int64_value(&[]) == 1);
        assert_eq!(
            tsne(&x.narrow(0, 0, 1), &TsneOptions::default()).size(),
            vec![1, 2]
        );
    }
}
