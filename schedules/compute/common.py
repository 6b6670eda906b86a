"""Shared pieces of the TE computes: the word size, shape helpers, threshold broadcasting."""
from __future__ import annotations

from collections.abc import Sequence

from tvm import te, tirx

# geometry helpers live with the compile-time tables that need them too (numpy-only module)
from ..packing import WORD_BITS as WORD
from ..packing import border_row_classes, conv_out_size, normalize_2d, normalize_padding

U64 = "uint64"

__all__ = ["U64", "WORD", "border_row_classes", "broadcast_reader", "clipped_levels", "conv_out_size",
           "divisor_lanes", "ints", "level_scale", "normalize_2d", "normalize_padding", "nwords",
           "round_half_even"]


def round_half_even(x):
    """float32 ``x`` rounded to the nearest integer, ties to even (numpy ``rint``, ONNX ``Round``) as
    LLVM's ``roundeven``: ``tirx.nearbyint`` is the same number, but TVM 0.27 leaves a loop
    using it unvectorised, for LLVM to vectorise or not (attention's probability rows, 4x256x256:
    gathered, 0.219 ms; 0.043 with this; the conv quantizers measured no better with it and
    keep nearbyint).  CPU (LLVM) targets only."""
    return tirx.call_llvm_pure_intrin("float32", "llvm.roundeven", x)


def divisor_lanes(n: int, limit: int = 16) -> int:
    """The widest vector of partial results a row of ``n`` splits into: its largest divisor up
    to ``limit``."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def level_scale(peak, levels: int):
    """``levels / peak`` of a quantizer's range, 0 where the peak is not positive (a dead map:
    levels 0, no NaN)."""
    zero = tirx.const(0.0, "float32")
    return tirx.Select(peak > zero, tirx.const(float(levels), "float32") / peak, zero)


def clipped_levels(x, lo: int, hi: int, rounding=tirx.nearbyint):
    """``clip(rint(x), lo, hi)`` as float32 (``rounding``: ``tirx.nearbyint`` or
    :func:`round_half_even`, the same number)."""
    return tirx.max(tirx.min(rounding(x), tirx.const(float(hi), "float32")), tirx.const(float(lo), "float32"))


def ints(shape) -> list:
    return [int(s) for s in shape]


def nwords(n: int) -> int:
    return (int(n) + WORD - 1) // WORD


def broadcast_reader(t: te.Tensor, out_rank: int, out_shape: Sequence[int]):
    """Index function for ``t`` broadcast (numpy rules, right-aligned) to ``out_shape``."""
    tshape = ints(t.shape)
    if len(tshape) > out_rank:
        raise ValueError(f"threshold rank {len(tshape)} exceeds input rank {out_rank}")
    off = out_rank - len(tshape)
    for i, s in enumerate(tshape):
        if s not in (1, out_shape[off + i]):
            raise ValueError(f"threshold shape {tshape} is not broadcastable to {list(out_shape)}")

    def read(*idx):
        if not tshape:
            return t()
        return t(*[idx[off + i] if s != 1 else 0 for i, s in enumerate(tshape)])

    return read


