"""Bounds on user-given sizes, checked before any work: past them a typo (``--input-size
100000``: 960 GB of activations) would exhaust memory or overflow TVM's int32 indices long
after the command started, with a message naming neither the flag nor the input."""

from __future__ import annotations

from .errors import UsageError

#: a 1024-pixel ResNet-18 already needs ~1.3 GB of activations in PyTorch
MAX_INPUT_SIZE = 1024
MAX_BATCH = 256
MAX_CLASSES = 100_000
#: elements of one input tensor: TVM indexes buffers with int32
MAX_ELEMENTS = 2**31 - 1


def check_size(flag: str, value, top: int) -> None:
    """``value`` (None: not given) is an int in [1, top], else a UsageError naming ``flag``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        raise UsageError(f"Expected {flag} between 1 and {top:,}, got {value!r}")
