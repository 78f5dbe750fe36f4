"""Runs the selfsup binary that the wheel places in this package (`_bin/selfsup`) against
the libtorch of the installed torch package.

The binary's RUNPATH is `$ORIGIN/../../torch/lib`: the torch package beside this one in
the same site-packages folder. Torch may live elsewhere on `sys.path` (another
site-packages folder, a `.pth` file, `--user`), so the launcher locates it as Python's
import system does, without importing it, checks that its release is the one the binary
was built against (another one would fail with an undefined symbol), puts its `lib`
folder first on `LD_LIBRARY_PATH` for the child process only, and sets `SELFSUP_PYTHON` to
this Python (for the commands that run Python, such as `export --format onnx`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path
from typing import NoReturn

from selfsup import _build
from selfsup.errors import SelfsupError, TorchVersionError


def binary() -> Path:
    """The selfsup binary: the package's `_bin/selfsup`, else `SELFSUP_BINARY`."""
    here = Path(__file__).resolve().parent / "_bin" / "selfsup"
    if here.is_file():
        return here
    env = os.environ.get("SELFSUP_BINARY")
    if env:
        return Path(env)
    raise SelfsupError(
        f"no selfsup binary in {here.parent}: this is the source tree's package; install the "
        "wheel that scripts/build_wheel.sh builds, or set SELFSUP_BINARY"
    )


def torch_dir() -> Path:
    """The folder of the torch package that `import torch` would load (not imported)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        raise TorchVersionError(
            f"selfsup needs torch {_build.TORCH_VERSION}, and this Python ({sys.executable}) "
            f"has no torch: pip install torch=={_build.TORCH_VERSION}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def torch_version(torch: Path) -> str:
    """The version of the torch distribution installed in `torch`'s folder (from its
    metadata, as pip sees it: `2.11.0`, `2.11.0+cpu`)."""
    for dist in importlib.metadata.distributions(path=[str(torch.parent)]):
        if (dist.metadata["Name"] or "").lower() == "torch":
            return dist.version
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        raise TorchVersionError(
            f"{torch} has no package metadata (torch-*.dist-info): cannot tell its version; "
            f"selfsup needs torch {_build.TORCH_VERSION}"
        ) from None


def check_torch(version: str, torch: Path, built: str = _build.TORCH_VERSION) -> None:
    """TorchVersionError unless `version` (of the torch in `torch`) is release `built`."""
    release = version.split("+")[0]
    if release != built:
        raise TorchVersionError(
            f"this selfsup was built against torch {built}, but the torch in this Python "
            f"({sys.executable}) is {version} ({torch}): install torch=={built}, or build "
            f"selfsup against torch {release}"
        )


def torch_lib() -> Path:
    """torch's `lib` folder, checked: the release the binary was built against, holding
    every library of it that the binary links."""
    torch = torch_dir()
    version = torch_version(torch)
    check_torch(version, torch)
    lib = torch / "lib"
    missing = [name for name in _build.TORCH_LIBS if not (lib / name).exists()]
    if missing:
        built = _build.TORCH_VERSION
        raise TorchVersionError(
            f"this selfsup was built against torch {built} with {', '.join(_build.TORCH_LIBS)}; "
            f"the torch {version} in {torch} lacks {', '.join(missing)} (a CPU-only build?): "
            f"install the default torch=={built} wheel"
        )
    return lib


def environment() -> dict[str, str]:
    """The environment the binary runs in: this one, with torch's `lib` folder first on
    `LD_LIBRARY_PATH` and `SELFSUP_PYTHON` defaulting to this Python."""
    env = dict(os.environ)
    paths = [str(torch_lib()), *filter(None, env.get("LD_LIBRARY_PATH", "").split(":"))]
    env["LD_LIBRARY_PATH"] = ":".join(paths)
    env.setdefault("SELFSUP_PYTHON", sys.executable)
    return env


def main() -> NoReturn:
    """The `selfsup` command (and `python -m selfsup`): replaces this process with the
    binary, passing the arguments on."""
    try:
        exe, env = binary(), environment()
    except SelfsupError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    sys.stdout.flush()
    os.execve(exe, [str(exe), *sys.argv[1:]], env)
