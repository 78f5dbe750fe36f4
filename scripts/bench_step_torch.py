"""One SimCLR training step in PyTorch, timed: the reference for `selfsup bench-step`.

The same step as selfsup's: the encoder (selfsup's small CNN: per stage two 3x3
conv-BN-ReLU, the first of each later stage with stride 2, average-pooled to a pool x pool
grid and flattened; or the CIFAR ResNet-18: torchvision's with a 3x3 stride-1 stem, no
max-pool, no fc; where torchvision is not installed, the same network written out here),
the projection head Linear-ReLU-Linear, NT-Xent computed in float32,
AdamW (or Adam / SGD with momentum), on random input of 2 x batch views. With
--precision bf16 the forward pass runs under torch.autocast(device, torch.bfloat16) and
the loss in float32 (autocast disabled, inputs cast), as selfsup does; weights and
optimizer state stay float32.

--mode eager runs the step as written; --mode compiled runs it through torch.compile
(default mode, inductor): the forward pass with the loss (and so, through AOTAutograd, the
backward pass) and the optimizer step, each compiled once per setup. The compilation is
timed apart (compile_seconds: the first two steps, which compile the forward and backward
graphs and the optimizer step before and after its state exists, less two steady steps)
and is not part of images_per_sec. Inductor keeps what it compiled in its cache on disk
(/tmp/torchinductor_$USER), so a later run of the same setup compiles in far less time.
Where inductor cannot build kernels (no C++ compiler on the CPU; on CUDA no Triton, no C
compiler or no Python.h for its launcher), or the compilation fails, the compiled setup's
line says why ("error") instead of a speed, and the other setups still run.

selfsup's binary tunes glibc's allocator before anything runs (no mmap for large buffers,
no trimming; src/main.rs); --malloc mallopt does the same here through ctypes before torch
is imported, --malloc env expects MALLOC_MMAP_MAX_ / MALLOC_TRIM_THRESHOLD_ in the
environment (glibc reads them at start-up), --malloc default leaves glibc as it is.

Each (precision, memory format, mode) is measured --rounds times, the rounds interleaved,
and the best counts (other work on the machine slows some rounds down). Prints one JSON
object per setup: images per second, where an image is one of the batch's images (two
views each), as selfsup counts them. With --serve the setups are built (and compiled)
once ({"ready": true} says they are) and a round runs each time a line "round" arrives on
stdin: one JSON object per setup with that round's figure, then {"end_of_round": true}; the
process ends at the end of its input. `selfsup bench-step` drives it that way, between its
own rounds. A line "profile" instead runs one more round with each setup's --steps steps
(after --warmup) under torch.profiler (CPU activity): each setup's object then has
"profile": {"steps", "wall_seconds", "ops": {name: [calls, self seconds]}}, from the
profiler's key averages, for `selfsup bench-step --profile`.

usage: python bench_step_torch.py --precision fp32 bf16 --memory-format contiguous
       channels-last --mode eager compiled --steps 20 [--serve] ...
"""

import argparse
import ctypes
import json
import os
import shutil
import sys
import sysconfig
import time
from collections.abc import Callable
from typing import Any


def tune_malloc() -> None:
    """mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, INT_MAX), as selfsup's main()."""
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_max = -1, -4
    ok = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2**31 - 1) == 1
    if not ok:
        sys.exit("mallopt failed")


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", choices=["cnn", "resnet18"], default="cnn")
    ap.add_argument("--shape", type=int, nargs=3, default=[1, 28, 28], metavar=("C", "H", "W"))
    ap.add_argument("--cnn-widths", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--cnn-pool", type=int, default=3)
    ap.add_argument("--resnet-width", type=float, default=1.0)
    ap.add_argument("--proj-hidden-dim", type=int, default=512)
    ap.add_argument("--proj-dim", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="adamw")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    ap.add_argument(
        "--memory-format",
        nargs="+",
        choices=["contiguous", "channels-last"],
        default=["contiguous"],
    )
    ap.add_argument(
        "--mode",
        nargs="+",
        choices=["eager", "compiled"],
        default=["eager"],
        help="eager, and/or through torch.compile (default mode)",
    )
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before each round")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measurements of each setup, interleaved; the best counts",
    )
    ap.add_argument(
        "--serve",
        action="store_true",
        help="one round per line 'round' on stdin (--rounds is then unused)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--malloc", choices=["mallopt", "env", "default"], default="mallopt")
    return ap.parse_args()


def reason(e: BaseException) -> str:
    """Why something failed, in one line: the innermost exception of the chain (inductor
    wraps the real one in BackendCompilerFailed), its type and its first line of text."""
    while True:
        inner = getattr(e, "inner_exception", None) or e.__cause__
        if not isinstance(inner, BaseException) or inner is e:
            break
        e = inner
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def compiler_missing(device_type: str) -> str | None:
    """Why inductor cannot build kernels on `device_type`, found before compiling anything
    (a compilation takes long to fail); None when nothing is known to be missing."""
    if device_type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler
        except ImportError:
            return None  # an internal API moved: the compilation itself will tell
        try:
            get_cpp_compiler()
        except Exception as e:
            return f"no C++ compiler for inductor's CPU kernels ({reason(e)})"
        return None
    if device_type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError as e:
            return f"Triton cannot be imported ({e})"
        # Triton builds a small C launcher with the first kernel: CC, else gcc or clang.
        if not (os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")):
            return "no C compiler for Triton's launcher (gcc or clang on PATH, or CC)"
        scheme = sysconfig.get_default_scheme()
        scheme = "posix_prefix" if scheme == "posix_local" else scheme
        include = sysconfig.get_paths(scheme=scheme)["include"]
        if not os.path.exists(os.path.join(include, "Python.h")):
            return f"no Python.h in {include} for Triton's launcher (Python's development headers)"
    return None


class Failed:
    """A setup that cannot run: its line says why instead of giving a speed."""

    def __init__(self, why: str) -> None:
        self.why = why


def main() -> None:
    a = parse()
    if a.malloc == "mallopt":
        tune_malloc()
    import torch
    import torch.nn.functional as F
    from torch import nn

    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    # Each compiled setup adds entries to the caches of the same functions' code: room for
    # all of them, so that none falls back to eager silently.
    for limit in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 64)

    def conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    def small_cnn(cin: int) -> tuple[nn.Module, int]:
        layers = []
        for i, w in enumerate(a.cnn_widths):
            layers += conv_bn_relu(cin, w, 1 if i == 0 else 2) + conv_bn_relu(w, w, 1)
            cin = w
        layers += [nn.AdaptiveAvgPool2d(a.cnn_pool), nn.Flatten()]
        return nn.Sequential(*layers), cin * a.cnn_pool * a.cnn_pool

    class BasicBlock(nn.Module):
        """torchvision's BasicBlock, for a venv without torchvision (the GPU check's)."""

        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    def resnet18(cin: int) -> tuple[nn.Module, int]:
        widths = [round(64 * a.resnet_width * 2**i) for i in range(4)]
        try:
            import torchvision
        except ImportError:
            layers = [
                nn.Conv2d(cin, widths[0], 3, 1, 1, bias=False),
                nn.BatchNorm2d(widths[0]),
                nn.ReLU(inplace=True),
            ]
            for i, w in enumerate(widths):
                prev = widths[max(i - 1, 0)]
                layers += [BasicBlock(prev, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)]
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            return nn.Sequential(*layers), widths[3]
        net = torchvision.models.resnet18()
        if widths[0] != 64:
            # A width multiplier: torchvision's block layout with other channel counts.
            block = torchvision.models.resnet.BasicBlock
            net = torchvision.models.ResNet(block, [2, 2, 2, 2])
            net.inplanes = widths[0]
            net.bn1 = nn.BatchNorm2d(widths[0])
            for i, w in enumerate(widths):
                stride = 1 if i == 0 else 2
                setattr(net, f"layer{i + 1}", net._make_layer(block, w, 2, stride=stride))
        net.conv1 = nn.Conv2d(cin, widths[0], 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        return net, widths[3]

    c, h, w = a.shape

    def nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
        n = z1.shape[0]
        z = F.normalize(torch.cat([z1, z2]), dim=1)  # [2N, D]
        eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        sim = (z @ z.T / t).masked_fill(eye, float("-inf"))
        targets = (torch.arange(2 * n, device=z.device) + n) % (2 * n)
        return F.cross_entropy(sim, targets)

    no_compiler = compiler_missing(device.type) if "compiled" in a.mode else None

    def setup(precision: str, memory_format: str, mode: str) -> "Setup | Failed":
        """A fresh model, optimizer and random input, compiled when `mode` says so."""
        if mode == "compiled" and no_compiler:
            return Failed(no_compiler)
        torch.manual_seed(0)
        enc, d = small_cnn(c) if a.encoder == "cnn" else resnet18(c)
        proj = nn.Sequential(
            nn.Linear(d, a.proj_hidden_dim), nn.ReLU(), nn.Linear(a.proj_hidden_dim, a.proj_dim)
        )
        fmt = torch.channels_last if memory_format == "channels-last" else torch.contiguous_format
        model = nn.Sequential(enc, proj).to(device).to(memory_format=fmt)
        params = model.parameters()
        if a.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=a.weight_decay)
        elif a.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=a.lr, weight_decay=a.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay)
        x = torch.rand(2 * a.batch_size, c, h, w, device=device).to(memory_format=fmt)

        def forward_loss(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
                z = model(x)
                with torch.autocast(device.type, enabled=False):
                    z1, z2 = z.float().chunk(2)
                    return nt_xent(z1, z2, a.temperature)

        def opt_step() -> None:
            opt.step()

        if mode == "compiled":
            forward_loss = torch.compile(forward_loss)
            opt_step = torch.compile(opt_step)

        def step() -> float:
            opt.zero_grad(set_to_none=True)
            loss = forward_loss(x)
            loss.backward()
            opt_step()
            return loss.item()

        s = Setup(f"{precision}, {memory_format}, {mode}", step)
        if mode == "compiled":
            try:
                s.compile()
            except Exception as e:
                return Failed(reason(e))
        return s

    class Setup:
        """One measured step and its compilation time (None when eager)."""

        def __init__(self, name: str, step: Callable[[], float]) -> None:
            self.name, self.step = name, step
            self.compile_seconds: float | None = None

        def compile(self) -> None:
            """Runs the first two steps, which compile; their time less two steady steps
            (the fastest of the next three) is the compilation's."""
            start = time.perf_counter()
            self.step()
            self.step()
            first_two = time.perf_counter() - start
            steady = []
            for _ in range(3):
                start = time.perf_counter()
                self.step()
                steady.append(time.perf_counter() - start)
            self.compile_seconds = max(0.0, first_two - 2 * min(steady))

        def profile(self) -> dict[str, Any]:
            """`warmup` untimed steps, then `steps` under torch.profiler: each operator's
            calls and self time, and the steps' wall time."""
            from torch.profiler import ProfilerActivity, profile

            for _ in range(a.warmup):
                self.step()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                start = time.perf_counter()
                for _ in range(a.steps):
                    self.step()
                wall = time.perf_counter() - start
            ops = {e.key: [e.count, e.self_cpu_time_total * 1e-6] for e in prof.key_averages()}
            return {"steps": a.steps, "wall_seconds": wall, "ops": ops}

        def round(self) -> float:
            """`warmup` untimed steps, then `steps` timed ones: images per second."""
            for _ in range(a.warmup):
                self.step()
            start = time.perf_counter()
            for _ in range(a.steps):
                loss = self.step()
            secs = time.perf_counter() - start
            if loss != loss:
                sys.exit(f"the loss became NaN ({self.name})")
            return a.steps * a.batch_size / secs

    setups = {
        (p, f, m): setup(p, f, m) for m in a.mode for f in a.memory_format for p in a.precision
    }

    def line(key: tuple[str, str, str], ips: float | None, prof: dict | None = None) -> str:
        (precision, memory_format, mode), s = key, setups[key]
        row: dict[str, Any] = {"precision": precision, "memory_format": memory_format}
        row |= {"mode": mode, "threads": torch.get_num_threads(), "malloc": a.malloc}
        if isinstance(s, Failed):
            row["error"] = s.why
        else:
            row["images_per_sec"] = ips
            row["compile_seconds"] = s.compile_seconds
            if prof is not None:
                row["profile"] = prof
                row["images_per_sec"] = a.steps * a.batch_size / prof["wall_seconds"]
        return json.dumps(row)

    def one_round() -> dict[tuple[str, str, str], float | None]:
        got: dict[tuple[str, str, str], float | None] = {}
        for k, s in setups.items():
            if isinstance(s, Failed):
                got[k] = None
                continue
            try:
                got[k] = s.round()
            except Exception as e:
                if k[2] != "compiled":
                    raise
                setups[k] = Failed(reason(e))  # a compiled step that fails after compiling
                got[k] = None
        return got

    if a.serve:
        print(json.dumps({"ready": True}), flush=True)
        for request in sys.stdin:
            if request.strip() == "profile":
                for k, s in setups.items():
                    prof = None if isinstance(s, Failed) else s.profile()
                    print(line(k, None, prof))
            elif request.strip() == "round":
                for k, ips in one_round().items():
                    print(line(k, ips))
            else:
                sys.exit(f"expected 'round' or 'profile' on stdin, got {request.strip()!r}")
            print(json.dumps({"end_of_round": True}), flush=True)
        return
    best: dict[tuple[str, str, str], float] = {k: 0.0 for k in setups}
    for _ in range(a.rounds):
        for k, ips in one_round().items():
            best[k] = max(best[k], ips or 0.0)
    for k, ips in best.items():
        print(line(k, ips), flush=True)


if __name__ == "__main__":
    main()
