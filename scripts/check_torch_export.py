"""Loads encoders exported by `selfsup export` into the equivalent PyTorch modules and
compares their outputs with the features selfsup's evaluation computed.

usage: python check_torch_export.py [--tol T] ENCODER.safetensors IO.safetensors [ENCODER IO ...]
Each IO.safetensors holds `input` [B, C, H, W] (the data images) and `output` [B, D] (what
selfsup's evaluation extracts from them). The metadata's `input` says what the network is
applied to: `image`, `lightness` (Lab L / 100 of sRGB images, colorization) or
`patch-mean` (each patch of a grid encoded, the codes averaged, CPC). Prints the largest
difference of each pair; exits 0 when every output is finite and every difference is
within T (default 1e-4): a NaN or an infinity anywhere fails the check, whichever pair it
is in (Python's `max` would drop a NaN that does not come first).
"""
import json
import math
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from torchvision.models import resnet18


def small_cnn(in_channels, widths, pool=1):
    class Stage(nn.Module):
        def __init__(self, cin, w, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, w, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(w)
            self.conv2 = nn.Conv2d(w, w, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(w)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(x)))

    class Cnn(nn.Module):
        def __init__(self):
            super().__init__()
            cin = in_channels
            for i, w in enumerate(widths):
                setattr(self, f"stage{i}", Stage(cin, w, 1 if i == 0 else 2))
                cin = w
            self.n = len(widths)

        def forward(self, x):
            for i in range(self.n):
                x = getattr(self, f"stage{i}")(x)
            if pool == 1:
                return x.mean(dim=(-2, -1))
            return nn.functional.adaptive_avg_pool2d(x, pool).flatten(1)

    return Cnn()


def cifar_resnet18(in_channels, width):
    if width != 1.0:
        raise SystemExit("torchvision's resnet18 has width 1.0 only")
    m = resnet18()
    m.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    m.fc = nn.Identity()
    return m


def vit(in_channels, patch, depth, width, heads, image_size):
    """timm's VisionTransformer(img_size, patch_size, in_chans, embed_dim, depth, num_heads,
    mlp_ratio=4, qkv_bias=True, class_token=False, global_pool="avg", fc_norm=False,
    num_classes=0), written out with timm's module names (timm is not in the setup venv);
    position embeddings resampled bicubically for other image sizes (dynamic_img_size)."""
    F = nn.functional

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(width, 3 * width)
            self.proj = nn.Linear(width, width)

        def forward(self, x):
            b, n, d = x.shape
            q, k, v = self.qkv(x).view(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            attn = (q @ k.transpose(-2, -1) * (d // heads) ** -0.5).softmax(-1)
            return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(width, 4 * width)
            self.fc2 = nn.Linear(4 * width, width)

        def forward(self, x):
            return self.fc2(F.gelu(self.fc1(x)))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = nn.LayerNorm(width, eps=1e-6)
            self.attn = Attention()
            self.norm2 = nn.LayerNorm(width, eps=1e-6)
            self.mlp = Mlp()

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class PatchEmbed(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Conv2d(in_channels, width, patch, patch)

    class Vit(nn.Module):
        def __init__(self):
            super().__init__()
            self.grid = image_size // patch
            self.patch_embed = PatchEmbed()
            self.pos_embed = nn.Parameter(torch.zeros(1, self.grid**2, width))
            self.blocks = nn.Sequential(*[Block() for _ in range(depth)])
            self.norm = nn.LayerNorm(width, eps=1e-6)

        def forward(self, x):
            t = self.patch_embed.proj(x)
            gh, gw = t.shape[-2:]
            pos = self.pos_embed
            if (gh, gw) != (self.grid, self.grid):
                pos = pos.view(1, self.grid, self.grid, width).permute(0, 3, 1, 2)
                pos = F.interpolate(pos, size=(gh, gw), mode="bicubic", align_corners=False)
                pos = pos.permute(0, 2, 3, 1).reshape(1, gh * gw, width)
            x = self.blocks(t.flatten(2).transpose(1, 2) + pos)
            return self.norm(x).mean(1)

    return Vit()


def lightness(rgb):
    """Lab L / 100 of sRGB images in [0, 1] (D65 white), [B, 3, H, W] -> [B, 1, H, W]."""
    c = rgb.clamp(0, 1)
    linear = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = 0.2126729 * linear[:, 0:1] + 0.7151522 * linear[:, 1:2] + 0.072175 * linear[:, 2:3]
    delta = 6 / 29
    f = torch.where(y > delta**3, y.clamp_min(1e-12) ** (1 / 3), y / (3 * delta**2) + 4 / 29)
    return (116 * f - 16) / 100


def patch_mean(net, x, patch, stride):
    """Every patch of the grid encoded on its own, the codes averaged: [B, C, H, W] -> [B, D]."""
    p = x.unfold(2, patch, stride).unfold(3, patch, stride)  # [B, C, rows, cols, p, p]
    b, c, rows, cols = p.shape[:4]
    flat = p.permute(0, 2, 3, 1, 4, 5).reshape(b * rows * cols, c, patch, patch)
    return net(flat).view(b, rows * cols, -1).mean(1)


def check(weights, io):
    with safe_open(weights, "pt") as f:
        meta = f.metadata()
    cin = int(meta["in_channels"])
    if meta["encoder"] == "resnet18":
        model = cifar_resnet18(cin, float(meta["resnet_width"]))
    elif meta["encoder"] == "vit":
        keys = ["vit_patch", "vit_depth", "vit_width", "vit_heads", "vit_image_size"]
        model = vit(cin, *(int(meta[k]) for k in keys))
    else:
        model = small_cnn(cin, json.loads(meta["cnn_widths"]), int(meta.get("cnn_pool", "1")))
    model.load_state_dict(load_file(weights), strict=True)
    model.eval()
    kind = meta.get("input", "image")
    forward = {
        "image": model,
        "lightness": lambda x: model(lightness(x)),
        "patch-mean": lambda x: patch_mean(model, x, int(meta["patch"]), int(meta["stride"])),
    }[kind]
    t = load_file(io)
    with torch.no_grad():
        out = forward(t["input"])
    finite = bool(torch.isfinite(out).all() and torch.isfinite(t["output"]).all())
    diff = (out - t["output"]).abs().max().item() if finite else math.inf
    params = sum(p.numel() for p in model.parameters())
    note = "" if finite else " (not finite: NaN or infinity in the features)"
    print(f"{meta.get('method', '-')}: {meta['encoder']} on {kind}, {params} parameters, max |torch - selfsup| = {diff:.3g}{note}")
    return diff


def main():
    args = sys.argv[1:]
    tol = 1e-4
    if args[:1] == ["--tol"]:
        tol, args = float(args[1]), args[2:]
    if not args or len(args) % 2:
        raise SystemExit(__doc__)
    diffs = [check(w, io) for w, io in zip(args[::2], args[1::2])]
    sys.exit(0 if all(math.isfinite(d) and d <= tol for d in diffs) else 1)


if __name__ == "__main__":
    main()
