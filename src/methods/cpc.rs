//! Contrastive Predictive Coding for images (van den Oord et al. 2018; Hénaff et al. 2020).
//!
//! The image becomes a grid of overlapping patches (28x28 -> 6x6 grid of 8x8 patches at
//! stride 4). A patch encoder g_enc (the configured encoder, shared across patches) maps
//! each patch to a code z, giving a grid `[B, D, rows, cols]`. A context network g_ar sees
//! only rows <= t when it computes c_t: either causal ("masked") convolutions padded only
//! from above, PixelCNN style, or a GRU running down each column. For k = 1..K a linear
//! W_k predicts ẑ_{t+k} = W_k c_t, and InfoNCE scores the true z_{t+k} against negatives
//! drawn from all positions of all images in the batch (a candidate equal to the query's
//! own target is left out of its denominator).
//!
//! Evaluation (as in CPC v2) runs g_enc over the patch grid and mean-pools the codes.

use super::{DataInfo, Method, MethodConfig, MethodSpec, StepCtx};
use crate::config::{CpcContext, check};
use crate::nets::{self, Encoder, EncoderInput};
use crate::{losses, precision};
use anyhow::{Result, bail};
use tch::nn::{self, Module, RNN};
use tch::{Kind, Tensor};

pub const SPEC: MethodSpec = MethodSpec {
    name: "cpc",
    summary: "predict codes of patches further down the image from a causal context (InfoNCE)",
    keys: &[&[
        "cpc_patch",
        "cpc_stride",
        "cpc_steps",
        "cpc_context",
        "cpc_context_layers",
        "cpc_negatives",
    ]],
    validate,
    uses_labels: false,
    encoders: super::ANY_ENCODER,
    build: |p, cfg, data| Ok(Box::new(Cpc::new(p, cfg, data)?)),
};

fn validate(cfg: &MethodConfig) -> Result<()> {
    if cfg.keys.cpc_patch < 1 || cfg.keys.cpc_stride < 1 || cfg.keys.cpc_stride > cfg.keys.cpc_patch
    {
        bail!(
            "options cpc_patch = {} and cpc_stride = {} must satisfy 1 <= cpc_stride <= cpc_patch",
            cfg.keys.cpc_patch,
            cfg.keys.cpc_stride
        );
    }
    check::at_least("cpc_steps", cfg.keys.cpc_steps, 1)?;
    check::in_range("cpc_context_layers", cfg.keys.cpc_context_layers, 1..=64)?;
    check::at_least("cpc_negatives", cfg.keys.cpc_negatives, 1)
}

/// Geometry of the patch grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PatchGrid {
    pub patch: i64,
    pub stride: i64,
    pub rows: i64,
    pub cols: i64,
}

impl PatchGrid {
    pub fn new(h: i64, w: i64, patch: i64, stride: i64) -> Result<PatchGrid> {
        if patch > h || patch > w {
            bail!("option cpc_patch = {patch} is larger than the {h}x{w} images");
        }
        Ok(PatchGrid {
            patch,
            stride,
            rows: (h - patch) / stride + 1,
            cols: (w - patch) / stride + 1,
        })
    }
}

/// The autoregressive context network g_ar: `[B, D, rows, cols]` -> same shape, where
/// output row t depends only on input rows <= t.
#[derive(Debug)]
pub enum Context {
    /// 3x3 convolutions on input padded by two rows above and none below, with residuals.
    MaskedConv(Vec<nn::Conv2D>),
    Gru(nn::GRU),
}

impl Context {
    pub fn new(p: &nn::Path, kind: CpcContext, dim: i64, layers: i64) -> Context {
        match kind {
            CpcContext::MaskedConv => Context::MaskedConv(
                (0..layers)
                    .map(|i| nn::conv2d(p / format!("conv{i}"), dim, dim, 3, Default::default()))
                    .collect(),
            ),
            CpcContext::Gru => Context::Gru(nn::gru(p / "gru", dim, dim, Default::default())),
        }
    }

    pub fn forward(&self, z: &Tensor) -> Tensor {
        match self {
            Context::MaskedConv(convs) => {
                let mut h = z.shallow_clone();
                for (i, conv) in convs.iter().enumerate() {
                    // pad (left 1, right 1, top 2, bottom 0): row t sees rows t-2..=t
                    let out = conv.forward(&h.constant_pad_nd([1, 1, 2, 0])).relu();
                    h = if i == 0 { out } else { out + h };
                }
                h
            }
            Context::Gru(gru) => {
                let s = z.size(); // [B, D, rows, cols]
                let seq = z.permute([0, 3, 2, 1]).reshape([s[0] * s[3], s[2], s[1]]); // [B*cols, rows, D]
                let (out, _) = gru.seq(&seq); // [B*cols, rows, D]
                out.view([s[0], s[3], s[2], s[1]]).permute([0, 3, 2, 1]) // [B, D, rows, cols]
            }
        }
    }
}

/// Pairs the prediction made at row t with the code at row t + k, for every image, row
/// and column: returns (predictions, targets), both `[N, D]` with N = B * (rows-k) * cols,
/// in (image, row t, column) order.
pub fn prediction_pairs(pred: &Tensor, z: &Tensor, k: i64) -> (Tensor, Tensor) {
    let (rows, d) = (z.size()[2], z.size()[1]);
    let flat = |t: Tensor| t.permute([0, 2, 3, 1]).reshape([-1, d]); // [B, D, r, c] -> [B*r*c, D]
    (
        flat(pred.narrow(2, 0, rows - k)),
        flat(z.narrow(2, k, rows - k)),
    )
}

pub struct Cpc {
    /// The patch encoder (the configured encoder, on single patches).
    g_enc: Encoder,
    context: Context,
    /// W_k for k = 1..=K, each `[D] -> [D]` without bias.
    predictors: Vec<nn::Linear>,
    grid: PatchGrid,
    negatives: i64,
    /// g_enc over the patch grid, codes mean-pooled.
    eval_encoder: Encoder,
}

impl Cpc {
    pub fn new(p: &nn::Path, cfg: &MethodConfig, data: &DataInfo) -> Result<Cpc> {
        let [c, h, w] = data.shape;
        let grid = PatchGrid::new(h, w, cfg.keys.cpc_patch, cfg.keys.cpc_stride)?;
        if cfg.keys.cpc_steps >= grid.rows {
            bail!(
                "option cpc_steps = {} must be below the {} rows of the patch grid",
                cfg.keys.cpc_steps,
                grid.rows
            );
        }
        let g_enc = nets::build_encoder(&(p / "encoder"), cfg.encoder, c);
        let d = g_enc.dim;
        let context = Context::new(
            &(p / "context"),
            cfg.keys.cpc_context,
            d,
            cfg.keys.cpc_context_layers,
        );
        let lin = nn::LinearConfig {
            bias: false,
            ..Default::default()
        };
        let predictors = (1..=cfg.keys.cpc_steps)
            .map(|k| nn::linear(p / "predict" / format!("k{k}"), d, d, lin))
            .collect();
        let eval_encoder = g_enc.with_input(EncoderInput::PatchMean {
            patch: grid.patch,
            stride: grid.stride,
        });
        Ok(Cpc {
            g_enc,
            context,
            predictors,
            grid,
            negatives: cfg.keys.cpc_negatives,
            eval_encoder,
        })
    }

    /// Codes of every patch: `[B, C, H, W]` -> `[B, D, rows, cols]`.
    fn codes(&self, images: &Tensor, train: bool) -> Tensor {
        self.g_enc
            .patch_codes(images, self.grid.patch, self.grid.stride, train)
    }
}

impl Method for Cpc {
    fn loss(&mut self, images: &[Tensor], _labels: &Tensor, _ctx: &StepCtx) -> Tensor {
        let images = &images[0]; // [B, C, H, W]
        let z = self.codes(images, true); // [B, D, rows, cols]
        let c = self.context.forward(&z); // [B, D, rows, cols]
        let mut total = Tensor::zeros([], (Kind::Float, images.device()));
        for (i, w_k) in self.predictors.iter().enumerate() {
            let k = i as i64 + 1;
            let pred = w_k.forward(&c.permute([0, 2, 3, 1])).permute([0, 3, 1, 2]); // [B, D, rows, cols]
            let (q, target) = prediction_pairs(&pred, &z, k); // [N, D] each
            let n = q.size()[0];
            let m = self.negatives.min(n);
            let idx = Tensor::randperm(n, (Kind::Int64, images.device())).narrow(0, 0, m); // [M]
            let negs = target.index_select(0, &idx); // [M, D]
            let own = Tensor::arange(n, (Kind::Int64, images.device()))
                .unsqueeze(1)
                .eq_tensor(&idx.unsqueeze(0)); // [N, M]
            total += precision::in_fp32([&q, &target, &negs], |[q, target, negs]| {
                losses::info_nce(&q, &target, &negs, 1.0, Some(&own))
            });
        }
        total / self.predictors.len() as f64
    }

    fn encoder(&self) -> &Encoder {
        &self.eval_encoder
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use tch::Device;

    #[test]
    fn grid_sizes_follow_patch_and_stride() {
        assert_eq!(
            PatchGrid::new(28, 28, 8, 4).unwrap(),
            PatchGrid {
                patch: 8,
                stride: 4,
                rows: 6,
                cols: 6
            }
        );
        assert_eq!(PatchGrid::new(32, 32, 8, 4).unwrap().rows, 7);
        assert!(
            PatchGrid::new(6, 28, 8, 4)
                .unwrap_err()
                .to_string()
                .contains("cpc_patch")
        );
    }

    fn contexts() -> Vec<(nn::VarStore, Context)> {
        CpcContext::ALL
            .iter()
            .map(|&kind| {
                let vs = nn::VarStore::new(Device::Cpu);
                let c = Context::new(&vs.root(), kind, 5, 3);
                (vs, c)
            })
            .collect()
    }

    #[test]
    fn context_never_sees_rows_below() {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(0);
        for (_vs, ctx) in contexts() {
            let z = Tensor::randn([2, 5, 6, 4], (Kind::Float, Device::Cpu));
            let c = ctx.forward(&z);
            for t in 0..5 {
                // Perturb every row below t.
                let z2 = z.copy();
                let _ = z2
                    .narrow(2, t + 1, 5 - t)
                    .g_add_(&Tensor::randn([2, 5, 5 - t, 4], (Kind::Float, Device::Cpu)));
                let c2 = ctx.forward(&z2);
                assert!(
                    c.narrow(2, 0, t + 1)
                        .allclose(&c2.narrow(2, 0, t + 1), 1e-6, 1e-6, false),
                    "{ctx:?} row {t} saw the future"
                );
                // ...while row t + 1 does change: the context really uses its input.
                assert!(!c.narrow(2, t + 1, 1).allclose(
                    &c2.narrow(2, t + 1, 1),
                    1e-6,
                    1e-6,
                    false
                ));
            }
        }
    }

    #[test]
    fn targets_point_at_the_right_positions() {
        // Encode each position in the code itself: z[b, :, r, c] = (b, r, c, 0).
        let (b, rows, cols, k) = (2, 5, 3, 2);
        let mut v = vec![0f32; (b * 4 * rows * cols) as usize];
        for bi in 0..b {
            for r in 0..rows {
                for c in 0..cols {
                    let at = |ch: i64| (((bi * 4 + ch) * rows + r) * cols + c) as usize;
                    v[at(0)] = bi as f32;
                    v[at(1)] = r as f32;
                    v[at(2)] = c as f32;
                }
            }
        }
        let z = Tensor::from_slice(&v).view([b, 4, rows, cols]);
        let (q, t) = prediction_pairs(&z, &z, k);
        assert_eq!(q.size(), vec![b * (rows - k) * cols, 4]);
        let qv = Vec::<Vec<f32>>::try_from(&q).unwrap();
        let tv = Vec::<Vec<f32>>::try_from(&t).unwrap();
        for (i, (qi, ti)) in qv.iter().zip(&tv).enumerate() {
            // Same image and column, k rows further down; rows in (image, row, column) order.
            assert_eq!(
                (ti[0], ti[1], ti[2]),
                (qi[0], qi[1] + k as f32, qi[2]),
                "pair {i}"
            );
            let i = i as i64;
            let want = (i / ((rows - k) * cols), (i / cols) % (rows - k), i % cols);
            assert_eq!(
                (qi[0], qi[1], qi[2]),
                (want.0 as f32, want.1 as f32, want.2 as f32)
            );
        }
    }

    /// The codes of every patch of `x` `[B, C, H, W]`, each patch cut out here and all of
    /// them encoded as one batch (as BatchNorm sees them in training): `[B, rows * cols, D]`,
    /// rows and columns in reading order.
    fn codes_by_hand(m: &Cpc, x: &Tensor, train: bool) -> Tensor {
        let g = m.grid;
        let b = x.size()[0];
        let mut patches = Vec::new();
        for i in 0..b {
            for r in 0..g.rows {
                for c in 0..g.cols {
                    let p = x.get(i).narrow(1, r * g.stride, g.patch);
                    patches.push(p.narrow(2, c * g.stride, g.patch));
                }
            }
        }
        let codes = m.g_enc.forward_t(&Tensor::stack(&patches, 0), train); // [B rows cols, D]
        codes.view([b, g.rows * g.cols, -1])
    }

    /// CPC's training loss of `m` on `x`, computed without `loss`'s helpers
    /// (`patch_codes`, `prediction_pairs`, `info_nce`): for each k and every (image, row t,
    /// column) with a row t + k, the prediction W_k c_t scored against its own target code
    /// and the drawn negatives but its own target, as the cross-entropy written out. The
    /// negatives are drawn as `loss` draws them: one randperm per k, in order.
    fn cpc_loss_by_hand(m: &Cpc, x: &Tensor) -> f64 {
        let g = m.grid;
        let b = x.size()[0];
        let codes = codes_by_hand(m, x, true); // [B, rows cols, D]
        let z = codes.view([b, g.rows, g.cols, -1]).permute([0, 3, 1, 2]); // [B, D, rows, cols]
        let c = m.context.forward(&z);
        let mut total = 0.0;
        for (i, w_k) in m.predictors.iter().enumerate() {
            let k = i as i64 + 1;
            let (mut q, mut target) = (Vec::new(), Vec::new());
            for bi in 0..b {
                for t in 0..g.rows - k {
                    for col in 0..g.cols {
                        q.push(w_k.forward(&c.get(bi).select(1, t).select(1, col)));
                        target.push(z.get(bi).select(1, t + k).select(1, col));
                    }
                }
            }
            let n = q.len() as i64;
            let negatives =
                Tensor::randperm(n, (Kind::Int64, Device::Cpu)).narrow(0, 0, m.negatives.min(n));
            let negatives = Vec::<i64>::try_from(negatives).unwrap();
            let mut sum = 0.0;
            for (j, qj) in q.iter().enumerate() {
                let score = |o: usize| qj.dot(&target[o]).double_value(&[]);
                let others = negatives.iter().filter(|&&o| o as usize != j);
                let denominator: f64 =
                    score(j).exp() + others.map(|&o| score(o as usize).exp()).sum::<f64>();
                sum += denominator.ln() - score(j);
            }
            total += sum / n as f64;
        }
        total / m.predictors.len() as f64
    }

    #[test]
    fn cpc_loss_falls_over_training_steps_and_matches_the_computation_by_hand() {
        let _rng = crate::torch_rng_lock();
        let cfg = {
            let mut c = Config {
                method: "cpc".into(),
                ..Config::default()
            };
            c.encoder.cnn_widths = vec![4, 8];
            c.keys.cpc_negatives = 16;
            c
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let data = DataInfo {
            shape: [1, 16, 16],
            num_classes: 2,
        };
        tch::manual_seed(0);
        let mut m = Cpc::new(&vs.root(), &cfg.method_view(), &data).unwrap();
        let x = Tensor::rand([4, 1, 16, 16], (Kind::Float, Device::Cpu));
        let labels = Tensor::zeros([4], (Kind::Int64, Device::Cpu));
        let mut opt = nn::OptimizerConfig::build(nn::Adam::default(), &vs, 1e-2).unwrap();
        let steps = 25;
        let mut losses = Vec::new();
        for step in 0..steps {
            let ctx = StepCtx {
                epoch: 0,
                step,
                total_steps: steps,
            };
            // The same negatives in both computations: the same seed before each.
            tch::manual_seed(100 + step as i64);
            let l = m.loss(std::slice::from_ref(&x), &labels, &ctx);
            let value = l.double_value(&[]);
            if step == 0 || step == steps - 1 {
                tch::manual_seed(100 + step as i64);
                let by_hand = tch::no_grad(|| cpc_loss_by_hand(&m, &x));
                assert!(
                    (value - by_hand).abs() < 1e-4 * by_hand,
                    "step {step}: loss {value}, by hand {by_hand}"
                );
            }
            opt.backward_step(&l);
            losses.push(value);
        }
        // Near log(1 + negatives) at initialisation, well below it after training (seen:
        // 2.63 to 1.24).
        assert!(losses[0] > 1.0 && losses[0] < 5.0, "{losses:?}");
        assert!(losses[steps - 1] < 0.7 * losses[0], "{losses:?}");
        // Evaluation: each image's feature is the mean of its patch codes.
        let f = m.encoder().forward_t(&x, false);
        assert_eq!(f.size(), vec![4, 8]);
        let by_hand = codes_by_hand(&m, &x, false).mean_dim(&[1i64][..], false, Kind::Float);
        assert!(f.allclose(&by_hand, 1e-5, 1e-6, false), "{f} vs {by_hand}");
        let too_far = {
            let mut c = cfg;
            c.keys.cpc_steps = 3;
            c
        };
        let e = Cpc::new(&vs.root(), &too_far.method_view(), &data)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cpc_steps"), "{e}");
    }
}
