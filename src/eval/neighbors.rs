//! Nearest-neighbour pictures: each row is a test image (blue frame) followed by its k
//! nearest training images by cosine similarity of the encoder's features, framed green
//! when they share the query's label and red when they do not.

use crate::data::Split;
use crate::data::inspect::{Tile, tile_grid};
use crate::run::LoadedRun;
use crate::rundir::RunDir;
use anyhow::{Context, Result, bail};
use image::{Rgb, RgbImage};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

pub const QUERY: Rgb<u8> = Rgb([60, 120, 255]);
pub const SAME: Rgb<u8> = Rgb([40, 200, 60]);
pub const OTHER: Rgb<u8> = Rgb([230, 40, 40]);

/// `n` distinct test indices chosen with `seed` (all of them when n >= len).
pub fn choose_queries(len: usize, n: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..len).collect();
    idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    idx.truncate(n);
    idx
}

/// Indices `[Q, k]` of the `k` training rows most cosine-similar to each query row.
pub fn nearest(train: &Tensor, queries: &Tensor, k: i64) -> Vec<Vec<usize>> {
    let norm = |x: &Tensor| x / x.norm_scalaropt_dim(2, &[1i64][..], true).clamp_min(1e-12);
    let sim = norm(queries).matmul(&norm(train).tr()); // [Q, N]
    let (_, idx) = sim.topk(k.min(train.size()[0]), 1, true, true); // [Q, k]
    Vec::<Vec<i64>>::try_from(idx)
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|i| i as usize).collect())
        .collect()
}

/// The grid: one row per query, the query then its neighbours.
pub fn neighbor_grid(
    train: &Split,
    test: &Split,
    queries: &[usize],
    neighbors: &[Vec<usize>],
) -> Result<RgbImage> {
    let rows: Vec<Vec<Tile>> = queries
        .iter()
        .zip(neighbors)
        .map(|(&q, nn)| {
            let mut row = vec![Tile {
                pixels: test.fixed(q)?,
                frame: Some(QUERY),
            }];
            for &i in nn {
                row.push(Tile {
                    pixels: train.fixed(i)?,
                    frame: Some(if train.labels[i] == test.labels[q] {
                        SAME
                    } else {
                        OTHER
                    }),
                });
            }
            Ok(row)
        })
        .collect::<Result<_>>()?;
    let cols = neighbors.iter().map(|n| n.len()).max().unwrap_or(0) + 1;
    Ok(tile_grid(&rows, test.shape, cols))
}

/// The queries of a neighbour picture and what was found for them.
#[derive(Debug, Clone)]
pub struct Found {
    /// Test indices, one per row.
    pub queries: Vec<usize>,
    /// Training indices of each query's neighbours, nearest first.
    pub neighbors: Vec<Vec<usize>>,
    /// Neighbours that share their query's label, of `total`.
    pub same_label: usize,
    pub total: usize,
}

/// Chooses `queries` test images with `seed`, finds the `k` training images nearest each
/// by cosine similarity of the features (`[N_train, D]`, `[N_test, D]`), and writes the
/// grid as a PNG at `out`.
#[allow(clippy::too_many_arguments)]
pub fn write_picture(
    train: &Split,
    test: &Split,
    train_features: &Tensor,
    test_features: &Tensor,
    queries: usize,
    k: usize,
    seed: u64,
    out: &Path,
) -> Result<Found> {
    let q = choose_queries(test.len(), queries, seed);
    let idx = Tensor::from_slice(&q.iter().map(|&i| i as i64).collect::<Vec<_>>())
        .to_device(test_features.device());
    let nn = nearest(
        train_features,
        &test_features.index_select(0, &idx),
        k as i64,
    );
    neighbor_grid(train, test, &q, &nn)?
        .save_with_format(out, image::ImageFormat::Png)
        .with_context(|| format!("cannot write {}", out.display()))?;
    let same_label = q
        .iter()
        .zip(&nn)
        .map(|(&qi, row)| {
            row.iter()
                .filter(|&&i| train.labels[i] == test.labels[qi])
                .count()
        })
        .sum();
    Ok(Found {
        total: nn.iter().map(Vec::len).sum(),
        queries: q,
        neighbors: nn,
        same_label,
    })
}

impl Found {
    /// One line per query: its class name, then those of its neighbours.
    pub fn lines(&self, train: &Split, test: &Split, class_names: &[String]) -> Vec<String> {
        let name = |l: i64| {
            class_names
                .get(l as usize)
                .cloned()
                .unwrap_or_else(|| l.to_string())
        };
        self.queries
            .iter()
            .zip(&self.neighbors)
            .map(|(&qi, row)| {
                let labels: Vec<String> = row.iter().map(|&i| name(train.labels[i])).collect();
                format!("{:<14} -> {}", name(test.labels[qi]), labels.join(", "))
            })
            .collect()
    }
}

/// `selfsup neighbors`: the picture of `queries` test images of the run in `dir` (at its
/// last checkpoint, or at `checkpoint`) and their `k` nearest training images, written to
/// `out` (default `dir/neighbors.png`, or `dir/neighbors-CHECKPOINT.png`); returns what to
/// print.
pub fn for_run(
    dir: &Path,
    checkpoint: Option<&Path>,
    queries: usize,
    k: usize,
    seed: u64,
    out: Option<PathBuf>,
    device: Device,
) -> Result<String> {
    if queries == 0 || k == 0 || queries > 1000 || k > 100 {
        bail!("--queries {queries} and --k {k} must be in 1..=1000 and 1..=100");
    }
    let r = LoadedRun::load(dir, checkpoint, &[], device)?;
    r.ds.require_labels()?;
    let f = super::run_features(&r, device)?;
    let out = out.unwrap_or_else(|| r.output(RunDir::NEIGHBORS));
    let (train, test) = (&r.ds.train, &r.ds.test);
    let found = write_picture(train, test, &f.train.0, &f.test.0, queries, k, seed, &out)?;
    let mut text = String::new();
    for line in found.lines(train, test, &r.ds.class_names) {
        writeln!(text, "{line}")?;
    }
    writeln!(
        text,
        "{}/{} neighbours share the query's label; grid (query framed blue, same label green, other red) -> {}",
        found.same_label,
        found.total,
        out.display()
    )?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_ranks_by_cosine_and_grid_frames_match_labels() {
        // Train features: along x (label 0), along y (label 1), diagonal (label 0).
        let train_f = Tensor::from_slice(&[1f32, 0., 0., 1., 1., 1.]).view([3, 2]);
        let q = Tensor::from_slice(&[5f32, 1.]).view([1, 2]);
        assert_eq!(nearest(&train_f, &q, 2), vec![vec![0, 2]]);
        let train = Split::new(vec![10, 20, 30], vec![0, 1, 0], [1, 1, 1]).unwrap();
        let test = Split::new(vec![99], vec![1], [1, 1, 1]).unwrap();
        let g = neighbor_grid(&train, &test, &[0], &[vec![0, 1]]).unwrap();
        // 1x1 images are enlarged 8 times: cells of 8 px with 2 px gaps.
        assert_eq!(g.dimensions(), (2 + 3 * 10, 2 + 10));
        assert_eq!(g.get_pixel(2, 2), &Rgb([99, 99, 99]));
        assert_eq!(g.get_pixel(0, 0), &QUERY);
        assert_eq!(g.get_pixel(12, 2), &Rgb([10, 10, 10]));
        assert_eq!(
            g.get_pixel(11, 1),
            &OTHER,
            "label 0 neighbour of a label 1 query"
        );
        assert_eq!(g.get_pixel(21, 1), &SAME);
    }

    #[test]
    fn queries_are_seeded_and_distinct() {
        let a = choose_queries(100, 10, 3);
        assert_eq!(a, choose_queries(100, 10, 3));
        assert_ne!(a, choose_queries(100, 10, 4));
        let mut s = a.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 10);
        assert_eq!(choose_queries(3, 10, 0).len(), 3);
    }
}
