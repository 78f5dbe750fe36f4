#!/bin/bash
# The scale run of docs/results.md ("Streaming data"): SimCLR pretrained for a few steps on an
# image collection larger than memory, from its folder and from its packed shards, at 224 and
# 96 px: time to the first step (a run of max_steps=1, the whole process), images/s and peak
# resident memory (a run of STEPS steps). The encoder is a small ViT on patches of 16 (2 blocks
# of width 64), cheap enough at 224 px that the data pipeline, not the network, sets the pace.
# Needs GNU time (/usr/bin/time).
# usage: bash scripts/scale_run.sh FOLDER SHARDS [STEPS]
#   FOLDER: an image folder (scripts/make_image_folder.py --out FOLDER --images 100000)
#   SHARDS: the same images as WebDataset shards (selfsup data pack --data folder:FOLDER --out SHARDS)
set -e
cd "$(dirname "$0")/.."
B=./target/release/selfsup
F=$1; S=$2; N=${3:-30}
[ -d "$F" ] && [ -d "$S" ] || { echo "usage: bash scripts/scale_run.sh FOLDER SHARDS [STEPS]" >&2; exit 2; }
T=$(mktemp -d)
echo "| data | size | time to first step s | images/s ($N steps) | peak RSS MB |"
echo "|---|---|---|---|---|"
for size in 224 96; do
  for data in "folder:$F" "wds:$S"; do
    run() { rm -rf $T/run; /usr/bin/time -f "%e %M" -o $T/time $B --device cpu pretrain --quiet --method simclr \
      --data "$data" --set image_size=$size --set batch_size=64 --set max_steps=$1 \
      --set encoder=vit --set vit_patch=16 --set vit_depth=2 --set vit_width=64 --set vit_heads=2 \
      --set vit_image_size=$size --out $T/run > $T/out 2> $T/err; }
    run 1; first=$(cut -d' ' -f1 $T/time)
    run $N; rss=$(cut -d' ' -f2 $T/time)
    ips=$(grep -o '[0-9]* images/s' $T/out | cut -d' ' -f1)
    echo "| ${data%%:*} | $size | $first | $ips | $((rss / 1024)) |"
  done
done
rm -rf $T
