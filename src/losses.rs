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
    ((pred - target).square() * &w).sum(Kind::Float) / w.sum(Kind::Float).clamp_min(1e-12)
}

/// Mean cross-entropy of `logits` `[B, K]` against class indices `targets` `[B]`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    logits.cross_entropy_for_logits(targets)
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
    fn bce_with_logits_matches_hand_computation() {
        // sigmoid(0) = 1/2: -ln(1/2) whatever the target; logit ln 3 -> p = 3/4.
        let l = bce_with_logits(&t(&[0.0, 3f32.ln()]), 1.0);
        let want = (2f64.ln() + (4.0f64 / 3.0).ln()) / 2.0;
        assert!((l.double_value(&[]) - want).abs() < 1e-6);
        let l0 = bce_with_logits(&t(&[3f32.ln()]), 0.0);
        assert!((l0.double_value(&[]) - 4f64.ln()).abs() < 1e-6);
    }
}
