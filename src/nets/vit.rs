//! A small Vision Transformer (Dosovitskiy et al. 2021) for small images, with timm's
//! variable names (`patch_embed.proj`, `pos_embed`, `blocks.i.norm1`, `blocks.i.attn.qkv`,
//! `blocks.i.attn.proj`, `blocks.i.norm2`, `blocks.i.mlp.fc1`, `blocks.i.mlp.fc2`, `norm`),
//! as timm's `VisionTransformer(img_size, patch_size, in_chans, embed_dim, depth,
//! num_heads, mlp_ratio=4, qkv_bias=True, class_token=False, global_pool="avg",
//! fc_norm=False, num_classes=0)` builds them: pre-norm blocks (LayerNorm eps 1e-6,
//! multi-head self-attention, a GELU MLP of 4x the width), learned absolute position
//! embeddings, a final LayerNorm on every token and no class token: the feature vector is
//! the mean of the patch tokens. That makes the network one stage of a `Backbone` whose
//! map is the patch tokens on their grid, `[B, width, H / patch, W / patch]`, so
//! segmentation reads the same map.
//!
//! The position embeddings are made for `vit_image_size`; other image sizes (multi-crop's
//! local crops, tiles) take them resampled bicubically to their grid, as timm's
//! `dynamic_img_size` does.

use super::Backbone;
use tch::Tensor;
use tch::nn::{self, Module};

/// The ViT's shape (the `vit_*` keys).
#[derive(Debug, Clone, Copy)]
pub struct VitShape {
    pub patch: i64,
    pub depth: i64,
    pub width: i64,
    pub heads: i64,
    pub image_size: i64,
}

/// A pre-norm transformer block (timm's `Block`).
#[derive(Debug)]
pub struct Block {
    norm1: nn::LayerNorm,
    qkv: nn::Linear,
    proj: nn::Linear,
    norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    heads: i64,
}

/// timm's LayerNorm (eps 1e-6).
pub fn layer_norm(p: nn::Path, width: i64) -> nn::LayerNorm {
    let cfg = nn::LayerNormConfig {
        eps: 1e-6,
        ..Default::default()
    };
    nn::layer_norm(p, vec![width], cfg)
}

/// A Linear with timm's initialisation: weights N(0, 0.02) (timm truncates at 2 sigma),
/// zero bias.
pub fn linear(p: nn::Path, i: i64, o: i64) -> nn::Linear {
    let cfg = nn::LinearConfig {
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        },
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(p, i, o, cfg)
}

impl Block {
    pub fn new(p: &nn::Path, width: i64, heads: i64) -> Block {
        let (attn, mlp) = (p / "attn", p / "mlp");
        Block {
            norm1: layer_norm(p / "norm1", width),
            qkv: linear(&attn / "qkv", width, 3 * width),
            proj: linear(&attn / "proj", width, width),
            norm2: layer_norm(p / "norm2", width),
            fc1: linear(&mlp / "fc1", width, 4 * width),
            fc2: linear(&mlp / "fc2", 4 * width, width),
            heads,
        }
    }

    /// `[B, N, D]` -> `[B, N, D]`: x + attn(norm1(x)), then + mlp(norm2(.)).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (b, n, d) = x.size3().unwrap();
        let h = self.heads;
        let qkv = self
            .qkv
            .forward(&self.norm1.forward(x))
            .view([b, n, 3, h, d / h])
            .permute([2, 0, 3, 1, 4]); // [3, B, h, N, d/h]
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let scale = ((d / h) as f64).powf(-0.5);
        let attn = (q.matmul(&k.transpose(-2, -1)) * scale).softmax(-1, x.kind()); // [B, h, N, N]
        let o = attn.matmul(&v).transpose(1, 2).reshape([b, n, d]); // [B, N, D]
        let x = x + self.proj.forward(&o);
        let y = self
            .fc2
            .forward(&self.fc1.forward(&self.norm2.forward(&x)).gelu("none"));
        x + y
    }
}

/// The ViT with its token-level steps public (`patch_tokens`, `blocks`, `norm`), for
/// methods that work on tokens (MAE runs the blocks on the visible patches only); the
/// backbone (`vit`) wraps the same network.
#[derive(Debug)]
pub struct Vit {
    patch_embed: nn::Conv2D,
    /// `[1, g * g, D]` for the `g` x `g` grid of `vit_image_size`.
    pos_embed: Tensor,
    grid: i64,
    blocks: Vec<Block>,
    norm: nn::LayerNorm,
}

impl Vit {
    /// The token width D.
    pub fn width(&self) -> i64 {
        self.pos_embed.size()[2]
    }

    /// The patch side p.
    pub fn patch(&self) -> i64 {
        self.patch_embed.ws.size()[2]
    }

    /// The patch tokens of `[B, C, H, W]` images with their position embeddings added:
    /// `[B, N, D]` (N = gh * gw, row-major), and the grid (gh, gw).
    pub fn patch_tokens(&self, xs: &Tensor) -> (Tensor, (i64, i64)) {
        let t = self.patch_embed.forward(xs); // [B, D, gh, gw]
        let (_, _, gh, gw) = t.size4().unwrap();
        let x = t.flatten(2, 3).transpose(1, 2) + self.pos_embed_for(gh, gw); // [B, N, D]
        (x, (gh, gw))
    }

    /// The transformer blocks on any set of tokens `[B, n, D]` (every patch, or a subset).
    pub fn blocks(&self, tokens: &Tensor) -> Tensor {
        let mut x = tokens.shallow_clone();
        for block in &self.blocks {
            x = block.forward(&x);
        }
        x
    }

    /// The final LayerNorm of every token.
    pub fn norm(&self, tokens: &Tensor) -> Tensor {
        self.norm.forward(tokens)
    }

    /// The position embeddings for a `gh` x `gw` grid: `[1, gh * gw, D]`.
    pub fn pos_embed_for(&self, gh: i64, gw: i64) -> Tensor {
        if (gh, gw) == (self.grid, self.grid) {
            return self.pos_embed.shallow_clone();
        }
        let d = self.pos_embed.size()[2];
        self.pos_embed
            .view([1, self.grid, self.grid, d])
            .permute([0, 3, 1, 2])
            .upsample_bicubic2d([gh, gw], false, None, None) // [1, D, gh, gw]
            .permute([0, 2, 3, 1])
            .reshape([1, gh * gw, d])
    }
}

impl Vit {
    /// `[B, C, H, W]` -> the normalised patch tokens on their grid `[B, D, H / p, W / p]`.
    pub fn map(&self, xs: &Tensor) -> Tensor {
        let (x, (gh, gw)) = self.patch_tokens(xs); // [B, N, D]
        let (b, _, d) = x.size3().unwrap();
        self.norm(&self.blocks(&x))
            .transpose(1, 2)
            .reshape([b, d, gh, gw])
    }
}

/// The ViT as a one-stage `Backbone` with global average pooling of the patch tokens; its
/// token-level steps stay reachable (`Backbone::vit`).
pub fn vit(p: &nn::Path, in_channels: i64, s: VitShape) -> Backbone {
    let conv = nn::ConvConfig {
        stride: s.patch,
        ..Default::default()
    };
    let grid = s.image_size / s.patch;
    let body = Vit {
        patch_embed: nn::conv2d(
            p / "patch_embed" / "proj",
            in_channels,
            s.width,
            s.patch,
            conv,
        ),
        pos_embed: p.var(
            "pos_embed",
            &[1, grid * grid, s.width],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        ),
        grid,
        blocks: (0..s.depth)
            .map(|i| Block::new(&(p / "blocks" / i), s.width, s.heads))
            .collect(),
        norm: layer_norm(p / "norm", s.width),
    };
    Backbone::transformer(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::ModuleT;
    use tch::{Device, Kind};

    const TINY: VitShape = VitShape {
        patch: 4,
        depth: 2,
        width: 12,
        heads: 3,
        image_size: 16,
    };

    #[test]
    fn vit_has_timm_names_and_counts() {
        let _rng = crate::torch_rng_lock();
        let vs = nn::VarStore::new(Device::Cpu);
        let net = vit(&vs.root(), 3, TINY);
        let vars = vs.variables();
        for name in [
            "patch_embed.proj.weight",
            "pos_embed",
            "blocks.1.attn.qkv.weight",
            "blocks.1.attn.proj.bias",
            "blocks.0.mlp.fc2.weight",
            "blocks.0.norm2.bias",
            "norm.weight",
        ] {
            assert!(vars.contains_key(name), "{name} missing: {:?}", vars.keys());
        }
        // Patch embedding 3*16*12 + 12, positions 16 * 12, per block 2 LayerNorms (48),
        // qkv 12*36 + 36, proj 12*12 + 12, fc1 12*48 + 48, fc2 48*12 + 12; final norm 24.
        let block = 48 + 468 + 156 + 624 + 588;
        let want = 588 + 192 + 2 * block + 24;
        let got: i64 = vars.values().map(|t| t.numel() as i64).sum();
        assert_eq!(got, want);
        assert_eq!(net.dim(), 12);
    }

    #[test]
    fn the_token_steps_compose_to_the_backbone_and_run_on_token_subsets() {
        let _rng = crate::torch_rng_lock();
        let vs = nn::VarStore::new(Device::Cpu);
        let net = vit(&vs.root(), 3, TINY);
        let vit = net.vit().unwrap();
        let x = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let (tokens, grid) = vit.patch_tokens(&x);
        assert_eq!(
            (tokens.size(), grid, vit.width()),
            (vec![2, 16, 12], (4, 4), 12)
        );
        let whole = vit.norm(&vit.blocks(&tokens)); // [2, 16, 12]
        let map = net.maps(&x, false)[0].shallow_clone(); // [2, 12, 4, 4]
        assert!(
            whole
                .transpose(1, 2)
                .reshape([2, 12, 4, 4])
                .allclose(&map, 1e-6, 1e-6, false)
        );
        // The blocks on 5 of the 16 tokens: attention sees only those, so the result differs
        // from the same tokens' outputs in the full sequence.
        let idx = Tensor::from_slice(&[0i64, 3, 5, 10, 15]);
        let subset = vit.blocks(&tokens.index_select(1, &idx));
        assert_eq!(subset.size(), vec![2, 5, 12]);
        let full = vit.blocks(&tokens).index_select(1, &idx);
        assert!((subset - full).abs().max().double_value(&[]) > 1e-4);
    }

    #[test]
    fn vit_maps_are_the_patch_grid_and_other_sizes_resample_positions() {
        let _rng = crate::torch_rng_lock();
        let vs = nn::VarStore::new(Device::Cpu);
        let net = vit(&vs.root(), 1, TINY);
        let x = Tensor::rand([2, 1, 16, 16], (Kind::Float, Device::Cpu));
        let maps = net.maps(&x, false);
        assert_eq!(maps[0].size(), vec![2, 12, 4, 4]);
        let f = net.forward_t(&x, false);
        assert!(f.allclose(
            &maps[0].mean_dim(&[2i64, 3][..], false, Kind::Float),
            1e-6,
            1e-6,
            false
        ));
        // An 8x8 crop: a 2x2 grid with resampled positions.
        let small = net.forward_t(&x.narrow(2, 0, 8).narrow(3, 0, 8), false);
        assert_eq!(small.size(), vec![2, 12]);
        // Tokens interact: changing one patch changes every token's output.
        let y = x.copy();
        let _ = y.narrow(2, 0, 4).narrow(3, 0, 4).fill_(0.0);
        let d = (net.maps(&y, false)[0].shallow_clone() - &maps[0]).abs();
        assert!(d.get(0).get(0).get(3).get(3).double_value(&[]) > 0.0);
    }
}
