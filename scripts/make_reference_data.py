"""Writes a small labeled image collection in the formats of the ecosystem's reference
writers, for selfsup's tests: WebDataset shards by webdataset's ShardWriter and Parquet
files in the Hugging Face datasets layout by pyarrow (an `image` struct column of `bytes`
and `path`, an int64 `label`; snappy compression; several row groups), both from the same
images: a JPEG of w x h whose pixel (x, y) is (x*7 % 256, y*5 % 256, 20 * label), label
= index % classes.

usage: python make_reference_data.py --out DIR [--images 40] [--classes 4] [--size 48x32]
writes DIR/wds/{train,test}-%06d.tar and DIR/parquet/data/{train,test}-00000-of-00001.parquet
(every fifth image in the test split), and DIR/manifest.json: each image's split, key,
label and JPEG size in bytes.
"""
import argparse
import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image


def image_bytes(i, label, w, h):
    x = (np.arange(w) * 7 % 256).astype(np.uint8)
    y = (np.arange(h) * 5 % 256).astype(np.uint8)
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, :, 0] = x[None, :]
    arr[:, :, 1] = y[:, None]
    arr[:, :, 2] = (20 * label + i) % 256
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--size", default="48x32")
    ap.add_argument("--maxcount", type=int, default=16, help="samples per shard")
    a = ap.parse_args()
    w, h = map(int, a.size.split("x"))
    samples = []
    for i in range(a.images):
        label = i % a.classes
        split = "test" if (i + 1) % 5 == 0 else "train"
        samples.append((split, f"{i:06d}", label, image_bytes(i, label, w, h)))
    os.makedirs(os.path.join(a.out, "wds"), exist_ok=True)
    os.makedirs(os.path.join(a.out, "parquet", "data"), exist_ok=True)
    for split in ("train", "test"):
        pattern = os.path.join(a.out, "wds", f"{split}-%06d.tar")
        with wds.ShardWriter(pattern, maxcount=a.maxcount, verbose=0) as sink:
            for s, key, label, jpg in samples:
                if s == split:
                    sink.write({"__key__": key, "jpg": jpg, "cls": label, "json": {"label": label, "key": key}})
        rows = [(key, label, jpg) for s, key, label, jpg in samples if s == split]
        table = pa.table({
            "image": pa.array([{"bytes": jpg, "path": f"{key}.jpg"} for key, _, jpg in rows],
                              type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "label": pa.array([label for _, label, _ in rows], type=pa.int64()),
        })
        pq.write_table(table, os.path.join(a.out, "parquet", "data", f"{split}-00000-of-00001.parquet"),
                       row_group_size=7, compression="snappy", data_page_size=4096)
    manifest = [{"split": s, "key": key, "label": label, "bytes": len(jpg)} for s, key, label, jpg in samples]
    with open(os.path.join(a.out, "manifest.json"), "w") as f:
        json.dump(manifest, f)


if __name__ == "__main__":
    main()
