//! The confusion matrix of a segmentation over all scored pixels, and the scores read from
//! it: pixel accuracy, per-class IoU and mean IoU.
//!
//! Pixels whose true class is `IGNORE` (255) are not counted. The IoU of class c is
//! TP / (TP + FP + FN) = TP / (pixels predicted c + pixels truly c - TP). A class absent
//! from both the predictions and the truth has no IoU (0 / 0) and is left out of the mean;
//! a class that is predicted but absent from the truth, or present but never predicted,
//! has IoU 0 and counts. This is the mean IoU of the PASCAL VOC devkit, mmsegmentation and
//! torchmetrics (their NaN-skipping mean over classes), accumulated over the whole test
//! set rather than averaged over images.

use crate::data::seg::IGNORE;
use anyhow::{Result, bail};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, PartialEq)]
pub struct Confusion {
    pub num_classes: usize,
    /// `counts[truth * num_classes + predicted]`: pixels of that true and predicted class.
    pub counts: Vec<u64>,
}

impl Confusion {
    pub fn new(num_classes: usize) -> Confusion {
        Confusion {
            num_classes,
            counts: vec![0; num_classes * num_classes],
        }
    }

    /// Counts the pixels of `predicted` and `truth` (int64 tensors of the same shape, any
    /// device); true classes must be below `num_classes` or `IGNORE`.
    pub fn add(&mut self, predicted: &Tensor, truth: &Tensor) -> Result<()> {
        let k = self.num_classes as i64;
        let valid = truth.ne(IGNORE as i64);
        let t = truth.masked_select(&valid);
        let p = predicted.masked_select(&valid);
        if t.numel() == 0 {
            return Ok(());
        }
        let top = t.max().int64_value(&[]).max(p.max().int64_value(&[]));
        if top >= k || t.min().int64_value(&[]) < 0 || p.min().int64_value(&[]) < 0 {
            bail!("a class index of {top} is out of range for {k} classes");
        }
        let cells = (t * k + p)
            .bincount::<Tensor>(None, k * k)
            .to_kind(Kind::Int64);
        let cells = Vec::<i64>::try_from(cells.to_device(tch::Device::Cpu))?;
        for (c, n) in self.counts.iter_mut().zip(cells) {
            *c += n as u64;
        }
        Ok(())
    }

    fn at(&self, truth: usize, predicted: usize) -> u64 {
        self.counts[truth * self.num_classes + predicted]
    }

    /// Pixels counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Fraction of counted pixels whose predicted class is the true one (0 when none).
    pub fn pixel_accuracy(&self) -> f64 {
        let hit: u64 = (0..self.num_classes).map(|c| self.at(c, c)).sum();
        hit as f64 / self.total().max(1) as f64
    }

    /// IoU of each class; None for a class absent from both prediction and truth.
    pub fn iou(&self) -> Vec<Option<f64>> {
        let k = self.num_classes;
        (0..k)
            .map(|c| {
                let tp = self.at(c, c);
                let truly: u64 = (0..k).map(|p| self.at(c, p)).sum();
                let predicted: u64 = (0..k).map(|t| self.at(t, c)).sum();
                let union = truly + predicted - tp;
                (union > 0).then(|| tp as f64 / union as f64)
            })
            .collect()
    }

    /// The mean of the IoUs that exist (0 when none does).
    pub fn mean_iou(&self) -> f64 {
        let present: Vec<f64> = self.iou().into_iter().flatten().collect();
        present.iter().sum::<f64>() / present.len().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[i64]) -> Tensor {
        Tensor::from_slice(v)
    }

    #[test]
    fn scores_agree_with_a_hand_computed_confusion_matrix() {
        // 4 classes; class 3 appears in neither prediction nor truth; two pixels ignored.
        let truth = t(&[0, 0, 0, 1, 1, 2, 2, 2, 255, 255]).view([2, 5]);
        let pred = t(&[0, 0, 1, 1, 2, 2, 2, 0, 3, 1]).view([2, 5]);
        let mut c = Confusion::new(4);
        c.add(&pred, &truth).unwrap();
        #[rustfmt::skip]
        let want = vec![
            2, 1, 0, 0, // truth 0: two right, one taken for 1
            0, 1, 1, 0, // truth 1
            1, 0, 2, 0, // truth 2
            0, 0, 0, 0, // truth 3: none (the predicted 3 was on an ignored pixel)
        ];
        assert_eq!(c.counts, want);
        assert_eq!(c.total(), 8);
        assert!((c.pixel_accuracy() - 5.0 / 8.0).abs() < 1e-12);
        // IoU 0: TP 2, truly 3, predicted 3 -> 2 / 4; class 1: 1 / (2 + 2 - 1); class 2: 2 / (3 + 3 - 2).
        let iou = c.iou();
        assert_eq!(iou[3], None);
        for (got, want) in iou[..3].iter().zip([0.5, 1.0 / 3.0, 0.5]) {
            assert!((got.unwrap() - want).abs() < 1e-12, "{iou:?}");
        }
        // The absent class is left out of the mean: (1/2 + 1/3 + 1/2) / 3.
        assert!((c.mean_iou() - (0.5 + 1.0 / 3.0 + 0.5) / 3.0).abs() < 1e-12);
        // Adding a batch accumulates.
        c.add(&t(&[3, 3]), &t(&[0, 255])).unwrap();
        assert_eq!(c.at(0, 3), 1);
        assert_eq!(c.total(), 9);
    }

    #[test]
    fn predicted_but_absent_classes_count_as_zero() {
        // Truth is all class 0; class 1 is predicted once, class 2 never appears.
        let mut c = Confusion::new(3);
        c.add(&t(&[0, 0, 0, 1]), &t(&[0, 0, 0, 0])).unwrap();
        assert_eq!(c.iou(), vec![Some(0.75), Some(0.0), None]);
        assert!((c.mean_iou() - 0.375).abs() < 1e-12);
        // A perfect prediction scores 1; nothing counted scores 0 and has no IoU.
        let mut p = Confusion::new(2);
        p.add(&t(&[1, 0, 1]), &t(&[1, 0, 1])).unwrap();
        assert_eq!((p.pixel_accuracy(), p.mean_iou()), (1.0, 1.0));
        let mut e = Confusion::new(2);
        e.add(&t(&[1, 0]), &t(&[255, 255])).unwrap();
        assert_eq!(
            (e.total(), e.mean_iou(), e.iou()),
            (0, 0.0, vec![None, None])
        );
        // A true class out of range is an error, not a wrong count.
        let err = Confusion::new(2)
            .add(&t(&[0]), &t(&[5]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("out of range for 2 classes"), "{err}");
    }
}
