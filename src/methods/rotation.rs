//! Rotation prediction (Gidaris et al. 2018, RotNet): every image of the batch appears in
//! all four rotations, 0, 90, 180 and 270 degrees (counter-clockwise), and a linear 4-way
//! classifier on the encoder's feature vector predicts which rotation it sees. A batch of
//! B images is therefore a forward pass over 4B images. Needs square images.

use super::{DataInfo, Method, MethodConfig, MethodSpec, StepCtx};
use crate::nets::{self, Encoder};
use crate::{losses, precision};
use anyhow::{Result, bail};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

pub const SPEC: MethodSpec = MethodSpec {
    name: "rotation",
    summary: "predict which of 4 rotations (0/90/180/270 degrees) an image shows",
    keys: &[],
    validate: super::no_own_keys,
    uses_labels: false,
    encoders: super::ANY_ENCODER,
    build: |p, cfg, data| Ok(Box::new(Rotation::new(p, cfg, data)?)),
};

pub struct Rotation {
    encoder: Encoder,
    head: nn::Linear,
}

impl Rotation {
    pub fn new(p: &nn::Path, cfg: &MethodConfig, data: &DataInfo) -> Result<Rotation> {
        let [c, h, w] = data.shape;
        if h != w {
            bail!("method rotation needs square images, but the data is {h}x{w}");
        }
        let encoder = nets::build_encoder(&(p / "encoder"), cfg.encoder, c);
        let head = nn::linear(p / "head", encoder.dim, 4, Default::default());
        Ok(Rotation { encoder, head })
    }
}

/// All four rotations of a batch `[B, C, H, H]`: `[4B, C, H, H]` with the B images turned
/// by 0 degrees first, then 90, 180 and 270 degrees counter-clockwise, and their labels
/// `[4B]` (0, 1, 2, 3: the number of quarter turns).
pub fn rotations(images: &Tensor) -> (Tensor, Tensor) {
    let b = images.size()[0];
    let turned: Vec<Tensor> = (0..4).map(|k| images.rot90(k, [2, 3])).collect();
    let labels =
        Tensor::arange(4, (Kind::Int64, images.device())).repeat_interleave_self_int(b, 0, None);
    (Tensor::cat(&turned, 0), labels)
}

impl Method for Rotation {
    fn loss(&mut self, images: &[Tensor], _labels: &Tensor, _ctx: &StepCtx) -> Tensor {
        let images = &images[0]; // [B, C, H, W]
        let (x, y) = rotations(images); // [4B, C, H, H], [4B]
        let z = self.encoder.forward_t(&x, true); // [4B, D]
        let logits = self.head.forward(&z); // [4B, 4]
        precision::in_fp32([&logits], |[l]| losses::cross_entropy(&l, &y))
    }
    fn encoder(&self) -> &Encoder {
        &self.encoder
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::tests::{tiny_config, train_losses};
    use tch::Device;

    #[test]
    fn rotated_images_really_are_the_rotations() {
        let _rng = crate::torch_rng_lock();
        // 2 images, 2 channels, 3x3, all values distinct.
        let x = Tensor::arange(36, (Kind::Float, Device::Cpu)).view([2, 2, 3, 3]);
        let (r, y) = rotations(&x);
        assert_eq!(r.size(), vec![8, 2, 3, 3]);
        assert_eq!(Vec::<i64>::try_from(&y).unwrap(), [0, 0, 1, 1, 2, 2, 3, 3]);
        let n = 3;
        for b in 0..2 {
            for c in 0..2 {
                for i in 0..n {
                    for j in 0..n {
                        let v = x.double_value(&[b, c, i, j]);
                        // A counter-clockwise quarter turn moves (i, j) to (n-1-j, i).
                        let at = |k: i64, (p, q): (i64, i64)| r.double_value(&[2 * k + b, c, p, q]);
                        assert_eq!(at(0, (i, j)), v);
                        assert_eq!(at(1, (n - 1 - j, i)), v);
                        assert_eq!(at(2, (n - 1 - i, n - 1 - j)), v);
                        assert_eq!(at(3, (j, n - 1 - i)), v);
                    }
                }
            }
        }
        // The top row of the original becomes the left column, read bottom-up, at 90 degrees.
        let top: Vec<f32> = Vec::try_from(x.get(0).get(0).get(0)).unwrap(); // [0, 1, 2]
        let left: Vec<f32> = Vec::try_from(r.get(2).get(0).select(1, 0)).unwrap();
        assert_eq!(top, [0.0, 1.0, 2.0]);
        assert_eq!(left, [2.0, 1.0, 0.0]);
    }

    /// 64 upright "T" shapes on 1x8x8 images at a few positions and brightnesses.
    fn upright_t_shapes() -> crate::data::Dataset {
        let make = |n: usize| {
            let mut imgs = vec![0u8; n * 64];
            for i in 0..n {
                let (top, col, v) = (i % 2, 3 + (i / 2) % 2, 150 + (i * 13 % 100) as u8);
                for x in 1..7 {
                    imgs[i * 64 + top * 8 + x] = v;
                }
                for y in top..8 {
                    imgs[i * 64 + y * 8 + col] = v;
                }
            }
            crate::data::Split::new(imgs, vec![0; n], [1, 8, 8]).unwrap()
        };
        crate::data::Dataset {
            name: "t-shapes".into(),
            unlabeled: None,
            train: make(64),
            test: make(16),
            num_classes: 1,
            class_names: vec![],
        }
    }

    #[test]
    fn rotation_learns_on_tiny_data_and_refuses_non_square_images() {
        let _rng = crate::torch_rng_lock();
        let cfg = {
            let mut c = tiny_config("rotation");
            c.train.epochs = 15;
            c
        };
        let l = train_losses(&cfg, &upright_t_shapes());
        // Chance level is ln 4 = 1.386; the T shapes make every rotation recognisable.
        assert!(l[0] > 1.0 && l[14] < 0.4 * l[0], "losses {l:?}");
        let vs = nn::VarStore::new(Device::Cpu);
        let info = DataInfo {
            shape: [1, 8, 6],
            num_classes: 2,
        };
        let e = Rotation::new(&vs.root(), &cfg.method_view(), &info)
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("rotation needs square images"),
            "{e}"
        );
    }
}
