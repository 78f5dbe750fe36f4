"""The Python API: `pretrain` runs the selfsup binary, `Run` reads a run folder and turns
its encoder into a PyTorch module."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, TypeAlias

from selfsup import _launcher
from selfsup.errors import NotARunError, SelfsupError

if TYPE_CHECKING:
    import pandas
    import torch
    from torch import nn

    from selfsup.models import Backend

PathLike = str | os.PathLike[str]
# What a config key holds (written as TOML for `--set`).
ConfigValue: TypeAlias = "bool | int | float | str | os.PathLike[str] | Sequence[ConfigValue]"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def toml_value(value: object) -> str:
    """`value` written as a TOML value, as `--set key=VALUE` reads it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str | os.PathLike):
        # A JSON string is a TOML basic string (the same escapes).
        return json.dumps(os.fspath(value), ensure_ascii=False)
    if isinstance(value, Sequence):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"config values are numbers, booleans, strings or lists, not {value!r}")


def set_args(keys: Mapping[str, ConfigValue]) -> list[str]:
    """`--set key=value` arguments for the config keys `keys`."""
    args: list[str] = []
    for k, v in keys.items():
        args += ["--set", f"{k}={toml_value(v)}"]
    return args


def _pump(src: IO[str], lines: list[str], echo: IO[str] | None) -> None:
    for line in src:
        lines.append(line)
        if echo is not None:
            echo.write(line)
            echo.flush()


def error_message(stderr: str, returncode: int) -> str:
    """What the binary said went wrong: its `error: ...` lines, else its last line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln.removeprefix("error: ") for ln in lines if ln.startswith("error: ")]
    if errors:
        return "\n".join(errors)
    if lines:
        return lines[-1]
    return f"exited with status {returncode}"


def run_binary(args: Sequence[str], *, stream: bool = False) -> str:
    """Runs `selfsup ARGS`; returns its stdout. With `stream`, what it prints goes on to
    this Python's stdout and stderr as it comes (its progress). A failure raises
    SelfsupError with the binary's message; an interrupt stops the binary first."""
    exe, env = _launcher.binary(), _launcher.environment()
    proc = subprocess.Popen(
        [str(exe), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
        errors="replace",
        bufsize=1,
    )
    out: list[str] = []
    err: list[str] = []
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, out, sys.stdout if stream else None)),
        threading.Thread(target=_pump, args=(proc.stderr, err, sys.stderr if stream else None)),
    ]
    for t in pumps:
        t.daemon = True
        t.start()
    try:
        returncode = proc.wait()
    except BaseException:
        # Ctrl-C in a notebook reaches only Python: stop the binary as a terminal would.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    for t in pumps:
        t.join()
    stderr = "".join(err)
    if returncode != 0:
        command = args[0] if args else ""
        raise SelfsupError(
            f"selfsup {command} failed: {error_message(stderr, returncode)}",
            stderr=stderr,
            returncode=returncode,
        )
    return "".join(out)


def _global_args(device: str | None, threads: int | None) -> list[str]:
    args = []
    if device is not None:
        args += ["--device", device]
    if threads is not None:
        args += ["--threads", str(threads)]
    return args


def pretrain(
    method: str | None = None,
    data: str | None = None,
    *,
    out: PathLike,
    config: PathLike | Mapping[str, ConfigValue] | None = None,
    resume: bool = False,
    quiet: bool = False,
    device: str | None = None,
    threads: int | None = None,
    **keys: ConfigValue,
) -> Run:
    """Pretrains `method` on `data` (`KIND[:PATH]`, as `--data`) into the run folder `out`,
    as `selfsup pretrain` does; returns the finished `Run`.

    `config` is a TOML file or a dict of config keys; `keys` are more config keys (they
    win), e.g. `epochs=5, cnn_widths=[32, 64]`. The binary's progress (one line per epoch)
    goes to stdout and stderr unless `quiet`. `resume` continues the run in `out` from its
    last checkpoint. Raises SelfsupError with the binary's message when it fails.
    """
    args = [*_global_args(device, threads), "pretrain", "--out", os.fspath(out)]
    if method is not None:
        args += ["--method", method]
    if data is not None:
        args += ["--data", data]
    if isinstance(config, Mapping):
        keys = {**config, **keys}
    elif config is not None:
        args += ["--config", os.fspath(config)]
    if resume:
        args.append("--resume")
    if quiet:
        args.append("--quiet")
    run_binary([*args, *set_args(keys)], stream=not quiet)
    return Run(out)


def list_images(folder: PathLike) -> list[Path]:
    """The image files (`.png`, `.jpg`, `.jpeg`, any case) below `folder`, in sorted path
    order, without names starting with `.`: the rows of `Run.embed(folder)`."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder of images")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                found.append(Path(dirpath, name))
    return sorted(found)


def load_image(path: Path, shape: tuple[int, int, int]) -> torch.Tensor:
    """An image file as the evaluation sees a folder's images: the central square (as wide
    as the shorter side) scaled to `shape`'s H x W (bilinear), with `shape`'s channels
    (1: grey, 3: RGB), in [0, 1], `[C, H, W]`. Decoded and scaled with Pillow."""
    import numpy as np
    import torch
    from PIL import Image

    c, h, w = shape
    with Image.open(path) as img:
        img = img.convert("L" if c == 1 else "RGB")
        side = min(img.width, img.height)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side))
        if (side, side) != (w, h):
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        pixels = np.asarray(img, dtype=np.uint8).reshape(h, w, -1)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255.0


class Run:
    """A run folder written by `selfsup pretrain` (or `selfsup.pretrain`)."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise NotARunError(f"{self.path}: no such run folder")
        if not (self.path / "config.toml").is_file():
            raise NotARunError(
                f"{self.path} is not a run folder: it has no config.toml "
                "(run folders are written by `selfsup pretrain --out DIR`)"
            )
        self._cache: tuple[int, nn.Module, tuple[int, int, int]] | None = None

    def __repr__(self) -> str:
        return f"Run({os.fspath(self.path)!r})"

    @property
    def config(self) -> dict[str, Any]:
        """The run's config (`config.toml`: the keys its method reads)."""
        with open(self.path / "config.toml", "rb") as f:
            return tomllib.load(f)

    @property
    def metrics(self) -> list[dict[str, Any]] | pandas.DataFrame:
        """`metrics.jsonl`: one dict per logged step and per epoch; a pandas DataFrame
        where pandas is installed."""
        file = self.path / "metrics.jsonl"
        records = []
        if file.is_file():
            with open(file) as f:
                records = [json.loads(line) for line in f if line.strip()]
        try:
            import pandas
        except ImportError:
            return records
        return pandas.DataFrame.from_records(records)

    @property
    def checkpoint(self) -> Path:
        """The run's last checkpoint; NotARunError while it has none."""
        ck = self.path / "checkpoint.safetensors"
        if not ck.is_file():
            raise NotARunError(
                f"{self.path} has no checkpoint.safetensors: its pretraining stopped before "
                "the first checkpoint (continue it with selfsup.pretrain(out=..., resume=True))"
            )
        return ck

    def evaluate(self, *, device: str | None = None, **keys: ConfigValue) -> dict[str, float]:
        """Runs `selfsup eval` on the run (`keys`: eval keys such as `knn_k=20`); returns its
        scores (fractions): `linear_top1`, `linear_top5`, `knn_top1`, and `feature_dim`."""
        _ = self.checkpoint
        run = os.fspath(self.path)
        run_binary([*_global_args(device, None), "eval", "--run", run, *set_args(keys)])
        with open(self.path / "eval.json") as f:
            scores = json.load(f)["scores"]
        return {k: float(v) for k, v in scores.items()}

    def export(self, out: PathLike, format: Literal["safetensors", "onnx"] | None = None) -> Path:
        """Runs `selfsup export`: the encoder as safetensors (PyTorch's names) or, with
        `format="onnx"` or an `.onnx` name, as an ONNX model. Returns `out`."""
        _ = self.checkpoint
        args = ["export", "--run", os.fspath(self.path), "--out", os.fspath(out)]
        if format is not None:
            args += ["--format", format]
        run_binary(args)
        return Path(out)

    def _load(self, backend: Backend | None) -> tuple[nn.Module, tuple[int, int, int]]:
        """The exported encoder as a module, and its `input_shape`."""
        from selfsup.models import load_encoder, read_export

        tmp = tempfile.mkdtemp(prefix="selfsup-export-")
        try:
            path = self.export(Path(tmp, "encoder.safetensors"))
            shape = read_export(path).input_shape
            module = load_encoder(path, backend)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        assert shape is not None, "this selfsup's exports record input_shape"
        return module, shape

    def encoder(self, backend: Backend | None = None) -> nn.Module:
        """The run's encoder (at its last checkpoint) as a new PyTorch module in eval mode,
        loaded strictly from `selfsup export`: torchvision's resnet18 (timm's with
        `backend="timm"`), timm's VisionTransformer, or `selfsup.models.SmallCNN`; see
        `selfsup.models`. It maps `[B, C, H, W]` images in [0, 1] to the features that
        `selfsup embed` writes."""
        return self._load(backend)[0]

    def _cached(self) -> tuple[nn.Module, tuple[int, int, int]]:
        """`_load`'s result for the current checkpoint, loaded once."""
        stamp = self.checkpoint.stat().st_mtime_ns
        if self._cache is None or self._cache[0] != stamp:
            self._cache = (stamp, *self._load(None))
        return self._cache[1], self._cache[2]

    def input_shape(self) -> tuple[int, int, int]:
        """`(C, H, W)` of the images the encoder is applied to, as its evaluation feeds them."""
        return self._cached()[1]

    def embed(self, x: torch.Tensor | PathLike, batch_size: int = 256) -> torch.Tensor:
        """Features `[N, D]` of a batch of images `x` (`[N, C, H, W]` in [0, 1] at the run's
        `input_shape`; ValueError otherwise), or of every image below a folder (in
        `list_images` order, prepared as `load_image` says for that shape), by the run's
        encoder."""
        import torch

        net, shape = self._cached()
        if isinstance(x, torch.Tensor):
            images = x
        else:
            files = list_images(x)
            if not files:
                raise FileNotFoundError(f"{x}: no .png, .jpg or .jpeg files below it")
            images = torch.stack([load_image(f, shape) for f in files])
        c, h, w = shape
        if images.dim() != 4 or tuple(images.shape[1:]) != shape:
            raise ValueError(
                f"this run's encoder takes images [N, {c}, {h}, {w}] (its input_shape), not "
                f"{list(images.shape)}; run.encoder() is the module, for other sizes"
            )
        with torch.no_grad():
            parts = [net(b.float()) for b in images.split(batch_size)]
        return torch.cat(parts)
