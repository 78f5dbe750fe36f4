"""The installed wheel: the `selfsup` command, its binary's RUNPATH and libraries, and the
launcher in venvs whose torch is elsewhere, of another release, a CPU-only build, or
missing."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import selfsup
from conftest import selfsup_cli
from selfsup import _build

RUNPATH = "$ORIGIN/../../torch/lib"


def installed_binary() -> Path:
    return Path(selfsup.__file__).parent / "_bin" / "selfsup"


def bare_env() -> dict[str, str]:
    """This environment without what the launcher sets."""
    return {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "SELFSUP_PYTHON")}


def test_version_and_methods_from_the_command_and_python_m() -> None:
    o = selfsup_cli("--version")
    assert o.stdout.strip() == f"selfsup {importlib.metadata.version('selfsup')}", o.stderr
    a = selfsup_cli("methods")
    b = subprocess.run([sys.executable, "-m", "selfsup", "methods"], capture_output=True, text=True)
    assert a.returncode == 0 and b.returncode == 0 and a.stdout == b.stdout, a.stderr + b.stderr
    for method in ("simclr", "byol", "dino", "mae", "supervised"):
        assert re.search(rf"^\s*{method}\b", a.stdout, re.M), a.stdout


def test_the_binary_carries_only_a_relative_runpath() -> None:
    text = subprocess.run(
        ["readelf", "-d", installed_binary()], capture_output=True, text=True, check=True
    ).stdout
    print(text)
    assert re.findall(r"\(RUNPATH\)\s+Library runpath: \[(.*)\]", text) == [RUNPATH]
    assert "(RPATH)" not in text


def test_ldd_finds_libtorch_in_this_venv_without_ld_library_path() -> None:
    out = subprocess.run(
        ["ldd", installed_binary()], capture_output=True, text=True, check=True, env=bare_env()
    ).stdout
    print(out)
    assert "not found" not in out
    lib = Path(sysconfig.get_paths()["purelib"]) / "torch" / "lib"
    assert {"libtorch_cpu.so", "libc10.so"} <= set(_build.TORCH_LIBS)
    for name in _build.TORCH_LIBS:
        found = re.search(rf"^\s*{re.escape(name)} => (\S+)", out, re.M)
        assert found and Path(os.path.normpath(found[1])) == lib / name, (name, out)


def test_the_binary_runs_without_the_launcher() -> None:
    o = subprocess.run(
        [installed_binary(), "methods"], capture_output=True, text=True, env=bare_env()
    )
    assert o.returncode == 0 and "simclr" in o.stdout, o.stderr


def venv_with(tmp: Path, setup_venv: Path, wheel: Path, files: dict[str, str], deps: bool) -> Path:
    """A new venv holding `files` (paths relative to its site-packages) and the wheel,
    installed by the setup venv's pip without an index: with `deps`, the wheel's
    requirements must already be satisfied there."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", tmp], check=True)
    site = Path(
        subprocess.run(
            [tmp / "bin/python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    for name, text in files.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(text)
    pip = [setup_venv / "bin/pip", "--python", tmp / "bin/python", "install", "-q", "--no-index"]
    o = subprocess.run(
        [*pip, *([] if deps else ["--no-deps"]), wheel], capture_output=True, text=True
    )
    assert o.returncode == 0, o.stdout + o.stderr
    return tmp


def test_torch_found_through_a_pth_file(setup_venv: Path, wheel: Path, tmp_path: Path) -> None:
    """Torch in another site-packages folder: the RUNPATH misses it, the launcher finds it."""
    setup_site = subprocess.run(
        [
            setup_venv / "bin/python",
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    venv = venv_with(tmp_path / "v", setup_venv, wheel, {"setup.pth": setup_site + "\n"}, deps=True)
    o = subprocess.run(
        [venv / "bin/selfsup", "methods"], capture_output=True, text=True, env=bare_env()
    )
    assert o.returncode == 0 and "simclr" in o.stdout, o.stderr
    code = "import selfsup._launcher as l; print(l.torch_lib())"
    o = subprocess.run(
        [venv / "bin/python", "-c", code], capture_output=True, text=True, check=True
    )
    assert Path(o.stdout.strip()) == Path(setup_site) / "torch" / "lib"


def fake_torch(version: str) -> dict[str, str]:
    return {
        "torch/__init__.py": "raise ImportError('a stand-in torch')\n",
        "torch/lib/README": "no libraries\n",
        f"torch-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n"
        ),
    }


API_CALL = """
import selfsup
try:
    selfsup.pretrain("simclr", out="never")
except selfsup.TorchVersionError as e:
    print("TorchVersionError:", e)
"""


@pytest.mark.parametrize(
    ("torch", "said"),
    [
        ("2.10.0", ["built against torch 2.11.0", "is 2.10.0"]),
        ("2.11.0+cpu", ["libtorch_cuda.so", "CPU-only"]),
        (None, ["has no torch", "pip install torch==2.11.0"]),
    ],
)
def test_another_torch_is_a_clear_error(
    torch: str | None, said: list[str], setup_venv: Path, wheel: Path, tmp_path: Path
) -> None:
    if torch == "2.11.0+cpu" and "libtorch_cuda.so" not in _build.TORCH_LIBS:
        pytest.skip("this binary was built against a CPU-only torch")
    files = fake_torch(torch) if torch else {}
    venv = venv_with(tmp_path / "v", setup_venv, wheel, files, deps=False)
    o = subprocess.run([venv / "bin/selfsup", "methods"], capture_output=True, text=True)
    assert o.returncode == 1 and o.stderr.startswith("error: "), o.stderr
    assert all(s in o.stderr for s in said), o.stderr
    o = subprocess.run([venv / "bin/python", "-c", API_CALL], capture_output=True, text=True)
    assert o.stdout.startswith("TorchVersionError:"), o.stdout + o.stderr
    assert all(s in o.stdout for s in said), o.stdout
