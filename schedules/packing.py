"""Compile-time numpy bit-packing helpers (and the conv geometry they and the computes share),
used by the frontend and the tests.

Bit convention (fixed across bnncompile): bit 1 means +1, bit 0 means -1.  Bits are packed
LSB-first into ``uint64`` words: element ``c`` of the packed axis lives in word ``c // 64``, bit
``c % 64``.  Tail bits past the true length are 0 in both activations and weights, so they xor to
0 and a word-wise ``popcount(x ^ w)`` counts exactly the disagreeing real channels.
"""
from __future__ import annotations

import numpy as np

WORD_BITS = 64

__all__ = [
    "WORD_BITS",
    "border_row_classes",
    "check_pm1",
    "conv_border_table",
    "conv_out_size",
    "conv_tap_popcount",
    "interior_range",
    "needs_border_table",
    "normalize_2d",
    "normalize_padding",
    "num_words",
    "pack_bits",
    "pack_conv_weight",
    "pack_dense_weight",
    "unpack_bits",
]


def num_words(n: int) -> int:
    """Number of uint64 words needed for ``n`` bits (``ceil(n / 64)``)."""
    return (int(n) + WORD_BITS - 1) // WORD_BITS


def check_pm1(w: np.ndarray, what: str = "weight") -> np.ndarray:
    """Return ``w`` if every entry is exactly +1 or -1, else raise ValueError naming the problem."""
    w = np.asarray(w)
    if w.dtype == np.bool_:
        raise ValueError(f"{what}: expected a +-1 array, got a boolean array")
    if w.size == 0:
        raise ValueError(f"{what}: empty array")
    bad = ~((w == 1) | (w == -1))
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{what}: expected only +1/-1 values, found {w[idx]!r} at index {idx} "
            f"({int(bad.sum())} of {w.size} entries are not +-1)"
        )
    return w


def pack_bits(pm1_or_bool: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pack a +-1 (or boolean) array along ``axis`` into LSB-first uint64 words.

    Parameters
    ----------
    pm1_or_bool : np.ndarray
        Boolean array (True means +1) or numeric array of exactly +-1 values.
    axis : int
        Axis to pack; it is moved last.

    Returns
    -------
    np.ndarray
        uint64 array of shape ``moved_shape[:-1] + (ceil(L / 64),)``, tail bits zero.
    """
    a = np.asarray(pm1_or_bool)
    bits = a if a.dtype == np.bool_ else check_pm1(a, "pack_bits input") > 0
    bits = np.moveaxis(bits, axis, -1)
    L = bits.shape[-1]
    LW = num_words(L)
    padded = np.zeros(bits.shape[:-1] + (LW * WORD_BITS,), dtype=np.bool_)
    padded[..., :L] = bits
    # packbits(little) puts element j of each byte at bit j; bytes are little-endian in the word.
    by = np.packbits(padded, axis=-1, bitorder="little")
    return np.ascontiguousarray(by).view("<u8").astype(np.uint64, copy=False).reshape(
        bits.shape[:-1] + (LW,)
    )


def unpack_bits(words: np.ndarray, length: int) -> np.ndarray:
    """Inverse of :func:`pack_bits` on the last axis: returns a bool array ``[..., length]``."""
    w = np.ascontiguousarray(np.asarray(words, dtype=np.uint64))
    by = w.view(np.uint8).reshape(w.shape[:-1] + (w.shape[-1] * 8,))
    return np.unpackbits(by, axis=-1, bitorder="little")[..., :length].astype(bool)


def pack_conv_weight(w_pm1: np.ndarray, block: int | None = None) -> np.ndarray:
    """Pack OIHW +-1 conv weights ``[K, C, KH, KW]`` into ``[KH, KW, CW, K]`` uint64.

    K is last so a kernel can load 8 consecutive output channels as one vector; C is packed
    LSB-first (``CW = ceil(C / 64)``), tail bits zero.  Raises ValueError on non +-1 entries.
    With ``block`` the channels are blocked outermost, ``[KB, KH, KW, CW, block]`` (channel
    ``kb * block + i`` at ``[kb, ..., i]``, zero words past K): the words one output tile reads
    are then contiguous (``registry.bconv_weight_block`` says which targets want it).
    """
    w = check_pm1(w_pm1, "conv weight")
    if w.ndim != 4:
        raise ValueError(f"conv weight: expected rank 4 [K, C, KH, KW], got shape {w.shape}")
    packed = pack_bits(w > 0, axis=1)  # [K, KH, KW, CW]
    if block is None:
        return np.ascontiguousarray(packed.transpose(1, 2, 3, 0))
    k = packed.shape[0]
    kb = -(-k // block)
    padded = np.zeros((kb * block, *packed.shape[1:]), np.uint64)
    padded[:k] = packed
    return np.ascontiguousarray(padded.reshape(kb, block, *packed.shape[1:]).transpose(0, 2, 3, 4, 1))


def pack_dense_weight(w_pm1: np.ndarray, word_bits: int = 64) -> np.ndarray:
    """Pack ``[N_out, K_in]`` +-1 dense weights (``y = x @ W.T``) into ``[KW, N_out]`` uint64.

    Layout choice: the reduction word index is outer and the output feature is innermost, the
    same as conv weights ``[.., CW, K]``, so the kernel vectorises popcounts across 8 output
    features with plain contiguous vector loads.  ``KW = ceil(K_in / 64)``, tail bits zero.
    ``word_bits=32``: ``[2 * KW, N_out]`` uint32, each 64-bit word's low half first (the kernel
    of ``registry.dense_weight_bits_of`` 32).
    """
    w = check_pm1(w_pm1, "dense weight")
    if w.ndim != 2:
        raise ValueError(f"dense weight: expected rank 2 [N_out, K_in], got shape {w.shape}")
    words = np.ascontiguousarray(pack_bits(w > 0, axis=1))  # [N_out, KW] uint64
    if word_bits == 32:
        return np.ascontiguousarray(words.view(np.uint32).T)  # little-endian: low half first
    if word_bits != 64:
        raise ValueError(f"dense weight: word_bits must be 32 or 64, got {word_bits}")
    return np.ascontiguousarray(words.T)


def normalize_2d(v, name: str) -> tuple:
    """``int`` or 1/2-sequence -> ``(a, b)`` of positive ints."""
    if isinstance(v, int):
        v = (v, v)
    v = tuple(int(i) for i in v)
    if len(v) == 1:
        v = v * 2
    if len(v) != 2 or min(v) < 1:
        raise ValueError(f"{name}: expected a positive int or pair, got {v}")
    return v


def normalize_padding(p) -> tuple:
    """Padding as ``int``, ``(ph, pw)`` or ``(top, left, bottom, right)`` -> 4-tuple (t, l, b, r)."""
    if isinstance(p, int):
        p = (p,) * 4
    p = tuple(int(i) for i in p)
    if len(p) == 1:
        p = p * 4
    elif len(p) == 2:
        p = (p[0], p[1], p[0], p[1])
    if len(p) != 4 or min(p) < 0:
        raise ValueError(f"padding: expected int, (ph, pw) or (top, left, bottom, right) >= 0, got {p}")
    return p


def conv_out_size(size: int, k: int, stride: int, pad_lo: int, pad_hi: int, dil: int) -> int:
    """Output extent of a conv along one axis (PyTorch formula)."""
    out = (size + pad_lo + pad_hi - dil * (k - 1) - 1) // stride + 1
    if out < 1:
        raise ValueError(f"conv produces an empty output (size={size}, k={k}, stride={stride}, "
                         f"pad=({pad_lo},{pad_hi}), dilation={dil})")
    return out


def needs_border_table(padding, pad_value: str) -> bool:
    """True iff a bconv2d PrimFunc takes the ``border_table`` (zero padding, non-zero pad)."""
    if isinstance(padding, int):
        padding = (padding,)
    return pad_value == "zero" and any(int(p) for p in padding)


def interior_range(size: int, out: int, k: int, stride: int, pad_lo: int, dil: int) -> tuple:
    """``[lo, hi)``: output positions whose ``k`` taps ``o*stride - pad_lo + r*dil`` all lie in
    ``[0, size)`` (empty, lo >= hi, if there are none)."""
    lo = max(0, -(-pad_lo // stride))  # o*stride >= pad_lo
    last = size - 1 + pad_lo - (k - 1) * dil  # o*stride <= last
    hi = min(out, last // stride + 1) if last >= 0 else 0
    return lo, hi


def border_row_classes(size: int, out: int, k: int, stride: int, pad_lo: int, dil: int) -> tuple:
    """``(lo, hi, reps)``: output rows ``[lo, hi)`` have all their taps inside the image and share
    one row class; every other row is a class of its own.  ``reps`` lists a representative row per
    class in class order, so row ``oh`` is class ``oh`` below ``lo``, ``lo`` inside, and
    ``oh - hi + lo + 1`` from ``hi`` on (``lo = hi = 0``: no interior, class ``oh``)."""
    lo, hi = interior_range(size, out, k, stride, pad_lo, dil)
    if lo >= hi:
        return 0, 0, list(range(out))
    return lo, hi, list(range(lo)) + [lo] + list(range(hi, out))


def conv_tap_popcount(w_pm1: np.ndarray) -> np.ndarray:
    """int32 ``[KH, KW, K]``: number of +1 entries of ``w[k, :, kh, kw]`` (OIHW +-1 weights).

    Zero-padded bconv2d computes padded pixels as all-(-1) words and corrects, per output
    position, for the taps that fall outside the image (:func:`conv_border_table`).
    """
    w = check_pm1(w_pm1, "conv weight")
    if w.ndim != 4:
        raise ValueError(f"conv weight: expected rank 4 [K, C, KH, KW], got shape {w.shape}")
    return np.ascontiguousarray((w > 0).sum(axis=1, dtype=np.int32).transpose(1, 2, 0))


def conv_border_table(w_pm1: np.ndarray, in_hw, *, stride=1, padding=0, dilation=1,
                      out_layout: str = "NCHW") -> np.ndarray:
    """int32 table of a zero-padded bconv2d's ``KH*KW*C`` minus its border correction.

    Padded words are 0, so an out-of-image tap (r, s) adds ``popcount(w[r, s, :, k])`` to the
    accumulator although a zero-padded pixel contributes nothing: the output at (oh, ow, k) is
    ``table[class of oh, (ow, k)] - 2 * acc`` with ``table = KH*KW*C - sum over the out-of-image
    taps of (C - 2 * tap_popcount[r, s, k])``.  Rows with every tap inside share a class
    (:func:`border_row_classes`), so the table is ``[classes, K, OW]`` for an NCHW output and
    ``[classes, OW, K]`` for NHWC: read along the output's contiguous axis, one vector load per
    output vector.  ``padding``: int, (ph, pw) or (top, left, bottom, right).
    """
    if out_layout not in ("NCHW", "NHWC"):
        raise ValueError(f"out_layout must be 'NCHW' or 'NHWC', got {out_layout!r}")
    w = check_pm1(w_pm1, "conv weight")
    if w.ndim != 4:
        raise ValueError(f"conv weight: expected rank 4 [K, C, KH, KW], got shape {w.shape}")
    _K, C, KH, KW = w.shape
    H, W = (int(v) for v in in_hw)
    (sh, sw), (dh, dw) = normalize_2d(stride, "stride"), normalize_2d(dilation, "dilation")
    pt, pl, pb, pr = normalize_padding(padding)
    OH, OW = conv_out_size(H, KH, sh, pt, pb, dh), conv_out_size(W, KW, sw, pl, pr, dw)
    _, _, reps = border_row_classes(H, OH, KH, sh, pt, dh)
    rows = np.asarray(reps)[:, None] * sh - pt + np.arange(KH)[None, :] * dh
    cols = np.arange(OW)[:, None] * sw - pl + np.arange(KW)[None, :] * dw
    row_out = (rows < 0) | (rows >= H)  # [classes, KH]
    col_out = (cols < 0) | (cols >= W)  # [OW, KW]
    out_tap = row_out[:, None, :, None] | col_out[None, :, None, :]  # [classes, OW, KH, KW]
    d = C - 2 * conv_tap_popcount(w).astype(np.int64)  # [KH, KW, K]
    table = KH * KW * C - np.einsum("abrs,rsk->abk", out_tap.astype(np.int64), d)
    if out_layout == "NCHW":
        table = table.transpose(0, 2, 1)
    return np.ascontiguousarray(table.astype(np.int32))


def block_conv_weight(w: np.ndarray, block: int) -> np.ndarray:
    """Float OIHW weight -> ``[KB, C, KH, KW, block]`` with output channels zero-padded to KB*block."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 4:
        raise ValueError(f"conv weight: expected rank 4 [K, C, KH, KW], got shape {w.shape}")
    k = w.shape[0]
    kb = -(-k // block)
    padded = np.zeros((kb * block, *w.shape[1:]), np.float32)
    padded[:k] = w
    return np.ascontiguousarray(padded.reshape(kb, block, *w.shape[1:]).transpose(0, 2, 3, 4, 1))
