#!/bin/bash
# Segmentation transfer on fashion-scenes (README, "Segmentation transfer"): random init,
# supervised and six self-supervised methods, each pretrained on Fashion-MNIST with its
# preset (presets/fashion-mnist-METHOD.toml, else the method's defaults with cnn_pool=3)
# at one budget, then segmented frozen and fine-tuned with the same seg_* settings.
# Runs are kept in runs/seg and reused when rerun (segment.json results whose settings
# match are reused by compare). With SELFSUP_LOCK=FILE every command holds `flock FILE`.
cd "$(dirname "$0")/.."
set -e
B=${SELFSUP:-./target/release/selfsup}
L=${SELFSUP_LOCK:+flock $SELFSUP_LOCK}
O=runs/seg
BUDGET="--set epochs=3 --set train_subset=20000"
# Every seg_* key is set: a run carries the values of its pretraining-time config.
SEG="--set seg_data=fashion-scenes --set seg_image_size=56 --set seg_train_scenes=5000 --set seg_test_scenes=2000
 --set seg_head=linear --set seg_frozen_epochs=20 --set seg_finetune_epochs=2 --set seg_batch_size=64
 --set seg_lr=1e-2 --set seg_weight_decay=1e-4 --set seg_encoder_lr_scale=0.1"
METHODS="supervised autoencoder context-encoder rotation simclr moco-v2 byol"
mkdir -p $O
for m in $METHODS; do
  if [ -f presets/fashion-mnist-$m.toml ]; then cfg="--config presets/fashion-mnist-$m.toml"; else cfg="--method $m --set cnn_pool=3"; fi
  [ -f $O/$m/checkpoint.safetensors ] || $L $B pretrain --quiet $cfg $BUDGET --out $O/$m
done
runs=$(for m in $METHODS; do printf "%s," $O/$m; done)
$L $B compare --quiet --runs ${runs%,} --baselines random --segmentation $SEG --out $O
