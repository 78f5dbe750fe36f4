#!/bin/bash
# Fine-tuning with 1%, 10% and 100% of the labels on Fashion-MNIST (docs/results.md, "Fine-tuning
# with few labels"): SimCLR, BYOL, NNCLR and MAE (ViT) pretrained with their presets at the
# every-method budget (3 epochs on 20k images), the supervised baseline, and the random
# encoders; linear probe, kNN and fine-tuned test top-1 in one table. Fine-tuning is shortened
# for a 2-core CPU: FT_EPOCHS (default 3) epochs on 1% and 10% of the labels, FT_FULL_EPOCHS
# (default 1) on 100%. Runs are kept in runs/finetune and reused (a killed one resumes).
cd "$(dirname "$0")/.."
set -e
B=${SELFSUP_BIN:-./target/release/selfsup}
O=${OUT:-runs/finetune}
E=${FT_EPOCHS:-3}
F=${FT_FULL_EPOCHS:-1}
mkdir -p $O
# Pretrains into $O/NAME with the given options, or continues the run there (a run killed
# midway resumes from its last checkpoint; a finished one is left as it is).
pre() {
  d=$O/$1; shift
  if [ -f $d/config.toml ]; then $B pretrain --quiet --resume --out $d; else $B pretrain --quiet "$@" --out $d; fi
}
# Fine-tunes (finetune ARGS...) on 1% and 10% of the labels for E epochs, on all for F.
ft() {
  $B finetune --quiet "$@" --labels 1%,10% --set finetune_epochs=$E
  $B finetune --quiet "$@" --labels 100% --set finetune_epochs=$F
}
for m in simclr byol nnclr mae; do
  pre $m --config presets/fashion-mnist-$m.toml --set epochs=3 --set train_subset=20000
done
pre supervised --method supervised --set cnn_pool=3 --set epochs=3 --set train_subset=20000
# The CNN rows and the table first; the ViT fine-tuning (MAE and its random baseline) last,
# as it is the slowest (1 epoch on 60k images: about half an hour on 2 cores).
for m in simclr byol nnclr supervised; do
  ft --run $O/$m
done
# The random CNN: compare's random-init row.
ft --baseline random --config presets/fashion-mnist-simclr.toml --out $O/table/random-init
$B compare --quiet --runs $O/simclr,$O/byol,$O/nnclr,$O/mae,$O/supervised --baselines raw,random \
  --finetune 1,10 --set finetune_epochs=$E --out $O/table
ft --run $O/mae
# The random ViT, MAE's baseline (the ViT of the MAE preset).
ft --baseline random --set encoder=vit --set vit_patch=4 --set vit_depth=6 \
  --set vit_image_size=28 --out $O/random-vit
# The table again, with the MAE row's fine-tuning.
$B compare --quiet --runs $O/simclr,$O/byol,$O/nnclr,$O/mae,$O/supervised --baselines raw,random \
  --finetune 1,10 --set finetune_epochs=$E --out $O/table
cat $O/random-vit/finetune.json
