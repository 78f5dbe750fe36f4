"""One SimCLR training step in PyTorch, timed: the reference for `selfsup bench-step`.

The same step as selfsup's: the encoder (selfsup's small CNN: per stage two 3x3
conv-BN-ReLU, the first of each later stage with stride 2, average-pooled to a pool x pool
grid and flattened; or the CIFAR ResNet-18: torchvision's with a 3x3 stride-1 stem, no
max-pool, no fc), the projection head Linear-ReLU-Linear, NT-Xent computed in float32,
AdamW (or Adam / SGD with momentum), on random input of 2 x batch views. With
--precision bf16 the forward pass runs under torch.autocast(device, torch.bfloat16) and
the loss in float32 (autocast disabled, inputs cast), as selfsup does; weights and
optimizer state stay float32.

selfsup's binary tunes glibc's allocator before anything runs (no mmap for large buffers,
no trimming; src/main.rs); --malloc mallopt does the same here through ctypes before torch
is imported, --malloc env expects MALLOC_MMAP_MAX_ / MALLOC_TRIM_THRESHOLD_ in the
environment (glibc reads them at start-up), --malloc default leaves glibc as it is.

Each (precision, memory format) is measured --rounds times, the rounds interleaved, and the
best counts (other work on the machine slows some rounds down). Prints one JSON object per
(precision, memory format): images per second, where an image is one of the batch's images
(two views each), as selfsup counts them.

usage: python bench_step_torch.py --precision fp32 bf16 --steps 20 [--channels-last] ...
"""
import argparse
import ctypes
import json
import sys
import time


def tune_malloc():
    """mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, INT_MAX), as selfsup's main()."""
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_max = -1, -4
    ok = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2**31 - 1) == 1
    if not ok:
        sys.exit("mallopt failed")


def parse():
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
    ap.add_argument("--memory-format", nargs="+", choices=["contiguous", "channels-last"],
                    default=["contiguous"])
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before each round")
    ap.add_argument("--rounds", type=int, default=3,
                    help="measurements of each setup, interleaved; the best counts")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--malloc", choices=["mallopt", "env", "default"], default="mallopt")
    return ap.parse_args()


def main():
    a = parse()
    if a.malloc == "mallopt":
        tune_malloc()
    import torch
    from torch import nn
    import torch.nn.functional as F

    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)

    def conv_bn_relu(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    def small_cnn(cin):
        layers = []
        for i, w in enumerate(a.cnn_widths):
            layers += conv_bn_relu(cin, w, 1 if i == 0 else 2) + conv_bn_relu(w, w, 1)
            cin = w
        layers += [nn.AdaptiveAvgPool2d(a.cnn_pool), nn.Flatten()]
        return nn.Sequential(*layers), cin * a.cnn_pool * a.cnn_pool

    def resnet18(cin):
        import torchvision
        widths = [round(64 * a.resnet_width * 2**i) for i in range(4)]
        net = torchvision.models.resnet18()
        if widths[0] != 64:
            # A width multiplier: torchvision's block layout with other channel counts.
            net = torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [2, 2, 2, 2])
            net.inplanes = widths[0]
            net.bn1 = nn.BatchNorm2d(widths[0])
            for i, w in enumerate(widths):
                setattr(net, f"layer{i + 1}", net._make_layer(
                    torchvision.models.resnet.BasicBlock, w, 2, stride=1 if i == 0 else 2))
        net.conv1 = nn.Conv2d(cin, widths[0], 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        return net, widths[3]

    c, h, w = a.shape

    def nt_xent(z1, z2, t):
        n = z1.shape[0]
        z = F.normalize(torch.cat([z1, z2]), dim=1)  # [2N, D]
        sim = (z @ z.T / t).masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device),
                                        float("-inf"))
        targets = (torch.arange(2 * n, device=z.device) + n) % (2 * n)
        return F.cross_entropy(sim, targets)

    def setup(precision, memory_format):
        """A fresh model, optimizer and random input; returns one timed round as a function."""
        torch.manual_seed(0)
        enc, d = small_cnn(c) if a.encoder == "cnn" else resnet18(c)
        proj = nn.Sequential(nn.Linear(d, a.proj_hidden_dim), nn.ReLU(),
                             nn.Linear(a.proj_hidden_dim, a.proj_dim))
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

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
                z = model(x)
                with torch.autocast(device.type, enabled=False):
                    z1, z2 = z.float().chunk(2)
                    loss = nt_xent(z1, z2, a.temperature)
            loss.backward()
            opt.step()
            return loss.item()

        def round_():
            for _ in range(a.warmup):
                step()
            start = time.perf_counter()
            for _ in range(a.steps):
                loss = step()
            secs = time.perf_counter() - start
            if loss != loss:
                sys.exit(f"the loss became NaN ({precision}, {memory_format})")
            return a.steps * a.batch_size / secs

        return round_

    setups = {(p, f): setup(p, f) for f in a.memory_format for p in a.precision}
    best = {k: 0.0 for k in setups}
    for _ in range(a.rounds):
        for k, round_ in setups.items():
            best[k] = max(best[k], round_())
    for (precision, memory_format), ips in best.items():
        print(json.dumps({"precision": precision, "memory_format": memory_format,
                          "images_per_sec": ips, "threads": torch.get_num_threads(),
                          "malloc": a.malloc}), flush=True)


if __name__ == "__main__":
    main()
