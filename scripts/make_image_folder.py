"""Writes an ImageNet-like image folder for benchmarks and tests: DIR/<class>/<n>.jpg,
photo-sized JPEGs (about 400x300 by default, quality 90) whose content has the statistics
JPEG cares about (smooth colour fields, edges, texture), not flat colour. Each class has
its own palette and shapes, so a classifier can learn something from them.

Usage: python scripts/make_image_folder.py --out DIR [--images 20000] [--classes 10]
       [--width 400 --height 300 --jitter 0.2] [--quality 90] [--seed 0] [--workers N]
Images are written in parallel (one process per core); a file that exists is kept, so an
interrupted run can be repeated to finish.
"""

import argparse
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def make_image(args):
    out, index, n_classes, width, height, jitter, quality, seed = args
    label = index % n_classes
    path = os.path.join(out, f"class{label:03d}", f"{index:07d}.jpg")
    if os.path.exists(path):
        return
    rng = np.random.default_rng([seed, index])
    w = int(width * (1 + rng.uniform(-jitter, jitter)))
    h = int(height * (1 + rng.uniform(-jitter, jitter)))
    # A smooth colour field: coarse random noise, upsampled bicubically.
    base = np.random.default_rng([seed, label]).uniform(40, 215, 3)
    coarse = rng.normal(0, 45, (6, 8, 3)) + base
    field = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(field)
    # The class's shapes, at random places and sizes.
    for _ in range(3 + label % 4):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        s = rng.uniform(0.08, 0.35) * min(w, h)
        colour = tuple(int(c) for c in np.random.default_rng([seed, label, 7]).integers(0, 256, 3))
        box = [x0 - s, y0 - s, x0 + s, y0 + s]
        if label % 3 == 0:
            draw.ellipse(box, fill=colour)
        elif label % 3 == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(x0, y0 - s), (x0 - s, y0 + s), (x0 + s, y0 + s)], fill=colour)
    img = field.filter(ImageFilter.GaussianBlur(0.6))
    # Sensor-like texture.
    arr = np.asarray(img).astype(np.int16) + rng.normal(0, 6, (h, w, 3)).astype(np.int16)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    tmp = path + ".tmp"
    img.save(tmp, "JPEG", quality=quality)
    os.replace(tmp, path)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--width", type=int, default=400)
    p.add_argument("--height", type=int, default=300)
    p.add_argument("--jitter", type=float, default=0.2)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    a = p.parse_args()
    if a.images < 1 or a.classes < 1 or a.width < 8 or a.height < 8:
        p.error("--images and --classes must be positive, --width and --height at least 8")
    for c in range(a.classes):
        os.makedirs(os.path.join(a.out, f"class{c:03d}"), exist_ok=True)
    jobs = [(a.out, i, a.classes, a.width, a.height, a.jitter, a.quality, a.seed) for i in range(a.images)]
    with ProcessPoolExecutor(a.workers) as pool:
        list(pool.map(make_image, jobs, chunksize=64))
    print(f"wrote {a.images} images in {a.classes} classes to {a.out}")


if __name__ == "__main__":
    main()
