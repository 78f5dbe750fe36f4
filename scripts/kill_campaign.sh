#!/bin/bash
# Kill/resume campaign (README, "Kill and resume"): a SimCLR run on Fashion-MNIST trained
# once straight, then again while being SIGKILLed at random moments and resumed until done.
# Prints, per kill, the steps done when it died and the step of the checkpoint it resumed
# from, then whether the two final checkpoints hold bit-identical tensors, and the wall times.
#
#   bash scripts/kill_campaign.sh [KILLS (8)] [SEED (1)] [--set key=value ...]   (SELFSUP_BIN: the binary)
#
# Default run: the preset, 2 epochs on 6000 images (46 steps), a checkpoint every 10 steps.
cd "$(dirname "$0")/.."
set -euo pipefail
KILLS=${1:-8}
SEED=${2:-1}
shift $(($# < 2 ? $# : 2))
B=${SELFSUP_BIN:-./target/release/selfsup}
O=runs/kill-campaign
SETS=(--set epochs=2 --set train_subset=6000 --set checkpoint_every=10 "$@")
rm -rf "$O"
mkdir -p "$O"

# The step of a checkpoint, from the JSON in its safetensors metadata.
ckpt_step() {
  python3 - "$1" <<'EOF'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
print(json.loads(json.loads(b[8:8 + n])["__metadata__"]["selfsup"])["step"])
EOF
}

# Bytes of metrics.jsonl up to its last newline: what a resume keeps of it (0 when absent).
log_kept() {
  python3 - "$1" <<'EOF'
import os, sys
b = open(sys.argv[1], "rb").read() if os.path.exists(sys.argv[1]) else b""
print(b.rfind(b"\n") + 1)
EOF
}

# The last step of the whole step records after byte OFFSET of metrics.jsonl (0: none).
last_logged_step() { # FILE OFFSET
  python3 - "$1" "$2" <<'EOF'
import json, sys
steps = [0]
for line in open(sys.argv[1], "rb").read()[int(sys.argv[2]):].splitlines():
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if r.get("kind") == "step":
        steps.append(r["step"])
print(max(steps))
EOF
}

# The pretrain command into OUT, as the array CMD: a resume when OUT holds a checkpoint.
# (Run directly, not inside a function, so that `$!` is selfsup itself: a `kill -9` of a
# subshell would leave selfsup training, holding the run folder's lock.)
set_cmd() { # OUT
  if [ -f "$1/checkpoint.safetensors" ]; then
    CMD=("$B" pretrain --quiet --out "$1" --resume)
  else
    CMD=("$B" pretrain --quiet --config presets/fashion-mnist-simclr.toml "${SETS[@]}" --out "$1")
  fi
}

t0=$(date +%s.%N)
set_cmd "$O/straight"
"${CMD[@]}" >"$O/straight.log" 2>&1
t1=$(date +%s.%N)
# Kills come a random 5-35% of the uninterrupted run's wall time after each (re)start, plus
# the ~2 s start-up, so that most resumes get past a checkpoint whatever the machine's speed.
straight=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')

K="$O/killed"
RANDOM=$SEED
kills=0
lost_total=0
echo "kill  steps_done  checkpoint_step  steps_lost"
t2=$(date +%s.%N)
while [ "$kills" -lt "$KILLS" ]; do
  # A fresh start (no checkpoint yet) empties the log; a resume appends to its whole lines.
  if [ -f "$K/checkpoint.safetensors" ]; then
    ck=$(ckpt_step "$K/checkpoint.safetensors")
    offset=$(log_kept "$K/metrics.jsonl")
  else
    ck=0 offset=0
  fi
  set_cmd "$K"
  "${CMD[@]}" >>"$O/killed.log" 2>&1 &
  pid=$!
  delay=$(awk -v r=$RANDOM -v t="$straight" 'BEGIN { printf "%.2f", 2 + t * (0.05 + 0.3 * r / 32767) }')
  sleep "$delay"
  if ! kill -9 "$pid" 2>/dev/null; then
    rc=0
    wait "$pid" || rc=$?
    echo "(the run ended before kill $((kills + 1)), status $rc)"
    [ "$rc" = 0 ] || exit 1
    break
  fi
  wait "$pid" 2>/dev/null || true
  kills=$((kills + 1))
  # Steps done when it died: its last logged step (every step is logged in runs this
  # short), or where it started when it logged none.
  done_steps=$(last_logged_step "$K/metrics.jsonl" "$offset")
  [ "$done_steps" -gt 0 ] || done_steps=$ck
  if [ -f "$K/checkpoint.safetensors" ]; then ck=$(ckpt_step "$K/checkpoint.safetensors"); else ck=0; fi
  lost=$((done_steps - ck))
  lost_total=$((lost_total + lost))
  printf "%4d  %10d  %15d  %10d   (after %ss)\n" "$kills" "$done_steps" "$ck" "$lost" "$delay"
done
restarts=0
until [ -f "$K/checkpoint.safetensors" ] && [ "$(ckpt_step "$K/checkpoint.safetensors")" = "$(ckpt_step "$O/straight/checkpoint.safetensors")" ]; do
  set_cmd "$K"
  "${CMD[@]}" >>"$O/killed.log" 2>&1
  restarts=$((restarts + 1))
done
t3=$(date +%s.%N)

python3 - "$O/straight/checkpoint.safetensors" "$K/checkpoint.safetensors" <<'EOF'
import json, struct, sys
def tensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    header.pop("__metadata__")
    data = b[8 + n:]
    return {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items()}
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
same = sum(1 for k in a if k in b and a[k] == b[k])
print(f"final checkpoints: {same}/{len(a)} tensors bit-identical"
      f" ({sum(k.startswith('model.') for k in a)} model, {sum(k.startswith('optim.') for k in a)} optimizer)"
      + ("" if same == len(a) == len(b) else "  DIFFERENT"))
sys.exit(0 if same == len(a) == len(b) else 1)
EOF
awk -v k=$kills -v l=$lost_total -v r=$restarts -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" 'BEGIN {
  printf "%d kills, %d steps lost in all (%.1f per kill), %d resume(s) to finish\n", k, l, (k ? l / k : 0), r
  printf "wall: uninterrupted %.1fs, killed and resumed %.1fs\n", b - a, d - c }'
