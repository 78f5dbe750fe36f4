"""Loads encoders exported by `selfsup export` into the PyTorch modules of the Python package
(python/selfsup/models.py: torchvision's and timm's resnet18 with the CIFAR stem, timm's
VisionTransformer, the small CNN, and the wrappers for colorization's and CPC's inputs)
and compares their outputs with the features selfsup's evaluation computed.

usage: python check_torch_export.py [--tol T] ENCODER.safetensors IO.safetensors [ENCODER IO ...]
Each IO.safetensors holds `input` [B, C, H, W] (the data images) and `output` [B, D] (what
selfsup's evaluation extracts from them). The metadata's `input` says what the network is
applied to: `image`, `lightness` (Lab L / 100 of sRGB images, colorization) or
`patch-mean` (each patch of a grid encoded, the codes averaged, CPC). Prints the largest
difference of each pair (over both libraries for a ResNet-18 of width 1); exits 0 when
every output is finite and every difference is within T (default 1e-4): a NaN or an
infinity anywhere fails the check, whichever pair it is in (Python's `max` would drop a NaN
that does not come first).
"""
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
from selfsup.models import load_encoder, read_export  # noqa: E402


def check(weights, io):
    e = read_export(weights)
    both = e.kind == "resnet18" and float(e.meta["resnet_width"]) == 1.0
    t = load_file(io)
    diff, libraries = 0.0, []
    for backend in ["torchvision", "timm"] if both else [None]:
        model = load_encoder(weights, backend)
        net = getattr(model, "net", model)
        libraries.append(f"{type(net).__module__.split('.')[0]} {type(net).__name__}")
        with torch.no_grad():
            out = model(t["input"])
        finite = bool(torch.isfinite(out).all() and torch.isfinite(t["output"]).all())
        diff = max(diff, (out - t["output"]).abs().max().item() if finite else math.inf)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{e.meta.get('method', '-')}: {e.kind} on {e.input}, {params} parameters, "
        f"{' and '.join(libraries)}, max |torch - selfsup| = {diff:.3g}"
        + ("" if math.isfinite(diff) else " (not finite: NaN or infinity in the features)")
    )
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
