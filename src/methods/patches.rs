//! Geometry shared by the patch-based pretext tasks (jigsaw, relative-patch): a 3x3 grid of
//! cells with one jittered tile per cell, and per-sample crops done with tensor indexing,
//! so they run on the batch on CPU and GPU alike.
//!
//! The grid covers the largest 3x3 block of square cells of side `cell = min(H, W) / 3`
//! that fits the image, at a random offset when the image is larger (28x28: cells of 9
//! pixels, grid offset 0 or 1). Each tile of side `tile` sits at a random offset of
//! 0..=cell-tile pixels inside its cell (the jitter), so neighbouring tiles are
//! 0..=2(cell-tile) pixels apart (the gap). With the default `tile_size` 7 on 28x28:
//! jitter 0..=2, gaps 0..=4 pixels, 2 on average.

use crate::nets::Encoder;
use anyhow::{Result, bail};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// Cuts `[B, K, C, S, S]` crops of side `size` from `images` `[B, C, H, W]`; the crop
/// `(b, k)` has its top-left corner at `(ys[b, k], xs[b, k])` (`[B, K]`, int64).
pub fn crops(images: &Tensor, ys: &Tensor, xs: &Tensor, size: i64) -> Tensor {
    let (b, k) = (ys.size()[0], ys.size()[1]);
    let dev = images.device();
    let r = Tensor::arange(size, (Kind::Int64, dev));
    let rows = (ys.unsqueeze(2) + &r).view([b, k, size, 1]); // [B, K, S, 1]
    let cols = (xs.unsqueeze(2) + &r).view([b, k, 1, size]); // [B, K, 1, S]
    let bi = Tensor::arange(b, (Kind::Int64, dev)).view([b, 1, 1, 1]);
    images
        .permute([0, 2, 3, 1]) // [B, H, W, C]
        .index(&[Some(bi), Some(rows), Some(cols)]) // [B, K, S, S, C]
        .permute([0, 1, 4, 2, 3]) // [B, K, C, S, S]
        .contiguous()
}

/// The 3x3 tile grid of an image size.
#[derive(Debug, Clone, Copy)]
pub struct TileGrid {
    /// Side of a cell, `min(H, W) / 3`.
    pub cell: i64,
    /// Side of a tile.
    pub tile: i64,
    /// Room left for the grid's offset: `H - 3 cell`, `W - 3 cell`.
    slack: (i64, i64),
}

impl TileGrid {
    /// The grid of `[C, H, W]` images with tiles of side `tile` (the `tile_size` option);
    /// `method` names the method in the error.
    pub fn new(method: &str, shape: [i64; 3], tile: i64) -> Result<TileGrid> {
        let [_, h, w] = shape;
        let cell = h.min(w) / 3;
        if tile > cell {
            bail!(
                "method {method}: option tile_size = {tile} does not fit the cells of a 3x3 grid on {h}x{w} images, which are {cell} pixels wide"
            );
        }
        Ok(TileGrid {
            cell,
            tile,
            slack: (h - 3 * cell, w - 3 * cell),
        })
    }

    /// Random top-left corners of the 9 tiles of each of `b` images, cells in row-major
    /// order (cell 4 is the centre): `(ys, xs)`, each `[b, 9]` int64.
    pub fn tile_corners(&self, b: i64, device: Device) -> (Tensor, Tensor) {
        let opts = (Kind::Int64, device);
        let cell_idx = Tensor::arange(9, opts).view([1, 9]);
        let jitter = self.cell - self.tile + 1;
        let axis = |slack: i64, cell_pos: Tensor| {
            let origin = Tensor::randint(slack + 1, [b, 1], opts); // [b, 1]
            origin + cell_pos * self.cell + Tensor::randint(jitter, [b, 9], opts) // [b, 9]
        };
        let ys = axis(self.slack.0, cell_idx.divide_scalar_mode(3, "floor"));
        let xs = axis(self.slack.1, cell_idx.remainder(3));
        (ys, xs)
    }

    /// Cuts, from each image of `images` `[B, C, H, W]`, the tiles of the cells `cells`
    /// `[B, K]` (0..9, row-major) in that order, each freshly jittered: `[B, K, C, T, T]`.
    pub fn cut(&self, images: &Tensor, cells: &Tensor) -> Tensor {
        let (ys, xs) = self.tile_corners(images.size()[0], images.device()); // [B, 9] each
        crops(
            images,
            &ys.gather(1, cells, false),
            &xs.gather(1, cells, false),
            self.tile,
        )
    }
}

/// Hidden width of `TileClassifier`.
const HIDDEN: i64 = 512;

/// A classifier over K tiles encoded by one shared encoder: the K codes, concatenated in
/// order, go through linear(K D -> 512) -> ReLU -> linear(512 -> classes). Its variables
/// are `fc1` and `fc2` under the given path.
pub struct TileClassifier {
    head: nn::Sequential,
}

impl TileClassifier {
    pub fn new(p: &nn::Path, tiles: i64, dim: i64, classes: i64) -> TileClassifier {
        let head = nn::seq()
            .add(nn::linear(
                p / "fc1",
                tiles * dim,
                HIDDEN,
                Default::default(),
            ))
            .add_fn(|x| x.relu())
            .add(nn::linear(p / "fc2", HIDDEN, classes, Default::default()));
        TileClassifier { head }
    }

    /// Tiles `[B, K, C, T, T]` -> logits `[B, classes]`, the encoder in training mode.
    pub fn forward(&self, encoder: &Encoder, tiles: &Tensor) -> Tensor {
        let b = tiles.size()[0];
        let z = encoder.forward_t(&tiles.flatten(0, 1), true); // [B*K, D]
        self.head.forward(&z.view([b, -1])) // [B, K*D] -> [B, classes]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `[B, 1, H, W]` images whose pixel (y, x) of image b holds 10000 b + 100 y + x.
    pub(crate) fn coordinate_images(b: i64, h: i64, w: i64) -> Tensor {
        let o = (Kind::Float, Device::Cpu);
        let bi = Tensor::arange(b, o).view([b, 1, 1, 1]) * 10000.0;
        let y = Tensor::arange(h, o).view([1, 1, h, 1]) * 100.0;
        let x = Tensor::arange(w, o).view([1, 1, 1, w]);
        bi + y + x
    }

    #[test]
    fn crops_take_the_pixels_at_their_corners() {
        let _rng = crate::torch_rng_lock();
        let img = coordinate_images(2, 10, 12).repeat([1, 2, 1, 1]); // 2 equal channels
        let ys = Tensor::from_slice(&[0i64, 3, 5, 7]).view([2, 2]);
        let xs = Tensor::from_slice(&[1i64, 9, 0, 2]).view([2, 2]);
        let c = crops(&img, &ys, &xs, 3);
        assert_eq!(c.size(), vec![2, 2, 2, 3, 3]);
        for (b, k, y, x) in [(0, 0, 0, 1), (0, 1, 3, 9), (1, 0, 5, 0), (1, 1, 7, 2)] {
            for (dy, dx) in [(0, 0), (2, 1), (1, 2)] {
                let v = c.double_value(&[b, k, 1, dy, dx]);
                assert_eq!(v, (10000 * b + 100 * (y + dy) + x + dx) as f64);
            }
        }
    }

    #[test]
    fn tiles_stay_inside_their_cells_with_jitter_and_gaps() {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(3);
        let g = TileGrid::new("jigsaw", [1, 28, 28], 7).unwrap();
        assert_eq!(g.cell, 9);
        let (ys, xs) = g.tile_corners(500, Device::Cpu);
        let ys = Vec::<i64>::try_from(ys.flatten(0, -1)).unwrap();
        let xs = Vec::<i64>::try_from(xs.flatten(0, -1)).unwrap();
        let (mut offsets, mut gaps) = (vec![0usize; 4], vec![0usize; 5]);
        for b in 0..500 {
            for i in 0..9 {
                let (y, x) = (ys[b * 9 + i], xs[b * 9 + i]);
                let (r, c) = ((i / 3) as i64, (i % 3) as i64);
                // Grid origin 0..=1 plus jitter 0..=2 inside the 9-pixel cell.
                let (oy, ox) = (y - 9 * r, x - 9 * c);
                assert!((0..=3).contains(&oy) && (0..=3).contains(&ox), "{b} {i}");
                offsets[ox as usize] += 1;
                if c < 2 {
                    // The gap to the right-hand neighbour.
                    let gap = xs[b * 9 + i + 1] - (x + 7);
                    assert!((0..=4).contains(&gap), "gap {gap}");
                    gaps[gap as usize] += 1;
                }
            }
        }
        assert!(offsets.iter().all(|&n| n > 0), "{offsets:?}");
        assert!(gaps.iter().all(|&n| n > 0), "{gaps:?}");
        let e = TileGrid::new("relative-patch", [1, 28, 28], 10)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tile_size = 10") && e.contains("9 pixels"),
            "{e}"
        );
    }
}
