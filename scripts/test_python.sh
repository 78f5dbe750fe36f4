#!/usr/bin/env bash
# The Python side's tests (part of the README's test command): ruff (lint and format) on the
# package, its tests and the wheel script; the wheel built from the release binary (which
# `cargo test --release` has just built); a fresh venv that reuses the setup venv's torch
# (its site-packages entries linked, no download) with the wheel installed by pip without an
# index; and pytest in that venv, against the installed package.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
torch_version=$(sed -n 's/^TORCH_VERSION=//p' "$root/scripts/setup.sh")
venv=${SELFSUP_CACHE:-$HOME/.cache/selfsup}/torch-$torch_version
python_files=("$root/python" "$root/scripts/wheel.py")
"$venv/bin/ruff" check "${python_files[@]}"
"$venv/bin/ruff" format --check "${python_files[@]}"

wheel=$(bash "$root/scripts/build_wheel.sh")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$venv/bin/python" -m venv --without-pip "$tmp/venv"
purelib='import sysconfig; print(sysconfig.get_paths()["purelib"])'
site=$("$tmp/venv/bin/python" -c "$purelib")
for entry in "$("$venv/bin/python" -c "$purelib")"/*; do
  case "$(basename "$entry")" in selfsup|selfsup-*) continue ;; esac
  ln -s "$entry" "$site/"
done
"$venv/bin/pip" --python "$tmp/venv/bin/python" install -q --no-index --disable-pip-version-check "$wheel"
cd "$tmp"
env -u SELFSUP_PYTHON -u LD_LIBRARY_PATH SELFSUP_SETUP_VENV="$venv" SELFSUP_WHEEL="$wheel" \
  "$tmp/venv/bin/python" -m pytest -q -p no:cacheprovider "$root/python/tests" "$@"
