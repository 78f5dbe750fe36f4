"""Augmentation throughput of torchvision for two SimCLR views per image.

The same pipeline as `selfsup bench-augment` (RandomResizedCrop scale (0.08, 1) without
antialiasing, flip 0.5, ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale 0.2,
Gaussian blur with a kernel of ~10% of the size and sigma (0.1, 2) with p 0.5), on uint8
CHW tensors. A shape CxS is C channels of SxS (1x28: gray Fashion-MNIST size, where the
colour-only steps do nothing). Parallel runs use one process per thread, each with
torch.set_num_threads(1), as a DataLoader with workers would. Prints one JSON object per
(shape, threads).

usage: python bench_augment_torchvision.py --images N --threads 1 2 --shapes 1x28 3x32 3x96
"""
import argparse
import json
import multiprocessing as mp
import time

import torch
from torchvision.transforms import v2


def pipeline(size):
    k = max(1, round(size * 0.1)) | 1
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=False),
        v2.RandomHorizontalFlip(0.5),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(0.2),
        v2.RandomApply([v2.GaussianBlur(k, sigma=(0.1, 2.0))], p=0.5),
    ])


def work(args):
    channels, size, n, seed = args
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8)
    t = pipeline(size)
    start = time.perf_counter()
    for img in images:
        t(img)
        t(img)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--shapes", nargs="+", default=["3x32", "3x96"], help="CxS, e.g. 1x28")
    a = ap.parse_args()
    for shape in a.shapes:
        channels, size = map(int, shape.split("x"))
        for threads in a.threads:
            per = a.images // threads
            start = time.perf_counter()
            if threads == 1:
                work((channels, size, per, 0))
            else:
                with mp.get_context("fork").Pool(threads) as pool:
                    pool.map(work, [(channels, size, per, i) for i in range(threads)])
            secs = time.perf_counter() - start
            row = {"channels": channels, "size": size, "threads": threads, "images_per_sec": per * threads / secs}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
