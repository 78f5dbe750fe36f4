"""Streaming throughput of torchvision for `selfsup bench-data`: ImageFolder + DataLoader
with SimCLR's two views per image (RandomResizedCrop(size, scale (0.08, 1)), flip 0.5,
ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale 0.2, PIL Gaussian blur with sigma in
(0.1, 2) with p 0.5, as solo-learn builds it), to float tensors; and PIL's JPEG decoding
alone (open + RGB) over the same files with as many processes, the physical reference.

Prints one JSON object per measurement:
  {"what": "torchvision", "size": S, "images": N, "seconds": T, "images_per_sec": R}
  {"what": "pil-decode", "images": N, "seconds": T, "images_per_sec": R}

usage: python bench_data_torchvision.py --root DIR --sizes 96 224 --images N --workers W
       [--batch 64] [--what torchvision pil-decode]
"""
import argparse
import json
import multiprocessing as mp
import random
import time

import torch
from PIL import Image, ImageFilter
from torchvision import datasets, transforms


class PILGaussianBlur:
    """solo-learn's GaussianBlur: PIL's filter with a random radius (sigma)."""

    def __init__(self, sigma=(0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, img):
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


class TwoViews:
    def __init__(self, t):
        self.t = t

    def __call__(self, img):
        return self.t(img), self.t(img)


def simclr(size):
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.08, 1.0)),
        transforms.RandomHorizontalFlip(0.5),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        transforms.RandomGrayscale(0.2),
        transforms.RandomApply([PILGaussianBlur()], p=0.5),
        transforms.ToTensor(),
    ])


def stream(root, size, images, workers, batch):
    torch.set_num_threads(1)
    ds = datasets.ImageFolder(root, transform=TwoViews(simclr(size)))
    g = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch, shuffle=True, num_workers=workers, generator=g,
        persistent_workers=False, drop_last=True, prefetch_factor=2 if workers else None)
    seen = 0
    start = time.perf_counter()
    for (v1, v2), _ in loader:
        seen += v1.shape[0]
        if seen >= images:
            break
    secs = time.perf_counter() - start
    return seen, secs


def decode(paths):
    for p in paths:
        with Image.open(p) as img:
            img.convert("RGB").load()
    return len(paths)


def pil_decode(root, images, workers):
    ds = datasets.ImageFolder(root)
    paths = [p for p, _ in ds.samples]
    random.Random(0).shuffle(paths)
    paths = paths[:images]
    parts = [paths[i::workers] for i in range(workers)]
    start = time.perf_counter()
    with mp.get_context("fork").Pool(workers) as pool:
        n = sum(pool.map(decode, parts))
    return n, time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 224])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--what", nargs="+", default=["torchvision", "pil-decode"])
    a = ap.parse_args()
    if "torchvision" in a.what:
        for size in a.sizes:
            n, secs = stream(a.root, size, a.images, a.workers, a.batch)
            print(json.dumps({"what": "torchvision", "size": size, "images": n, "seconds": secs,
                              "images_per_sec": n / secs}), flush=True)
    if "pil-decode" in a.what:
        n, secs = pil_decode(a.root, a.images, a.workers)
        print(json.dumps({"what": "pil-decode", "images": n, "seconds": secs,
                          "images_per_sec": n / secs}), flush=True)


if __name__ == "__main__":
    main()
