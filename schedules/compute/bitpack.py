"""Bit-packing computes: ``x >= t`` into uint64 words (NCHW maps and last-axis tokens), and
the float ±1 forms a DynamicSign takes when no binary kernel consumes its bits."""
from __future__ import annotations

from tvm import te, tirx

from .common import U64, WORD, broadcast_reader, ints, nwords


def pack_reduce(get_x, get_t, cw, length: int):
    """Sum over the 64 bits of ``select(x >= t, 1 << b, 0)``: distinct powers of two, so the sum
    equals the OR, and a sum reduction vectorises where a bitwise-or chain may not.  NaN compares
    false (ordered ``>=``) and yields bit 0.  Bits past ``length`` are masked off and their loads
    clamped in bounds (``te.sum(where=...)`` is dropped by ``create_prim_func`` in 0.27, and a
    clamp keeps the loop branch-free so it still vectorises)."""
    if length < WORD:
        # one partial word: reduce over the real channels only (no masked half-word of dead
        # compares, e.g. the 32-channel stem); same loop structure, so every schedule applies
        b = te.reduce_axis((0, length), name="b")
        hit = get_x(b) >= get_t(b)
        return te.sum(tirx.Select(hit, tirx.const(1, U64) << b.astype(U64), tirx.const(0, U64)), axis=b)
    b = te.reduce_axis((0, WORD), name="b")
    c = cw * WORD + b
    cond = None
    if length % WORD:
        cond = c < length
        c = tirx.min(c, length - 1)
    hit = get_x(c) >= get_t(c)
    if cond is not None:
        hit = tirx.all(cond, hit)
    bit = tirx.Select(hit, tirx.const(1, U64) << b.astype(U64), tirx.const(0, U64))
    return te.sum(bit, axis=b)


def bitpack(x: te.Tensor, t: te.Tensor, name: str = "bitpack") -> te.Tensor:
    """Binarise and pack NCHW activations into NHWC-packed words.

    Parameters
    ----------
    x : te.Tensor
        float32 ``[N, C, H, W]``.
    t : te.Tensor
        float32 threshold broadcastable to ``x`` (numpy rules): ``[N, C, 1, 1]``, ``[1, C, 1, 1]``,
        ``[1, 1, 1, 1]``, ``[]`` and any other broadcastable shape.

    Returns
    -------
    te.Tensor
        uint64 ``[N, H, W, CW]``, ``CW = ceil(C / 64)``, packed along C LSB-first; bit set iff
        ``x >= t`` (NaN -> 0); tail bits zero.
    """
    N, C, H, W = ints(x.shape)
    tr = broadcast_reader(t, 4, (N, C, H, W))
    return te.compute(
        (N, H, W, nwords(C)),
        lambda n, h, w, cw: pack_reduce(
            lambda c: x[n, c, h, w], lambda c: tr(n, c, h, w), cw, C),
        name=name,
        attrs={"schedule_rule": "bnn_bitpack"},
    )


def bitpack_last(x: te.Tensor, t: te.Tensor, name: str = "bitpack_last") -> te.Tensor:
    """Binarise and pack the last axis of token activations.

    Parameters
    ----------
    x : te.Tensor
        float32 ``[..., D]``, rank 2-4 (e.g. ``[B, L, D]``).
    t : te.Tensor
        float32 threshold broadcastable to ``x`` (e.g. ``[B, 1, D]``, ``[1, 1, D]``, ``[]``).

    Returns
    -------
    te.Tensor
        uint64 ``[..., DW]``, ``DW = ceil(D / 64)``; bit set iff ``x >= t`` (NaN -> 0), tail zero.
    """
    shape = ints(x.shape)
    if not 1 <= len(shape) <= 6:
        raise ValueError(f"bitpack_last: unsupported rank {len(shape)}")
    D = shape[-1]
    tr = broadcast_reader(t, len(shape), shape)

    def f(*idx):
        lead, cw = idx[:-1], idx[-1]
        return pack_reduce(lambda c: x(*lead, c), lambda c: tr(*lead, c), cw, D)

    return te.compute(tuple(shape[:-1]) + (nwords(D),), f, name=name,
                      attrs={"schedule_rule": "bnn_bitpack_last"})




def dynamic_sign(x: te.Tensor, t: te.Tensor | None = None) -> te.Tensor:
    """DynamicSign as float ±1: ``+1`` where ``x >= t`` else ``-1`` (``t`` broadcasts; absent
    means 0; NaN gives -1).  Used where no binary kernel consumes the sign's bits."""
    one, neg = tirx.const(1.0, x.dtype), tirx.const(-1.0, x.dtype)
    shape = ints(x.shape)
    if t is None:
        return te.compute(shape, lambda *i: tirx.Select(x(*i) >= tirx.const(0.0, x.dtype), one, neg),
                          name="dynamic_sign")
    tr = broadcast_reader(t, len(shape), shape)
    return te.compute(shape, lambda *i: tirx.Select(x(*i) >= tr(*i), one, neg), name="dynamic_sign")


def unpack_bits_float(packed: te.Tensor, shape, layout: str) -> te.Tensor:
    """Packed words back to float ±1 in the DynamicSign's own layout (debug builds expose the
    bits the binary kernels consume this way).

    ``layout="nchw"``: ``packed`` is uint64 ``[N, H, W, CW]`` (:func:`bitpack`) and ``shape`` is
    ``[N, C, H, W]``; ``layout="last"``: ``packed`` is ``[..., DW]`` (:func:`bitpack_last`) and
    ``shape`` is ``[..., D]``.
    """
    one, neg = tirx.const(1.0, "float32"), tirx.const(-1.0, "float32")

    def bit(word, c):
        shift = (c % WORD).astype(U64)
        return ((word >> shift) & tirx.const(1, U64)) == tirx.const(1, U64)

    shape = [int(s) for s in shape]
    if layout == "nchw":
        return te.compute(shape, lambda n, c, h, w: tirx.Select(
            bit(packed[n, h, w, c // WORD], c), one, neg), name="unpack_bits")
    if layout != "last":
        raise ValueError(f"unpack_bits_float: layout must be 'nchw' or 'last', got {layout!r}")
    return te.compute(shape, lambda *i: tirx.Select(
        bit(packed[(*i[:-1], i[-1] // WORD)], i[-1]), one, neg), name="unpack_bits")
