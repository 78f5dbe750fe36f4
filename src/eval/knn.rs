//! Weighted kNN classifier on cosine similarity (InstDisc, Wu et al. 2018; as in lightly
//! and solo-learn): the k most similar training features vote for their label with
//! weight exp(sim / T).

use tch::{Kind, Tensor};

/// Class scores `[Q, C]` for `query` `[Q, D]` against `train` `[N, D]` with labels `[N]`.
/// Features are L2-normalised here.
pub fn knn_scores(
    train: &Tensor,
    train_labels: &Tensor,
    query: &Tensor,
    num_classes: i64,
    k: i64,
    t: f64,
) -> Tensor {
    let train = normalize(train);
    let query = normalize(query);
    let k = k.min(train.size()[0]);
    let mut out = Vec::new();
    for q in query.split(1024, 0) {
        let sim = q.matmul(&train.tr()); // [q, N]
        let (top_sim, top_idx) = sim.topk(k, 1, true, true); // [q, k]
        let top_labels = train_labels
            .index_select(0, &top_idx.flatten(0, -1))
            .view_as(&top_idx);
        let weights = (top_sim / t).exp(); // [q, k]
        let scores = Tensor::zeros([q.size()[0], num_classes], (Kind::Float, q.device()));
        out.push(scores.scatter_add(1, &top_labels, &weights)); // [q, C]
    }
    Tensor::cat(&out, 0)
}

fn normalize(x: &Tensor) -> Tensor {
    let x = x.to_kind(Kind::Float);
    &x / x.norm_scalaropt_dim(2, &[1i64][..], true).clamp_min(1e-12)
}

pub fn knn_accuracy(
    train: &Tensor,
    train_labels: &Tensor,
    test: &Tensor,
    test_labels: &Tensor,
    num_classes: i64,
    k: i64,
    t: f64,
) -> f64 {
    let scores = tch::no_grad(|| knn_scores(train, train_labels, test, num_classes, k, t));
    super::topk_accuracy(&scores, test_labels, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_match_a_hand_built_example() {
        // Train points on the unit circle: angles 0 and 10 degrees (class 0), 90 (class 1), 180 (class 2).
        let deg = |a: f64| [a.to_radians().cos() as f32, a.to_radians().sin() as f32];
        let pts: Vec<f32> = [0.0, 10.0, 90.0, 180.0]
            .iter()
            .flat_map(|&a| deg(a))
            .collect();
        let train = Tensor::from_slice(&pts).view([4, 2]);
        let labels = Tensor::from_slice(&[0i64, 0, 1, 2]);
        // Query at 60 degrees, scaled by 3 (normalisation must remove the scale).
        let q = Tensor::from_slice(&deg(60.0)).view([1, 2]) * 3.0;
        let (k, t) = (3, 0.5);
        let s =
            Vec::<f32>::try_from(knn_scores(&train, &labels, &q, 3, k, t).flatten(0, -1)).unwrap();
        // The 3 nearest: 90 (cos 30), 10 (cos 50), 0 (cos 60); 180 is left out.
        let w = |a: f64| (a.to_radians().cos() / t).exp() as f32;
        let want = [w(50.0) + w(60.0), w(30.0), 0.0];
        for (g, e) in s.iter().zip(want) {
            assert!((g - e).abs() < 1e-4 * e.max(1.0), "{s:?} vs {want:?}");
        }
        // Two class-0 neighbours outvote one closer class-1 neighbour.
        assert!(s[0] > s[1]);
        let acc = knn_accuracy(&train, &labels, &q, &Tensor::from_slice(&[0i64]), 3, k, t);
        assert_eq!(acc, 1.0);
        // With k = 1 the single nearest (class 1) wins.
        let acc = knn_accuracy(&train, &labels, &q, &Tensor::from_slice(&[1i64]), 3, 1, t);
        assert_eq!(acc, 1.0);
    }
}
