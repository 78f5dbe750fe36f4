#!/usr/bin/env bash
# The main job on a fresh Debian machine: set everything up, pretrain SimCLR on
# Fashion-MNIST with its preset for a few minutes (3 epochs on 20k images), then show what
# self-supervision buys: the run's frozen encoder next to raw pixels and the randomly
# initialised encoder (linear probe top-1/top-5, kNN top-1), and an HTML report.
#
# The environment can make it a quick check of the script itself (tests/scripts.rs runs it
# on tiny data); unset, the job is the one above:
#   SELFSUP_BIN           a built selfsup binary: setup.sh and its build are skipped
#   QUICKSTART_OUT        the run folder (default runs/quickstart)
#   QUICKSTART_EPOCHS     pretraining epochs (default 3)
#   QUICKSTART_SUBSET     training images (default 20000)
#   QUICKSTART_SETS       more key=value overrides for pretrain, separated by spaces
#   QUICKSTART_EVAL_SETS  key=value overrides of the eval keys for compare and report
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${SELFSUP_BIN:-}" ]; then
  bin=$SELFSUP_BIN
else
  bash "$root/scripts/setup.sh"
  bin=$root/target/release/selfsup
fi
run=${QUICKSTART_OUT:-$root/runs/quickstart}
# --set KEY=VALUE for each word (read -a: no glob expansion of values such as [4, 8]).
sets=() eval_sets=()
read -ra words <<< "${QUICKSTART_SETS:-}"
for kv in "${words[@]}"; do sets+=(--set "$kv"); done
read -ra words <<< "${QUICKSTART_EVAL_SETS:-}"
for kv in "${words[@]}"; do eval_sets+=(--set "$kv"); done
rm -rf "$run"
"$bin" pretrain --config "$root/presets/fashion-mnist-simclr.toml" \
  --set epochs="${QUICKSTART_EPOCHS:-3}" --set train_subset="${QUICKSTART_SUBSET:-20000}" \
  "${sets[@]}" --out "$run"
"$bin" compare --runs "$run" --baselines raw,random "${eval_sets[@]}" --out "$run/compare"
"$bin" report --run "$run" "${eval_sets[@]}" >/dev/null
echo "HTML report: $run/index.html"
