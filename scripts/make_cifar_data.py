"""Writes a generated data set in CIFAR-10's binary format, for runs where the real one is
not at hand (scripts/gpu_check.sh on a machine without network).

The files are those `selfsup --data cifar10:DIR` reads (src/data/cifar.rs):
data_batch_1.bin .. data_batch_5.bin (the training images, split evenly) and
test_batch.bin, each a run of 3073-byte records: the label byte, then the red, green and
blue planes of a 32x32 image, row-major. Image i has label i % 10; its pixels are the
label's colour and stripe frequency plus seeded noise and a random shift, so that features
can tell the classes apart (a linear probe scores far above chance) without any class being
one fixed image.

usage: python make_cifar_data.py --out DIR [--train 50000] [--test 10000] [--seed 0]
"""

import argparse
import ctypes
import itertools
import math
from pathlib import Path

import torch  # not numpy: the GPU check's venv holds torch, not necessarily numpy

CLASSES = 10
SIDE = 32


def images(n: int, first: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n labeled images, indices first.. first+n: ([n] uint8 labels, [n, 3, 32, 32] uint8)."""
    labels = torch.arange(first, first + n) % CLASSES  # [n]
    phase = torch.tensor([0.0, 2.1, 4.2])  # [3]
    hue = labels[:, None] * (2 * math.pi / CLASSES) + phase[None, :]  # [n, 3]
    colour = 128 + 80 * torch.cos(hue)  # [n, 3]
    freq = (1 + labels % 5).double()  # [n]
    shift = torch.rand(n, generator=gen, dtype=torch.float64) * 2 * math.pi  # [n]
    x = torch.arange(SIDE, dtype=torch.float64)  # [W]
    stripes = torch.sin(freq[:, None] * x[None, :] * (2 * math.pi / SIDE) + shift[:, None])
    vertical = labels >= CLASSES // 2  # half the classes stripe the other way
    pattern = torch.where(
        vertical[:, None, None], stripes[:, None, :], stripes[:, :, None]
    )  # [n, H, W]
    noise = 20 * torch.randn(n, 3, SIDE, SIDE, generator=gen, dtype=torch.float64)
    pixels = colour[:, :, None, None] + 40 * pattern[:, None, :, :] + noise
    return labels.to(torch.uint8), pixels.round().clamp(0, 255).to(torch.uint8)


def write(path: Path, labels: torch.Tensor, pixels: torch.Tensor) -> None:
    records = torch.cat([labels[:, None], pixels.reshape(len(labels), -1)], dim=1).contiguous()
    # The tensor's bytes as they lie in memory (uint8, row-major), without numpy.
    path.write_bytes(ctypes.string_at(records.data_ptr(), records.numel()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--train", type=int, default=50000, help="training images (>= 5)")
    ap.add_argument("--test", type=int, default=10000, help="test images")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.train < 5 or a.test < 1:
        ap.error("--train needs at least 5 images (one per batch file), --test at least 1")
    gen = torch.Generator().manual_seed(a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    bounds = [a.train * i // 5 for i in range(6)]
    for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        write(a.out / f"data_batch_{i + 1}.bin", *images(int(hi - lo), int(lo), gen))
    write(a.out / "test_batch.bin", *images(a.test, a.train, gen))
    print(f"{a.out}: {a.train} training and {a.test} test images in CIFAR-10's binary format")


if __name__ == "__main__":
    main()
