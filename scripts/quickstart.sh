#!/usr/bin/env bash
# The main job on a fresh Debian machine: set everything up, pretrain SimCLR on
# Fashion-MNIST with its preset for a few minutes (3 epochs on 20k images), then show what
# self-supervision buys: the run's frozen encoder next to raw pixels and the randomly
# initialised encoder (linear probe top-1/top-5, kNN top-1), and an HTML report.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/setup.sh"
bin=$root/target/release/selfsup
run=$root/runs/quickstart
rm -rf "$run"
"$bin" pretrain --config "$root/presets/fashion-mnist-simclr.toml" \
  --set epochs=3 --set train_subset=20000 --out "$run"
"$bin" compare --runs "$run" --baselines raw,random --out "$run/compare"
"$bin" report --run "$run" >/dev/null
echo "HTML report: $run/index.html"
