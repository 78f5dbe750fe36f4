"""Loads an encoder exported by `selfsup export` into the equivalent PyTorch module and
compares its outputs with the ones selfsup computed.

usage: python check_torch_export.py ENCODER.safetensors IO.safetensors [TOLERANCE]
IO.safetensors holds `input` [B, C, H, W] and `output` [B, D] from the Rust encoder (eval mode).
Exits 0 and prints the largest difference when it is within TOLERANCE (default 1e-4).
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


def main():
    weights, io = sys.argv[1], sys.argv[2]
    tol = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-4
    with safe_open(weights, "pt") as f:
        meta = f.metadata()
    cin = int(meta["in_channels"])
    if meta["encoder"] == "resnet18":
        model = cifar_resnet18(cin, float(meta["resnet_width"]))
    else:
        model = small_cnn(cin, json.loads(meta["cnn_widths"]), int(meta.get("cnn_pool", "1")))
    model.load_state_dict(load_file(weights), strict=True)
    model.eval()
    t = load_file(io)
    with torch.no_grad():
        out = model(t["input"])
    diff = (out - t["output"]).abs().max().item()
    print(f"{meta['encoder']}: {sum(p.numel() for p in model.parameters())} parameters, max |torch - selfsup| = {diff:.3g}")
    sys.exit(0 if diff <= tol else 1)


if __name__ == "__main__":
    main()
