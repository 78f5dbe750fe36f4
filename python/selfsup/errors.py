"""The exceptions of the selfsup package: all are `SelfsupError`s."""

from __future__ import annotations


class SelfsupError(Exception):
    """The selfsup binary failed (`stderr` holds all it wrote there, `returncode` its exit
    status), or an input of the Python API is not what selfsup needs."""

    def __init__(self, message: str, *, stderr: str = "", returncode: int | None = None) -> None:
        super().__init__(message)
        self.stderr = stderr
        self.returncode = returncode


class NotARunError(SelfsupError):
    """A folder that is not a run folder written by `selfsup pretrain`, or one without
    the file an operation needs (its checkpoint)."""


class TorchVersionError(SelfsupError):
    """The torch in this Python is not the torch release the selfsup binary was built
    against (or is missing, or lacks the CUDA libraries the binary links)."""


class ExportError(SelfsupError):
    """A file that is not an encoder written by `selfsup export`."""
