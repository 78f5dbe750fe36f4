"""Exports in other libraries: the ResNet-18 and ViT exports load strictly into the
`timm.create_model` calls the README gives, and `selfsup export --format onnx` writes
models that ONNX Runtime runs with `selfsup embed`'s features, for every encoder kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

import selfsup
from conftest import selfsup_cli


def export(run: selfsup.Run, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    o = selfsup_cli("export", "--run", run.path, "--out", path)
    assert o.returncode == 0, o.stderr
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return load_file(path), meta


def assert_embed_s_features(model: nn.Module, x: torch.Tensor, want: np.ndarray, what: str) -> None:
    """`model` in eval mode gives `want` (`selfsup embed`'s features of `x`) to 1e-5."""
    with torch.no_grad():
        got = model.eval()(x).numpy()
    diff = np.abs(got - want).max()
    print(f"{what}: max |timm - embed| = {diff:.2e}")
    assert got.shape == want.shape and diff <= 1e-5, (what, diff)


def test_resnet18_loads_into_timm_with_the_cifar_stem(
    runs: dict[str, selfsup.Run],
    embeddings: dict[str, np.ndarray],
    test_images: tuple[torch.Tensor, list[int]],
    tmp_path: Path,
) -> None:
    state, meta = export(runs["resnet18"], tmp_path / "r.safetensors")
    c = int(meta["in_channels"])
    model = timm.create_model("resnet18", pretrained=False, num_classes=0, in_chans=c)
    model.conv1 = nn.Conv2d(c, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    model.load_state_dict(state, strict=True)
    assert_embed_s_features(model, test_images[0], embeddings["resnet18"], "timm resnet18")


def test_vit_loads_into_timm(
    runs: dict[str, selfsup.Run],
    embeddings: dict[str, np.ndarray],
    test_images: tuple[torch.Tensor, list[int]],
    tmp_path: Path,
) -> None:
    state, meta = export(runs["vit"], tmp_path / "v.safetensors")
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=int(meta["vit_image_size"]),
        patch_size=int(meta["vit_patch"]),
        embed_dim=int(meta["vit_width"]),
        depth=int(meta["vit_depth"]),
        num_heads=int(meta["vit_heads"]),
        in_chans=int(meta["in_channels"]),
        class_token=False,
        global_pool="avg",
        fc_norm=False,
    )
    model.load_state_dict(state, strict=True)
    assert_embed_s_features(model, test_images[0], embeddings["vit"], "timm vit")


@pytest.mark.parametrize("name", ["cnn", "resnet18", "vit", "vit-resampled", "cpc", "colorization"])
def test_onnx_runtime_gives_embed_s_features(
    name: str,
    runs: dict[str, selfsup.Run],
    embeddings: dict[str, np.ndarray],
    test_images: tuple[torch.Tensor, list[int]],
    tmp_path: Path,
) -> None:
    path = tmp_path / f"{name}.onnx"
    o = selfsup_cli("export", "--run", runs[name].path, "--out", path)
    assert o.returncode == 0, o.stderr
    assert "ONNX Runtime gives PyTorch's features" in o.stdout, o.stdout
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = test_images[0].numpy()
    # Two batch sizes: the batch axis is dynamic.
    (got,) = session.run(["features"], {"images": x})
    (few,) = session.run(["features"], {"images": x[:3]})
    diff = np.abs(got - embeddings[name]).max()
    print(f"{name}: max |onnxruntime - embed| = {diff:.2e}")
    assert diff <= 1e-4 and np.abs(few - embeddings[name][:3]).max() <= 1e-4


def test_export_through_the_api_names_the_format(
    runs: dict[str, selfsup.Run], tmp_path: Path
) -> None:
    onnx = runs["cnn"].export(tmp_path / "enc.bin", format="onnx")
    assert onnxruntime.InferenceSession(str(onnx)).get_inputs()[0].name == "images"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc.bin"], "no weights left behind"
    weights = runs["cnn"].export(tmp_path / "enc.safetensors")
    assert selfsup.load_encoder(weights).training is False
    with pytest.raises(selfsup.SelfsupError, match="--format"):
        runs["cnn"].export(tmp_path / "x", format="tflite")  # type: ignore[arg-type]
