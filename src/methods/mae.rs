//! Masked autoencoder (He et al. 2021), as facebookresearch/mae builds it, with the ViT
//! encoder (`encoder = "vit"`):
//!
//! - the image (one view: a random resized crop, scale `aug_crop_scale` (the paper's
//!   0.2..1), and a flip) is cut into patches; a random `mae_mask_ratio` of them (0.75) is
//!   hidden per image (`random_masking`: the patches sorted by uniform noise, the first
//!   ones kept), and the encoder (patch embedding with position embeddings, the
//!   transformer blocks, the final norm) runs on the visible patches only;
//! - a light decoder (`mae_decoder_width`, `_depth`, `_heads`) embeds the encoded tokens,
//!   puts a learned mask token in every hidden patch's place, adds fixed 2-D sine-cosine
//!   position embeddings, runs its blocks and norm, and predicts every patch's pixels;
//! - the loss is the mean squared error on the hidden patches only, against pixels
//!   normalised per patch (`mae_norm_pix_loss`, the paper's better setting).
//!
//! Departures from the paper: no class token (selfsup's ViT has none: its feature is the
//! mean of the patch tokens, as timm's `global_pool="avg"`); the decoder's blocks are
//! timm's pre-norm blocks of the encoder's kind; the crop is bilinear, not bicubic.
//! The evaluated and exported encoder is the ViT on whole images, unchanged. On several
//! ranks, the masks are those one process would draw for the global batch (rank 0's noise,
//! broadcast), so N ranks train as one process.

use super::{DataInfo, Method, MethodConfig, MethodSpec, StepCtx};
use crate::augment::{Op, Pipeline, Views};
use crate::config::{EncoderKind, check};
use crate::dist::current as dist;
use crate::nets::vit::{Block, layer_norm, linear};
use crate::nets::{self, Encoder};
use crate::{losses, precision};
use anyhow::{Result, bail};
use std::sync::Arc;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

pub const SPEC: MethodSpec = MethodSpec {
    name: "mae",
    summary: "masked autoencoder: reconstruct the hidden 75% of a ViT's patches from the visible ones",
    keys: &[&[
        "aug_crop_size",
        "aug_crop_scale",
        "aug_crop_ratio",
        "aug_flip_p",
        "mae_mask_ratio",
        "mae_decoder_width",
        "mae_decoder_depth",
        "mae_decoder_heads",
        "mae_norm_pix_loss",
    ]],
    validate,
    uses_labels: false,
    encoders: &[EncoderKind::Vit],
    build: |p, cfg, data| Ok(Box::new(Mae::new(p, cfg, data)?)),
};

fn validate(cfg: &MethodConfig) -> Result<()> {
    let k = cfg.keys;
    if !(0.0..1.0).contains(&k.mae_mask_ratio) || k.mae_mask_ratio <= 0.0 {
        bail!(
            "option mae_mask_ratio = {} must be in (0, 1)",
            k.mae_mask_ratio
        );
    }
    check::in_range("mae_decoder_depth", k.mae_decoder_depth, 1..=32)?;
    check::in_range("mae_decoder_heads", k.mae_decoder_heads, 1..=64)?;
    check::at_least("mae_decoder_width", k.mae_decoder_width, 1)?;
    if k.mae_decoder_width % k.mae_decoder_heads != 0 || k.mae_decoder_width % 4 != 0 {
        bail!(
            "option mae_decoder_width = {} must be a multiple of 4 and of mae_decoder_heads = {}",
            k.mae_decoder_width,
            k.mae_decoder_heads
        );
    }
    if cfg.encoder.kind != EncoderKind::Vit {
        bail!(
            "mae masks the patches of a Vision Transformer: set encoder = \"vit\" (it is \"{}\")",
            cfg.encoder.kind
        );
    }
    Ok(())
}

/// MAE's `random_masking` on tokens `x` `[N, L, D]` with uniform `noise` `[N, L]`: the
/// `L * (1 - ratio)` tokens of least noise are kept (in noise order): `[N, keep, D]`; the
/// mask `[N, L]` (0 kept, 1 hidden, in the original order) and `ids_restore` `[N, L]`.
pub fn random_masking(x: &Tensor, ratio: f64, noise: &Tensor) -> (Tensor, Tensor, Tensor) {
    let (n, l, d) = x.size3().unwrap();
    let keep = ((l as f64) * (1.0 - ratio)) as i64; // int(L * (1 - mask_ratio))
    let ids_shuffle = noise.argsort(1, false); // ascend: small is keep
    let ids_restore = ids_shuffle.argsort(1, false);
    let ids_keep = ids_shuffle.narrow(1, 0, keep);
    let x_masked = x.gather(
        1,
        &ids_keep.unsqueeze(-1).expand([n, keep, d], false),
        false,
    );
    let mask = Tensor::ones([n, l], (x.kind(), x.device()));
    let _ = mask.narrow(1, 0, keep).fill_(0.0);
    let mask = mask.gather(1, &ids_restore, false);
    (x_masked, mask, ids_restore)
}

/// `[N, C, H, W]` images as `[N, L, p * p * C]` patches, row-major, each patch's pixels as
/// (row, column, channel): MAE's `patchify`.
pub fn patchify(imgs: &Tensor, p: i64) -> Tensor {
    let (n, c, h, w) = imgs.size4().unwrap();
    let (gh, gw) = (h / p, w / p);
    imgs.reshape([n, c, gh, p, gw, p])
        .permute([0, 2, 4, 3, 5, 1]) // n h w p q c
        .reshape([n, gh * gw, p * p * c])
}

/// The inverse of `patchify`.
pub fn unpatchify(x: &Tensor, p: i64, c: i64, (gh, gw): (i64, i64)) -> Tensor {
    let n = x.size()[0];
    x.reshape([n, gh, gw, p, p, c])
        .permute([0, 5, 1, 3, 2, 4])
        .reshape([n, c, gh * p, gw * p])
}

/// MAE's fixed 2-D sine-cosine position embeddings for a `gh` x `gw` grid: `[gh * gw, d]`
/// (`get_2d_sincos_pos_embed` without a class token, transcribed: the first half encodes
/// the column, the second the row).
pub fn sincos_2d(d: i64, gh: i64, gw: i64) -> Vec<f32> {
    let one_d = |dim: i64, pos: f64| -> Vec<f64> {
        let half = dim / 2;
        let omega: Vec<f64> = (0..half)
            .map(|i| 1.0 / 10000f64.powf(i as f64 / half as f64))
            .collect();
        let mut v: Vec<f64> = omega.iter().map(|o| (pos * o).sin()).collect();
        v.extend(omega.iter().map(|o| (pos * o).cos()));
        v
    };
    let mut out = Vec::with_capacity((gh * gw * d) as usize);
    for y in 0..gh {
        for x in 0..gw {
            // meshgrid(grid_w, grid_h): grid[0] is the column, embedded first.
            out.extend(one_d(d / 2, x as f64).into_iter().map(|v| v as f32));
            out.extend(one_d(d / 2, y as f64).into_iter().map(|v| v as f32));
        }
    }
    out
}

pub struct Mae {
    encoder: Encoder,
    decoder_embed: nn::Linear,
    mask_token: Tensor,
    blocks: Vec<Block>,
    decoder_norm: nn::LayerNorm,
    decoder_pred: nn::Linear,
    ratio: f64,
    norm_pix: bool,
    width: i64,
    views: Arc<Views>,
}

impl Mae {
    pub fn new(p: &nn::Path, cfg: &MethodConfig, data: &DataInfo) -> Result<Mae> {
        validate(cfg)?;
        let encoder = nets::build_encoder(&(p / "encoder"), cfg.encoder, data.shape[0]);
        let k = cfg.keys;
        let (d, dd) = (encoder.dim, k.mae_decoder_width);
        let patch = cfg.encoder.vit_patch;
        let dec = p / "decoder";
        let a = cfg.aug;
        let size = match a.aug_crop_size {
            0 => (data.shape[1] as usize, data.shape[2] as usize),
            s => (s, s),
        };
        if size.0 as i64 % patch != 0 || size.1 as i64 % patch != 0 {
            bail!(
                "mae: the view size {size:?} must be a multiple of vit_patch = {patch} (set aug_crop_size)"
            );
        }
        let crop = Pipeline {
            ops: vec![
                Op::ResizedCrop {
                    size,
                    scale: (a.aug_crop_scale[0], a.aug_crop_scale[1]),
                    ratio: (a.aug_crop_ratio[0], a.aug_crop_ratio[1]),
                },
                Op::HFlip { p: a.aug_flip_p },
            ],
        };
        Ok(Mae {
            decoder_embed: linear(&dec / "embed", d, dd),
            mask_token: dec.var(
                "mask_token",
                &[1, 1, dd],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            ),
            blocks: (0..k.mae_decoder_depth)
                .map(|i| Block::new(&(&dec / "blocks" / i), dd, k.mae_decoder_heads))
                .collect(),
            decoder_norm: layer_norm(&dec / "norm", dd),
            decoder_pred: linear(&dec / "pred", dd, patch * patch * data.shape[0]),
            encoder,
            ratio: k.mae_mask_ratio,
            norm_pix: k.mae_norm_pix_loss,
            width: dd,
            views: Arc::new(Views {
                pipelines: vec![crop],
            }),
        })
    }

    /// The decoder's prediction of every patch `[N, L, p * p * C]` and the mask `[N, L]` for
    /// `images` `[N, C, H, W]`, with `noise` `[N, L]` choosing the visible patches.
    fn forward(&self, images: &Tensor, noise: &Tensor) -> (Tensor, Tensor, (i64, i64)) {
        let vit = self.encoder.vit().expect("validated: a ViT encoder");
        let (tokens, grid) = vit.patch_tokens(images); // [N, L, D]
        let (visible, mask, ids_restore) = random_masking(&tokens, self.ratio, noise);
        let latent = vit.norm(&vit.blocks(&visible)); // [N, keep, D]
        let x = self.decoder_embed.forward(&latent); // [N, keep, Dd]
        let (n, keep, dd) = x.size3().unwrap();
        let l = grid.0 * grid.1;
        let masked = self
            .mask_token
            .to_kind(x.kind())
            .expand([n, l - keep, dd], false);
        let x = Tensor::cat(&[x, masked], 1); // [N, L, Dd], in shuffled order
        let x = x.gather(
            1,
            &ids_restore.unsqueeze(-1).expand([n, l, dd], false),
            false,
        );
        let name = format!("MAE decoder positions {} {}x{}", self.width, grid.0, grid.1);
        let pos = nets::constant(&name, x.kind(), x.device(), || {
            Tensor::from_slice(&sincos_2d(self.width, grid.0, grid.1)).view([1, l, self.width])
        });
        let mut x = x + pos;
        for b in &self.blocks {
            x = b.forward(&x);
        }
        let pred = self.decoder_pred.forward(&self.decoder_norm.forward(&x)); // [N, L, p p C]
        (pred, mask, grid)
    }
}

impl Method for Mae {
    fn loss(&mut self, images: &[Tensor], _labels: &Tensor, _ctx: &StepCtx) -> Tensor {
        let images = &images[0]; // [B, C, H, W]
        let vit = self.encoder.vit().expect("validated: a ViT encoder");
        let p = vit.patch();
        let (n, _, h, w) = images.size4().unwrap();
        // The masks of the global batch, as one process draws them (rank 0's draw,
        // broadcast), this rank's rows taken: N ranks train as one process would.
        let (world, rank) = (dist::world_size() as i64, dist::rank() as i64);
        let noise = Tensor::rand(
            [n * world, (h / p) * (w / p)],
            (Kind::Float, images.device()),
        );
        let noise = dist::broadcast(&noise).narrow(0, rank * n, n);
        let (pred, mask, _) = self.forward(images, &noise);
        let target = patchify(images, p);
        precision::in_fp32([&pred, &target, &mask], |[pred, target, mask]| {
            losses::mae(&pred, &target, &mask, self.norm_pix)
        })
    }

    fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    fn views(&self) -> Option<Arc<Views>> {
        Some(self.views.clone())
    }

    /// Each row: the visible patches (hidden ones grey), the reconstruction (the prediction
    /// in the hidden patches, un-normalised with the visible patches' statistics when the
    /// loss normalises pixels), and the original.
    fn examples(&self, images: &Tensor) -> Option<Tensor> {
        let p = self.encoder.vit()?.patch();
        let (n, c, h, w) = images.size4().ok()?;
        if h % p != 0 || w % p != 0 {
            return None;
        }
        tch::manual_seed(0);
        let noise = Tensor::rand([n, (h / p) * (w / p)], (Kind::Float, images.device()));
        let (pred, mask, grid) = self.forward(images, &noise);
        let target = patchify(images, p);
        let pred = if self.norm_pix {
            let mean = target.mean_dim(&[-1i64][..], true, Kind::Float);
            let std = (target.var_dim(&[-1i64][..], true, true) + 1e-6).sqrt();
            pred * std + mean
        } else {
            pred
        };
        let m = mask.unsqueeze(-1); // [N, L, 1]
        let visible = &target * (m.ones_like() - &m) + m.full_like(0.5) * &m;
        let filled = &target * (m.ones_like() - &m) + pred.clamp(0.0, 1.0) * &m;
        Some(super::side_by_side(&[
            unpatchify(&visible, p, c, grid),
            unpatchify(&filled, p, c, grid),
            images.shallow_clone(),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use tch::Device;

    use crate::methods::tests::{fixture as fixture_of, fixture_tensor as tensor};

    /// facebookresearch/mae's `random_masking` and `forward_loss` transcribed in Python and
    /// run in float64 on fixed inputs (scripts/make_method_fixtures.py).
    fn fixture() -> serde_json::Value {
        fixture_of("mae")
    }

    #[test]
    fn masking_and_loss_match_the_reference_in_float64() {
        let f = fixture();
        let (imgs, noise, pred) = (tensor(&f["imgs"]), tensor(&f["noise"]), tensor(&f["pred"]));
        let p = f["patch"].as_i64().unwrap();
        let ratio = f["mask_ratio"].as_f64().unwrap();
        let target = patchify(&imgs, p);
        assert!(
            target.allclose(&tensor(&f["target"]), 0.0, 0.0, false),
            "patchify"
        );
        assert!(
            unpatchify(&target, p, 3, (2, 2)).equal(&imgs),
            "unpatchify inverts it"
        );
        let (kept, mask, restore) = random_masking(&target, ratio, &noise);
        assert!(kept.equal(&tensor(&f["x_masked"])), "kept tokens");
        assert!(mask.equal(&tensor(&f["mask"])), "mask");
        assert!(
            restore
                .to_kind(Kind::Double)
                .equal(&tensor(&f["ids_restore"])),
            "ids_restore"
        );
        for (norm, key) in [(true, "loss_norm_pix"), (false, "loss")] {
            let got = losses::mae(&pred, &target, &mask, norm).double_value(&[]);
            let want = f[key].as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-12 * want.abs().max(1.0),
                "{key}: {got} vs {want}"
            );
        }
        let pos = sincos_2d(8, 2, 3);
        let want: Vec<f64> = f["pos_embed"]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        for (a, b) in pos.iter().zip(&want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{pos:?} vs {want:?}");
        }
    }

    #[test]
    fn mae_needs_the_vit_and_its_loss_counts_only_hidden_patches() {
        let _rng = crate::torch_rng_lock();
        let cnn = Config {
            method: "mae".into(),
            ..Config::default()
        };
        let e = crate::methods::check_config(&cnn, &[]).unwrap_err();
        assert!(format!("{e:#}").contains("encoder = \"vit\""), "{e:#}");
        let mut cfg = cnn.clone();
        cfg.encoder.kind = EncoderKind::Vit;
        (
            cfg.encoder.vit_patch,
            cfg.encoder.vit_depth,
            cfg.encoder.vit_width,
        ) = (4, 1, 12);
        (cfg.encoder.vit_heads, cfg.encoder.vit_image_size) = (3, 8);
        (
            cfg.keys.mae_decoder_width,
            cfg.keys.mae_decoder_depth,
            cfg.keys.mae_decoder_heads,
        ) = (8, 1, 2);
        crate::methods::check_config(&cfg, &[]).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let info = DataInfo {
            shape: [3, 8, 8],
            num_classes: 2,
        };
        let mae = Mae::new(&vs.root(), &cfg.method_view(), &info).unwrap();
        tch::manual_seed(3);
        let x = Tensor::rand([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        let noise = Tensor::rand([2, 4], (Kind::Float, Device::Cpu));
        let (pred, mask, grid) = mae.forward(&x, &noise);
        assert_eq!((pred.size(), grid), (vec![2, 4, 48], (2, 2)));
        // 4 patches at ratio 0.75: 1 visible, 3 hidden, per image.
        assert_eq!(mask.sum(Kind::Float).double_value(&[]), 6.0);
        // A perfect prediction of the hidden patches gives zero loss whatever the visible
        // ones hold.
        let target = patchify(&x, 4);
        let perfect =
            &target * &mask.unsqueeze(-1) + (target.ones_like() * 7.0) * (1.0 - mask.unsqueeze(-1));
        assert_eq!(
            losses::mae(&perfect, &target, &mask, false).double_value(&[]),
            0.0
        );
        // The examples picture: 2 rows of 3 images of 8 x 8.
        let pic = mae.examples(&x).unwrap();
        assert_eq!(pic.size(), vec![3, 2 * 10 - 2, 3 * 10 - 2]);
    }
}
