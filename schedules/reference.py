"""Independent numpy / PyTorch references for the binary kernels (no TE code reused).

Integer results are computed in float64 with torch (exact far beyond any realistic accumulator)
and returned as int32; the optional float epilogue is applied in float32 as
``float32(acc) * scale + bias``, the same order the kernels use.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _bits_to_words(bits: np.ndarray) -> np.ndarray:
    """bool ``[..., L]`` -> uint64 ``[..., ceil(L/64)]`` by explicit powers of two (LSB-first)."""
    L = bits.shape[-1]
    LW = (L + 63) // 64
    full = np.zeros(bits.shape[:-1] + (LW * 64,), dtype=np.uint64)
    full[..., :L] = bits
    full = full.reshape(bits.shape[:-1] + (LW, 64))
    pow2 = np.left_shift(np.uint64(1), np.arange(64, dtype=np.uint64))
    return (full * pow2).sum(axis=-1, dtype=np.uint64)


def bitpack_ref(x: np.ndarray, t) -> np.ndarray:
    """NCHW float -> ``[N, H, W, CW]`` uint64; bit = ``x >= t`` (NaN -> 0, numpy broadcasting)."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        bits = np.greater_equal(x, np.asarray(t, dtype=np.float32))
    bits = np.broadcast_to(bits, x.shape)
    return _bits_to_words(bits.transpose(0, 2, 3, 1))


def bitpack_last_ref(x: np.ndarray, t) -> np.ndarray:
    """``[..., D]`` float -> ``[..., DW]`` uint64 packed along the last axis."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        bits = np.broadcast_to(np.greater_equal(x, np.asarray(t, dtype=np.float32)), x.shape)
    return _bits_to_words(bits)


def _epilogue(acc: np.ndarray, scale, bias, axis: int) -> np.ndarray:
    if scale is None and bias is None:
        return acc.astype(np.int32)
    shape = [1] * acc.ndim
    shape[axis] = -1
    v = acc.astype(np.float32)
    if scale is not None:
        v = v * np.asarray(scale, np.float32).reshape(shape)
    if bias is not None:
        v = v + np.asarray(bias, np.float32).reshape(shape)
    return v.astype(np.float32)


def bconv2d_ref(
    x_pm1: np.ndarray,
    w_pm1: np.ndarray,
    *,
    stride=1,
    padding=(0, 0, 0, 0),
    dilation=1,
    pad_value: str = "zero",
    scale: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    out_layout: str = "NCHW",
    post=(),
) -> np.ndarray:
    """``F.conv2d`` of +-1 NCHW ``x`` and OIHW ``w``; padding (top, left, bottom, right) filled
    with 0 ("zero") or +1 ("one") via ``F.pad``.  int32, or float32 with scale/bias, then the
    ``post`` ops [(kind, array)] in float32 (a "residual" array is given in ``out_layout``; with
    fewer channels than the output it repeats along C, as a Concat of sibling convs adds it)."""
    if isinstance(padding, int):
        padding = (padding,) * 4
    if len(padding) == 2:
        padding = (padding[0], padding[1], padding[0], padding[1])
    pt, pl, pb, pr = padding
    xt = torch.from_numpy(np.asarray(x_pm1, np.float64))
    wt = torch.from_numpy(np.asarray(w_pm1, np.float64))
    xt = F.pad(xt, (pl, pr, pt, pb), value=1.0 if pad_value == "one" else 0.0)
    acc = F.conv2d(xt, wt, stride=stride, dilation=dilation).numpy()
    acc = np.rint(acc).astype(np.int64)
    out = _epilogue(acc, scale, bias, axis=1)
    if out_layout == "NHWC":
        out = out.transpose(0, 2, 3, 1).copy()
    return _post_ref(out, post, axis=1 if out_layout == "NCHW" else 3)


def _post_ref(v: np.ndarray, post, axis: int) -> np.ndarray:
    """The post-ops of ``compute.POST_OPS`` written out in numpy, float32 throughout."""
    shape = [1] * v.ndim
    shape[axis] = -1
    for kind, p in post:
        vec = None if kind in ("residual", "relu") else np.asarray(p, np.float32).reshape(shape)
        if kind == "residual":  # a shortcut of R | K channels repeats along the channel axis
            p = np.asarray(p, np.float32)
            v = v + np.concatenate([p] * (v.shape[axis] // p.shape[axis]), axis=axis)
        elif kind == "shift":
            v = v + vec
        elif kind == "mul":
            v = v * vec
        elif kind == "prelu":
            v = np.where(v >= 0, v, vec * v)
        elif kind == "relu":
            v = np.maximum(v, np.float32(0))
        else:
            raise ValueError(f"unknown post-op {kind!r}")
    return v.astype(np.float32)


def bdense_ref(a_pm1: np.ndarray, w_pm1: np.ndarray, scale=None, bias=None, residual=None) -> np.ndarray:
    """``a [..., K] @ w[N, K]^T`` in +-1 space; int32, or float32 with scale/bias (and a
    residual added last)."""
    acc = torch.from_numpy(np.asarray(a_pm1, np.float64)) @ torch.from_numpy(
        np.asarray(w_pm1, np.float64)).T
    acc = np.rint(acc.numpy()).astype(np.int64)
    if residual is None:
        return _epilogue(acc, scale, bias, axis=-1)
    v = acc.astype(np.float32) if scale is None and bias is None else _epilogue(acc, scale, bias, axis=-1)
    return (v + np.asarray(residual, np.float32)).astype(np.float32)


def bdense_margin_ref(a_pm1: np.ndarray, w_pm1: np.ndarray, lo, hi, sigma) -> np.ndarray:
    """``float32(sigma * min(y - lo, hi - y))`` of the +-1 sums ``y`` (``bdense``'s cut)."""
    y = bdense_ref(a_pm1, w_pm1).astype(np.int64)
    lo, hi, sigma = (np.asarray(v, np.int64) for v in (lo, hi, sigma))
    return (sigma * np.minimum(y - lo, hi - y)).astype(np.float32)


def bbatch_matmul_ref(a_pm1: np.ndarray, b_pm1: np.ndarray, alpha: float | None = None) -> np.ndarray:
    """``A [..., M, K] @ B[..., N, K]^T`` in +-1 space; int32, or float32 ``acc * alpha``."""
    acc = torch.matmul(torch.from_numpy(np.asarray(a_pm1, np.float64)),
                       torch.from_numpy(np.asarray(b_pm1, np.float64)).transpose(-1, -2))
    acc = np.rint(acc.numpy()).astype(np.int64)
    if alpha is None:
        return acc.astype(np.int32)
    return (acc.astype(np.float32) * np.float32(alpha)).astype(np.float32)


def maxpool2d_ref(x: np.ndarray, *, kernel, stride, padding) -> np.ndarray:
    """``F.max_pool2d`` (padding (top, left, bottom, right) as -inf, floor rounding)."""
    pt, pl, pb, pr = padding
    xt = F.pad(torch.from_numpy(np.asarray(x, np.float32)), (pl, pr, pt, pb), value=float("-inf"))
    return F.max_pool2d(xt, kernel, stride).numpy()


def fconv2d_ref(x: np.ndarray, w: np.ndarray, *, stride=1, padding=(0, 0, 0, 0), dilation=1,
                bias: np.ndarray | None = None) -> np.ndarray:
    """``F.conv2d`` in float64 (zero padding (top, left, bottom, right)), returned as float32."""
    pt, pl, pb, pr = padding
    xt = F.pad(torch.from_numpy(np.asarray(x, np.float64)), (pl, pr, pt, pb))
    b = None if bias is None else torch.from_numpy(np.asarray(bias, np.float64))
    out = F.conv2d(xt, torch.from_numpy(np.asarray(w, np.float64)), b, stride=stride, dilation=dilation)
    return out.numpy().astype(np.float32)


def prelu_stats_ref(x: np.ndarray, shift_in, slope, shift_out, powers) -> tuple[np.ndarray, np.ndarray]:
    """``y = where(d >= 0, d, slope * d) + shift_out``, ``d = x - shift_in`` in float32 (numpy
    broadcasting), and ``mean(y**p)`` over the last axis for each p (float64 sums)."""
    x = np.asarray(x, np.float32)
    d = x - np.asarray(shift_in, np.float32)
    y = (np.where(d >= 0, d, np.asarray(slope, np.float32) * d) + np.asarray(shift_out, np.float32))
    y = y.astype(np.float32)
    y64 = y.astype(np.float64)
    stats = np.stack([(y64 ** p).mean(axis=-1) for p in powers], axis=-1)
    return y, stats


def gelu_ref(x: np.ndarray) -> np.ndarray:
    """GELU with the exact erf, in float64: ``x / 2 * (1 + erf(x / sqrt 2))``."""
    from math import erf, sqrt

    x64 = np.asarray(x, np.float64)
    return x64 * 0.5 * (1.0 + np.vectorize(erf)(x64 / sqrt(2.0)))


def token_threshold_ref(x: np.ndarray, w1: np.ndarray, b1, w2: np.ndarray, b2) -> np.ndarray:
    """DySign's threshold over tokens in float64: ``relu(mean_L(x) @ w1.T + b1) @ w2.T + b2``,
    ``x`` ``[N, L, D]``, ``w1`` ``[R, D]``, ``w2`` ``[D, R]`` (PyTorch's Linear layout)."""
    x64 = np.asarray(x, np.float64)
    hidden = np.maximum(x64.mean(axis=1) @ np.asarray(w1, np.float64).T + np.asarray(b1, np.float64), 0.0)
    return hidden @ np.asarray(w2, np.float64).T + np.asarray(b2, np.float64)


def avgpool2d_ref(x: np.ndarray, kernel) -> np.ndarray:
    """Average pool with stride = kernel, no padding: each window summed row by row, left to
    right, in float32, then divided by its size (the order ONNX Runtime and TVM use)."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = np.asarray(x, np.float32)
    n, c, h, w = x.shape
    win = x[:, :, : h // kh * kh, : w // kw * kw].reshape(n, c, h // kh, kh, w // kw, kw)
    acc = win[:, :, :, 0, :, 0].copy()
    for r in range(kh):
        for s in range(kw):
            if r or s:
                acc = acc + win[:, :, :, r, :, s]
    return (acc / np.float32(kh * kw)).astype(np.float32)


def dynamic_sign_ref(x: np.ndarray, t=None) -> np.ndarray:
    """Float ±1: +1 where ``x >= t`` (numpy broadcasting, absent t = 0), NaN -> -1."""
    x = np.asarray(x, np.float32)
    t = np.float32(0) if t is None else np.asarray(t, np.float32)
    with np.errstate(invalid="ignore"):
        return np.where(np.greater_equal(x, t), np.float32(1), np.float32(-1)).astype(np.float32)


def unpack_bits_ref(words: np.ndarray, shape, layout: str) -> np.ndarray:
    """Packed uint64 words back to float ±1 by explicit bit tests (the inverse of
    :func:`bitpack_ref` (``layout="nchw"``) / :func:`bitpack_last_ref` (``"last"``))."""
    words = np.asarray(words, np.uint64)
    length = shape[1] if layout == "nchw" else shape[-1]
    idx = np.arange(length)
    bits = (words[..., idx // 64] >> (idx % 64).astype(np.uint64)) & np.uint64(1)
    pm1 = np.where(bits == 1, np.float32(1), np.float32(-1)).astype(np.float32)
    return pm1.transpose(0, 3, 1, 2) if layout == "nchw" else pm1


def power_mean_ref(x: np.ndarray, p: int, *, keepdims: bool) -> np.ndarray:
    """Mean of ``x**p`` over the last two axes (float64 sums, ``x**p`` formed in float32 as
    ``(x * x) * x`` like ONNX), as float32 ``[N, C]`` or ``[N, C, 1, 1]``."""
    x = np.asarray(x, np.float32)
    v = x if p == 1 else (x * x if p == 2 else (x * x) * x)
    m = v.astype(np.float64).mean(axis=(2, 3), keepdims=keepdims)
    return m.astype(np.float32)


def softmax_ref(x: np.ndarray) -> np.ndarray:
    """Softmax along the last axis in float64 (max subtracted), as float32."""
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def binary_scores(counts: np.ndarray, k: int, alpha: float | None) -> np.ndarray:
    """The float32 attention scores ``float32(k - 2c) * alpha`` of popcounts ``c`` (``alpha``
    None: ``k - 2c``), as ``bbatch_matmul_ref`` computes them."""
    acc = (k - 2 * np.asarray(counts, np.int64)).astype(np.float32)
    return acc if alpha is None else (acc * np.float32(alpha)).astype(np.float32)


def softmax_counts_ref(counts: np.ndarray, k: int, alpha: float | None) -> np.ndarray:
    """``compute.softmax_counts``: the softmax of :func:`binary_scores`, in float64."""
    return softmax_ref(binary_scores(counts, k, alpha))


def _padded_levels(x: np.ndarray, qa: int, padding, channels: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``quantize_activation`` levels (int16) zero-padded to ``[N, channels, HP, width]`` (extra
    channels and columns zero; columns from ``width`` on cut off), and ``amax``."""
    from .quantize import quantize_activation

    q, amax = quantize_activation(x, qa)
    n, c, h, w = q.shape
    pt, pl, pb, _ = padding
    padded = np.zeros((n, channels, h + pt + pb, max(width, pl + w)), np.int16)
    padded[:, :c, pt:pt + h, pl:pl + w] = q
    return padded[..., :width], amax


def _stored(levels: np.ndarray, group: int) -> np.ndarray:
    """int16 levels as the kernels store them: as they are (pairs), or uint8 plus
    ``VNNI_OFFSET`` (quads, the padding included)."""
    from .quantize import VNNI_OFFSET

    return np.ascontiguousarray(levels if group == 2 else (levels + VNNI_OFFSET).astype(np.uint8))


def quantize_pairs_ref(x: np.ndarray, qa: int, padding=(0, 0, 0, 0), group: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``quantize_activation`` (per-sample ``rint(x * (qa / amax))``), zero-padded and laid out
    as channel groups ``[N, ceil(C/G), HP, WP, G]``, and ``amax``: int16 pairs (``group=2``), or
    uint8 quads holding the value plus ``VNNI_OFFSET`` (``group=4``, the padding too)."""
    n, c, _, w = x.shape
    cg = -(-c // group)
    padded, amax = _padded_levels(x, qa, padding, cg * group, w + padding[1] + padding[3])
    return _stored(padded.reshape(n, cg, group, *padded.shape[2:]).transpose(0, 1, 3, 4, 2), group), amax


def quantize_width_ref(x: np.ndarray, qa: int, padding, group: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``quantize_activation`` zero-padded as an NCHW map ``[N, C, HP, width]`` (columns past
    the padded width hold padding too, columns from ``width`` on are cut off), for the conv's
    width groups: int16 (``group=2``) or uint8 plus ``VNNI_OFFSET`` (``group=4``); and ``amax``."""
    padded, amax = _padded_levels(x, qa, padding, x.shape[1], width)
    return _stored(padded, group), amax


def qconv2d_ref(pairs: np.ndarray, ints: np.ndarray, *, stride=1, dilation=1) -> np.ndarray:
    """int64 conv of ungrouped int16 data (``[N, CG, HP, WP, G]`` groups, as
    :func:`quantize_pairs_ref` with ``group=2`` lays them out) with int16 OIHW weights: the
    exact sums the quantized conv accumulates in int32 (float64 torch conv of integers below
    2**53, rounded back)."""
    n, cg, hp, wp, g = pairs.shape
    data = np.asarray(pairs, np.float64).transpose(0, 1, 4, 2, 3).reshape(n, cg * g, hp, wp)
    w = np.zeros((ints.shape[0], cg * g, *ints.shape[2:]), np.float64)
    w[:, :ints.shape[1]] = ints
    out = F.conv2d(torch.from_numpy(data), torch.from_numpy(w), stride=stride, dilation=dilation)
    return np.rint(out.numpy()).astype(np.int64)


def quantize_rows_ref(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``quantize.quantize_rows`` with the reduction padded to a multiple of 4 (zero bytes):
    ``(uint8 [B, M, K4], pmax float32 [B, M])``."""
    from .quantize import quantize_rows

    q, pmax = quantize_rows(p)
    k = q.shape[-1]
    return np.pad(q, [(0, 0)] * (q.ndim - 1) + [(0, -k % 4)]), pmax


def quantize_columns_ref(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``quantize.quantize_columns`` laid out as 4-row groups ``[B, K4/4, N, 4]`` (zero rows
    past K) and ``vmax float32 [B, N]``."""
    from .quantize import quantize_columns

    q, vmax = quantize_columns(v)
    b, k, n = q.shape
    padded = np.pad(q, [(0, 0), (0, -k % 4), (0, 0)])
    return np.ascontiguousarray(padded.reshape(b, -1, 4, n).transpose(0, 1, 3, 2)), vmax


def qbatch_matmul_ref(pq: np.ndarray, vq_grouped: np.ndarray, pmax: np.ndarray,
                      vmax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``quantize.attention_product`` of :func:`quantize_rows_ref` / :func:`quantize_columns_ref`
    outputs: ``(int64 sums [B, M, N], float32 [B, M, N])``."""
    from .quantize import attention_product

    b, kq, n, g = vq_grouped.shape
    vq = vq_grouped.transpose(0, 1, 3, 2).reshape(b, kq * g, n)
    return attention_product(pq, pmax, vq, vmax)
