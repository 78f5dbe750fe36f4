"""What the selfsup binary in this package was built against. scripts/wheel.py writes this
file into the wheel; the copy in the source tree names the torch release that
scripts/setup.sh installs and no libraries (it has no binary)."""

TORCH_VERSION = "2.11.0"
# The libraries of torch/lib that the binary needs (its DT_NEEDED entries found there).
TORCH_LIBS: tuple[str, ...] = ()
