//! Jigsaw puzzles (Noroozi & Favaro 2016): cut 9 tiles from a 3x3 grid (with jitter and
//! gaps, see patches.rs), shuffle them by one of P permutations, and classify which one.
//!
//! - Permutation set: the P (`jigsaw_permutations`, 100) permutations of 9 tiles chosen
//!   greedily for maximal Hamming distance, deterministically: start from the identity,
//!   then repeatedly add the permutation whose minimum Hamming distance to those already
//!   chosen is largest (ties: the first in lexicographic order).
//! - Network: the shared `Encoder` (under `encoder`, the evaluated one) maps each tile to a
//!   vector; the 9 vectors, concatenated in the shuffled order, go through
//!   linear(9D -> 512) -> ReLU -> linear(512 -> P).
//! - Tiles (`tile_size`, default 7 on 28x28: cells of 9 pixels, jitter 0..=2, gaps 0..=4).
//!   The encoder ends in adaptive average pooling (to a `cnn_pool` grid, or globally for the
//!   ResNet), so the same encoder, with the same feature size, takes whole images at
//!   evaluation time.

use super::patches::{TileClassifier, TileGrid};
use super::{DataInfo, Method, MethodConfig, MethodSpec, StepCtx};
use crate::config::check;
use crate::nets::{self, Encoder};
use crate::{losses, precision};
use anyhow::Result;
use tch::nn;
use tch::{Kind, Tensor};

pub const SPEC: MethodSpec = MethodSpec {
    name: "jigsaw",
    summary: "classify which of P permutations shuffled the 9 tiles of a 3x3 grid",
    keys: &[&["tile_size", "jigsaw_permutations"]],
    validate,
    uses_labels: false,
    encoders: super::ANY_ENCODER,
    build: |p, cfg, data| Ok(Box::new(Jigsaw::new(p, cfg, data)?)),
};

fn validate(cfg: &MethodConfig) -> Result<()> {
    check::in_range(
        "jigsaw_permutations",
        cfg.keys.jigsaw_permutations,
        2..=1000,
    )
}

/// Number of positions where two permutations differ.
pub fn hamming(a: &[u8; 9], b: &[u8; 9]) -> u32 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as u32
}

/// All 9! permutations of 0..9 in lexicographic order.
fn all_permutations() -> Vec<[u8; 9]> {
    let mut p: [u8; 9] = std::array::from_fn(|i| i as u8);
    let mut out = Vec::with_capacity(362_880);
    loop {
        out.push(p);
        // Next permutation in lexicographic order.
        let Some(i) = (0..8).rev().find(|&i| p[i] < p[i + 1]) else {
            return out;
        };
        let j = (i + 1..9).rev().find(|&j| p[j] > p[i]).unwrap();
        p.swap(i, j);
        p[i + 1..].reverse();
    }
}

/// `n` permutations of 9 tiles with maximal Hamming distance, chosen greedily and
/// deterministically (see the module comment). `n` <= 9!.
pub fn max_hamming_permutations(n: usize) -> Vec<[u8; 9]> {
    let all = all_permutations();
    let mut min_dist = vec![u32::MAX; all.len()];
    let mut chosen = Vec::with_capacity(n);
    let mut next = 0; // the identity
    while chosen.len() < n {
        let p = all[next];
        chosen.push(p);
        let mut best = (0, 0);
        for (i, q) in all.iter().enumerate() {
            let d = min_dist[i].min(hamming(&p, q));
            min_dist[i] = d;
            if d > best.0 {
                best = (d, i);
            }
        }
        next = best.1;
    }
    chosen
}

pub struct Jigsaw {
    encoder: Encoder,
    head: TileClassifier,
    grid: TileGrid,
    /// `[P, 9]` int64: permutation k puts the tile of cell `perms[k][i]` at position i.
    perms: Tensor,
}

impl Jigsaw {
    pub fn new(p: &nn::Path, cfg: &MethodConfig, data: &DataInfo) -> Result<Jigsaw> {
        let grid = TileGrid::new("jigsaw", data.shape, cfg.keys.tile_size)?;
        let encoder = nets::build_encoder(&(p / "encoder"), cfg.encoder, data.shape[0]);
        let n = cfg.keys.jigsaw_permutations as i64;
        let flat: Vec<i64> = max_hamming_permutations(cfg.keys.jigsaw_permutations)
            .iter()
            .flat_map(|q| q.iter().map(|&c| c as i64))
            .collect();
        let perms = Tensor::from_slice(&flat).view([n, 9]).to_device(p.device());
        let head = TileClassifier::new(p, 9, encoder.dim, n);
        Ok(Jigsaw {
            encoder,
            head,
            grid,
            perms,
        })
    }

    /// A puzzle per image: (shuffled tiles `[B, 9, C, T, T]`, permutation indices `[B]`).
    pub fn puzzles(&self, images: &Tensor) -> (Tensor, Tensor) {
        let b = images.size()[0];
        let labels = Tensor::randint(self.perms.size()[0], [b], (Kind::Int64, images.device()));
        let order = self.perms.index_select(0, &labels); // [B, 9]: cell shown at each position
        (self.grid.cut(images, &order), labels)
    }
}

impl Method for Jigsaw {
    fn loss(&mut self, images: &[Tensor], _labels: &Tensor, _ctx: &StepCtx) -> Tensor {
        let images = &images[0]; // [B, C, H, W]
        let (tiles, labels) = self.puzzles(images); // [B, 9, C, T, T], [B]
        let logits = self.head.forward(&self.encoder, &tiles); // [B, P]
        precision::in_fp32([&logits], |[l]| losses::cross_entropy(&l, &labels))
    }
    fn encoder(&self) -> &Encoder {
        &self.encoder
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::patches::tests::coordinate_images;
    use crate::train::tests::{tiny_config, tiny_dataset, train_losses};
    use std::collections::HashSet;
    use tch::Device;

    #[test]
    fn permutations_are_valid_distinct_and_far_apart() {
        let _rng = crate::torch_rng_lock();
        let p = max_hamming_permutations(100);
        assert_eq!(p.len(), 100);
        assert_eq!(p[0], [0, 1, 2, 3, 4, 5, 6, 7, 8]);
        for q in &p {
            let mut s = *q;
            s.sort();
            assert_eq!(s, [0, 1, 2, 3, 4, 5, 6, 7, 8], "{q:?} is not a permutation");
        }
        assert_eq!(p.iter().collect::<HashSet<_>>().len(), 100);
        let d: Vec<u32> = (0..100)
            .flat_map(|i| (0..i).map(move |j| (i, j)))
            .map(|(i, j)| hamming(&p[i], &p[j]))
            .collect();
        // At most 9 permutations can differ pairwise in every position (their first
        // entries must all differ), so 100 cannot all be 9 apart; the greedy set keeps
        // every pair at least 6 apart, and most at 8 or 9.
        let mean = d.iter().sum::<u32>() as f64 / d.len() as f64;
        assert_eq!(*d.iter().min().unwrap(), 6);
        assert!(mean > 8.0, "mean distance {mean}");
        // Deterministic: the same set every time, and a prefix of a larger one.
        assert_eq!(max_hamming_permutations(100), p);
        assert_eq!(max_hamming_permutations(120)[..100], p[..]);
    }

    #[test]
    fn puzzles_are_the_tiles_in_the_permuted_order() {
        let _rng = crate::torch_rng_lock();
        let cfg = {
            let mut c = tiny_config("jigsaw");
            c.keys.jigsaw_permutations = 10;
            c.keys.tile_size = 7;
            c
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let info = DataInfo {
            shape: [1, 28, 28],
            num_classes: 10,
        };
        let j = Jigsaw::new(&vs.root(), &cfg.method_view(), &info).unwrap();
        let perms = max_hamming_permutations(10);
        tch::manual_seed(2);
        let img = coordinate_images(6, 28, 28);
        let (tiles, labels) = j.puzzles(&img);
        assert_eq!(tiles.size(), vec![6, 9, 1, 7, 7]);
        for b in 0..6 {
            let perm = perms[labels.int64_value(&[b]) as usize];
            for pos in 0..9 {
                // Top-left pixel value 10000 b + 100 y + x gives the tile's corner.
                let v = tiles.double_value(&[b, pos, 0, 0, 0]) as i64 - 10000 * b;
                let (y, x) = (v / 100, v % 100);
                let cell = perm[pos as usize] as i64;
                assert!((0..=3).contains(&(y - 9 * (cell / 3))), "{b} {pos} y {y}");
                assert!((0..=3).contains(&(x - 9 * (cell % 3))), "{b} {pos} x {x}");
                // And the tile is the 7x7 block below and right of it.
                let last = tiles.double_value(&[b, pos, 0, 6, 6]) as i64 - 10000 * b;
                assert_eq!(last, v + 606);
            }
        }
    }

    #[test]
    fn jigsaw_learns_on_tiny_data() {
        let _rng = crate::torch_rng_lock();
        // 8x8 images: 3x3 grid of 2-pixel cells, 2-pixel tiles (no jitter on tiny data).
        let cfg = {
            let mut c = tiny_config("jigsaw");
            c.keys.jigsaw_permutations = 4;
            c.keys.tile_size = 2;
            c.encoder.cnn_widths = vec![8];
            c.train.epochs = 10;
            c
        };
        let l = train_losses(&cfg, &tiny_dataset());
        assert!(l[0] > 1.0 && l[9] < 0.8 * l[0], "losses {l:?}");
    }
}
