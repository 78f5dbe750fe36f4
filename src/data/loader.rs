//! Shuffled, seeded batches as float tensors. A producer thread prepares batches with
//! rayon (u8 -> f32 in [0, 1]) and hands them over through a bounded queue, so batch
//! preparation overlaps with the training step.

use super::Split;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use tch::{Device, Tensor};

pub struct Batch {
    /// `[B, C, H, W]`, float in [0, 1]
    pub images: Tensor,
    /// `[B]`, int64
    pub labels: Tensor,
    /// The positions of these images in the split.
    pub indices: Vec<usize>,
}

/// The order of the `n` images in `epoch`: a permutation fixed by (seed, epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mix = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (epoch as u64)
            .wrapping_add(1)
            .wrapping_mul(0xd1b5_4a32_d192_ed03);
    idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(mix));
    idx
}

struct HostBatch {
    images: Vec<f32>,
    labels: Vec<i64>,
    indices: Vec<usize>,
}

/// Turns the images at `indices` into a `[B, C, H, W]` float batch, one image per rayon task.
fn prepare(split: &Split, indices: &[usize]) -> HostBatch {
    let n = split.image_len();
    let mut images = vec![0f32; indices.len() * n];
    images
        .par_chunks_mut(n)
        .zip(indices.par_iter())
        .for_each(|(dst, &i)| {
            for (d, &s) in dst.iter_mut().zip(split.image(i)) {
                *d = s as f32 / 255.0;
            }
        });
    let labels = indices.iter().map(|&i| split.labels[i]).collect();
    HostBatch {
        images,
        labels,
        indices: indices.to_vec(),
    }
}

/// An iterator over the batches of one pass through `order`.
pub struct Loader {
    rx: Receiver<HostBatch>,
    shape: [usize; 3],
    device: Device,
    remaining: usize,
}

impl Loader {
    /// `drop_last` drops a final batch smaller than `batch_size` (as training does).
    pub fn new(
        split: Arc<Split>,
        order: Vec<usize>,
        batch_size: usize,
        drop_last: bool,
        prefetch: usize,
        device: Device,
    ) -> Loader {
        assert!(batch_size > 0, "batch_size must be positive");
        let mut chunks: Vec<Vec<usize>> = order.chunks(batch_size).map(|c| c.to_vec()).collect();
        if drop_last && chunks.last().is_some_and(|c| c.len() < batch_size) {
            chunks.pop();
        }
        let remaining = chunks.len();
        let shape = split.shape;
        let (tx, rx) = sync_channel(prefetch.max(1));
        std::thread::spawn(move || {
            for chunk in chunks {
                // A send error means the loader was dropped: stop quietly.
                if tx.send(prepare(&split, &chunk)).is_err() {
                    return;
                }
            }
        });
        Loader {
            rx,
            shape,
            device,
            remaining,
        }
    }

    pub fn len(&self) -> usize {
        self.remaining
    }
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }
}

impl Iterator for Loader {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        let hb = self.rx.recv().ok()?;
        self.remaining -= 1;
        let [c, h, w] = self.shape.map(|d| d as i64);
        let b = hb.labels.len() as i64;
        let images = Tensor::from_slice(&hb.images)
            .view([b, c, h, w])
            .to_device(self.device);
        let labels = Tensor::from_slice(&hb.labels).to_device(self.device);
        Some(Batch {
            images,
            labels,
            indices: hb.indices,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(n: usize) -> Arc<Split> {
        let images: Vec<u8> = (0..n * 2 * 3 * 3).map(|i| (i % 251) as u8).collect();
        Arc::new(Split::new(images, (0..n as i64).collect(), [2, 3, 3]).unwrap())
    }

    #[test]
    fn batches_have_the_right_shapes_and_values() {
        let s = split(10);
        let order = epoch_order(10, 1, 0);
        let batches: Vec<Batch> =
            Loader::new(s.clone(), order.clone(), 4, false, 2, Device::Cpu).collect();
        assert_eq!(
            batches.iter().map(|b| b.images.size()).collect::<Vec<_>>(),
            vec![vec![4, 2, 3, 3], vec![4, 2, 3, 3], vec![2, 2, 3, 3]]
        );
        let b = &batches[1];
        let got = Vec::<f32>::try_from(b.images.get(0).flatten(0, -1)).unwrap();
        let want: Vec<f32> = s
            .image(order[4])
            .iter()
            .map(|&v| v as f32 / 255.0)
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            Vec::<i64>::try_from(&b.labels).unwrap(),
            order[4..8].iter().map(|&i| i as i64).collect::<Vec<_>>()
        );
        assert_eq!(Loader::new(s, order, 4, true, 2, Device::Cpu).count(), 2);
    }

    #[test]
    fn order_is_a_seeded_permutation() {
        let a = epoch_order(100, 7, 3);
        assert_eq!(a, epoch_order(100, 7, 3));
        assert_ne!(a, epoch_order(100, 7, 4));
        assert_ne!(a, epoch_order(100, 8, 3));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn same_seed_gives_the_same_batches() {
        let s = split(9);
        let run = || -> Vec<Vec<usize>> {
            Loader::new(s.clone(), epoch_order(9, 5, 2), 3, true, 1, Device::Cpu)
                .map(|b| b.indices)
                .collect()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn dropping_a_loader_early_does_not_hang() {
        let s = split(50);
        let mut l = Loader::new(s, epoch_order(50, 0, 0), 2, false, 1, Device::Cpu);
        assert!(l.next().is_some());
        drop(l);
    }
}
