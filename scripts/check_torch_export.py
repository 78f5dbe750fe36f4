"""Loads encoders exported by `selfsup export` into the equivalent PyTorch modules and
compares their outputs with the features selfsup's evaluation computed.

usage: python check_torch_export.py [--tol T] ENCODER.safetensors IO.safetensors [ENCODER IO ...]
Each IO.safetensors holds `input` [B, C, H, W] (the data images) and `output` [B, D] (what
selfsup's evaluation extracts from them). The metadata's `input` says what the network is
applied to: `image`, `lightness` (Lab L / 100 of sRGB images, colorization) or
`patch-mean` (each patch of a grid encoded, the codes averaged, CPC). Prints the largest
difference of each pair; exits 0 when all are within T (default 1e-4).
"""
import json
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
    diff = (out - t["output"]).abs().max().item()
    params = sum(p.numel() for p in model.parameters())
    print(f"{meta.get('method', '-')}: {meta['encoder']} on {kind}, {params} parameters, max |torch - selfsup| = {diff:.3g}")
    return diff


def main():
    args = sys.argv[1:]
    tol = 1e-4
    if args[:1] == ["--tol"]:
        tol, args = float(args[1]), args[2:]
    if not args or len(args) % 2:
        raise SystemExit(__doc__)
    worst = max(check(w, io) for w, io in zip(args[::2], args[1::2]))
    sys.exit(0 if worst <= tol else 1)


if __name__ == "__main__":
    main()
