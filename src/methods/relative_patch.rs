//! Relative patch location (Doersch et al. 2015): take the centre tile of a 3x3 grid and
//! one of its 8 neighbours (with jitter and gaps, see patches.rs), and classify where the
//! neighbour sits: 8 classes, numbered in row-major order around the centre
//! (0 1 2 / 3 . 4 / 5 6 7).
//!
//! Network: the shared `Encoder` (under `encoder`, the evaluated one) encodes both
//! patches; their concatenated vectors go through linear(2D -> 512) -> ReLU ->
//! linear(512 -> 8). Patches: `tile_size`, default 7 on 28x28 (cells of 9 pixels, jitter
//! 0..=2, gaps 0..=4 pixels; the paper's gap is half a patch, which 28x28 images cannot
//! afford). The encoder ends in adaptive average pooling (to a `cnn_pool` grid, or globally
//! for the ResNet), so the same encoder, with the same feature size, takes whole images at
//! evaluation time.

use super::patches::{TileClassifier, TileGrid};
use super::{DataInfo, Method, MethodConfig, MethodSpec, StepCtx};
use crate::nets::{self, Encoder};
use crate::{losses, precision};
use anyhow::Result;
use tch::nn;
use tch::{Kind, Tensor};

pub const SPEC: MethodSpec = MethodSpec {
    name: "relative-patch",
    summary: "classify where one of the 8 neighbouring patches sits relative to the centre patch",
    keys: &[&["tile_size"]],
    validate: super::no_own_keys,
    uses_labels: false,
    encoders: super::ANY_ENCODER,
    build: |p, cfg, data| Ok(Box::new(RelativePatch::new(p, cfg, data)?)),
};

pub struct RelativePatch {
    encoder: Encoder,
    head: TileClassifier,
    grid: TileGrid,
}

impl RelativePatch {
    pub fn new(p: &nn::Path, cfg: &MethodConfig, data: &DataInfo) -> Result<RelativePatch> {
        let grid = TileGrid::new("relative-patch", data.shape, cfg.keys.tile_size)?;
        let encoder = nets::build_encoder(&(p / "encoder"), cfg.encoder, data.shape[0]);
        let head = TileClassifier::new(p, 2, encoder.dim, 8);
        Ok(RelativePatch {
            encoder,
            head,
            grid,
        })
    }

    /// A pair per image: (patches `[B, 2, C, T, T]`, the centre's first, and the
    /// neighbour's position `[B]` in 0..8).
    pub fn pairs(&self, images: &Tensor) -> (Tensor, Tensor) {
        let b = images.size()[0];
        let labels = Tensor::randint(8, [b], (Kind::Int64, images.device()));
        // Cells 0..8 without the centre (4): label k is cell k, or k + 1 from 4 on.
        let neighbour = &labels + labels.ge(4).to_kind(Kind::Int64);
        let cells = Tensor::stack(&[neighbour.full_like(4), neighbour], 1); // [B, 2]
        (self.grid.cut(images, &cells), labels)
    }
}

impl Method for RelativePatch {
    fn loss(&mut self, images: &[Tensor], _labels: &Tensor, _ctx: &StepCtx) -> Tensor {
        let images = &images[0]; // [B, C, H, W]
        let (pairs, labels) = self.pairs(images); // [B, 2, C, T, T], [B]
        let logits = self.head.forward(&self.encoder, &pairs); // [B, 8]
        precision::in_fp32([&logits], |[l]| losses::cross_entropy(&l, &labels))
    }
    fn encoder(&self) -> &Encoder {
        &self.encoder
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Dataset, Split};
    use crate::methods::patches::tests::coordinate_images;
    use crate::train::tests::{tiny_config, train_losses};
    use tch::Device;

    #[test]
    fn patch_pairs_have_the_right_relative_position() {
        let _rng = crate::torch_rng_lock();
        let vs = nn::VarStore::new(Device::Cpu);
        let info = DataInfo {
            shape: [1, 28, 28],
            num_classes: 10,
        };
        let rp = RelativePatch::new(
            &vs.root(),
            &tiny_config("relative-patch").method_view(),
            &info,
        )
        .unwrap();
        tch::manual_seed(4);
        let (pairs, labels) = rp.pairs(&coordinate_images(400, 28, 28));
        assert_eq!(pairs.size(), vec![400, 2, 1, 7, 7]);
        // Direction (dy, dx) of each label: row-major around the centre.
        let dirs = [
            (-1, -1),
            (-1, 0),
            (-1, 1),
            (0, -1),
            (0, 1),
            (1, -1),
            (1, 0),
            (1, 1),
        ];
        let mut counts = [0; 8];
        for b in 0..400 {
            let corner = |k: i64| {
                let v = pairs.double_value(&[b, k, 0, 0, 0]) as i64 - 10000 * b;
                (v / 100, v % 100)
            };
            let ((cy, cx), (ny, nx)) = (corner(0), corner(1));
            // The centre patch lies in the centre cell (rows/cols 9..18, grid origin 0..=1).
            assert!((9..=12).contains(&cy) && (9..=12).contains(&cx));
            let label = labels.int64_value(&[b]) as usize;
            counts[label] += 1;
            let (dy, dx) = dirs[label];
            // The neighbour is one cell (9 pixels) away along each direction, give or take
            // the jitter of both patches (0..=2 each): between a gap of 0 and 4 pixels.
            for (d, off) in [(dy, ny - cy), (dx, nx - cx)] {
                match d {
                    0 => assert!((-2..=2).contains(&off), "{b}: {off}"),
                    1 => assert!((7..=11).contains(&off), "{b}: {off}"),
                    _ => assert!((-11..=-7).contains(&off), "{b}: {off}"),
                }
            }
        }
        assert!(counts.iter().all(|&n| n > 25), "{counts:?}");
    }

    /// 96 1x8x8 ramps (value grows down and to the right) with varying offsets, so the
    /// content of a patch tells where it was cut.
    fn ramps() -> Dataset {
        let make = |n: usize| {
            let mut imgs = vec![0u8; n * 64];
            for i in 0..n {
                for p in 0..64 {
                    imgs[i * 64 + p] = ((p / 8) * 24 + (p % 8) * 4 + i % 40) as u8;
                }
            }
            Split::new(imgs, vec![0; n], [1, 8, 8]).unwrap()
        };
        Dataset {
            name: "ramps".into(),
            unlabeled: None,
            train: make(96),
            test: make(16),
            num_classes: 1,
            class_names: vec![],
        }
    }

    #[test]
    fn relative_patch_learns_on_tiny_data() {
        let _rng = crate::torch_rng_lock();
        let cfg = {
            let mut c = tiny_config("relative-patch");
            c.keys.tile_size = 2;
            c.encoder.cnn_widths = vec![8];
            c.train.epochs = 10;
            c
        };
        let l = train_losses(&cfg, &ramps());
        // Chance level is ln 8 = 2.08.
        assert!(l[0] > 1.5 && l[9] < 0.6 * l[0], "losses {l:?}");
    }
}
