"""selfsup from Python: self-supervised visual representation learning with the selfsup
binary (shipped in this package), and its encoders as PyTorch modules.

    import selfsup
    run = selfsup.pretrain("simclr", "folder:/data/photos", out="runs/photos", epochs=5)
    print(run.evaluate())                  # linear probe top-1/top-5, kNN top-1
    encoder = run.encoder()                # torchvision / timm / selfsup.models module
    features = run.embed("/data/photos")   # [N, D], or run.embed(images) for a batch

`python -m selfsup` (and the `selfsup` command) is the command line.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from selfsup._api import Run, list_images, load_image, pretrain
from selfsup.errors import ExportError, NotARunError, SelfsupError, TorchVersionError

if TYPE_CHECKING:
    from torch import nn

    from selfsup.models import Backend


def load_encoder(path: str | os.PathLike[str], backend: Backend | None = None) -> nn.Module:
    """`selfsup.models.load_encoder`: the encoder exported to `path` as a PyTorch module
    (`selfsup.models` is imported when this is called: it imports torch)."""
    from selfsup.models import load_encoder as load

    return load(path, backend)


try:
    __version__ = version("selfsup")
except PackageNotFoundError:  # the source tree
    __version__ = "0+source"

__all__ = [
    "ExportError",
    "NotARunError",
    "Run",
    "SelfsupError",
    "TorchVersionError",
    "list_images",
    "load_encoder",
    "load_image",
    "pretrain",
]
