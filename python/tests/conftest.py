"""Fixtures of the Python tests. They run in a venv where the wheel is installed
(scripts/test_python.sh makes it): `selfsup` is the installed package, never the source
tree. Tiny runs on a generated folder of 8x8 PNGs are trained once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import selfsup

CLASSES = 4
PER_CLASS = 20
SIZE = 8
# Tiny runs: 64 training images, batches of 32, one epoch.
TINY = {"image_size": SIZE, "epochs": 1, "batch_size": 32, "seed": 3}
RUNS = {
    "cnn": ("simclr", {"cnn_widths": [4, 8], "cnn_pool": 2, "proj_dim": 8}),
    "resnet18": ("simclr", {"encoder": "resnet18", "proj_dim": 8}),
    # vit_image_size = the images' size: loads into timm as the README says, unchanged.
    "vit": (
        "simclr",
        {"encoder": "vit", "vit_patch": 2, "vit_depth": 2, "vit_width": 24, "vit_heads": 3}
        | {"vit_image_size": SIZE, "proj_dim": 8},
    ),
    # Position embeddings for 12x12 images, resampled to the 8x8 images' grid.
    "vit-resampled": (
        "simclr",
        {"encoder": "vit", "vit_patch": 2, "vit_depth": 2, "vit_width": 24, "vit_heads": 3}
        | {"vit_image_size": 12, "proj_dim": 8},
    ),
    "cpc": ("cpc", {"cnn_widths": [4, 8], "cpc_patch": 4, "cpc_stride": 2, "cpc_negatives": 8}),
    "colorization": ("colorization", {"cnn_widths": [4, 8], "decoder_widths": [8, 4]}),
}


def cli() -> Path:
    """The `selfsup` command installed with the wheel in this venv."""
    return Path(sys.executable).parent / "selfsup"


def selfsup_cli(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([cli(), *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="session")
def setup_venv() -> Path:
    """scripts/setup.sh's venv (its pip installs the wheel into other test venvs)."""
    return Path(os.environ["SELFSUP_SETUP_VENV"])


@pytest.fixture(scope="session")
def wheel() -> Path:
    return Path(os.environ["SELFSUP_WHEEL"])


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`CLASSES` class folders of `PER_CLASS` 8x8 RGB PNGs: class k is bright in quadrant k,
    over seeded noise."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for k in range(CLASSES):
        (root / f"class{k}").mkdir()
        for i in range(PER_CLASS):
            img = rng.integers(0, 120, (SIZE, SIZE, 3), dtype=np.uint8)
            r, c = divmod(k, 2)
            img[r * 4 : r * 4 + 4, c * 4 : c * 4 + 4] += 120
            Image.fromarray(img).save(root / f"class{k}" / f"img{i:03}.png")
    return root


def held_out_files(folder: Path) -> tuple[list[Path], list[int]]:
    """The test split selfsup makes of a class-folder tree: in each class (sorted), every
    fifth file in name order. With the labels."""
    files, labels = [], []
    for k, cls in enumerate(sorted(p for p in folder.iterdir() if p.is_dir())):
        names = sorted(cls.iterdir())
        held = [f for i, f in enumerate(names) if (i + 1) % 5 == 0]
        files += held
        labels += [k] * len(held)
    return files, labels


def images(files: list[Path]) -> torch.Tensor:
    """PNG files at their own size as `[N, 3, H, W]` in [0, 1]."""
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="session")
def test_images(image_folder: Path) -> tuple[torch.Tensor, list[int]]:
    files, labels = held_out_files(image_folder)
    return images(files), labels


@pytest.fixture(scope="session")
def runs(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, selfsup.Run]:
    """One tiny run per entry of RUNS, trained through the API."""
    out = tmp_path_factory.mktemp("runs")
    trained = {}
    for name, (method, keys) in RUNS.items():
        trained[name] = selfsup.pretrain(
            method, f"folder:{image_folder}", out=out / name, quiet=True, **TINY, **keys
        )
    return trained


def embedded(run: selfsup.Run, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    """`selfsup embed --split test` of the run: (features, labels)."""
    out = tmp / f"embed-{run.path.name}"
    o = selfsup_cli("embed", "--run", run.path, "--split", "test", "--out", out)
    assert o.returncode == 0, o.stderr
    return np.load(out / "embeddings_test.npy"), np.load(out / "labels_test.npy")


@pytest.fixture(scope="session")
def embeddings(
    runs: dict[str, selfsup.Run],
    test_images: tuple[torch.Tensor, list[int]],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, np.ndarray]:
    """Each run's test features as `selfsup embed` writes them; their labels are those of
    `held_out_files` (the rows are the same images)."""
    tmp = tmp_path_factory.mktemp("embed")
    out = {}
    for name, run in runs.items():
        features, labels = embedded(run, tmp)
        assert labels.tolist() == test_images[1], name
        out[name] = features
    return out
