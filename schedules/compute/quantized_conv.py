"""Quantized float conv (``compile --conv-precision int16|int8``): activations quantized per
sample into padded int16 channel pairs, then an int32 conv on pair-blocked int16 weights, then
the float output.  The numbers are :mod:`bnncompile.schedules.quantize`'s."""
from __future__ import annotations

from collections.abc import Sequence

from tvm import te, tirx

from .common import conv_out_size, ints, normalize_2d, normalize_padding


def _lanes(n: int) -> int:
    return max(d for d in range(1, min(n, 16) + 1) if n % d == 0)


def _sample_scale(data: te.Tensor, qa: int) -> tuple[te.Tensor, te.Tensor]:
    """``(amax, qa / amax)`` per sample of an NCHW map (0 where amax is 0)."""
    N, C, H, W = ints(data.shape)
    f = _lanes(W)
    rh, rs = te.reduce_axis((0, H), "rh"), te.reduce_axis((0, W // f), "rs")
    part = te.compute((N, C, f), lambda n, c, lane: te.max(
        tirx.abs(data[n, c, rh, rs * f + lane]), axis=[rh, rs]), name="qabs_part")
    rc, rl = te.reduce_axis((0, C), "rc"), te.reduce_axis((0, f), "rl")
    amax = te.compute((N,), lambda n: te.max(part[n, rc, rl], axis=[rc, rl]), name="qamax")
    zero = tirx.const(0.0, "float32")
    inv = te.compute((N,), lambda n: tirx.Select(
        amax[n] > zero, tirx.const(float(qa), "float32") / amax[n], zero), name="qinv")
    return amax, inv


def _quantized(data: te.Tensor, inv: te.Tensor, qa: int, n, c, h, w, dtype: str):
    lo, hi = tirx.const(-float(qa), "float32"), tirx.const(float(qa), "float32")
    return tirx.max(tirx.min(tirx.nearbyint(data[n, c, h, w] * inv[n]), hi), lo).astype(dtype)


def quantize_hwc(data: te.Tensor, *, qa: int, padding: Sequence[int], rows: int) -> tuple[te.Tensor, te.Tensor]:
    """Per-sample symmetric quantization of an NCHW float map into padded int8 NHWC (the AMX
    conv's layout, ``x86_amx.AmxGeometry``): ``(q int8 [N, rows, W+pl+pr, C], amax float32
    [N])``, ``q[n, h, w, c]`` the channel at ``(h - pt, w - pl)`` (0 in the padding and in the
    ``rows - (H + pt + pb)`` extra rows).  Blocks: ``qabs_part``, ``qamax``, ``qinv``, ``qhwc``."""
    N, C, H, W = ints(data.shape)
    pt, pl, pb, pr = normalize_padding(padding)
    if rows < H + pt + pb:
        raise ValueError(f"quantize_hwc: {rows} rows cannot hold {H} padded by {pt} + {pb}")
    if qa > 127:
        raise ValueError(f"quantize_hwc: int8 holds |x| <= 127, not {qa}")
    amax, inv = _sample_scale(data, qa)

    def value(n, h, w, c):
        inside = tirx.all(h >= pt, h < H + pt, w >= pl, w < W + pl)
        hh, ww = tirx.min(tirx.max(h - pt, 0), H - 1), tirx.min(tirx.max(w - pl, 0), W - 1)
        return tirx.if_then_else(inside, _quantized(data, inv, qa, n, c, hh, ww, "int8"),
                                 tirx.const(0, "int8"))

    return te.compute((N, rows, W + pl + pr, C), value, name="qhwc"), amax


def quantize_pairs(data: te.Tensor, *, qa: int, padding: Sequence[int]) -> tuple[te.Tensor, te.Tensor]:
    """Per-sample symmetric quantization of an NCHW float map into padded channel pairs.

    Returns
    -------
    ``(q int16 [N, ceil(C/2), H+pt+pb, W+pl+pr, 2], amax float32 [N])``: ``q[n, c2, h, w, j]``
    is channel ``2*c2 + j`` at ``(h - pt, w - pl)`` (0 in the padding and past C), as
    ``clip(nearbyint(x * (qa / amax)), -qa, qa)``.  Blocks: ``qabs_part`` (``F`` lane partial
    maxima of |x| per channel row), ``qamax``, ``qinv``, ``qpairs``.
    """
    N, C, H, W = ints(data.shape)
    pt, pl, pb, pr = normalize_padding(padding)
    amax, inv = _sample_scale(data, qa)
    lo, hi = tirx.const(-float(qa), "float32"), tirx.const(float(qa), "float32")

    def pairs(n, c2, h, w, j):
        c = c2 * 2 + j
        v = tirx.nearbyint(data[n, tirx.min(c, C - 1), h - pt, w - pl] * inv[n])
        inside = tirx.all(h >= pt, h < H + pt, w >= pl, w < W + pl, c < C)
        return tirx.if_then_else(inside, tirx.max(tirx.min(v, hi), lo).astype("int16"),
                                 tirx.const(0, "int16"))

    q = te.compute((N, (C + 1) // 2, H + pt + pb, W + pl + pr, 2), pairs, name="qpairs")
    return q, amax


def qconv2d_blocked(
    q: te.Tensor,
    weight: te.Tensor,
    dequant: te.Tensor,
    amax: te.Tensor,
    *,
    out_channels: int,
    stride: Sequence[int] = (1, 1),
    dilation: Sequence[int] = (1, 1),
    bias: te.Tensor | None = None,
    out_layout: str = "NCHW",
    accumulate_only: bool = False,
    relu: bool = False,
) -> te.Tensor:
    """int32 conv of :func:`quantize_pairs` output (padding already applied) with pair-blocked
    int16 weights, then ``float(acc) * (amax[n] * dequant[k]) + bias[k]``.

    Parameters
    ----------
    q : int16 ``[N, C2, HP, WP, 2]``.
    weight : int16 ``[KB, C2, KH, KW, OB, 2]`` (``quantize.pair_blocked``).
    dequant : float32 ``[K]`` (``QuantizedConvWeight.dequant``); amax : float32 ``[N]``.
    out_layout : "NCHW" or "NCHWc" (``[N, KB, OH, OW, OB]``, for a max pool reading blocks).
    accumulate_only : return the int32 sums as ``[N, K, OH, OW]`` (the exactness tests).
    relu : ``max(y, 0)`` on the float output (a Relu only this conv feeds, fused).

    The reduction block ``qconv`` (``[N, KB, OH, OW, OB]`` int32) ends in ``(ob, j)``: an x86
    schedule tensorizes those two loops into one ``vpmaddwd``.
    """
    N, C2, HP, WP, two = ints(q.shape)
    KB, C2w, KH, KW, OB, two_w = ints(weight.shape)
    if (C2w, two, two_w) != (C2, 2, 2):
        raise ValueError(f"qconv2d: weight {ints(weight.shape)} does not match pairs {ints(q.shape)}")
    (sh, sw), (dh, dw) = normalize_2d(stride, "stride"), normalize_2d(dilation, "dilation")
    OH, OW = conv_out_size(HP, KH, sh, 0, 0, dh), conv_out_size(WP, KW, sw, 0, 0, dw)
    rc, rh = te.reduce_axis((0, C2), "rc"), te.reduce_axis((0, KH), "rh")
    rw, rj = te.reduce_axis((0, KW), "rw"), te.reduce_axis((0, 2), "rj")
    acc = te.compute(
        (N, KB, OH, OW, OB),
        lambda n, kb, oh, ow, ob: te.sum(
            q[n, rc, oh * sh + rh * dh, ow * sw + rw * dw, rj].astype("int32")
            * weight[kb, rc, rh, rw, ob, rj].astype("int32"), axis=[rc, rh, rw, rj]),
        name="qconv", attrs={"schedule_rule": "bnn_qconv2d"})
    if accumulate_only:
        return te.compute((N, out_channels, OH, OW), lambda n, k, oh, ow: acc[n, k // OB, oh, ow, k % OB],
                          name="qconv_out")

    def value(n, k, oh, ow, kb, ob):
        v = acc[n, kb, oh, ow, ob].astype("float32") * (amax[n] * dequant[k])
        v = v + bias[k] if bias is not None else v
        return tirx.max(v, tirx.const(0.0, "float32")) if relu else v

    if out_layout == "NCHWc":
        if KB * OB != out_channels:
            raise ValueError(f"qconv2d: NCHWc output needs the {out_channels} channels to fill "
                             f"{KB} blocks of {OB}")
        return te.compute((N, KB, OH, OW, OB), lambda n, kb, oh, ow, ob: value(
            n, kb * OB + ob, oh, ow, kb, ob), name="qconv_out")
    if out_layout != "NCHW":
        raise ValueError(f"qconv2d: out_layout must be 'NCHW' or 'NCHWc', got {out_layout!r}")
    return te.compute((N, out_channels, OH, OW), lambda n, k, oh, ow: value(
        n, k, oh, ow, k // OB, k % OB), name="qconv_out")
