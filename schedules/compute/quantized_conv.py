"""Quantized float conv (``compile --conv-precision int16|int8``): activations quantized per
sample into padded channel groups (int16 pairs, or on VNNI CPUs offset uint8 quads) or, for few
channels and a wide kernel, into a padded map whose groups run along the width
(:func:`quantize_width`), then an int32 conv on group-blocked weights, then the float output.
The numbers are :mod:`bnncompile.schedules.quantize`'s."""
from __future__ import annotations

from collections.abc import Sequence

from tvm import te, tirx

from ..quantize import VNNI_OFFSET
from .common import (
    clipped_levels,
    conv_out_size,
    divisor_lanes,
    ints,
    level_scale,
    normalize_2d,
    normalize_padding,
)


def _sample_scale(data: te.Tensor, qa: int) -> tuple[te.Tensor, te.Tensor]:
    """``(amax, qa / amax)`` per sample of an NCHW map (0 where amax is 0)."""
    N, C, H, W = ints(data.shape)
    f = divisor_lanes(W)
    rh, rs = te.reduce_axis((0, H), "rh"), te.reduce_axis((0, W // f), "rs")
    part = te.compute((N, C, f), lambda n, c, lane: te.max(
        tirx.abs(data[n, c, rh, rs * f + lane]), axis=[rh, rs]), name="qabs_part")
    rc, rl = te.reduce_axis((0, C), "rc"), te.reduce_axis((0, f), "rl")
    amax = te.compute((N,), lambda n: te.max(part[n, rc, rl], axis=[rc, rl]), name="qamax")
    inv = te.compute((N,), lambda n: level_scale(amax[n], qa), name="qinv")
    return amax, inv


def _quantized(data: te.Tensor, inv: te.Tensor, qa: int, n, c, h, w, dtype: str):
    return clipped_levels(data[n, c, h, w] * inv[n], -qa, qa).astype(dtype)


def _padded_at(H: int, W: int, pt: int, pl: int, h, w):
    """``(inside, hh, ww)`` for padded coordinates ``(h, w)`` of an ``H x W`` map padded by
    ``pt`` / ``pl``: whether they fall in the map, and the map's coordinates clamped in bounds
    (the read stays branch-free; the caller selects the padding where not ``inside``)."""
    inside = tirx.all(h >= pt, h < H + pt, w >= pl, w < W + pl)
    return inside, tirx.min(tirx.max(h - pt, 0), H - 1), tirx.min(tirx.max(w - pl, 0), W - 1)


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
        inside, hh, ww = _padded_at(H, W, pt, pl, h, w)
        return tirx.if_then_else(inside, _quantized(data, inv, qa, n, c, hh, ww, "int8"),
                                 tirx.const(0, "int8"))

    return te.compute((N, rows, W + pl + pr, C), value, name="qhwc"), amax


def quantize_pairs(data: te.Tensor, *, qa: int, padding: Sequence[int], group: int = 2) -> tuple[te.Tensor, te.Tensor]:
    """Per-sample symmetric quantization of an NCHW float map into padded channel groups.

    Returns
    -------
    ``(q [N, ceil(C/G), H+pt+pb, W+pl+pr, G], amax float32 [N])``: ``q[n, cg, h, w, j]`` is
    channel ``G*cg + j`` at ``(h - pt, w - pl)``, as ``clip(nearbyint(x * (qa / amax)), -qa,
    qa)`` (0 in the padding and past C).  ``group=2``: int16 pairs; ``group=4``: uint8 quads
    holding that plus ``quantize.VNNI_OFFSET`` (int8 levels only).  Blocks: ``qabs_part`` (``F``
    lane partial maxima of |x| per channel row), ``qamax``, ``qinv``, for quads ``qlevels``
    (the levels, unpadded NCHW), ``qpairs``.
    """
    N, C, H, W = ints(data.shape)
    pt, pl, pb, pr = normalize_padding(padding)
    if group not in (2, 4) or (group == 4 and qa > 127):
        raise ValueError(f"quantize_pairs: groups of 2 (int16) or 4 (int8 levels, |x| <= 127), "
                         f"not {group} at {qa}")
    amax, inv = _sample_scale(data, qa)
    offset, dtype = (0, "int16") if group == 2 else (VNNI_OFFSET, "uint8")

    def level(n, c, h, w):
        v = clipped_levels(data[n, c, h, w] * inv[n], -qa, qa)
        return v.astype(dtype) if offset == 0 else (v.astype("int32") + offset).astype(dtype)

    read = level
    if group == 4:
        # quads: the levels first, in the map's own layout (vectors along w), then one 32-bit
        # word per pixel (schedule_quantize_pairs has the timings); pairs keep one stage
        read = te.compute((N, C, H, W), level, name="qlevels")

    def groups(n, cg, h, w, j):
        c = cg * group + j
        inside, hh, ww = _padded_at(H, W, pt, pl, h, w)
        inside = tirx.all(inside, c < C)
        return tirx.if_then_else(inside, read(n, tirx.min(c, C - 1), hh, ww), tirx.const(offset, dtype))

    q = te.compute((N, -(-C // group), H + pt + pb, W + pl + pr, group), groups, name="qpairs")
    return q, amax


def quantize_width(data: te.Tensor, *, qa: int, padding: Sequence[int], group: int,
                   width: int) -> tuple[te.Tensor, te.Tensor]:
    """:func:`quantize_pairs`' numbers as a padded NCHW map ``[N, C, H+pt+pb, width]`` (int16,
    or uint8 offset by ``quantize.VNNI_OFFSET`` for ``group=4``), the groups of the conv taken
    along w (``quantize.width_groups_pay``): ``width`` (``quantize.width_extent``) holds the
    columns the conv reads: past the padded width (the zero-weight group tails) they hold
    padding, and columns a stride never reaches are left out.  Blocks: ``qabs_part``,
    ``qamax``, ``qinv``, ``qwidth``."""
    N, C, H, W = ints(data.shape)
    pt, pl, pb, _ = normalize_padding(padding)  # the right edge: width
    if group not in (2, 4) or (group == 4 and qa > 127) or width < 1:
        raise ValueError(f"quantize_width: groups of 2 (int16) or 4 (int8 levels) over some "
                         f"columns, not {group} at {qa} over {width}")
    amax, inv = _sample_scale(data, qa)
    offset, dtype = (0, "int16") if group == 2 else (VNNI_OFFSET, "uint8")

    def value(n, c, h, w):
        inside, hh, ww = _padded_at(H, W, pt, pl, h, w)
        # the padding selected in float, then one conversion (a select of the offset bytes:
        # stem 3x224x224 with its abs max 0.089 -> 0.072 ms, Zen 4; int16 levels 0.036)
        v = tirx.Select(inside, clipped_levels(data[n, c, hh, ww] * inv[n], -qa, qa), tirx.const(0.0, "float32"))
        return (v.astype("int32") + offset).astype(dtype)

    return te.compute((N, C, H + pt + pb, int(width)), value, name="qwidth"), amax


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
    compensation: te.Tensor | None = None,
) -> te.Tensor:
    """int32 conv of :func:`quantize_pairs` output (padding already applied) with pair-blocked
    int16 weights, then ``float(acc) * (amax[n] * dequant[k]) + bias[k]``.

    Parameters
    ----------
    q : int16 ``[N, C2, HP, WP, 2]`` pairs, or uint8 ``[N, C4, HP, WP, 4]`` offset quads; or
        width groups (:func:`quantize_width`): ``[N, C, HP, WPG]`` int16 / uint8.
    weight : int16 ``[KB, C2, KH, KW, OB, 2]`` or int8 ``[KB, C4, KH, KW, OB, 4]``
        (``quantize.group_blocked``); for width groups ``[KB, C, KH, ceil(KW/G), OB, G]``
        (``quantize.width_blocked``, zero past KW).
    dequant : float32 ``[K]`` (``QuantizedConvWeight.dequant``); amax : float32 ``[N]``.
    out_layout : "NCHW" or "NCHWc" (``[N, KB, OH, OW, OB]``, for a max pool reading blocks).
    accumulate_only : return the int32 sums as ``[N, K, OH, OW]`` (the exactness tests).
    relu : ``max(y, 0)`` on the float output (a Relu only this conv feeds, fused).
    compensation : int32 ``[K]`` (``quantize.offset_compensation``), subtracted from each sum of
        offset quads; required with them.

    The reduction block ``qconv`` (``[N, KB, OH, OW, OB]`` int32) ends in ``(ob, j)``: an x86
    schedule tensorizes those two loops into one ``vpmaddwd`` (pairs) or ``vpdpbusd`` (quads).
    The sums of quads may wrap in int32 before the compensation; the difference is exact
    whenever the true sum fits (two's complement is arithmetic modulo 2**32).
    """
    KB, C2w, KH, KW, OB, G = ints(weight.shape)
    (sh, sw), (dh, dw) = normalize_2d(stride, "stride"), normalize_2d(dilation, "dilation")
    along_w = len(q.shape) == 4
    if along_w:  # width groups: group j of column group rw is input column (ow * sw + G * rw + j)
        N, C2, HP, WP = ints(q.shape)
        OW = (WP - KW * G) // sw + 1
        if C2w != C2 or G not in (2, 4) or dw != 1 or (OW - 1) * sw + KW * G != WP:
            raise ValueError(f"qconv2d: width groups {ints(q.shape)} do not match weight "
                             f"{ints(weight.shape)} at stride {sw}, dilation {dw} (quantize.width_extent)")

        def data(n, c, h, ow, rw, rj):
            return q[n, c, h, ow * sw + rw * G + rj]
    else:
        N, C2, HP, WP, G_q = ints(q.shape)
        if (C2w, G_q) != (C2, G) or G not in (2, 4):
            raise ValueError(f"qconv2d: weight {ints(weight.shape)} does not match groups {ints(q.shape)}")
        OW = conv_out_size(WP, KW, sw, 0, 0, dw)

        def data(n, c, h, ow, rw, rj):
            return q[n, c, h, ow * sw + rw * dw, rj]
    if (G == 4) != (compensation is not None):
        raise ValueError("qconv2d: offset quads (groups of 4) need the offset's compensation, pairs none")
    OH = conv_out_size(HP, KH, sh, 0, 0, dh)
    rc, rh = te.reduce_axis((0, C2), "rc"), te.reduce_axis((0, KH), "rh")
    rw, rj = te.reduce_axis((0, KW), "rw"), te.reduce_axis((0, G), "rj")
    acc = te.compute(
        (N, KB, OH, OW, OB),
        lambda n, kb, oh, ow, ob: te.sum(
            data(n, rc, oh * sh + rh * dh, ow, rw, rj).astype("int32")
            * weight[kb, rc, rh, rw, ob, rj].astype("int32"), axis=[rc, rh, rw, rj]),
        name="qconv", attrs={"schedule_rule": "bnn_qconv2d", "bnn_width_groups": int(along_w)})

    def exact(n, k, oh, ow, kb, ob):
        return acc[n, kb, oh, ow, ob] - compensation[k] if compensation is not None else acc[n, kb, oh, ow, ob]

    if accumulate_only:
        return te.compute((N, out_channels, OH, OW), lambda n, k, oh, ow: exact(
            n, k, oh, ow, k // OB, k % OB), name="qconv_out")

    def value(n, k, oh, ow, kb, ob):
        v = exact(n, k, oh, ow, kb, ob).astype("float32") * (amax[n] * dequant[k])
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
