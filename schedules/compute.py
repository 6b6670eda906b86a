"""Target-agnostic TE computes for the binary (XNOR-popcount) operators.

Bit convention: bit 1 = +1 (``x >= t``), bit 0 = -1; LSB-first in uint64 words (channel ``c`` in
word ``c // 64``, bit ``c % 64``); tail bits past the true channel count are 0 in activations and
weights.  For one tap with all channels valid: ``dot = C - 2 * popcount(x ^ w)`` summed over words.

The main compute of each op carries ``attrs={"schedule_rule": "bnn_<op>"}``.  Accumulators are
int64 by default: on x86 the popcount already yields 64-bit lanes, so summing in int64 avoids a
narrowing per popcount (measured ~1.2x faster than int32 on Zen 3); CUDA passes ``acc_dtype="int32"``.
"""
from __future__ import annotations

from collections.abc import Sequence

from tvm import te, tirx

# geometry helpers live with the compile-time tables that need them too (numpy-only module)
from .packing import border_row_classes, conv_out_size, normalize_2d, normalize_padding

WORD = 64
_U64 = "uint64"

__all__ = [
    "avgpool2d",
    "bbatch_matmul",
    "bconv2d",
    "bdense",
    "bitpack",
    "bitpack_last",
    "conv_out_size",
    "fconv2d_blocked",
    "maxpool2d",
    "normalize_2d",
    "normalize_padding",
    "power",
    "prelu_stats",
]


def _ints(shape) -> list:
    return [int(s) for s in shape]


def _nwords(n: int) -> int:
    return (int(n) + WORD - 1) // WORD


def _broadcast_reader(t: te.Tensor, out_rank: int, out_shape: Sequence[int]):
    """Index function for ``t`` broadcast (numpy rules, right-aligned) to ``out_shape``."""
    tshape = _ints(t.shape)
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


def _pack_reduce(get_x, get_t, cw, length: int):
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
        return te.sum(tirx.Select(hit, tirx.const(1, _U64) << b.astype(_U64), tirx.const(0, _U64)), axis=b)
    b = te.reduce_axis((0, WORD), name="b")
    c = cw * WORD + b
    cond = None
    if length % WORD:
        cond = c < length
        c = tirx.min(c, length - 1)
    hit = get_x(c) >= get_t(c)
    if cond is not None:
        hit = tirx.all(cond, hit)
    bit = tirx.Select(hit, tirx.const(1, _U64) << b.astype(_U64), tirx.const(0, _U64))
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
    N, C, H, W = _ints(x.shape)
    tr = _broadcast_reader(t, 4, (N, C, H, W))
    return te.compute(
        (N, H, W, _nwords(C)),
        lambda n, h, w, cw: _pack_reduce(
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
    shape = _ints(x.shape)
    if not 1 <= len(shape) <= 6:
        raise ValueError(f"bitpack_last: unsupported rank {len(shape)}")
    D = shape[-1]
    tr = _broadcast_reader(t, len(shape), shape)

    def f(*idx):
        lead, cw = idx[:-1], idx[-1]
        return _pack_reduce(lambda c: x(*lead, c), lambda c: tr(*lead, c), cw, D)

    return te.compute(tuple(shape[:-1]) + (_nwords(D),), f, name=name,
                      attrs={"schedule_rule": "bnn_bitpack_last"})


def _valid_mask(C: int, cw):
    """uint64 word of the real-channel bits of word ``cw`` (all ones except a partial tail)."""
    ones = tirx.const(0xFFFFFFFFFFFFFFFF, _U64)
    if C % WORD == 0:
        return ones
    tail = tirx.const((1 << (C % WORD)) - 1, _U64)
    return tirx.Select(cw == _nwords(C) - 1, tail, ones)


def _epilogue(acc_int, k, scale, bias):
    """int32 accumulator, or ``float32(acc) * scale[k] + bias[k]`` when scale/bias are given."""
    if scale is None and bias is None:
        return acc_int.astype("int32")
    v = acc_int.astype("float32")
    if scale is not None:
        v = v * scale[k]
    if bias is not None:
        v = v + bias[k]
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
) -> te.Tensor:
    """Bipolar XNOR-popcount 2-D convolution (groups = 1).

    Parameters
    ----------
    data : te.Tensor
        uint64 ``[N, H, W, CW]`` (NHWC-packed along C, ``CW = ceil(in_channels / 64)``).
    weight : te.Tensor
        uint64 ``[KH, KW, CW, K]`` from :func:`schedules.packing.pack_conv_weight`.
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
    N, H, W, CW = _ints(data.shape)
    KH, KW, CW2, K = _ints(weight.shape)
    C = int(in_channels)
    if CW != _nwords(C) or CW2 != CW:
        raise ValueError(f"word count mismatch: data CW={CW}, weight CW={CW2}, in_channels={C}")
    if tuple(_ints(kernel)) != (KH, KW):
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
        fill = (lambda c: tirx.const(0, _U64)) if zero_pad else (lambda c: _valid_mask(C, c))
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
        pc = tirx.popcount(src[n, oh * sh + rh * dh, ow * sw + rw * dw, rc] ^ weight[rh, rw, rc, k])
        return te.sum(pc.astype(acc_dtype), axis=[rh, rw, rc])

    # bnn_cw / bnn_sw: words per pixel and the w stride, for schedules that vectorise along ow.
    acc = te.compute((N, OH, OW, K), conv_body, name="bconv",
                     attrs={"schedule_rule": "bnn_bconv2d", "bnn_cw": CW, "bnn_sw": sw})

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
        if tuple(_ints(border_table.shape)) != want:
            raise ValueError(f"border_table shape {_ints(border_table.shape)} != {list(want)} "
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
    acc_dtype: str = "int64",
) -> te.Tensor:
    """Binary dense layer ``y = a @ W.T`` in +-1 space.

    Parameters
    ----------
    a_packed : te.Tensor
        uint64 ``[..., KW]`` (``[M, KW]`` or with leading batch dims, e.g. ``[B, L, KW]``),
        packed along the feature axis.
    w_packed : te.Tensor
        uint64 ``[KW, N]`` from :func:`schedules.packing.pack_dense_weight`.
    in_features : int
        True reduction length (``KW = ceil(in_features / 64)``).
    scale, bias : te.Tensor, optional
        float32 ``[N]``; when given the output is ``float32(acc) * scale + bias``.

    Returns
    -------
    te.Tensor
        int32 (or float32) ``[..., N]``.  Intermediate ``bdense`` holds the popcounts
        (tagged ``schedule_rule=bnn_bdense``).
    """
    ashape = _ints(a_packed.shape)
    KW, Nout = _ints(w_packed.shape)
    if ashape[-1] != KW or KW != _nwords(in_features):
        raise ValueError(f"word count mismatch: a {ashape}, w {[KW, Nout]}, in_features={in_features}")
    lead = ashape[:-1]
    rk = te.reduce_axis((0, KW), name="rk")
    acc = te.compute(
        tuple(lead) + (Nout,),
        lambda *i: te.sum(tirx.popcount(a_packed(*i[:-1], rk) ^ w_packed[rk, i[-1]]).astype(acc_dtype),
                          axis=rk),
        name="bdense", attrs={"schedule_rule": "bnn_bdense"})
    return te.compute(
        tuple(lead) + (Nout,),
        lambda *i: _epilogue(int(in_features) - 2 * acc(*i), i[-1], scale, bias),
        name="bdense_out")


def bbatch_matmul(
    a_packed: te.Tensor,
    b_packed: te.Tensor,
    *,
    k: int,
    alpha: float | None = None,
    acc_dtype: str = "int64",
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

    Returns
    -------
    te.Tensor
        int32 (or float32) ``[*batch, M, N]``.
    """
    ash, bsh = _ints(a_packed.shape), _ints(b_packed.shape)
    if len(ash) < 2 or len(ash) != len(bsh) or ash[:-2] != bsh[:-2] or ash[-1] != bsh[-1]:
        raise ValueError(f"bbatch_matmul: incompatible shapes {ash} and {bsh}")
    if ash[-1] != _nwords(k):
        raise ValueError(f"bbatch_matmul: KW={ash[-1]} does not match k={k}")
    batch, M, N, KW = ash[:-2], ash[-2], bsh[-2], ash[-1]
    rk = te.reduce_axis((0, KW), name="rk")
    acc = te.compute(
        tuple(batch) + (M, N),
        lambda *i: te.sum(tirx.popcount(a_packed(*i[:-2], i[-2], rk) ^ b_packed(*i[:-2], i[-1], rk))
                          .astype(acc_dtype), axis=rk),
        name="bbmm", attrs={"schedule_rule": "bnn_bbatch_matmul"})

    def out(*i):
        v = int(k) - 2 * acc(*i)
        if alpha is None:
            return v.astype("int32")
        return v.astype("float32") * tirx.const(float(alpha), "float32")

    return te.compute(tuple(batch) + (M, N), out, name="bbmm_out")


def fconv2d_blocked(
    data: te.Tensor,
    weight_blocked: te.Tensor,
    *,
    out_channels: int,
    kernel: Sequence[int],
    stride: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0, 0, 0),
    dilation: Sequence[int] = (1, 1),
    bias: te.Tensor | None = None,
    out_layout: str = "NCHW",
) -> te.Tensor:
    """Float conv2d (the FP stem / shortcut / tokenizer convs) with output-channel-blocked weights.

    Parameters
    ----------
    data : float32 ``[N, C, H, W]``
    weight_blocked : float32 ``[KB, C, KH, KW, OB]`` — ``w[kb*OB + ob, c, kh, kw]``, output channels
        zero-padded to ``KB*OB`` (``packing.block_conv_weight``); ``OB`` = SIMD lanes, so one
        weight vector load feeds ``OB`` output channels.
    bias : float32 ``[K]`` or None.
    out_layout : "NCHW" | "NCHWc"
        "NCHWc": the output stays blocked like the weights, ``[N, KB, OH, OW, OB]`` (needs
        ``K = KB * OB``), for a consumer that reads channel blocks (:func:`maxpool2d`); the
        kernel then stores whole vectors instead of transposing its register tile.

    Returns
    -------
    float32 ``[N, K, OH, OW]`` (NCHW) or ``[N, KB, OH, OW, OB]`` (NCHWc); zero padding.
    """
    N, C, H, W = _ints(data.shape)
    KB, C2, KH, KW, OB = _ints(weight_blocked.shape)
    if C2 != C or (KH, KW) != tuple(int(k) for k in kernel):
        raise ValueError(f"fconv2d: weight {weight_blocked.shape} does not match data {data.shape}")
    (sh, sw), (dh, dw) = normalize_2d(stride, "stride"), normalize_2d(dilation, "dilation")
    pt, pl, pb, pr = normalize_padding(padding)
    OH = conv_out_size(H, KH, sh, pt, pb, dh)
    OW = conv_out_size(W, KW, sw, pl, pr, dw)
    zero = tirx.const(0.0, "float32")
    pad = te.compute(
        (N, C, H + pt + pb, W + pl + pr),
        lambda n, c, h, w: tirx.if_then_else(
            tirx.all(h >= pt, h < H + pt, w >= pl, w < W + pl), data[n, c, h - pt, w - pl], zero),
        name="fpad",
    )
    rc = te.reduce_axis((0, C), "rc")
    rh = te.reduce_axis((0, KH), "rh")
    rw = te.reduce_axis((0, KW), "rw")
    conv = te.compute(
        (N, KB, OH, OW, OB),
        lambda n, kb, oh, ow, ob: te.sum(
            pad[n, rc, oh * sh + rh * dh, ow * sw + rw * dw] * weight_blocked[kb, rc, rh, rw, ob],
            axis=[rc, rh, rw]),
        name="fconv",
        attrs={"schedule_rule": "bnn_fconv2d"},
    )

    if out_layout == "NCHWc":
        if KB * OB != out_channels:
            raise ValueError(f"fconv2d: NCHWc output needs the {out_channels} channels to fill "
                             f"{KB} blocks of {OB}")
        return te.compute((N, KB, OH, OW, OB), lambda n, kb, oh, ow, ob: (
            conv[n, kb, oh, ow, ob] + bias[kb * OB + ob] if bias is not None else conv[n, kb, oh, ow, ob]),
            name="fconv_out")
    if out_layout != "NCHW":
        raise ValueError(f"fconv2d: out_layout must be 'NCHW' or 'NCHWc', got {out_layout!r}")

    def out(n, k, oh, ow):
        v = conv[n, k // OB, oh, ow, k % OB]
        return v + bias[k] if bias is not None else v

    return te.compute((N, out_channels, OH, OW), out, name="fconv_out")


def power(v, p: int):
    """``v**p`` in ONNX's order for INSTA's statistics: ``(v * v) * v``."""
    if p == 1:
        return v
    if p == 2:
        return v * v
    if p == 3:
        return v * v * v
    raise ValueError(f"power {p}: expected 1, 2 or 3")


def prelu_stats(x: te.Tensor, shift_in: te.Tensor, slope: te.Tensor, shift_out: te.Tensor,
                powers: Sequence[int]) -> tuple[te.Tensor, list[te.Tensor]]:
    """A dynamic PReLU and the pooled statistics of its output, in one pass.

    DyBNN's DPReLU / INSTA's PReLU ``y = Where(d >= 0, d, slope * d) + shift_out`` with
    ``d = x - shift_in`` (ONNX's op order, so ``y`` is bit-identical to the unfused graph), and
    for every ``p`` in ``powers`` the mean of ``y**p`` over each ``[n, c]`` row: the statistics
    the next DySign / INSTA threshold pools from ``y``, which a separate reduction would read
    back from memory.

    Parameters
    ----------
    x : float32 ``[N, C, 1, L]`` (an NCHW map viewed with H*W flattened).
    shift_in, slope, shift_out : float32, broadcastable to ``[N, C, 1, 1]`` (per sample and
        channel, or per channel: the graph's own views).
    powers : 1, 2 or 3 each.

    Returns
    -------
    ``(y [N, C, 1, L], [mean_p [N, C] for p in powers])``, ``mean_p = sum_i y**p / L``.  Each sum
    runs as ``F`` lane partial sums (``prelu_stats_part<j>`` ``[N, C, F]``, ``F`` the largest
    divisor of L up to 16; lane ``l`` adds ``l, F + l, ...``), then across the lanes
    (``prelu_stats_sum<j>``).
    """
    N, C, one, L = _ints(x.shape)
    if one != 1:
        raise ValueError(f"prelu_stats: x must be [N, C, 1, L], got {_ints(x.shape)}")
    if not powers:
        raise ValueError("prelu_stats: no statistics requested")

    def per_nc(t):
        read = _broadcast_reader(t, 4, (N, C, 1, 1))
        return lambda n, c: read(n, c, 0, 0)

    rin, rsl, rout = (per_nc(t) for t in (shift_in, slope, shift_out))

    def act(n, c, z, i):
        d = x[n, c, z, i] - rin(n, c)
        return tirx.Select(d >= tirx.const(0.0, "float32"), d, rsl(n, c) * d) + rout(n, c)

    y = te.compute((N, C, 1, L), act, name="prelu")
    f = max(d for d in range(1, min(L, 16) + 1) if L % d == 0)
    so = te.reduce_axis((0, L // f), name="so")

    def mean_of_power(j: int, p: int) -> te.Tensor:
        part = te.compute((N, C, f), lambda n, c, lane: te.sum(power(y[n, c, 0, so * f + lane], p), axis=so),
                          name=f"prelu_stats_part{j}")
        sl = te.reduce_axis((0, f), name="sl")
        total = te.compute((N, C), lambda n, c: te.sum(part[n, c, sl], axis=sl), name=f"prelu_stats_sum{j}")
        return te.compute((N, C), lambda n, c: total[n, c] / float(L), name=f"prelu_stats{j}")

    return y, [mean_of_power(j, int(p)) for j, p in enumerate(powers)]


def maxpool2d(x: te.Tensor, *, kernel, stride, padding) -> te.Tensor:
    """2-D max pooling of NCHW float32 (padding never wins: ONNX / PyTorch semantics), separable.

    ``pool_rows`` takes the max over the ``KH`` input rows of each output row for every input
    column (contiguous along w, so it vectorises), then ``pool`` takes the max over ``KW``
    columns of that row with the pooling stride.  max is exact, so the split changes nothing
    but the memory traffic: the fused form read each input ``KH*KW`` times through strided,
    bounds-checked gathers.

    ``x``: NCHW, or NCHWc ``[N, CB, H, W, CI]`` (a blocked float conv's output): then the
    windows run over whole channel blocks and only the pooled map is transposed to NCHW.

    Returns float32 ``[N, C, OH, OW]``; intermediate ``pool_rows`` ``[N, C, OH, W + pl + pr]``
    (``-inf`` in the padded columns).
    """
    if len(x.shape) == 5:
        return _maxpool2d_blocked(x, kernel=kernel, stride=stride, padding=padding)
    N, C, H, W = _ints(x.shape)
    KH, KW = normalize_2d(kernel, "kernel")
    sh, sw = normalize_2d(stride, "stride")
    pt, pl, pb, pr = normalize_padding(padding)
    OH = conv_out_size(H, KH, sh, pt, pb, 1)
    OW = conv_out_size(W, KW, sw, pl, pr, 1)
    Wp = W + pl + pr
    neg = tirx.const(float("-inf"), "float32")

    def row_max(n, c, oh, wp):
        w = wp - pl
        acc = None
        for r in range(KH):
            h = oh * sh + r - pt
            ok = tirx.all(h >= 0, h < H, w >= 0, w < W)
            v = tirx.if_then_else(ok, x[n, c, tirx.max(tirx.min(h, H - 1), 0),
                                        tirx.max(tirx.min(w, W - 1), 0)], neg)
            acc = v if acc is None else tirx.max(acc, v)
        return acc

    rows = te.compute((N, C, OH, Wp), row_max, name="pool_rows")

    def col_max(n, c, oh, ow):
        acc = rows[n, c, oh, ow * sw]
        for s_ in range(1, KW):
            acc = tirx.max(acc, rows[n, c, oh, ow * sw + s_])
        return acc

    return te.compute((N, C, OH, OW), col_max, name="pool")


def avgpool2d(x: te.Tensor, *, kernel) -> te.Tensor:
    """Average pooling of NCHW float32 with stride = kernel and no padding (ResNet / ReActNet
    downsampling shortcuts): each window summed row by row, left to right, then divided by its
    size, the order TVM's pool and ONNX Runtime use, so the result is the same float.

    Returns float32 ``[N, C, H // KH, W // KW]`` (``pool_avg``)."""
    N, C, H, W = _ints(x.shape)
    KH, KW = normalize_2d(kernel, "kernel")

    def window(n, c, oh, ow):
        acc = None
        for r in range(KH):
            for s_ in range(KW):
                v = x[n, c, oh * KH + r, ow * KW + s_]
                acc = v if acc is None else acc + v
        return acc / float(KH * KW)

    return te.compute((N, C, H // KH, W // KW), window, name="pool_avg")


def _maxpool2d_blocked(x: te.Tensor, *, kernel, stride, padding) -> te.Tensor:
    """:func:`maxpool2d` of an NCHWc map: ``pool_rows`` / ``pool`` keep the channel blocks
    innermost (one vector of CI channels per pixel), ``pool_out`` writes NCHW."""
    N, CB, H, W, CI = _ints(x.shape)
    KH, KW = normalize_2d(kernel, "kernel")
    sh, sw = normalize_2d(stride, "stride")
    pt, pl, pb, pr = normalize_padding(padding)
    OH = conv_out_size(H, KH, sh, pt, pb, 1)
    OW = conv_out_size(W, KW, sw, pl, pr, 1)
    neg = tirx.const(float("-inf"), "float32")

    def window_max(size, read, start, taps):
        acc = None
        for r in range(taps):
            i = start + r
            v = tirx.if_then_else(tirx.all(i >= 0, i < size), read(tirx.max(tirx.min(i, size - 1), 0)), neg)
            acc = v if acc is None else tirx.max(acc, v)
        return acc

    rows = te.compute((N, CB, OH, W, CI), lambda n, cb, oh, w, ci: window_max(
        H, lambda h: x[n, cb, h, w, ci], oh * sh - pt, KH), name="pool_rows")
    pool = te.compute((N, CB, OH, OW, CI), lambda n, cb, oh, ow, ci: window_max(
        W, lambda w: rows[n, cb, oh, w, ci], ow * sw - pl, KW), name="pool")
    return te.compute((N, CB * CI, OH, OW), lambda n, c, oh, ow: pool[n, c // CI, oh, ow, c % CI],
                      name="pool_out")
