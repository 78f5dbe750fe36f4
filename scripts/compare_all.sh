#!/bin/bash
# Every method on Fashion-MNIST in one table (README, "Every method on Fashion-MNIST").
# Short budgets for a 2-core CPU; runs are kept in runs/all and reused when rerun.
cd "$(dirname "$0")/.."
set -e
B=./target/release/selfsup
O=runs/all
mkdir -p $O
for m in autoencoder denoising-autoencoder context-encoder rotation jigsaw relative-patch; do
  [ -f $O/$m/checkpoint.safetensors ] || $B pretrain --quiet --method $m --set cnn_pool=3 --set epochs=3 --set train_subset=12000 --out $O/$m
done
[ -f $O/supervised/checkpoint.safetensors ] || $B pretrain --quiet --method supervised --set cnn_pool=3 --set epochs=3 --set train_subset=20000 --out $O/supervised
[ -f $O/cpc/checkpoint.safetensors ] || $B pretrain --quiet --method cpc --set epochs=3 --set train_subset=10000 --out $O/cpc
$B compare --quiet --preset fashion-mnist --set epochs=3 --set train_subset=20000 \
  --methods simclr,moco-v1,moco-v2,moco-v3,byol,simsiam,supervised,autoencoder,denoising-autoencoder,cpc,context-encoder,rotation,jigsaw,relative-patch \
  --out $O
