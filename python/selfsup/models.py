"""selfsup's encoders as PyTorch modules, built from a `selfsup export` file, and their ONNX
export.

- `cnn`: `SmallCNN`, a module of this file (`stageI.conv1/bn1/conv2/bn2`).
- `resnet18`: torchvision's `resnet18`, or timm's (`backend="timm"`, also for
  `resnet_width` other than 1), with the CIFAR stem that selfsup trains: `conv1` is a 3x3
  convolution with stride 1 and padding 1 (not 7x7 with stride 2) and there is no max-pool
  (`nn.Identity()`); no classifier (`fc` is `nn.Identity()`).
- `vit`: timm's `VisionTransformer` (`class_token=False, global_pool="avg",
  fc_norm=False, num_classes=0`) for the export's image size. Where the images are not
  the `vit_image_size` its position embeddings were made for, they are resampled once
  here as selfsup resamples them in every forward pass (bicubic, no antialiasing), so
  that the module loads strictly and gives selfsup's features.

Encoders applied to something other than the image get a wrapper whose `net` is the
module above: `OnLightness` (colorization) and `PatchMean` (CPC).

This file imports only torch, safetensors, torchvision and timm (the last two when the
architecture needs them): the selfsup binary runs it as a script for
`selfsup export --format onnx` (`python -c <this file> onnx WEIGHTS OUT`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

try:
    from selfsup.errors import ExportError
except ImportError:  # run as a script by the selfsup binary

    class ExportError(ValueError):  # type: ignore[no-redef]
        """A file that is not an encoder written by `selfsup export`."""


Backend = Literal["torchvision", "timm"]
KINDS = ("cnn", "resnet18", "vit")


@dataclass(frozen=True)
class Export:
    """An encoder written by `selfsup export`: its tensors and its metadata."""

    path: Path
    meta: dict[str, str]
    state_dict: dict[str, torch.Tensor]

    @property
    def kind(self) -> str:
        """`cnn`, `resnet18` or `vit`."""
        return self.meta["encoder"]

    @property
    def input(self) -> str:
        """What the network is applied to: `image`, `lightness` or `patch-mean`."""
        return self.meta.get("input", "image")

    def int(self, key: str) -> int:
        if key not in self.meta:
            raise ExportError(f"{self.path}: the export's metadata has no '{key}'")
        return int(self.meta[key])

    @property
    def input_shape(self) -> tuple[int, int, int] | None:
        """`(C, H, W)` of the images selfsup's evaluation feeds the encoder (values in
        [0, 1]); None in exports written before selfsup recorded it."""
        if "input_shape" not in self.meta:
            return None
        c, h, w = json.loads(self.meta["input_shape"])
        return int(c), int(h), int(w)


def read_export(path: str | os.PathLike[str]) -> Export:
    """Reads an encoder file of `selfsup export`; ExportError names what is wrong."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise ExportError(
            f"{p}: no such encoder export (write one with `selfsup export --run RUN --out {p}`)"
        )
    try:
        with safe_open(str(p), "pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ExportError(f"{p} is not a safetensors file: {e}") from e
    kind = meta.get("encoder")
    if kind not in KINDS:
        raise ExportError(
            f"{p} is not an encoder written by `selfsup export`: its metadata's 'encoder' is "
            f"{kind!r}, not one of {', '.join(KINDS)}"
        )
    return Export(p, meta, tensors)


class Stage(nn.Module):
    """Two 3x3 convolutions with BatchNorm and ReLU; the first may halve the size."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(x)))


class SmallCNN(nn.Module):
    """selfsup's small CNN (`encoder = "cnn"`): stages of `Stage`, each after the first
    halving the size, then the last map average-pooled to a `pool` x `pool` grid and
    flattened channel-major (`[B, widths[-1] * pool**2]`)."""

    def __init__(self, in_channels: int, widths: list[int], pool: int = 1) -> None:
        super().__init__()
        cin = in_channels
        for i, w in enumerate(widths):
            self.add_module(f"stage{i}", Stage(cin, w, 1 if i == 0 else 2))
            cin = w
        self.stages = len(widths)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.stages):
            x = self.get_submodule(f"stage{i}")(x)
        if self.pool == 1:
            return x.mean(dim=(-2, -1))
        return F.adaptive_avg_pool2d(x, self.pool).flatten(1)


def lightness(rgb: torch.Tensor) -> torch.Tensor:
    """Lab L / 100 of sRGB images in [0, 1] (D65 white), `[B, 3, H, W]` -> `[B, 1, H, W]`."""
    c = rgb.clamp(0, 1)
    linear = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = 0.2126729 * linear[:, 0:1] + 0.7151522 * linear[:, 1:2] + 0.072175 * linear[:, 2:3]
    delta = 6 / 29
    f = torch.where(y > delta**3, y.clamp_min(1e-12) ** (1 / 3), y / (3 * delta**2) + 4 / 29)
    return (116 * f - 16) / 100


class OnLightness(nn.Module):
    """`net` applied to the Lab lightness of RGB images (colorization's encoder)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(lightness(x))


class PatchMean(nn.Module):
    """Every `patch` x `patch` patch of the image at `stride` encoded on its own by `net`,
    the codes averaged (CPC's encoder): `[B, C, H, W]` -> `[B, D]`."""

    def __init__(self, net: nn.Module, patch: int, stride: int) -> None:
        super().__init__()
        self.net = net
        self.patch = patch
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x.unfold(2, self.patch, self.stride).unfold(3, self.patch, self.stride)
        b, c, rows, cols = p.shape[:4]
        flat = p.permute(0, 2, 3, 1, 4, 5).reshape(b * rows * cols, c, self.patch, self.patch)
        return self.net(flat).view(b, rows * cols, -1).mean(1)


def scaled(width: float) -> tuple[int, int, int, int]:
    """ResNet-18's stage widths times `width`, rounded as selfsup rounds them (half away
    from zero, at least 1)."""
    a, b, c, d = (max(1, math.floor(w * width + 0.5)) for w in (64, 128, 256, 512))
    return a, b, c, d


def torchvision_resnet18(in_channels: int, width: float = 1.0) -> nn.Module:
    """torchvision's resnet18 with selfsup's CIFAR stem (3x3 conv1, no max-pool), no fc."""
    from torchvision.models import resnet18

    if width != 1.0:
        raise ExportError(
            f"torchvision's resnet18 has width 1.0 only, this encoder resnet_width = {width}: "
            "load it with backend='timm'"
        )
    m = resnet18()
    m.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    m.fc = nn.Identity()
    return m


def timm_resnet18(in_channels: int, width: float = 1.0) -> nn.Module:
    """timm's resnet18 (`num_classes=0`) with selfsup's CIFAR stem (3x3 conv1, no max-pool)
    and its stage widths."""
    import timm

    widths = scaled(width)
    m = timm.create_model(
        "resnet18",
        pretrained=False,
        num_classes=0,
        in_chans=in_channels,
        channels=widths,
        stem_width=widths[0],
    )
    m.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    return m


def timm_vit(
    in_channels: int, patch: int, depth: int, width: int, heads: int, image_size: tuple[int, int]
) -> nn.Module:
    """timm's VisionTransformer with selfsup's layout, for `image_size` (H, W) images."""
    import timm

    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=image_size,
        patch_size=patch,
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        in_chans=in_channels,
        class_token=False,
        global_pool="avg",
        fc_norm=False,
    )


def resample_pos_embed(pos: torch.Tensor, grid: int, size: tuple[int, int]) -> torch.Tensor:
    """`[1, grid * grid, D]` position embeddings resampled to a `size` grid as selfsup does
    (bicubic, align_corners=False, no antialiasing; timm's own resampling antialiases)."""
    if size == (grid, grid):
        return pos
    d = pos.shape[-1]
    p = pos.reshape(1, grid, grid, d).permute(0, 3, 1, 2)
    p = F.interpolate(p.float(), size=size, mode="bicubic", align_corners=False)
    return p.permute(0, 2, 3, 1).reshape(1, size[0] * size[1], d).to(pos.dtype)


def image_size(e: Export) -> tuple[int, int]:
    """(H, W) of the images the encoder is applied to (the ViT's own size in old exports)."""
    shape = e.input_shape
    if shape is None:
        s = e.int("vit_image_size") if e.kind == "vit" else 32
        return s, s
    if e.input == "patch-mean":
        return e.int("patch"), e.int("patch")
    return shape[1], shape[2]


def network(e: Export, backend: Backend | None = None) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The bare network of export `e` (before any input wrapper) and the state dict that
    loads into it strictly."""
    cin = e.int("in_channels")
    state = dict(e.state_dict)
    if e.kind == "resnet18":
        width = float(e.meta.get("resnet_width", "1"))
        if backend == "timm" or (backend is None and width != 1.0):
            return timm_resnet18(cin, width), state
        if backend not in (None, "torchvision"):
            raise ExportError(f"backend {backend!r} is not one of torchvision, timm")
        return torchvision_resnet18(cin, width), state
    if backend == "torchvision":
        raise ExportError(f"{e.path}: torchvision has no module for the {e.kind} encoder")
    if e.kind == "vit":
        patch, grid = e.int("vit_patch"), e.int("vit_image_size") // e.int("vit_patch")
        h, w = image_size(e)
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], grid, (h // patch, w // patch))
        keys = ("vit_depth", "vit_width", "vit_heads")
        depth, width, heads = (e.int(k) for k in keys)
        return timm_vit(cin, patch, depth, width, heads, (h, w)), state
    if backend == "timm":
        raise ExportError(f"{e.path}: timm has no module for selfsup's small cnn encoder")
    widths = json.loads(e.meta["cnn_widths"])
    return SmallCNN(cin, widths, int(e.meta.get("cnn_pool", "1"))), state


def load_encoder(path: str | os.PathLike[str], backend: Backend | None = None) -> nn.Module:
    """The encoder in `path` (written by `selfsup export`) as a PyTorch module in eval mode,
    loaded strictly: it maps `[B, C, H, W]` images in [0, 1] to the features selfsup's
    evaluation computes. `backend` picks the library for `resnet18` (torchvision by default,
    timm); the ViT is always timm's, the small CNN `SmallCNN`."""
    e = read_export(path)
    net, state = network(e, backend)
    net.load_state_dict(state, strict=True)
    module: nn.Module = net
    if e.input == "lightness":
        module = OnLightness(net)
    elif e.input == "patch-mean":
        module = PatchMean(net, e.int("patch"), e.int("stride"))
    elif e.input != "image":
        raise ExportError(f"{e.path}: unknown input {e.input!r} in the metadata")
    return module.eval()


def export_onnx(weights: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict[str, object]:
    """Writes the ONNX model of the encoder in `weights` to `out` with torch's exporter:
    input `images` `[batch, C, H, W]` (in [0, 1], the export's `input_shape`), output
    `features`. With onnxruntime installed, runs it on other images and reports the
    largest difference from PyTorch's features (`max_diff`)."""
    e = read_export(weights)
    if e.input_shape is None:
        raise ExportError(f"{weights} has no input_shape: export it again with this selfsup")
    model = load_encoder(weights)
    g = torch.Generator().manual_seed(0)
    example = torch.rand(2, *e.input_shape, generator=g)
    tmp = Path(f"{out}.tmp")
    # The exporter reports its steps on stdout, which carries this script's one JSON line.
    with contextlib.redirect_stdout(sys.stderr), torch.no_grad():
        program = torch.onnx.export(
            model,
            (example,),
            None,
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
            dynamo=True,
        )
        program.save(str(tmp))
    os.replace(tmp, out)
    opset = program.model.opset_imports.get("", None)
    report: dict[str, object] = {"onnx": str(out), "opset": opset, "max_diff": None}
    try:
        import onnxruntime
    except ImportError:
        return report
    x = torch.rand(3, *e.input_shape, generator=g)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(["features"], {"images": x.numpy()})
    with torch.no_grad():
        want = model(x)
    report["max_diff"] = float((torch.from_numpy(got) - want).abs().max())
    return report


def main(argv: list[str]) -> None:
    if len(argv) != 3 or argv[0] != "onnx":
        raise SystemExit("usage: models.py onnx ENCODER.safetensors OUT.onnx")
    print(json.dumps(export_onnx(argv[1], argv[2])))


if __name__ == "__main__":
    main(sys.argv[1:])
