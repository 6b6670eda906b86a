"""Float computes bnncompile schedules itself on CPUs: the blocked float conv (stems, shortcuts),
pooling, the threshold statistics (means of x, x^2, x^3 over H, W), the fused dynamic PReLU and
the token threshold (a DySign's pool and MLP over tokens in one kernel)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tvm import te, tirx

from .common import broadcast_reader, conv_out_size, ints, normalize_2d, normalize_padding


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
    relu: bool = False,
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
    relu : apply ``max(y, 0)`` to the output (a Relu only this conv feeds, fused).

    Returns
    -------
    float32 ``[N, K, OH, OW]`` (NCHW) or ``[N, KB, OH, OW, OB]`` (NCHWc); zero padding.
    """
    N, C, H, W = ints(data.shape)
    KB, C2, KH, KW, OB = ints(weight_blocked.shape)
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
        return te.compute((N, KB, OH, OW, OB), lambda n, kb, oh, ow, ob: _relu((
            conv[n, kb, oh, ow, ob] + bias[kb * OB + ob] if bias is not None else conv[n, kb, oh, ow, ob]),
            relu), name="fconv_out")
    if out_layout != "NCHW":
        raise ValueError(f"fconv2d: out_layout must be 'NCHW' or 'NCHWc', got {out_layout!r}")

    def out(n, k, oh, ow):
        v = conv[n, k // OB, oh, ow, k % OB]
        return _relu(v + bias[k] if bias is not None else v, relu)

    return te.compute((N, out_channels, OH, OW), out, name="fconv_out")


def _relu(v, on: bool):
    return tirx.max(v, tirx.const(0.0, "float32")) if on else v


def power(v, p: int):
    """``v**p`` in ONNX's order for INSTA's statistics: ``(v * v) * v``."""
    if p == 1:
        return v
    if p == 2:
        return v * v
    if p == 3:
        return v * v * v
    raise ValueError(f"power {p}: expected 1, 2 or 3")


def power_mean(x: te.Tensor, p: int, *, keepdims: bool) -> te.Tensor:
    """Mean of ``x**p`` over the last two axes of an NCHW map (INSTA's E[x], E[x^2], E[x^3];
    DySign's pooled statistics), in one pass over ``x``.

    Parameters
    ----------
    x : float32 ``[N, C, H, W]`` (a caller may pass the ``[N, C, 1, H*W]`` view, whose flat rows
        give the reduction wider vector lanes).
    p : 1, 2 or 3 (``x*x*x`` in ONNX's order, see :func:`power`).
    keepdims : output ``[N, C, 1, 1]`` instead of ``[N, C]``.

    Returns
    -------
    float32 mean ``power_mean``, with the sum ``power_sum`` ``[N, C]`` as its producer.
    """
    n, c, h, w = ints(x.shape)
    rh, rw = te.reduce_axis((0, h), name="rh"), te.reduce_axis((0, w), name="rw")
    acc = te.compute((n, c), lambda i, j: te.sum(power(x[i, j, rh, rw], p), axis=[rh, rw]),
                     name="power_sum")
    shape = (n, c, 1, 1) if keepdims else (n, c)
    return te.compute(shape, lambda i, j, *_: acc[i, j] / float(h * w), name="power_mean")


def softmax_last(x: te.Tensor) -> te.Tensor:
    """Softmax along the last axis with TVM's polynomial ``fast_exp`` (relative error ~1e-7),
    computing each exponential once: TOPI's ``fast_softmax`` evaluates ``exp(x - max)`` twice
    (in the sum, then again in the quotient).

    Blocks: ``sm_max`` (row max), ``sm_diff`` (``x - max``), ``T_fast_exp`` (the row's
    exponentials), ``sm_sum``, ``sm_rec`` (``1 / sum``, once per row), ``sm_out`` (``e * rec``:
    a multiply per element instead of a divide, within an ulp of the quotient; vdivps costs
    ~4 multiplies on Zen 3).
    """
    from tvm import topi

    *lead, n = ints(x.shape)
    k = te.reduce_axis((0, n), name="k")
    mx = te.compute(tuple(lead), lambda *i: te.max(x(*i, k), axis=k), name="sm_max")
    diff = te.compute(x.shape, lambda *i: x(*i) - mx(*i[:-1]), name="sm_diff")
    e = topi.fast_exp(diff)
    k2 = te.reduce_axis((0, n), name="k2")
    total = te.compute(tuple(lead), lambda *i: te.sum(e(*i, k2), axis=k2), name="sm_sum")
    rec = te.compute(tuple(lead), lambda *i: tirx.const(1.0, "float32") / total(*i), name="sm_rec")
    return te.compute(x.shape, lambda *i: e(*i) * rec(*i[:-1]), name="sm_out")


def softmax_counts(counts: te.Tensor, steps: te.Tensor, *, width: int = 16, peak: bool = False) -> te.Tensor:
    """:func:`softmax_last` of binary attention scores given as their popcounts: ``counts``
    uint8 ``[..., N]`` (``compute.bbatch_matmul(counts=True)``), ``steps`` float32 ``[T]``
    (``compute.score_steps``: ``score(c) - score(0)``, exact).  Bit for bit the softmax of the
    float scores: a row's ``score(c) - max`` is ``steps[c - min(c)]``, so its exponentials are
    entries of one table, ``fast_exp(steps)``, computed once per call instead of once per
    element.  ``steps`` is a kernel input, not a constant, and the table is computed in the
    kernel: a constant's polynomial would be folded at compile time, by LLVM or by Relax's
    FoldConstant on the build machine's CPU, with other roundings than the target's FMAs (one
    ulp apart, seen for a separate table kernel).

    Blocks: ``sm_max`` (the row's fewest mismatches), ``T_fast_exp`` (the table), ``sm_offset``
    (each count's offset ``c - min``, uint8, the row padded to a multiple of ``width`` with
    copies of its last), ``sm_gather`` (each offset's entry, padded alike, written as a one-hot
    sum over the table so its reads stay affine: ``x86_intrinsics.table_lookup`` replaces it,
    ``width`` at a time), ``sm_sum``, ``sm_rec``, then ``sm_out`` over the row's ``N`` as in
    :func:`softmax_last`.  Reference: ``reference.softmax_counts_ref``.

    ``peak``: ``sm_out`` has ``N + 1`` columns, the last one the row's largest probability
    (the int8 product's quantizer needs it), looked up as one more entry of offset 0 in the
    padding (offsets past ``N`` are 0 then, not copies): the fewest mismatches' entry is
    ``fast_exp(0) = 1`` exactly, every other entry is at most 1 (its polynomial is ``1 + a``
    with ``a <= 0`` for a step ``<= 0``, then scaled down by a power of two), and rounding
    ``e * rec`` is monotone in ``e``, so the row's maximum is ``1 * rec``, with no pass over
    the row.
    """
    from tvm import topi

    *lead, n = ints(counts.shape)
    (size,) = ints(steps.shape)
    table = topi.fast_exp(steps)
    padded = -(-(n + int(peak)) // width) * width
    k = te.reduce_axis((0, n), name="k")
    fewest = te.compute(tuple(lead), lambda *i: te.min(counts(*i, k).astype("int32"), axis=k), name="sm_max")

    def shifted(*i):
        d = counts(*i[:-1], tirx.min(i[-1], n - 1)).astype("int32") - fewest(*i[:-1])
        return (tirx.Select(i[-1] < n, d, tirx.const(0, "int32")) if peak else d).astype("uint8")

    offset = te.compute((*lead, padded), shifted, name="sm_offset")
    j = te.reduce_axis((0, size), name="j")
    e = te.compute((*lead, padded), lambda *i: te.sum(
        tirx.Select(offset(*i).astype("int32") == j, table[j], tirx.const(0.0, "float32")), axis=j),
        name="sm_gather")
    k2 = te.reduce_axis((0, n), name="k2")
    total = te.compute(tuple(lead), lambda *i: te.sum(e(*i, k2), axis=k2), name="sm_sum")
    rec = te.compute(tuple(lead), lambda *i: tirx.const(1.0, "float32") / total(*i), name="sm_rec")
    return te.compute((*lead, n + int(peak)), lambda *i: e(*i) * rec(*i[:-1]), name="sm_out")


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
    N, C, one, L = ints(x.shape)
    if one != 1:
        raise ValueError(f"prelu_stats: x must be [N, C, 1, L], got {ints(x.shape)}")
    if not powers:
        raise ValueError("prelu_stats: no statistics requested")

    def per_nc(t):
        read = broadcast_reader(t, 4, (N, C, 1, 1))
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


def gelu_erf(x: te.Tensor, divisor: float, addend: float, factor: float) -> te.Tensor:
    """``x * (factor * (erf(x / divisor) + addend))`` as PyTorch exports GELU (``sqrt 2``, 1, 0.5),
    computed as bnncompile's fast math computes those ONNX nodes (``compiler.fast_math_legalize_map``):
    the division as a multiplication by the float32 reciprocal, TVM's polynomial erf.  Output
    ``thr_in``; the stages before it are inlined by the schedules."""
    from tvm import topi

    inv = tirx.const(float(1.0 / np.float64(np.float32(divisor))), "float32")
    scaled = te.compute(x.shape, lambda *i: x(*i) * inv, name="gelu_scaled")
    erf = topi.fast_erf(scaled)
    add, mul = tirx.const(float(np.float32(addend)), "float32"), tirx.const(float(np.float32(factor)), "float32")
    return te.compute(x.shape, lambda *i: x(*i) * (mul * (erf(*i) + add)), name="thr_in")


def token_threshold(x, w1t: te.Tensor, b1: te.Tensor, w2t: te.Tensor, b2: te.Tensor, *,
                    prologue=None):
    """A DySign threshold on tokens, pool and MLP together: ``b2 + relu(mean_L(x) @ w1t + b1) @
    w2t`` (DyBinaryCCT's per-sample, per-channel threshold: the mean over the tokens, two small
    FCs), where the graph ran a mean and two matrix-vector products as three kernels.

    Parameters
    ----------
    x : float32 ``[N, L, D]``, a tensor or an :class:`~.index_view.IndexView` (the Q / K slice
        of ``qkv``, attention's merged heads: pooled where they lie, no copy).
    w1t, b1 : ``[D, R]``, ``[R]``: the first FC, transposed (``R`` its width).
    w2t, b2 : ``[R, D]``, ``[D]``: the second FC, transposed; ``b2`` also holds whatever
        constant the graph adds after it (DySign's static ``alpha0``).
    prologue : ``x -> y`` elementwise (a tensor ``thr_in``, e.g. :func:`gelu_erf`): the
        threshold pools ``y``, which the kernel also writes (DyBinaryCCT's fc2 site pools its
        GELU's output: one pass computes the GELU and sums it).  Plain tensors only.

    Returns
    -------
    float32 ``[N, D]`` (``thr_out``), through ``thr_sum`` (the token sums; its ``bnn_run``: the
    view's :func:`~.index_view.contiguous_run`), ``thr_fc1``,
    ``thr_relu`` and ``thr_fc2``; the mean is the sum divided by ``L`` (ONNX's ReduceMean).
    With a ``prologue``: ``(thr_out, y)``.
    """
    if prologue is not None:
        if not isinstance(x, te.Tensor):
            raise ValueError("token_threshold: a prologue needs a plain tensor, not a view")
        y = prologue(x)
        return token_threshold(y, w1t, b1, w2t, b2), y
    N, L, D = ints(x.shape)
    R = ints(w1t.shape)[1]
    if ints(w1t.shape) != [D, R] or ints(b1.shape) != [R] or ints(w2t.shape) != [R, D] or ints(b2.shape) != [D]:
        raise ValueError(f"token_threshold: x [N, L, D] = {[N, L, D]} needs w1t [D, R], b1 [R], w2t [R, D], "
                         f"b2 [D]; got {ints(w1t.shape)}, {ints(b1.shape)}, {ints(w2t.shape)}, {ints(b2.shape)}")
    zero = tirx.const(0.0, "float32")
    rl = te.reduce_axis((0, L), name="rl")
    # bnn_run: how many channels in a row are one plain load (schedules vectorise within it)
    run = x.last_axis_run if hasattr(x, "last_axis_run") else D
    total = te.compute((N, D), lambda n, d: te.sum(x[n, rl, d], axis=rl), name="thr_sum",
                       attrs={"bnn_run": run})
    rd = te.reduce_axis((0, D), name="rd")
    fc1 = te.compute((N, R), lambda n, r: te.sum(total[n, rd] / float(L) * w1t[rd, r], axis=rd), name="thr_fc1")
    hidden = te.compute((N, R), lambda n, r: tirx.max(fc1[n, r] + b1[r], zero), name="thr_relu")
    rr = te.reduce_axis((0, R), name="rr")
    fc2 = te.compute((N, D), lambda n, d: te.sum(hidden[n, rr] * w2t[rr, d], axis=rr), name="thr_fc2")
    return te.compute((N, D), lambda n, d: fc2[n, d] + b2[d], name="thr_out")


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
    N, C, H, W = ints(x.shape)
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
    N, C, H, W = ints(x.shape)
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
    N, CB, H, W, CI = ints(x.shape)
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
