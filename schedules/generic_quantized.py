"""Generic (any CPU) schedules of the quantized kernels: the activation quantizers and the int32
register tiles of ``compile --conv-precision`` (the quantized conv) and ``--attention-precision``
(attention's int8 product).  The per-target modules reuse them (x86 tensorizes their tiles with
its intrinsics); the helpers are :mod:`.generic`'s."""
from __future__ import annotations

from tvm import s_tir

from .generic import (
    TILE_SCOPE,
    extent,
    has_block,
    largest_divisor,
    pick_factor,
    vectorize_innermost,
    vectorize_row,
)


def _schedule_abs_max(sch: s_tir.Schedule) -> None:
    part = sch.get_sblock("qabs_part")
    n, c, lane, rh, rs = sch.get_loops(part)
    sch.reorder(n, c, rh, rs, lane)
    sch.parallel(sch.fuse(n, c))
    sch.vectorize(lane)
    init = sch.decompose_reduction(part, rh)
    sch.vectorize(sch.get_loops(init)[-1])


def schedule_quantize_pairs(sch: s_tir.Schedule) -> None:
    """|x| maxima as lane partials per channel row (rows in parallel, lanes vectorised); pairs:
    rows of (n, pair, h) in parallel, vectorised along the padded row.  Quads: the levels per
    channel row, vectorised along w, then rows of (n, quad, h) in parallel with one 32-bit
    word per pixel.  Zen 4, 1 thread, against the pairs' one-stage schedule for quads: ResNet
    stem 3x224x224 (padding 3) 0.104 -> 0.063 ms, 64x28x28 0.023 -> 0.019, 64x56x56 (padding
    1) 0.435 -> 0.060 (the same two stages for pairs: 64x28x28 0.015 -> 0.049, not taken)."""
    _schedule_abs_max(sch)
    pairs = sch.get_sblock("qpairs")
    n, cg, h, w, j = sch.get_loops(pairs)
    sch.parallel(sch.fuse(n, cg, h))
    if has_block(sch, "qlevels"):
        sch.vectorize(j)
        levels = sch.get_sblock("qlevels")
        n, c, h, w = sch.get_loops(levels)
        sch.parallel(sch.fuse(n, c))
        f = pick_factor(extent(sch, w), (16, 8, 4, 2))
        if f > 1:
            sch.vectorize(sch.split(w, factors=[None, f])[1])
        return
    wj = sch.fuse(w, j)
    f = pick_factor(extent(sch, wj), (16, 8, 4, 2))
    if f > 1:
        sch.vectorize(sch.split(wj, factors=[None, f])[1])


def schedule_quantize_width(sch: s_tir.Schedule) -> None:
    """|x| maxima as in :func:`schedule_quantize_pairs`; the padded rows of (n, c, h) in
    parallel, each vectorised along w (16 lanes, a short vector for the rest: the stem's rows of
    232 columns)."""
    _schedule_abs_max(sch)
    n, c, h, w = sch.get_loops(sch.get_sblock("qwidth"))
    sch.parallel(sch.fuse(n, c, h))
    if vectorize_row(sch, w, 16):
        return
    f = pick_factor(extent(sch, w), (16, 8, 4, 2))
    if f > 1:
        sch.vectorize(sch.split(w, factors=[None, f])[1])


def schedule_quantize_hwc(sch: s_tir.Schedule) -> None:
    """|x| maxima as in :func:`schedule_quantize_pairs`; the NHWC rows of (n, h) in parallel,
    vectorised along the channels when they fill a vector, else scalar."""
    _schedule_abs_max(sch)
    q = sch.get_sblock("qhwc")
    n, h, _w, c = sch.get_loops(q)
    sch.parallel(sch.fuse(n, h))
    # vectors along w or a fused (w, c) gather the strided reads: slower than scalar code for
    # the stem's 3 channels (Emerald Rapids, 3x224x224: 0.145 ms scalar, 0.25 fused (w, c))
    f = pick_factor(extent(sch, c), (64, 32, 16))
    if f > 1:
        sch.vectorize(sch.split(c, factors=[None, f])[1])


def schedule_qconv2d(sch: s_tir.Schedule, wi_max: int = 4, kb_max: int = 2, intrin: str | None = None,
                     intrin_lanes: int | None = None) -> None:
    """The float conv's register tile (:func:`schedule_fconv2d`) on int32 accumulators: ``WI``
    output pixels x ``KBI`` channel blocks, reductions outside it; the ``(ob, j)`` pair loops
    tensorized with ``intrin`` where the target has one (over ``intrin_lanes`` of the block's
    channels at a time, the block split when wider), else vectorised along ``ob``."""
    conv = sch.get_sblock("qconv")
    n, kb, oh, ow, ob, rc, rh, rw, rj = sch.get_loops(conv)
    obo = None
    if intrin is not None and intrin_lanes and extent(sch, ob) > intrin_lanes:
        obo, ob = sch.split(ob, factors=[None, intrin_lanes])
    kbo, kbi = sch.split(kb, factors=[None, largest_divisor(extent(sch, kb), kb_max)])
    wo, wi = sch.split(ow, factors=[None, largest_divisor(extent(sch, ow), wi_max)])
    sch.reorder(n, oh, kbo, wo, rc, rh, rw, wi, kbi, *([obo] if obo is not None else []), ob, rj)
    wb = sch.cache_write(conv, 0, TILE_SCOPE)
    sch.reverse_compute_at(wb, wo)
    sch.parallel(sch.fuse(n, oh))
    sch.unroll(kbi)
    sch.unroll(wi)
    if obo is not None:
        sch.unroll(obo)
    sch.compute_inline(wb)
    _int_tile_finish(sch, conv, "qconv_out", wo, ob, rj, rc, intrin)


def _int_tile_finish(sch: s_tir.Schedule, acc, out_name: str, anchor, ob, group, first_reduction,
                     intrin: str | None) -> None:
    """The int32 register tile's last steps (quantized conv, int8 attention product): its float
    output under ``anchor``, the ``(ob, group)`` loops one instruction (``intrin``) or vectors
    along ``ob``, the accumulators' init vectorised."""
    out = sch.get_sblock(out_name)
    sch.reverse_compute_at(out, anchor)
    vectorize_innermost(sch, out, anchor)
    if intrin is None:
        sch.unroll(group)
        sch.vectorize(ob)
    init = sch.decompose_reduction(acc, first_reduction)
    sch.vectorize(sch.get_loops(init)[-1])
    if intrin is not None:
        sch.tensorize(ob, intrin)


def schedule_quantize_rows(sch: s_tir.Schedule) -> None:
    """Attention probabilities: rows (b, i) in parallel, each as :func:`quantize_rows_in`.  The
    row loop is the max's (an output block stays where it is; the rest moves around it)."""
    b, i, _ = sch.get_loops(sch.get_sblock("qrow_max"))
    row = sch.fuse(b, i)
    sch.parallel(row)
    quantize_rows_in(sch, row)


def quantize_rows_in(sch: s_tir.Schedule, row, *, bytes_in_row: bool = True) -> None:
    """Per probability row, under ``row`` (the loop over rows of ``qrow_max``): the row's lane
    maxima (vectorised), its max, 1/max and (``bytes_in_row``) its bytes (vectorised), the row
    read while it is in L1; else the bytes stay in their own loops (vectorised)."""
    sch.compute_at(sch.get_sblock("qrow_part"), row, preserve_unit_loops=True)
    for name in ("qrow_inv", "qrows")[:2 if bytes_in_row else 1]:
        sch.reverse_compute_at(sch.get_sblock(name), row)
    part = sch.get_sblock("qrow_part")
    *_, lane, rk = sch.get_loops(part)
    sch.reorder(rk, lane)
    sch.vectorize(lane)
    init = sch.decompose_reduction(part, rk)
    sch.vectorize(sch.get_loops(init)[-1])
    vectorize_row_bytes(sch, sch.get_loops(sch.get_sblock("qrows"))[-1])


def vectorize_row_bytes(sch: s_tir.Schedule, k) -> None:
    """A row of probability bytes (``qrows``' last loop) in 16-byte vectors: rows of 196 as
    12 x 16 + 4 bytes, not 49 x 4."""
    if vectorize_row(sch, k, 16):
        return
    f = pick_factor(extent(sch, k), (16, 8, 4))
    if f > 1:
        sch.vectorize(sch.split(k, factors=[None, f])[1])


def schedule_quantize_columns(sch: s_tir.Schedule) -> None:
    """Attention values: the column maxima as rows of |v| (vectorised along the columns), then
    the 4-row groups, one 32-bit word per column."""
    mx = sch.get_sblock("qcol_max")
    b, n, rk = sch.get_loops(mx)
    sch.reorder(b, rk, n)
    sch.parallel(b)
    f = pick_factor(extent(sch, n), (16, 8, 4))
    if f > 1:
        sch.vectorize(sch.split(n, factors=[None, f])[1])
    init = sch.decompose_reduction(mx, rk)
    sch.vectorize(sch.get_loops(init)[-1])
    q = sch.get_sblock("qcols")
    b, kq, n, t = sch.get_loops(q)
    sch.parallel(sch.fuse(b, kq))
    sch.vectorize(t)


def schedule_qbatch_matmul(sch: s_tir.Schedule, mi_max: int = 4, nb_max: int = 1,
                           intrin: str | None = None) -> None:
    """The quantized conv's register tile (:func:`schedule_qconv2d`) for attention's int8
    product: ``MI`` rows x ``NBI`` column blocks of int32 accumulators, the reduction outside
    it; the ``(ob, t)`` loops tensorized with ``intrin`` (one instruction per row and block),
    else vectorised along ``ob``."""
    acc = sch.get_sblock("qbmm")
    b, i, nb, ob, rq, rt = sch.get_loops(acc)
    nbo, nbi = sch.split(nb, factors=[None, largest_divisor(extent(sch, nb), nb_max)])
    io, ii = sch.split(i, factors=[None, largest_divisor(extent(sch, i), mi_max)])
    sch.reorder(b, io, nbo, rq, ii, nbi, ob, rt)
    wb = sch.cache_write(acc, 0, TILE_SCOPE)
    sch.reverse_compute_at(wb, nbo)
    sch.parallel(sch.fuse(b, io))
    sch.unroll(nbi)
    sch.unroll(ii)
    sch.compute_inline(wb)
    for name in ("qbmm_dp", "qbmm_dv"):  # a division per output vector, hoisted by LLVM per row
        if has_block(sch, name):  # not in the accumulate-only variant
            sch.compute_inline(sch.get_sblock(name))
    _int_tile_finish(sch, acc, "qbmm_out", nbo, ob, rt, rq, intrin)
