#!/usr/bin/env bash
# The main job on a fresh Debian machine: set everything up, pretrain a denoising
# autoencoder on Fashion-MNIST for a few minutes, then evaluate its frozen encoder
# (linear probe top-1/top-5, kNN top-1) next to the raw-pixel baseline.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/setup.sh"
bin=$root/target/release/selfsup
run=$root/runs/quickstart-dae
rm -rf "$run"
"$bin" pretrain --method denoising-autoencoder --set epochs=3 --set train_subset=20000 --out "$run"
"$bin" eval --run "$run"
"$bin" eval --baseline raw
