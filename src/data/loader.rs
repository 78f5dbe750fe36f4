//! Shuffled, seeded batches as float tensors. A producer thread prepares batches with
//! rayon (u8 -> f32 in [0, 1]) and hands them over through a bounded queue, so batch
//! preparation overlaps with the training step.
//!
//! Batches are `[B, C, H, W]` tensors stored channels-last (NHWC in memory), the layout
//! oneDNN's CPU convolutions (and cuDNN's tensor-core ones) work in: the convolutions keep
//! it from layer to layer, where NCHW input costs a reorder before and after each of them
//! (the step of the Fashion-MNIST SimCLR preset is ~25% faster in bf16, see README).

use super::Split;
use super::stream::Streamed;
use crate::augment::{Image, Views, sample_rng};
use anyhow::{Context, Result};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use tch::{Device, Tensor};

pub struct Batch {
    /// The images, float in [0, 1], channels-last in memory, one tensor per crop size:
    /// `[B, C, H, W]` without views; with views, `[n B, C, h, w]` for the n views of each
    /// size (all first views, then all second views, ...), global crops before local ones.
    /// Made by `pack`.
    pub images: Vec<Tensor>,
    /// `[B]`, int64
    pub labels: Tensor,
    /// The positions of these images in the split.
    pub indices: Vec<usize>,
}

impl Batch {
    /// The images of a batch without views: `[B, C, H, W]` (or of views of one size).
    pub fn plain(&self) -> &Tensor {
        assert_eq!(self.images.len(), 1, "a batch of views of several sizes");
        &self.images[0]
    }
}

/// The crop sizes of a batch: (number of views, `[C, h, w]`) per size, in order, for
/// images of `shape` made into `views` (one group of one view without views).
pub fn size_groups(shape: [usize; 3], views: Option<&Views>) -> Vec<(usize, [usize; 3])> {
    let [c, h, w] = shape;
    match views {
        None => vec![(1, shape)],
        Some(v) => v
            .size_groups(h, w)
            .into_iter()
            .map(|(n, (gh, gw))| (n, [c, gh, gw]))
            .collect(),
    }
}

/// The loader's host layout (every view's B images one after the other, each `[h, w, C]`)
/// as `Batch::images`: one channels-last `[n B, C, h, w]` tensor per size group, without
/// a copy.
pub fn pack(flat: &Tensor, groups: &[(usize, [usize; 3])]) -> Vec<Tensor> {
    let per_image: usize = groups.iter().map(|(n, [c, h, w])| n * c * h * w).sum();
    let b = flat.numel() / per_image;
    let mut at = 0;
    groups
        .iter()
        .map(|&(n, [c, h, w])| {
            let len = (n * b * c * h * w) as i64;
            let part = flat.narrow(0, at, len);
            at += len;
            nhwc_batch(&part, [c, h, w].map(|d| d as i64))
        })
        .collect()
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

/// Random views for the loader to make: each image becomes `views.pipelines.len()` images,
/// drawn with `augment::sample_rng(seed, epoch, index, view)`.
#[derive(Clone, Debug)]
pub struct ViewSpec {
    pub views: Arc<Views>,
    pub seed: u64,
    pub epoch: usize,
}

struct HostBatch {
    images: Vec<f32>,
    labels: Vec<i64>,
    indices: Vec<usize>,
}

/// Turns the images at `indices` into a `[B, H, W, C]` float batch (or `[V * B, h, w, C]`
/// with views), one image (view) per rayon task; a streamed split's images are read and
/// decoded here, one image (all its views) per task.
fn prepare(split: &Split, indices: &[usize], views: Option<&ViewSpec>) -> Result<HostBatch> {
    let labels = indices.iter().map(|&i| split.labels[i]).collect();
    let [c, h, w] = split.shape;
    if let Some(stream) = split.stream() {
        return Ok(HostBatch {
            images: prepare_streamed(stream, split.shape, indices, views)?,
            labels,
            indices: indices.to_vec(),
        });
    }
    let images = match views {
        None => {
            let mut images = vec![0f32; indices.len() * c * h * w];
            images
                .par_chunks_mut(c * h * w)
                .zip(indices.par_iter())
                .for_each(|(dst, &i)| to_float_hwc(split.image(i), c, dst));
            images
        }
        Some(spec) => {
            let b = indices.len();
            let sizes = spec.views.sizes(h, w);
            let total = sizes.iter().map(|(oh, ow)| b * c * oh * ow).sum();
            let mut images = vec![0f32; total];
            // One chunk per (view, image), view-major; views may differ in size (multi-crop).
            let mut chunks = Vec::with_capacity(sizes.len() * b);
            let mut rest = images.as_mut_slice();
            for (v, &(oh, ow)) in sizes.iter().enumerate() {
                for &i in indices {
                    let (dst, tail) = rest.split_at_mut(c * oh * ow);
                    chunks.push((v, i, dst));
                    rest = tail;
                }
            }
            chunks.into_par_iter().for_each(|(v, i, dst)| {
                let img = Image::new(c, h, w, split.image(i).to_vec());
                let view = spec.views.pipelines[v]
                    .apply(&img, &mut sample_rng(spec.seed, spec.epoch, i, v));
                to_float_hwc(&view.data, c, dst);
            });
            images
        }
    };
    Ok(HostBatch {
        images,
        labels,
        indices: indices.to_vec(),
    })
}

/// `prepare` for a streamed split: each image is read and decoded once, into its fixed
/// image or into all its views, and written to its places in the view-major batch.
fn prepare_streamed(
    stream: &Streamed,
    [c, h, w]: [usize; 3],
    indices: &[usize],
    views: Option<&ViewSpec>,
) -> Result<Vec<f32>> {
    let b = indices.len();
    let sizes = views.map_or(vec![(h, w)], |s| s.views.sizes(h, w));
    let per_view: Vec<usize> = sizes.iter().map(|(oh, ow)| c * oh * ow).collect();
    let decoded: Vec<Vec<Image>> = indices
        .par_iter()
        .map(|&i| match views {
            None => Ok(vec![stream.fixed(i, h)?]),
            Some(spec) => stream.views(i, &spec.views, spec.seed, spec.epoch, h),
        })
        .collect::<Result<_>>()?;
    let mut images = vec![0f32; per_view.iter().sum::<usize>() * b];
    let mut offset = 0;
    for (v, &n) in per_view.iter().enumerate() {
        for (k, imgs) in decoded.iter().enumerate() {
            to_float_hwc(
                &imgs[v].data,
                c,
                &mut images[offset + k * n..offset + (k + 1) * n],
            );
        }
        offset += n * b;
    }
    Ok(images)
}

/// A `[C, H, W]` u8 image into `[H, W, C]` floats in [0, 1].
fn to_float_hwc(src: &[u8], c: usize, dst: &mut [f32]) {
    let plane = src.len() / c;
    for (ch, src) in src.chunks_exact(plane).enumerate() {
        for (d, &s) in dst[ch..].iter_mut().step_by(c).zip(src) {
            *d = s as f32 / 255.0;
        }
    }
}

/// Images stored one after the other as `[H, W, C]` (a flat or `[N, H, W, C]` tensor) as
/// the `[N, C, H, W]` tensor of the same values, without a copy: a channels-last tensor.
/// (For C = 1 a permutation alone would give NCHW strides, which libtorch takes for a
/// contiguous tensor, so the strides are set explicitly.)
pub fn nhwc_batch(images: &Tensor, [c, h, w]: [i64; 3]) -> Tensor {
    let n = images.numel() as i64 / (c * h * w);
    images
        .contiguous()
        .as_strided([n, c, h, w], [h * w * c, 1, w * c, c], None)
}

/// A prepared batch as tensors, made on the producer thread: in page-locked (pinned) memory
/// for a CUDA device, so that the copy there is asynchronous (the host goes on to queue the
/// step while the batch travels).
struct ReadyBatch {
    images: Tensor,
    labels: Tensor,
    indices: Vec<usize>,
}

impl HostBatch {
    /// The batch's tensors, pinned for the GPU `pin` (an error, not a panic on the
    /// producer thread that would end the epoch early, where pinning fails).
    fn tensors(self, pin: Option<Device>) -> Result<ReadyBatch> {
        let (images, labels) = (
            Tensor::from_slice(&self.images),
            Tensor::from_slice(&self.labels),
        );
        let pinned = |t: Tensor| match pin {
            Some(gpu) => t
                .f_pin_memory(gpu)
                .with_context(|| format!("pinning a batch in host memory for {gpu:?}")),
            None => Ok(t),
        };
        Ok(ReadyBatch {
            images: pinned(images)?,
            labels: pinned(labels)?,
            indices: self.indices,
        })
    }
}

/// An iterator over the batches of one pass through `order`.
pub struct Loader {
    rx: Receiver<Result<ReadyBatch>>,
    /// The crop sizes of the batches (see `pack`).
    groups: Vec<(usize, [usize; 3])>,
    device: Device,
    remaining: usize,
    /// The producer thread, joined where it stops before its last batch (to say why).
    producer: Option<JoinHandle<()>>,
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
        Loader::with_views(split, order, batch_size, drop_last, prefetch, device, None)
    }

    /// Like `new`, but each image becomes the random views of `views`.
    pub fn with_views(
        split: Arc<Split>,
        order: Vec<usize>,
        batch_size: usize,
        drop_last: bool,
        prefetch: usize,
        device: Device,
        views: Option<ViewSpec>,
    ) -> Loader {
        assert!(batch_size > 0, "batch_size must be positive");
        let mut chunks: Vec<Vec<usize>> = order.chunks(batch_size).map(|c| c.to_vec()).collect();
        if drop_last && chunks.last().is_some_and(|c| c.len() < batch_size) {
            chunks.pop();
        }
        let remaining = chunks.len();
        let groups = size_groups(split.shape, views.as_ref().map(|v| &*v.views));
        let pin = device.is_cuda().then_some(device);
        Loader::spawn(remaining, groups, device, prefetch, move |tx| {
            for chunk in chunks {
                let batch = prepare(&split, &chunk, views.as_ref()).and_then(|b| b.tensors(pin));
                let failed = batch.is_err();
                // A send error means the loader was dropped: stop quietly.
                if tx.send(batch).is_err() || failed {
                    return;
                }
            }
        })
    }

    /// A loader of `remaining` batches sent by `produce` on its own thread.
    fn spawn(
        remaining: usize,
        groups: Vec<(usize, [usize; 3])>,
        device: Device,
        prefetch: usize,
        produce: impl FnOnce(&SyncSender<Result<ReadyBatch>>) + Send + 'static,
    ) -> Loader {
        let (tx, rx) = sync_channel(prefetch.max(1));
        let producer = std::thread::spawn(move || produce(&tx));
        Loader {
            rx,
            groups,
            device,
            remaining,
            producer: Some(producer),
        }
    }

    /// Why the producer stopped while `remaining` batches were still to come: its panic
    /// message (a silent end would pass for the end of the epoch).
    fn stopped_early(&mut self) -> anyhow::Error {
        let why = match self.producer.take().map(JoinHandle::join) {
            Some(Err(panic)) => {
                let msg = (panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into());
                format!("it panicked: {msg}")
            }
            _ => "it ended without a word".into(),
        };
        anyhow::anyhow!(
            "the data loader's thread stopped with {} batch(es) of the pass still to make: {why}",
            self.remaining
        )
    }

    pub fn len(&self) -> usize {
        self.remaining
    }
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }
}

/// The batches in order; an image that could not be read or decoded ends the iteration
/// with its error (naming it).
impl Iterator for Loader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        let hb = match self.rx.recv() {
            Ok(Ok(hb)) => hb,
            Ok(Err(e)) => {
                self.remaining = 0;
                return Some(Err(e));
            }
            Err(_) if self.remaining == 0 => return None,
            Err(_) => {
                let e = self.stopped_early();
                self.remaining = 0;
                return Some(Err(e));
            }
        };
        self.remaining -= 1;
        // Non-blocking from pinned memory to a GPU; on the CPU the tensors themselves.
        let to_device = |t: &Tensor| t.to_device_(self.device, t.kind(), true, false);
        let images = pack(&hb.images, &self.groups)
            .iter()
            .map(to_device)
            .collect();
        let labels = to_device(&hb.labels);
        Some(Ok(Batch {
            images,
            labels,
            indices: hb.indices,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deadline::within;

    /// A loader test that blocks longer than this (a producer or a consumer waiting for
    /// ever) fails instead of hanging `cargo test`.
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

    fn split(n: usize) -> Arc<Split> {
        let images: Vec<u8> = (0..n * 2 * 3 * 3).map(|i| (i % 251) as u8).collect();
        Arc::new(Split::new(images, (0..n as i64).collect(), [2, 3, 3]).unwrap())
    }

    #[test]
    fn batches_have_the_right_shapes_and_values() {
        within(LIMIT, || {
            let s = split(10);
            let order = epoch_order(10, 1, 0);
            let batches: Vec<Batch> =
                Loader::new(s.clone(), order.clone(), 4, false, 2, Device::Cpu)
                    .map(Result::unwrap)
                    .collect();
            assert_eq!(
                batches.iter().map(|b| b.plain().size()).collect::<Vec<_>>(),
                vec![vec![4, 2, 3, 3], vec![4, 2, 3, 3], vec![2, 2, 3, 3]]
            );
            let b = &batches[1];
            // Channels-last: [B, C, H, W] with NHWC strides.
            assert_eq!(b.plain().stride(), vec![18, 1, 6, 2]);
            let got = Vec::<f32>::try_from(b.plain().get(0).flatten(0, -1)).unwrap();
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
        })
    }

    #[test]
    fn one_channel_batches_are_channels_last_and_convolutions_keep_it() {
        within(LIMIT, || {
            let images: Vec<u8> = (0..3 * 16).map(|i| (i * 5) as u8).collect();
            let s = Arc::new(Split::new(images, vec![0; 3], [1, 4, 4]).unwrap());
            let b = Loader::new(s.clone(), vec![0, 1, 2], 3, false, 1, Device::Cpu)
                .next()
                .unwrap()
                .unwrap();
            assert_eq!(b.plain().stride(), vec![16, 1, 4, 1]);
            let want: Vec<f32> = s
                .memory()
                .unwrap()
                .iter()
                .map(|&v| v as f32 / 255.0)
                .collect();
            assert_eq!(
                Vec::<f32>::try_from(b.plain().flatten(0, -1)).unwrap(),
                want
            );
            // A convolution to 8 channels gives NHWC strides: the layout carries on.
            let k = Tensor::ones([8, 1, 3, 3], (tch::Kind::Float, Device::Cpu));
            let y = b.plain().conv2d(&k, None::<Tensor>, [1], [1], [1], 1); // [3, 8, 4, 4]
            assert_eq!(y.stride(), vec![128, 1, 32, 8]);
        })
    }

    /// A producer that panics mid-pass ends it with an error that says so, not with a
    /// silent end that would pass for the end of the epoch.
    #[test]
    fn a_panic_on_the_producer_thread_is_an_error_not_the_end_of_the_pass() {
        within(LIMIT, || {
            let groups = size_groups([1, 2, 2], None);
            let mut loader = Loader::spawn(3, groups, Device::Cpu, 1, |tx| {
                let hb = HostBatch {
                    images: vec![0.5; 4],
                    labels: vec![7],
                    indices: vec![0],
                };
                tx.send(hb.tensors(None)).unwrap();
                panic!("planted failure in batch 2");
            });
            let first = loader.next().unwrap().unwrap();
            assert_eq!(Vec::<i64>::try_from(&first.labels).unwrap(), [7]);
            let e = loader.next().unwrap().err().unwrap().to_string();
            assert!(
                e.contains("2 batch(es)") && e.contains("planted failure in batch 2"),
                "{e}"
            );
            assert!(loader.next().is_none());
        })
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
        within(LIMIT, || {
            let s = split(9);
            let run = || -> Vec<Vec<usize>> {
                Loader::new(s.clone(), epoch_order(9, 5, 2), 3, true, 1, Device::Cpu)
                    .map(|b| b.unwrap().indices)
                    .collect()
            };
            assert_eq!(run(), run());
        })
    }

    #[test]
    fn views_are_stacked_view_major_and_independent_of_batching() {
        within(LIMIT, || {
            use crate::augment::{Op, Pipeline};
            let s = split(6);
            let crop = |p| Pipeline {
                ops: vec![
                    Op::ResizedCrop {
                        size: (2, 2),
                        scale: (0.3, 1.0),
                        ratio: (0.5, 2.0),
                    },
                    Op::HFlip { p },
                ],
            };
            let views = Arc::new(Views {
                pipelines: vec![crop(0.5), crop(1.0)],
            });
            let spec = ViewSpec {
                views: views.clone(),
                seed: 3,
                epoch: 1,
            };
            let order = epoch_order(6, 0, 0);
            let run = |bs| -> Vec<Batch> {
                Loader::with_views(
                    s.clone(),
                    order.clone(),
                    bs,
                    false,
                    2,
                    Device::Cpu,
                    Some(spec.clone()),
                )
                .map(Result::unwrap)
                .collect()
            };
            let batches = run(3);
            assert_eq!(batches[0].plain().size(), vec![6, 2, 2, 2]);
            // Row v * B + b is view v of image b, exactly as augment makes it.
            for (v, b) in [(0, 0), (1, 2)] {
                let i = batches[0].indices[b];
                let img = Image::new(2, 3, 3, s.image(i).to_vec());
                let want = views.apply(&img, 3, 1, i)[v]
                    .data
                    .iter()
                    .map(|&x| x as f32 / 255.0)
                    .collect::<Vec<_>>();
                let got = Vec::<f32>::try_from(
                    batches[0]
                        .plain()
                        .get(v as i64 * 3 + b as i64)
                        .flatten(0, -1),
                )
                .unwrap();
                assert_eq!(got, want);
            }
            // The same image gets the same views whatever the batch size.
            let one = run(1);
            let first_view = |bs: &[Batch], n: usize| -> Vec<f32> {
                let b = bs.iter().find(|b| b.indices.contains(&n)).unwrap();
                let pos = b.indices.iter().position(|&x| x == n).unwrap() as i64;
                Vec::<f32>::try_from(b.plain().get(pos).flatten(0, -1)).unwrap()
            };
            for n in 0..6 {
                assert_eq!(first_view(&batches, n), first_view(&one, n));
            }
        })
    }

    #[test]
    fn views_of_several_sizes_come_one_tensor_per_size_view_major() {
        within(LIMIT, || {
            use crate::augment::{Op, Pipeline};
            let s = split(4);
            let crop = |size| Pipeline {
                ops: vec![Op::ResizedCrop {
                    size: (size, size),
                    scale: (0.3, 1.0),
                    ratio: (0.5, 2.0),
                }],
            };
            // Multi-crop: one 2x2 global view, then two 1x1 local ones.
            let views = Arc::new(Views {
                pipelines: vec![crop(2), crop(1), crop(1)],
            });
            let spec = ViewSpec {
                views: views.clone(),
                seed: 4,
                epoch: 0,
            };
            let b = Loader::with_views(s.clone(), vec![2, 0], 2, false, 1, Device::Cpu, Some(spec))
                .next()
                .unwrap()
                .unwrap();
            // One tensor per size: B = 2 global views of 2x2, then 2 x 2 local ones of 1x1.
            let sizes: Vec<Vec<i64>> = b.images.iter().map(|t| t.size()).collect();
            assert_eq!(sizes, vec![vec![2, 2, 2, 2], vec![4, 2, 1, 1]]);
            assert_eq!(b.images[0].stride(), vec![8, 1, 4, 2]); // channels-last
            // Each view as augment makes it, as [h, w, C] floats.
            let want = |v: usize, i: usize| -> Vec<f32> {
                let img = Image::new(2, 3, 3, s.image(i).to_vec());
                let view = &views.apply(&img, 4, 0, i)[v];
                let mut out = vec![0f32; view.data.len()];
                to_float_hwc(&view.data, 2, &mut out);
                out
            };
            let hwc =
                |t: Tensor| Vec::<f32>::try_from(t.permute([1, 2, 0]).flatten(0, -1)).unwrap();
            // Image 0 is the batch's second image: row 1 of the global views, and its second
            // local view is row 1 * B + 1 of the local ones.
            assert_eq!(hwc(b.images[0].get(1)), want(0, 0));
            assert_eq!(hwc(b.images[1].get(3)), want(2, 0));
            assert_eq!(hwc(b.images[1].get(0)), want(1, 2));
        })
    }

    #[test]
    fn dropping_a_loader_early_ends_its_producer() {
        within(LIMIT, || {
            let s = split(50);
            let mut l = Loader::new(s.clone(), epoch_order(50, 0, 0), 2, false, 1, Device::Cpu);
            assert!(l.next().is_some());
            drop(l);
            // The producer thread holds the split until it ends: one blocked for ever on
            // its full channel would hold it for ever, and the test fails at its deadline.
            while Arc::strong_count(&s) > 1 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    }
}
