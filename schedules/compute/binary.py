"""Target-agnostic TE computes of the binary (XNOR-popcount) layers: conv2d, dense, batch matmul,
with their fused integer-to-float epilogues.

Bit convention: bit 1 = +1 (``x >= t``), bit 0 = -1; LSB-first in uint64 words (channel ``c`` in
word ``c // 64``, bit ``c % 64``); tail bits past the true channel count are 0 in activations and
weights.  For one tap with all channels valid: ``dot = C - 2 * popcount(x ^ w)`` summed over words.

The main compute of each op carries ``attrs={"schedule_rule": "bnn_<op>"}``.  Accumulators are
int64 by default: on x86 the popcount already yields 64-bit lanes, so summing in int64 avoids a
narrowing per popcount (measured ~1.2x faster than int32 on Zen 3); CUDA passes ``acc_dtype="int32"``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tvm import te, tirx

from .bitpack import pack_reduce
from .common import (
    U64,
    WORD,
    border_row_classes,
    conv_out_size,
    ints,
    normalize_2d,
    normalize_padding,
    nwords,
)


def _valid_mask(C: int, cw):
    """uint64 word of the real-channel bits of word ``cw`` (all ones except a partial tail)."""
    ones = tirx.const(0xFFFFFFFFFFFFFFFF, U64)
    if C % WORD == 0:
        return ones
    tail = tirx.const((1 << (C % WORD)) - 1, U64)
    return tirx.Select(cw == nwords(C) - 1, tail, ones)


def _epilogue(acc_int, k, scale, bias, residual=None, index=()):
    """int32 accumulator, or ``float32(acc) * scale[k] + bias[k] (+ residual[index])`` when
    scale/bias (or a residual) are given.

    The float goes through int32 (exact: |acc| <= the reduction length): AVX2 has no int64 ->
    float vector conversion, so ``float32(int64)`` was scalarised (Zen 3, bdense 196x384 -> 1152:
    0.55 -> 0.44 ms)."""
    acc32 = acc_int.astype("int32")
    if scale is None and bias is None and residual is None:
        return acc32
    v = acc32.astype("float32")
    if scale is not None:
        v = v * scale[k]
    if bias is not None:
        v = v + bias[k]
    if residual is not None:
        v = v + residual(*index)
    return v


#: Element-wise float ops a binary conv can apply after ``acc * scale + bias``, in graph order:
#: the BN-free tail of a ReActNet block (residual add, RPReLU's shift / slope / shift).
POST_OPS = ("residual", "shift", "mul", "prelu", "relu")


def _post_epilogue(v, post, out_index, k, channel_axis: int, channels: int):
    """Apply ``post`` = [(kind, tensor or None)] to the float ``v`` of output element ``out_index``
    (channel ``k`` at ``out_index[channel_axis]``).  "residual" reads a tensor of the output's
    layout whose channel count R divides K, at channel ``k % R`` (R = K: the output's own shape;
    R < K: the shortcut every part of a channel Concat of sibling convs adds); "shift" / "mul" /
    "prelu" read a float32 ``[K]`` vector; "prelu" is ONNX's ``Where(v >= 0, v, slope * v)``."""
    zero = tirx.const(0.0, "float32")
    for kind, p in post:
        if kind == "residual":
            r = int(p.shape[channel_axis])
            if r <= 0 or channels % r:
                raise ValueError(f"residual with {r} channels does not tile {channels} output channels")
            idx = list(out_index)
            if r != channels:
                idx[channel_axis] = tirx.floormod(k, r)  # a power of two in ReActNet-A: an AND
            v = v + p[tuple(idx)]
        elif kind == "shift":
            v = v + p[k]
        elif kind == "mul":
            v = v * p[k]
        elif kind == "prelu":
            # bind v once: Select repeats it, and v carries the whole border-correction tree
            x = tirx.Var("prelu_in", "float32")
            v = tirx.Let(x, v, tirx.Select(x >= zero, x, p[k] * x))
        elif kind == "relu":
            v = tirx.max(v, zero)
        else:
            raise ValueError(f"unknown post-op {kind!r}; expected one of {POST_OPS}")
    return v


def bconv2d(
    data: te.Tensor,
    weight: te.Tensor,
    *,
    in_channels: int,
    kernel: Sequence[int],
    stride=1,
    padding=0,
    dilation=1,
    pad_value: str = "zero",
    scale: te.Tensor | None = None,
    bias: te.Tensor | None = None,
    out_layout: str = "NCHW",
    acc_dtype: str = "int64",
    border_table: te.Tensor | None = None,
    post: Sequence[tuple[str, te.Tensor | None]] = (),
    out_channels: int | None = None,
    hints: dict[str, int] | None = None,
) -> te.Tensor:
    """Bipolar XNOR-popcount 2-D convolution (groups = 1).

    Parameters
    ----------
    data : te.Tensor
        uint64 ``[N, H, W, CW]`` (NHWC-packed along C, ``CW = ceil(in_channels / 64)``).
    weight : te.Tensor
        uint64 ``[KH, KW, CW, K]`` from :func:`schedules.packing.pack_conv_weight`, or its
        channel-blocked form ``[KB, KH, KW, CW, KI]`` (``pack_conv_weight(w, block=KI)``: one
        output tile's words contiguous, which the hardware prefetcher streams).
    in_channels : int
        True channel count C (the tail bits of the last word are zero in both operands).
    kernel : (int, int)
        ``(KH, KW)``; must match ``weight``.
    stride, dilation : int or (int, int)
    padding : int, (ph, pw) or (top, left, bottom, right)
    pad_value : "zero" | "one"
        "zero" reproduces ``F.conv2d`` of the +-1 tensors with zero padding exactly: padded
        words are 0 and the epilogue reads the per-position correction from ``border_table``.
        "one": padded pixels are +1 on every channel (LCE ``pad_values=1``), realised as padded
        words holding the valid-channel mask.
    scale, bias : te.Tensor, optional
        float32 ``[K]``.  If either is given the output is float32
        ``float32(acc) * scale[k] + bias[k]`` (fused, no float accumulator tensor).
    out_layout : "NCHW" | "NHWC"
    acc_dtype : str
        Accumulator dtype of the popcount reduction.
    border_table : te.Tensor, optional
        int32 ``[classes, K, OW]`` for NCHW output, ``[classes, OW, K]`` for NHWC (the output's
        axis order, so the table is read along the output's contiguous axis):
        :func:`schedules.packing.conv_border_table` of the weights, ``KH*KW*C`` minus the
        correction for the out-of-image taps of each row class and column.  Required iff
        pad_value="zero" and the padding is non-zero.
    post : [(kind, tensor)], optional
        Float ops after scale/bias (needs scale or bias), see :data:`POST_OPS`: the BN / residual /
        RPReLU tail of a block runs in the copy-out of the register tile instead of as a separate
        pass over the activation.  A "residual" tensor has the output's layout and shape, except
        that its channel count may be any divisor R of K: channel k then adds its channel k % R.
    out_channels : K when ``weight`` is channel-blocked and K does not fill its last block.
    hints : schedule hints for this target, stored on the ``bconv`` block beside ``bnn_cw`` /
        ``bnn_sw`` (x86: ``bnn_pix_vec`` / ``bnn_pix_ki``, the pixel-vectorised tile).

    Returns
    -------
    te.Tensor
        int32 (or float32 with scale/bias) ``[N, K, OH, OW]`` (or ``[N, OH, OW, K]``).
        Intermediates: ``bpad`` (padded words; absent without padding) and ``bconv`` (the
        popcount reduction ``[N, OH, OW, K]``, tagged ``schedule_rule=bnn_bconv2d``).
    """
    if pad_value not in ("zero", "one"):
        raise ValueError(f"pad_value must be 'zero' or 'one', got {pad_value!r}")
    if out_layout not in ("NCHW", "NHWC"):
        raise ValueError(f"out_layout must be 'NCHW' or 'NHWC', got {out_layout!r}")
    N, H, W, CW = ints(data.shape)
    if len(weight.shape) == 5:  # channel-blocked
        KB, KH, KW, CW2, KI = ints(weight.shape)
        K = KB * KI if out_channels is None else int(out_channels)

        def wread(rh, rw, rc, k):
            return weight[k // KI, rh, rw, rc, k % KI]
    else:
        KH, KW, CW2, K = ints(weight.shape)

        def wread(rh, rw, rc, k):
            return weight[rh, rw, rc, k]
    C = int(in_channels)
    if CW != nwords(C) or CW2 != CW:
        raise ValueError(f"word count mismatch: data CW={CW}, weight CW={CW2}, in_channels={C}")
    if tuple(ints(kernel)) != (KH, KW):
        raise ValueError(f"kernel {tuple(kernel)} does not match weight shape {(KH, KW)}")
    sh, sw = normalize_2d(stride, "stride")
    dh, dw = normalize_2d(dilation, "dilation")
    pt, pl, pb, pr = normalize_padding(padding)
    OH = conv_out_size(H, KH, sh, pt, pb, dh)
    OW = conv_out_size(W, KW, sw, pl, pr, dw)
    padded = any((pt, pl, pb, pr))
    zero_pad = padded and pad_value == "zero"

    if padded:
        # Only rows/cols the taps can reach; keeps the buffer minimal with big strides.
        Hp = max((OH - 1) * sh + (KH - 1) * dh + 1, pt)
        Wp = max((OW - 1) * sw + (KW - 1) * dw + 1, pl)
        fill = (lambda c: tirx.const(0, U64)) if zero_pad else (lambda c: _valid_mask(C, c))
        src = te.compute(
            (N, Hp, Wp, CW),
            lambda n, h, w, c: tirx.if_then_else(
                tirx.all(h >= pt, h < pt + H, w >= pl, w < pl + W),
                data[n, h - pt, w - pl, c], fill(c)),
            name="bpad",
        )
    else:
        src = data

    rh = te.reduce_axis((0, KH), name="rh")
    rw = te.reduce_axis((0, KW), name="rw")
    rc = te.reduce_axis((0, CW), name="rc")

    # The epilogue's integer arithmetic is int32 whatever the accumulator: |KH*KW*C - 2*acc|
    # fits, and 16 int32 lanes per vector instead of 8 int64 ones (3x3 128->128 @28 with the
    # fused tail: 0.217 -> 0.205 ms on AVX-512).
    if zero_pad and border_table is None:
        raise ValueError("pad_value='zero' with padding needs border_table "
                         "(packing.conv_border_table of the weights)")

    def conv_body(n, oh, ow, k):
        pc = tirx.popcount(src[n, oh * sh + rh * dh, ow * sw + rw * dw, rc] ^ wread(rh, rw, rc, k))
        return te.sum(pc.astype(acc_dtype), axis=[rh, rw, rc])

    # bnn_cw / bnn_sw: words per pixel and the w stride, for schedules that vectorise along ow.
    acc = te.compute((N, OH, OW, K), conv_body, name="bconv",
                     attrs={"schedule_rule": "bnn_bconv2d", "bnn_cw": CW, "bnn_sw": sw, **(hints or {})})

    # Zero padding: padded words are 0, so an out-of-image tap added popcount(w[r, s, :, k]) to
    # acc although a zero-padded pixel contributes nothing.  The correction, folded with
    # KH*KW*C, is one table load per output (packing.conv_border_table): per-tap selects in the
    # hot loop cost ~40% on Zen 3, and per-tap selects in the epilogue a third of a 64->64 @56
    # conv.  The table is a parameter, not an intermediate block: reverse_compute_inline /
    # reverse_compute_at of the epilogue refuse a second intermediate producer.
    def tap_out(size, out, stride, pad_lo, dil, r):
        return any(not 0 <= o * stride + r * dil - pad_lo < size for o in range(out))

    border = zero_pad and (any(tap_out(H, OH, sh, pt, dh, r) for r in range(KH))
                           or any(tap_out(W, OW, sw, pl, dw, s_) for s_ in range(KW)))
    lo, hi, reps = border_row_classes(H, OH, KH, sh, pt, dh)
    if border:
        want = (len(reps), K, OW) if out_layout == "NCHW" else (len(reps), OW, K)
        if tuple(ints(border_table.shape)) != want:
            raise ValueError(f"border_table shape {ints(border_table.shape)} != {list(want)} "
                             f"(packing.conv_border_table with out_layout={out_layout!r})")

    def row_class(oh):
        if lo >= hi:
            return oh
        return tirx.Select(oh < lo, oh, tirx.Select(oh < hi, tirx.const(lo, "int32"), oh - (hi - lo - 1)))

    def base(oh, ow, k):
        """KH*KW*C, or its border-corrected value from the table."""
        if not border:
            return tirx.const(KH * KW * C, "int32")
        r = row_class(oh)
        return border_table[r, k, ow] if out_layout == "NCHW" else border_table[r, ow, k]

    if post and scale is None and bias is None:
        raise ValueError("post-ops need a float epilogue (scale and/or bias)")

    def _out(v, n, oh, ow, k):
        v = _epilogue(v, k, scale, bias)
        idx = (n, k, oh, ow) if out_layout == "NCHW" else (n, oh, ow, k)
        return _post_epilogue(v, post, idx, k, 1 if out_layout == "NCHW" else 3, K)

    def value(n, oh, ow, k):
        # Narrow before anything else: int64 -> float32 has no AVX2 instruction (it is
        # scalarised), int32 -> float32 is one vcvtdq2ps.  |acc| <= KH*KW*C fits easily.
        a = acc[n, oh, ow, k]
        return _out(base(oh, ow, k) - 2 * (a.astype("int32") if acc_dtype != "int32" else a), n, oh, ow, k)

    # bnn_border: the epilogue reads the border table (zero padding that the taps reach).
    border_attr = int(border)
    if out_layout == "NCHW":
        return te.compute((N, K, OH, OW), lambda n, k, oh, ow: value(n, oh, ow, k), name="bconv_out",
                          attrs={"bnn_out_layout": "NCHW", "bnn_border": border_attr})
    return te.compute((N, OH, OW, K), value, name="bconv_out",
                      attrs={"bnn_out_layout": "NHWC", "bnn_border": border_attr})


def bdense(
    a_packed: te.Tensor,
    w_packed: te.Tensor,
    *,
    in_features: int,
    scale: te.Tensor | None = None,
    bias: te.Tensor | None = None,
    cut: tuple[te.Tensor, te.Tensor, te.Tensor] | None = None,
    residual: te.Tensor | None = None,
    pack: bool = False,
    acc_dtype: str = "int64",
) -> te.Tensor:
    """Binary dense layer ``y = a @ W.T`` in +-1 space (``w_packed`` uint32: half words).

    Parameters
    ----------
    a_packed : te.Tensor
        uint64 ``[..., KW]`` (``[M, KW]`` or with leading batch dims, e.g. ``[B, L, KW]``),
        packed along the feature axis.
    w_packed : te.Tensor
        uint64 ``[KW, N]`` from :func:`schedules.packing.pack_dense_weight`, or uint32
        ``[2 * KW, N]`` (``word_bits=32``): 32-bit popcounts summed in int32 lanes, 16 outputs
        per 512-bit register, whose epilogue converts 16 sums at a time.
    in_features : int
        True reduction length (``KW = ceil(in_features / 64)``).
    scale, bias : te.Tensor, optional
        float32 ``[N]``; when given the output is ``float32(acc) * scale + bias``.
    cut : (lo, hi, sigma), optional
        int32 ``[N]`` each (instead of scale / bias): the output is the margin
        ``float32(sigma * min(acc - lo, hi - acc))`` of a sign decided on the sums
        (``frontend.converters.count_threshold``; +1 iff the margin is >= 0).
    residual : te.Tensor, optional
        float32 of the output's shape, added last: ``float32(acc) * scale + bias + residual``
        (a transformer's residual stream, ``frontend.converters.dense_epilogue``).
    pack : bool
        With ``cut`` only: the output is the sign's bits, ``margin >= 0`` packed along N as
        :func:`bitpack_last` packs (uint64 ``[..., N / 64]``, N a multiple of 64; the int32
        margin an intermediate ``bdense_out``, block ``bdense_pack``): what the next binary
        layer reads, without a float margin written and packed by a kernel of its own.

    Returns
    -------
    te.Tensor
        int32 (or float32) ``[..., N]``; uint64 words with ``pack``.  Intermediate ``bdense``
        holds the popcounts (tagged ``schedule_rule=bnn_bdense``).
    """
    ashape = ints(a_packed.shape)
    KW, Nout = ints(w_packed.shape)
    half = str(w_packed.dtype) == "uint32"
    if ashape[-1] != (KW // 2 if half else KW) or ashape[-1] != nwords(in_features):
        raise ValueError(f"word count mismatch: a {ashape}, w {[KW, Nout]}, in_features={in_features}")
    lead = ashape[:-1]
    rk = te.reduce_axis((0, KW), name="rk")

    def word(i):
        if not half:
            return a_packed(*i[:-1], rk)
        aw = a_packed(*i[:-1], rk // 2)  # one row's word: shifted once per row, not per lane
        return (aw >> ((rk % 2) * 32).astype(U64)).astype("uint32")

    acc = te.compute(
        tuple(lead) + (Nout,),
        lambda *i: te.sum(tirx.popcount(word(i) ^ w_packed[rk, i[-1]]).astype("int32" if half else acc_dtype),
                          axis=rk),
        name="bdense", attrs={"schedule_rule": "bnn_bdense"})
    if pack:
        if cut is None or Nout % WORD:
            raise ValueError(f"bdense: packed output needs a cut and a multiple of {WORD} outputs, "
                             f"got {'no cut, ' if cut is None else ''}{Nout} outputs")
        margin = te.compute(tuple(lead) + (Nout,),
                            lambda *i: _margin(int(in_features) - 2 * acc(*i), i[-1], cut), name="bdense_out")
        zero = tirx.const(0, "int32")
        return te.compute(tuple(lead) + (Nout // WORD,), lambda *i: pack_reduce(
            lambda c: margin(*i[:-1], c), lambda c: zero, i[-1], Nout), name="bdense_pack")
    return te.compute(
        tuple(lead) + (Nout,),
        lambda *i: (_margin(int(in_features) - 2 * acc(*i), i[-1], cut).astype("float32") if cut is not None
                    else _epilogue(int(in_features) - 2 * acc(*i), i[-1], scale, bias, residual, i)),
        name="bdense_out")


def _margin(acc_int, k, cut):
    """``sigma * min(acc - lo, hi - acc)`` per channel ``k`` (int32; exact in float32 too)."""
    lo, hi, sigma = cut
    acc32 = acc_int.astype("int32")
    return sigma[k] * tirx.min(acc32 - lo[k], hi[k] - acc32)


def exact_affine(k: int, alpha: float) -> bool:
    """Is ``float32(k - 2c) * alpha`` (one rounding of the exact product) the same float as
    ``c * (-2 alpha) + k alpha`` for every count ``c`` in ``[0, k]``?  Yes when ``k alpha`` and
    every ``2 alpha c`` are float32 numbers (then the sum is the one rounding, fused or not):
    attention's ``1/sqrt(d)`` for a power-of-two ``d`` is (0.125 for 64).  Positive ``alpha``
    only: where ``k = 2c`` a negative one gives ``-0.0`` as a product, ``+0.0`` as the sum."""
    a = np.float32(alpha)
    if not np.isfinite(a) or a <= 0 or k > 1 << 20:
        return False
    exact = [np.float64(2 * a) * c for c in range(k + 1)] + [np.float64(a) * k]
    return all(np.float64(np.float32(v)) == v for v in exact)


def score_steps(k: int, alpha: float | None) -> np.ndarray | None:
    """The exact differences ``score(c) - score(0)`` between attention scores ``score(c)`` of a
    ``k``-long binary dot product with ``c`` mismatches (``float32(k - 2c) * alpha``, as
    :func:`bbatch_matmul` computes them; ``alpha`` None: the scores are ``k - 2c``): float32
    ``[T]``, ``T`` = ``k + 1`` rounded up to 32 (the entries past ``k`` repeat the last).
    Where :func:`exact_affine` holds, every score and every difference of two is a float32
    number, so a softmax row's ``score(c) - max`` is ``steps[c - min(c)]`` exactly (its max is
    the score of its fewest mismatches).  None where it does not hold."""
    a = 1.0 if alpha is None else float(np.float32(alpha))
    if k > 255 or not exact_affine(int(k), a):
        return None
    size = -(-(k + 1) // 32) * 32
    d = np.minimum(np.arange(size), k)
    return (np.float64(-2.0 * a) * d).astype(np.float32)


def bbatch_matmul(
    a_packed: te.Tensor,
    b_packed: te.Tensor,
    *,
    k: int,
    alpha: float | None = None,
    acc_dtype: str = "int64",
    counts: bool = False,
) -> te.Tensor:
    """Batched +-1 matmul ``A @ B^T`` with both operands packed along the reduction axis.

    Parameters
    ----------
    a_packed : te.Tensor
        uint64 ``[*batch, M, KW]``.
    b_packed : te.Tensor
        uint64 ``[*batch, N, KW]`` (same batch dims; for ``A @ V`` transpose V before packing).
    k : int
        True reduction length (``KW = ceil(k / 64)``).
    alpha : float, optional
        If given, the output is float32 ``float32(acc) * alpha`` (e.g. ``1/sqrt(d)`` for attention).
    counts : bool
        Output the popcounts themselves, uint8 (``k <= 255``): the mismatches ``c`` of each dot
        product ``k - 2c``, for a consumer that maps them to its own values
        (:func:`~.float_ops.softmax_counts`); ``alpha`` is then not applied.

    Returns
    -------
    te.Tensor
        int32 (or float32, or uint8 counts) ``[*batch, M, N]``.
    """
    ash, bsh = ints(a_packed.shape), ints(b_packed.shape)
    if len(ash) < 2 or len(ash) != len(bsh) or ash[:-2] != bsh[:-2] or ash[-1] != bsh[-1]:
        raise ValueError(f"bbatch_matmul: incompatible shapes {ash} and {bsh}")
    if ash[-1] != nwords(k):
        raise ValueError(f"bbatch_matmul: KW={ash[-1]} does not match k={k}")
    batch, M, N, KW = ash[:-2], ash[-2], bsh[-2], ash[-1]
    rk = te.reduce_axis((0, KW), name="rk")
    acc = te.compute(
        tuple(batch) + (M, N),
        lambda *i: te.sum(tirx.popcount(a_packed(*i[:-2], i[-2], rk) ^ b_packed(*i[:-2], i[-1], rk))
                          .astype(acc_dtype), axis=rk),
        name="bbmm", attrs={"schedule_rule": "bnn_bbatch_matmul"})

    if counts:
        if k > 255:
            raise ValueError(f"bbatch_matmul: counts of k={k} do not fit uint8")
        return te.compute(tuple(batch) + (M, N), lambda *i: acc(*i).astype("uint8"), name="bbmm_out")
    a32 = None if alpha is None else float(np.float32(alpha))  # the scale the kernel multiplies by
    affine = a32 is not None and exact_affine(int(k), a32)

    def out(*i):
        if affine:  # count * (-2 alpha) + k alpha: the same float, without the integer k - 2 count
            c = acc(*i).astype("int32").astype("float32")
            return c * tirx.const(-2.0 * a32, "float32") + tirx.const(int(k) * a32, "float32")
        v = (int(k) - 2 * acc(*i)).astype("int32")  # float via int32: see _epilogue
        if a32 is None:
            return v
        return v.astype("float32") * tirx.const(a32, "float32")

    return te.compute(tuple(batch) + (M, N), out, name="bbmm_out")


