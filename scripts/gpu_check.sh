#!/usr/bin/env bash
# The GPU check (issues 25 and 26): one command that, on a machine with one NVIDIA GPU and
# PyTorch 2.11 in a venv but no package registries and no Rust, runs a selfsup binary built
# elsewhere against that venv's libtorch and writes one summary, OUT/gpu_check.md:
#
#   environment   torch, CUDA, cuDNN, NCCL and the GPU as PyTorch sees them; the libtorch
#                 the binary loads
#   devices       what selfsup reports for --device auto and --device cuda
#   bench-step    the CIFAR ResNet-18 SimCLR step, fp32 and bf16, next to PyTorch eager and
#                 torch.compile in both memory layouts (compile time apart)
#   group of one  a pretraining run in a process group of one rank (NCCL on the GPU)
#   epoch         one epoch of presets/cifar10-simclr.toml on generated CIFAR-10 data
#   eval          selfsup eval of that run (features, linear probe, kNN) on the GPU
#   two ranks     2 processes on the one GPU, where NCCL allows it
#   settings      selfsup's step with each CUDA setting on and off (tf32; deterministic,
#                 which also turns cuDNN's benchmark mode off)
#
# Each step is timed; a step that fails is recorded as failed (its output's tail in the
# summary, the whole of it in OUT/logs/) and the next one runs. The steps share a budget of
# 450 s, so the whole check ends within 8 minutes; a step the budget no longer allows is
# recorded as skipped. The exit status is 1 when a step failed or was skipped (two ranks on
# one GPU, which NCCL refuses, are "not possible on this machine", not a failure).
#
# usage: bash scripts/gpu_check.sh [--device cuda|cpu] [--python PATH] [--bin PATH]
#                                  [--out DIR] [--quick]
#   --device  cuda (default), or cpu: the same steps on the CPU (CI runs them so, --quick)
#   --python  the venv's Python with torch 2.11 (default: $SELFSUP_PYTHON, else
#             /opt/torch/.venv/bin/python, else python3)
#   --bin     the selfsup binary (default: target/release/selfsup, else ./selfsup)
#   --out     where gpu_check.md, logs/, the data and the runs go (default: $OUT, else
#             gpu-check)
#   --quick   tiny data and networks, no torch.compile: every step in seconds, to test the
#             script itself
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

device=cuda python="" bin="" out="" quick=0
while (($#)); do
  case $1 in
    --device) device=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    -h | --help) sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case $device in cuda | cpu) ;; *) echo "gpu_check.sh: --device cuda or cpu, not '$device'" >&2; exit 2 ;; esac
if [[ -z $python ]]; then
  if [[ -n ${SELFSUP_PYTHON:-} ]]; then python=$SELFSUP_PYTHON
  elif [[ -x /opt/torch/.venv/bin/python ]]; then python=/opt/torch/.venv/bin/python
  else python=python3; fi
fi
if [[ -z $bin ]]; then
  if [[ -x $root/target/release/selfsup ]]; then bin=$root/target/release/selfsup; else bin=./selfsup; fi
fi
out=${out:-${OUT:-gpu-check}}
mkdir -p "$out/logs" || exit 1
out=$(cd "$out" && pwd)
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
python=$(command -v "$python") || { echo "gpu_check.sh: no Python '$python'" >&2; exit 1; }
summary=$out/gpu_check.md data=$out/cifar10 runs=$out/runs
rm -rf "$data" "$runs" "$out"/logs/*

# The binary runs against the venv's libtorch (its own RUNPATH names the build machine's),
# with the venv's Python for the PyTorch side and this checkout's scripts and presets.
torch_lib=$("$python" -c 'import importlib.util as u, os; s = u.find_spec("torch"); print(os.path.join(os.path.dirname(s.origin), "lib") if s else "")')
export LD_LIBRARY_PATH=$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export SELFSUP_PYTHON=$python SELFSUP_SOURCE=$root
export device python bin root data runs quick out
preset=$root/presets/cifar10-simclr.toml
export preset

# Sizes: the full check, or --quick's (a tiny ResNet-18 on a few hundred images).
if ((quick)); then
  train_images=320 test_images=80
  net=(--set resnet_width=0.125 --set batch_size=32 --set proj_hidden_dim=16 --set proj_dim=8)
  bench=(--steps 2 --warmup 1 --rounds 1 --no-compile)
  evals=(--set probe_epochs=2 --set knn_k=5)
  subset=64
else
  train_images=50000 test_images=10000
  net=()
  bench=(--steps 20 --warmup 5 --rounds 2)
  evals=()
  subset=5120
fi
export train_images test_images subset
# Arrays do not cross into `bash -c`: passed as words (none holds a space).
export net_args="${net[*]}" bench_args="${bench[*]}" eval_args="${evals[*]}"

budget=450
deadline=$((SECONDS + budget))
rows=() sections=""

# step NAME TITLE LIMIT FUNCTION: runs FUNCTION (bash -e, output to logs/NAME.log) for at most
# LIMIT seconds, less where the budget is short; records its result, time and output's tail.
step() {
  local name=$1 title=$2 limit=$3 fn=$4 log=$out/logs/$1.log left result secs t0 rc
  left=$((deadline - SECONDS))
  if ((left < 15)); then
    result="skipped: the ${budget} s budget is spent"
    secs=0 rc=125
    : >"$log"
  else
    ((limit > left)) && limit=$left
    t0=$(date +%s.%N)
    timeout -k 10 "$limit" bash -e -o pipefail -c "$fn" >"$log" 2>&1
    rc=$?
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    case $rc in
      0) result=ok ;;
      99) result="not possible on this machine" ;;
      124 | 137) result="FAILED: timed out after $limit s" ;;
      *) result="FAILED: exit status $rc" ;;
    esac
  fi
  rows+=("| $title | $result | $secs |")
  sections+=$'\n'"## $title"$'\n\n'"result: $result ($secs s)"$'\n\n'
  sections+='```'$'\n'"$(tail -n 40 "$log")"$'\n''```'$'\n'
  return "$rc"
}

# The steps, each a function run by `step` in its own bash (exported below).
environment() {
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), host $(hostname), $(nproc) CPU cores, $(uname -m)"
  echo "binary: $bin"
  echo "python: $python"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader |
      sed 's/^/nvidia-smi: /'
  else
    echo "nvidia-smi: not found"
  fi
  "$python" - <<'EOF'
import torch

print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    nccl = ".".join(map(str, torch.cuda.nccl.version()))
    print(f"torch sees {torch.cuda.device_count()} GPU(s): {p.name}, capability {p.major}.{p.minor},"
          f" {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}, NCCL {nccl}")
else:
    print("torch sees no GPU")
if not torch.__version__.startswith("2.11."):
    raise SystemExit(f"selfsup links libtorch 2.11; this venv has torch {torch.__version__}")
EOF
  echo "libraries the binary loads (LD_LIBRARY_PATH=$LD_LIBRARY_PATH):"
  if command -v ldd >/dev/null; then
    ldd "$bin" | grep -E 'libtorch|libc10|not found' | sed 's/ (0x[0-9a-f]*)//'
    ! ldd "$bin" | grep -q 'not found'
  else
    echo "  (no ldd here)"
  fi
}

make_data() {
  "$python" "$root/scripts/make_cifar_data.py" --out "$data" --train "$train_images" --test "$test_images"
}

# What selfsup says it runs on: the device of a two-step pretraining run with each --device.
devices() {
  local d said chosen fail=0
  for d in auto "$device"; do
    said=$("$bin" --device "$d" pretrain --quiet --method simclr --data "cifar10:$data" \
      --set encoder=cnn --set 'cnn_widths=[8,16]' --set batch_size=32 --set max_steps=2 \
      --set train_subset=64 --set proj_hidden_dim=16 --set proj_dim=8 \
      --out "$runs/device-$d" 2>&1) || { echo "$said"; fail=1; }
    chosen=$(sed -n 's/.*, device \([^,]*\).*/\1/p' <<<"$said" | head -n 1)
    echo "selfsup --device $d: ${chosen:-no device reported}"
    if [[ $device == cuda && $chosen != Cuda* ]]; then
      echo "  expected a CUDA device"
      fail=1
    fi
  done
  return "$fail"
}

bench_step() {
  # shellcheck disable=SC2086 # the words of $net_args and $bench_args, split on purpose
  "$bin" --device "$device" bench-step --config "$preset" --data "cifar10:$data" $net_args $bench_args
}

# The same without torch.compile: what is left where the compiled run did not finish.
bench_step_eager() {
  # shellcheck disable=SC2086
  "$bin" --device "$device" bench-step --config "$preset" --data "cifar10:$data" $net_args \
    ${bench_args/--no-compile/} --no-compile
}

# pretrain_epoch NAME "BEFORE" "AFTER": one epoch of the preset (its warm-up over that
# epoch) into runs/NAME; BEFORE are words between the global options and `pretrain` (a
# launcher), AFTER more options of `pretrain`.
pretrain_epoch() {
  # shellcheck disable=SC2086
  "$bin" --device "$device" $2 pretrain --quiet --config "$preset" --data "cifar10:$data" \
    --set epochs=1 --set warmup_epochs=1 $net_args $3 --out "$runs/$1"
}

group_of_one() {
  SELFSUP_GROUP_OF_ONE=1 pretrain_epoch group-of-one "launch --nproc-per-node 1 --" \
    "--set train_subset=$subset --dist-timeout 60s"
}

# NCCL takes one rank per GPU in a group: where it refuses the second, the step reports that
# (exit status 99: not possible here) rather than a failure of selfsup.
two_ranks() {
  local rc=0
  pretrain_epoch two-ranks "launch --nproc-per-node 2 --" \
    "--set train_subset=$subset --dist-timeout 60s" 2>&1 | tee "$out/logs/two-ranks.out" || rc=$?
  if ((rc)) && grep -q 'Duplicate GPU' "$out/logs/two-ranks.out"; then
    echo "NCCL refuses two ranks on one GPU (Duplicate GPU detected): not possible on this card"
    return 99
  fi
  return "$rc"
}

epoch() {
  pretrain_epoch cifar "" ""
}

eval_run() {
  # shellcheck disable=SC2086
  "$bin" --device "$device" eval --run "$runs/cifar" $eval_args
}

# selfsup's step alone with more options (--set ...), for the table of settings.
settings_run() {
  # shellcheck disable=SC2086
  "$bin" --device "$device" bench-step --config "$preset" --data "cifar10:$data" $net_args \
    $bench_args --no-pytorch "$@"
}
settings() {
  echo "== default: tf32 on, cuDNN benchmark on, deterministic off"
  settings_run
  echo "== tf32 = false"
  settings_run --set tf32=false
  echo "== deterministic = true (cuDNN benchmark off; CUBLAS_WORKSPACE_CONFIG=:4096:8)"
  CUBLAS_WORKSPACE_CONFIG=:4096:8 settings_run --set deterministic=true
}

export -f environment make_data devices bench_step bench_step_eager pretrain_epoch \
  group_of_one two_ranks epoch eval_run settings_run settings

start=$SECONDS
step environment "Environment" 60 environment
step data "Generated CIFAR-10 data ($train_images + $test_images images)" 90 make_data
step devices "Devices: what selfsup reports for --device auto and --device $device" 90 devices
if ! step bench-step "bench-step: CIFAR ResNet-18 SimCLR step, selfsup vs PyTorch eager and compiled" 300 bench_step; then
  step bench-step-eager "bench-step without torch.compile (the compiled run did not finish)" 120 bench_step_eager
fi
step group-of-one "Process group of one rank ($([[ $device == cuda ]] && echo NCCL || echo Gloo)), one epoch of $subset images" 90 group_of_one
step epoch "One epoch of presets/cifar10-simclr.toml ($train_images images)" 150 epoch
step eval "selfsup eval of that run" 90 eval_run
step two-ranks "2 processes on one $([[ $device == cuda ]] && echo "GPU (where NCCL allows it)" || echo CPU)" 60 two_ranks
step settings "CUDA settings: selfsup's step with each on and off" 150 settings

# The settings as one table: selfsup's rows of each run.
settings_table=$(awk '
  /^== / { name = substr($0, 4) }
  $1 == "selfsup" && $3 == "channels-last" {
    v[name, $2] = $5 " / " $6
    if (!(name in seen)) { seen[name] = 1; order[++n] = name }
  }
  END {
    if (n == 0) exit
    print "| setting | fp32 img/s (compute / end-to-end) | bf16 img/s (compute / end-to-end) |"
    print "|---|---|---|"
    for (i = 1; i <= n; i++) print "| " order[i] " | " v[order[i], "fp32"] " | " v[order[i], "bf16"] " |"
  }' "$out/logs/settings.log")

{
  echo "# selfsup GPU check"
  echo
  echo "\`bash scripts/gpu_check.sh --device $device$( ((quick)) && echo ' --quick')\`: $(date -u '+%Y-%m-%d %H:%M UTC'),"
  echo "$(hostname), $((SECONDS - start)) s in all. Binary: \`$bin\`. Python: \`$python\`."
  echo "Each step's whole output: \`logs/STEP.log\` next to this file."
  echo
  echo "| step | result | seconds |"
  echo "|---|---|---|"
  printf '%s\n' "${rows[@]}"
  if [[ -n $settings_table ]]; then
    echo
    echo "CUDA settings (selfsup's step; cuDNN's benchmark mode has no key of its own: it is on"
    echo "unless deterministic = true):"
    echo
    echo "$settings_table"
  fi
  echo "$sections"
} >"$summary"
echo "$summary"
# Failed if any step failed or was skipped; the summary says which.
! printf '%s\n' "${rows[@]}" | grep -v '| ok |' | grep -qv '| not possible on this machine |'
