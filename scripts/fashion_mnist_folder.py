"""Writes Debian's Fashion-MNIST (the IDX files) as an image folder of 28x28 greyscale PNGs,
DIR/train/<class>/<n>.png and DIR/test/<class>/<n>.png, so that the streamed folder path
can be checked against the in-memory IDX path on the same images (docs/results.md).

usage: python fashion_mnist_folder.py --out DIR [--idx /usr/share/datasets/fashion-mnist]
"""
import argparse
import gzip
import os

import numpy as np
from PIL import Image

CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle_boot"]


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def find(idx, stem):
    for name in (stem + ".gz", stem):
        if os.path.exists(os.path.join(idx, name)):
            return os.path.join(idx, name)
    raise SystemExit(f"{idx}: no {stem}(.gz)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--idx", default="/usr/share/datasets/fashion-mnist")
    a = ap.parse_args()
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(find(a.idx, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(find(a.idx, f"{prefix}-labels-idx1-ubyte"))
        for c in CLASSES:
            os.makedirs(os.path.join(a.out, split, c), exist_ok=True)
        for i, (img, label) in enumerate(zip(images, labels)):
            Image.fromarray(img).save(os.path.join(a.out, split, CLASSES[label], f"{i:05d}.png"))
        print(f"{split}: {len(labels)} images")


if __name__ == "__main__":
    main()
