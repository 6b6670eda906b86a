"""Attention's probability x value product on int8 (``compile --attention-precision int8``):
probabilities quantized per row into unsigned bytes, values per column into int8 (both at run
time), then an int32 batch matmul and the float output.  The numbers are
:mod:`bnncompile.schedules.quantize`'s (``quantize_rows``, ``quantize_columns``,
``attention_product``)."""
from __future__ import annotations

from tvm import te, tirx

from ..quantize import P_LEVELS, V_LEVELS
from .common import clipped_levels, divisor_lanes, ints, level_scale, round_half_even

GROUP = 4  #: reduction values per 32-bit word (``vpdpbusd``'s 4 byte products)


def _levels(x, inv, levels: int, lo: int, dtype: str, vector_round: bool):
    rounding = round_half_even if vector_round else tirx.nearbyint
    return clipped_levels(x * inv, lo, levels, rounding).astype("int32").astype(dtype)


def quantize_rows(p: te.Tensor, peak_column: bool = False) -> tuple[te.Tensor, te.Tensor]:
    """Probabilities ``p`` float32 ``[B, M, K]`` -> ``(pq uint8 [B, M, K4], pmax float32 [B, M])``:
    ``K4`` = K rounded up to :data:`GROUP` (zeros past K).  Blocks: ``qrow_part`` (lane partial
    maxima), ``qrow_max``, ``qrow_inv``, ``qrows``.  ``peak_column``: ``p`` is ``[B, M, K + 1]``
    whose last column is each row's maximum (``compute.softmax_counts(peak=True)``), copied
    by ``qrow_max``; no ``qrow_part``."""
    B, M, K = ints(p.shape)
    if peak_column:
        K -= 1
        pmax = te.compute((B, M), lambda b, i: p[b, i, K], name="qrow_max")
    else:
        f = divisor_lanes(K)
        rk = te.reduce_axis((0, K // f), "rk")
        part = te.compute((B, M, f), lambda b, i, lane: te.max(p[b, i, rk * f + lane], axis=rk),
                          name="qrow_part")
        rl = te.reduce_axis((0, f), "rl")
        pmax = te.compute((B, M), lambda b, i: te.max(part[b, i, rl], axis=rl), name="qrow_max")
    inv = te.compute((B, M), lambda b, i: level_scale(pmax[b, i], P_LEVELS), name="qrow_inv")
    k4 = -(-K // GROUP) * GROUP

    def level(b, i, k):
        if k4 == K:  # no padding: plain indices, or LLVM gathers the row and stores byte by byte
            return _levels(p[b, i, k], inv[b, i], P_LEVELS, 0, "uint8", True)
        v = _levels(p[b, i, tirx.min(k, K - 1)], inv[b, i], P_LEVELS, 0, "uint8", True)
        return tirx.if_then_else(k < K, v, tirx.const(0, "uint8"))

    return te.compute((B, M, k4), level, name="qrows"), pmax


def quantize_columns(v: te.Tensor) -> tuple[te.Tensor, te.Tensor]:
    """Values ``v`` float32 ``[B, K, N]`` -> ``(vq int8 [B, K4/4, N, 4], vmax float32 [B, N])``:
    ``vq[b, kq, n, t]`` is row ``4*kq + t`` (0 past K), the 4 values one ``vpdpbusd`` word
    multiplies.  Blocks: ``qcol_max``, ``qcol_inv``, ``qcols``."""
    B, K, N = ints(v.shape)
    rk = te.reduce_axis((0, K), "rk")
    vmax = te.compute((B, N), lambda b, n: te.max(tirx.abs(v[b, rk, n]), axis=rk), name="qcol_max")
    inv = te.compute((B, N), lambda b, n: level_scale(vmax[b, n], V_LEVELS), name="qcol_inv")

    def level(b, kq, n, t):
        k = kq * GROUP + t
        if K % GROUP == 0:
            return _levels(v[b, k, n], inv[b, n], V_LEVELS, -V_LEVELS, "int8", False)
        q = _levels(v[b, tirx.min(k, K - 1), n], inv[b, n], V_LEVELS, -V_LEVELS, "int8", False)
        return tirx.if_then_else(k < K, q, tirx.const(0, "int8"))

    return te.compute((B, -(-K // GROUP), N, GROUP), level, name="qcols"), vmax


def qbatch_matmul(pq: te.Tensor, vq: te.Tensor, pmax: te.Tensor, vmax: te.Tensor, *, block: int,
                  accumulate_only: bool = False) -> te.Tensor:
    """``out[b, i, j] = float(sum_k pq[b, i, k] * v[b, k, j]) * ((pmax[b, i] / 255) * (vmax[b, j]
    / 127))`` (the scales once per row / column: blocks ``qbmm_dp``, ``qbmm_dv``).

    The reduction block ``qbmm`` is ``[B, M, N/block, block]`` int32 and ends in ``(ob, t)``:
    an x86 schedule tensorizes those into one ``vpdpbusd`` per row, 16 columns and 4 reduction
    values.  ``accumulate_only``: the int32 sums ``[B, M, N]`` (the exactness tests).
    """
    B, M, K4 = ints(pq.shape)
    B2, KQ, N, G = ints(vq.shape)
    if (B2, KQ * G, G) != (B, K4, GROUP) or N % block:
        raise ValueError(f"qbatch_matmul: probabilities {ints(pq.shape)} and values {ints(vq.shape)} "
                         f"do not match (or N is not a multiple of the {block}-column block)")
    rq, rt = te.reduce_axis((0, KQ), "rq"), te.reduce_axis((0, GROUP), "rt")
    acc = te.compute(
        (B, M, N // block, block),
        lambda b, i, nb, ob: te.sum(pq[b, i, rq * GROUP + rt].astype("int32")
                                    * vq[b, rq, nb * block + ob, rt].astype("int32"), axis=[rq, rt]),
        name="qbmm", attrs={"schedule_rule": "bnn_qbmm"})
    if accumulate_only:
        return te.compute((B, M, N), lambda b, i, j: acc[b, i, j // block, j % block], name="qbmm_out")
    dp = te.compute((B, M), lambda b, i: pmax[b, i] / tirx.const(float(P_LEVELS), "float32"), name="qbmm_dp")
    dv = te.compute((B, N), lambda b, j: vmax[b, j] / tirx.const(float(V_LEVELS), "float32"), name="qbmm_dv")
    return te.compute((B, M, N), lambda b, i, j: acc[b, i, j // block, j % block].astype("float32")
                      * (dp[b, i] * dv[b, j]), name="qbmm_out")
