"""Fallback schedules valid on any llvm target: parallel outer axis, vectorised inner axis.

Each ``schedule_*`` takes an ``s_tir.Schedule`` of the PrimFunc built from the matching compute in
:mod:`.compute` (blocks are found by their compute names) and mutates it in place.
``decompose_reduction`` always comes last: parallel/vectorize refuse the split init/update blocks.
"""
from __future__ import annotations

import math

from tvm import s_tir

# Scope of a task's tile buffers (accumulators, row buffers) on CPUs.  TVM 0.27's LowerTVMBuiltin
# puts only "global" allocations under 1 KiB on the stack, as an alloca LLVM promotes to
# registers; a "local" one becomes a TVMBackendAllocWorkspace call per task, and the tile's
# accumulators round-trip through that memory (Zen 3, attention Q.K^T 6x196x196: 0.094 ->
# 0.085 ms).  Placement decides sharing, not scope: every tile buffer sits under its task loop.
TILE_SCOPE = "global"


def has_block(sch: s_tir.Schedule, name: str) -> bool:
    try:
        sch.get_sblock(name)
        return True
    except Exception:  # get_sblock raises when the block does not exist
        return False


def extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def pick_factor(n: int, candidates) -> int:
    """First candidate dividing ``n`` (splits without a remainder keep the tiles predicate-free)."""
    for c in candidates:
        if c <= n and n % c == 0:
            return c
    return 1


def vectorize_row(sch: s_tir.Schedule, loop, chunk: int) -> bool:
    """Vectorise a row loop of ``n`` elements, ``n`` longer than ``chunk`` lanes (a multiple of
    the register) and not a multiple of it, as ``n // chunk`` vectors of ``chunk`` and the rest
    as one short vector of its own (``loop_partition``).  A divisor of ``n`` as the vector
    instead wastes lanes in every instruction: 196 = 7 x 28 lanes runs each op on a zmm, a ymm
    and an xmm (Zen 4, 1 thread, the fused softmax + quantizer on [6,196,196] 0.169 -> 0.134 ms
    as 6 x 32 + 4).  Returns False, doing nothing, for other rows."""
    n = extent(sch, loop)
    if n <= chunk or n % chunk == 0:
        return False
    main, tail = sch.loop_partition(loop, factors=[n - n % chunk, None])
    sch.vectorize(tail)
    sch.vectorize(sch.split(main, factors=[None, chunk])[1])
    return True


def largest_divisor(n: int, limit: int) -> int:
    for c in range(min(n, limit), 0, -1):
        if n % c == 0:
            return c
    return 1


def loops_under(sch: s_tir.Schedule, blk, anchor) -> list:
    """The loops of ``blk`` nested strictly inside the loop ``anchor``: after ``compute_at`` /
    ``reverse_compute_at`` to ``anchor`` (which drop unit loops) possibly none.  Pick the loop to
    vectorise from these, never ``get_loops(blk)[-1]``: when every loop of the moved block is
    unit, that is ``anchor`` or a loop above it (the task loop), and vectorising it puts the tile's
    per-iteration ``local`` accumulator inside a vector loop, which VectorizeLoop miscompiles
    (one scalar slot for all lanes: every output takes the last lane's value) or rejects
    ("VectorizeLoop before LiftStorageAlloc")."""
    loops = sch.get_loops(blk)
    target = sch.get(anchor)
    for i, lp in enumerate(loops):
        if sch.get(lp).same_as(target):
            return list(loops[i + 1:])
    raise ValueError("the block is not nested under the anchor loop")


def vectorize_innermost(sch: s_tir.Schedule, blk, anchor, widths=None) -> bool:
    """Vectorise the innermost loop of ``blk`` under ``anchor`` if there is one (and, with
    ``widths``, if its extent is one of them); see :func:`loops_under`."""
    inner = loops_under(sch, blk, anchor)
    if not inner or (widths is not None and extent(sch, inner[-1]) not in widths):
        return False
    sch.vectorize(inner[-1])
    return True


def injective(sch: s_tir.Schedule, name: str, vec: int = 8) -> None:
    """Fuse all loops, parallel over the outer part, vectorise a divisible inner chunk."""
    blk = sch.get_sblock(name)
    loops = sch.get_loops(blk)
    inner = loops[-1]
    v = pick_factor(extent(sch, inner), (vec * 2, vec, 4, 2))
    if v > 1:
        outer_in, vi = sch.split(inner, factors=[None, v])
        sch.vectorize(vi)
        loops = list(loops[:-1]) + [outer_in]
    if len(loops) > 1:
        fused = sch.fuse(*loops)
    else:
        fused = loops[0]
    sch.parallel(fused)


def schedule_bitpack(sch: s_tir.Schedule, name: str = "bitpack", vec: int = 16) -> None:
    # loops n, h, w, cw, b.  Accumulate a chunk of ``vec`` pixels of a row (vector over w,
    # contiguous loads of x in NCHW, the 64 bits in one or two registers) and copy it out to the
    # NHWC-packed output.  Whole rows of 112 lanes spilled (64->64 @112: 1.0 -> 0.4 ms, 1 thread);
    # h and w are never fused: the copy-out region of a tile crossing rows is over-approximated.
    blk = sch.get_sblock(name)
    n, h, w, cw, b = sch.get_loops(blk)
    if extent(sch, w) < 8:
        # Narrow maps (1x1 at the end of a ResNet at 32 px): nothing to vectorize along w, and
        # a unit row tile once vectorised the cw task loop instead (wrong words for W=1, CW>1;
        # fixed by vectorize_innermost, but one row of one pixel has nothing to vectorise).
        sch.parallel(sch.fuse(n, h))
        sch.decompose_reduction(blk, b)
        return
    ext = extent(sch, w)
    group = pick_factor(extent(sch, b), (16, 8))
    if ext % vec == 0 and group > 1:
        _schedule_bitpack_channel_groups(sch, blk, vec, group)
        return
    wf = pick_factor(ext, (vec, 8, 4))
    if wf < 4 and largest_divisor(ext, vec) >= 5:
        # an odd row with a divisor (a flattened 7x7 map, 49 = 7 x 7): chunks of it, not one
        # vector of the whole row (1024x49: 16.3 -> 7.6 us).  Not the widest divisor in general:
        # 196 runs best as chunks of 4 (13.5 us; 7: 15.6, 14: 26.4)
        wf = largest_divisor(ext, vec)
    if wf < 4 and ext > 64:
        # a long row no vector width divides (a 9x9 map packed as one row of 81): pixel by pixel
        # (a vector of the whole row would spill; unit chunks vectorise nothing)
        sch.parallel(sch.fuse(n, h, w))
        sch.decompose_reduction(blk, b)
        return
    if wf < 4:
        wf = ext  # one odd-width vector (a prime row; 7x7 = 49 as one row: 16 us vs 20 us as rows of 7)
    wo, wi = sch.split(w, factors=[None, wf])
    sch.reorder(n, h, wo, cw, b, wi)
    wb = sch.cache_write(blk, 0, TILE_SCOPE)
    sch.reverse_compute_at(wb, cw)
    row = sch.fuse(n, h)
    sch.parallel(row)
    sch.vectorize(wi)
    vectorize_innermost(sch, wb, cw, (2, 4, 8, 16))
    sch.decompose_reduction(blk, b)


def _schedule_bitpack_channel_groups(sch: s_tir.Schedule, blk, vec: int, group: int) -> None:
    """Rows that ``vec`` divides: the 64 channels of a word are read ``group`` at a time, each
    group along the whole row, the partial words or-ed (added) into the output row.  A chunk of
    pixels that took all 64 bits at once read 64 channel rows in parallel, more streams than the
    prefetchers follow: 64x112x112 (one row of 12544) 222 -> 104 us, 128x56x56 33 -> 23 us; rows
    of 196 stay with the chunked tile (a masked tail: 13 -> 258 us)."""
    n, h, w, cw, b = sch.get_loops(blk)
    wo, wi = sch.split(w, factors=[None, vec])
    bo, bi = sch.split(b, factors=[None, group])
    sch.reorder(n, h, cw, bo, wo, bi, wi)
    sch.parallel(sch.fuse(n, h))
    sch.vectorize(wi)
    sch.decompose_reduction(blk, bo)


def schedule_bitpack_last(sch: s_tir.Schedule, name: str = "bitpack_last") -> None:
    # loops *lead, cw, b.  The 64-bit reduction reads contiguous x; LLVM vectorises it itself.
    blk = sch.get_sblock(name)
    loops = sch.get_loops(blk)
    outer = loops[:-1]
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    sch.parallel(fused)
    sch.decompose_reduction(blk, loops[-1])


def schedule_bconv2d(sch: s_tir.Schedule) -> None:
    conv = sch.get_sblock("bconv")
    n, oh, ow, k, rh, rw, rc = sch.get_loops(conv)
    ki_f = pick_factor(extent(sch, k), (8, 4, 2))
    ko, ki = sch.split(k, factors=[None, ki_f])
    sch.reorder(n, oh, ow, ko, rh, rw, rc, ki)
    row = sch.fuse(n, oh)
    sch.parallel(row)
    sch.vectorize(ki)
    if has_block(sch, "bpad"):
        injective(sch, "bpad")
    injective(sch, "bconv_out")
    sch.decompose_reduction(conv, rh)
    schedule_output_pack(sch)


def schedule_output_pack(sch: s_tir.Schedule, row=None) -> None:
    """``bconv_pack`` (make_bconv2d(pack_output=True)), if present: under ``row`` (the conv's
    parallel (n, oh) loop) it packs the output row the task has just written, still in cache,
    vectorised along w as make_bitpack is; without ``row`` it is a parallel pass of its own."""
    if not has_block(sch, "bconv_pack"):
        return
    if row is None:
        schedule_bitpack(sch, "bconv_pack")
        return
    blk = sch.get_sblock("bconv_pack")
    out = next(r.source for r in sch.get(blk).reads if r.source.name == "bconv_out")
    k, ow = int(out.shape[1]), int(out.shape[3])  # the conv output [N, K, OH, OW]
    if (k > 64 and k % 64) or k == 1 or ow == 1:
        # the clamped channel index of a partial last word defeats reverse_compute_at's region
        # analysis, and one channel or one column leaves no loop under the row (unit loops are
        # dropped; found by tests/fuzz): pack in a pass of its own
        schedule_bitpack(sch, "bconv_pack")
        return
    sch.reverse_compute_at(blk, row)
    loops = sch.get_loops(blk)
    inner = loops[[sch.get(lp).same_as(sch.get(row)) for lp in loops].index(True) + 1:]
    w, *cw, b = inner  # (w, [cw], b): a unit cw loop (K <= 64) is dropped
    wf = pick_factor(extent(sch, w), (16, 8))
    if wf < 8 and largest_divisor(extent(sch, w), 16) >= 4:
        # rows of 28, 14, 7 (ResNet-18's last three stages): chunks of the largest divisor, as
        # make_bitpack does (Zen 4, 3x3 128->128 @28 with its pack 0.174 -> 0.144 ms, the conv
        # alone 0.125; unvectorised, the pack cost more than a bitpack kernel of its own).  Not
        # for 56 (chunks of 14: 0.136 -> 0.159 ms)
        wf = largest_divisor(extent(sch, w), 16)
    if wf >= 4:
        wo, wi = sch.split(w, factors=[None, wf]) if wf < extent(sch, w) else (None, w)
        sch.reorder(*([wo] if wo is not None else []), *cw, b, wi)
        wb = sch.cache_write(blk, 0, TILE_SCOPE)
        at = cw[0] if cw else (wo if wo is not None else row)
        sch.reverse_compute_at(wb, at)
        sch.vectorize(wi)
        vectorize_innermost(sch, wb, at, (2, 4, 8, 16))
    sch.decompose_reduction(blk, b)


def _schedule_mm(sch: s_tir.Schedule, red_name: str, out_name: str, nvec: int = 8) -> None:
    blk = sch.get_sblock(red_name)
    loops = sch.get_loops(blk)
    *spatial, r = loops
    n = spatial[-1]
    nf = pick_factor(extent(sch, n), (nvec, 4, 2))
    no, ni = sch.split(n, factors=[None, nf])
    sch.reorder(*spatial[:-1], no, r, ni)
    outer = spatial[:-1]
    fused = sch.fuse(*outer) if len(outer) > 1 else (outer[0] if outer else no)
    sch.parallel(fused)
    sch.vectorize(ni)
    injective(sch, out_name)
    sch.decompose_reduction(blk, r)
    if has_block(sch, f"{red_name}_pack"):  # compute.bdense's pack: a pass of its own here
        schedule_bitpack_last(sch, f"{red_name}_pack")


def schedule_bdense(sch: s_tir.Schedule) -> None:
    _schedule_mm(sch, "bdense", "bdense_out")


def schedule_bbatch_matmul(sch: s_tir.Schedule) -> None:
    _schedule_mm(sch, "bbmm", "bbmm_out")


def schedule_fconv2d(sch: s_tir.Schedule, wi_max: int = 8, kb_max: int = 2) -> None:
    """Float blocked conv: a register tile of ``WI`` output pixels x ``KBI`` blocks of ``OB``
    (SIMD lanes) output channels; per tap, ``KBI`` weight vectors and ``WI`` broadcast inputs
    feed ``WI*KBI`` FMAs (one block per tile loaded the input once per FMA).  Reductions
    outside the tile; rows in parallel, each task padding only the input rows it reads; the
    finished tile is stored straight to NCHW, vectorised along ow (a separate un-blocking pass
    re-read the whole output).  Measured 1 thread, AVX-512, 7x7 s2 3->64 @224: 1.98 ms as
    8 px x 1 block + un-blocking pass, 1.54 ms as 8 px x 2 blocks stored in the tile."""
    conv = sch.get_sblock("fconv")
    pad = sch.get_sblock("fpad")
    n, kb, oh, ow, ob, rc, rh, rw = sch.get_loops(conv)
    kbf = largest_divisor(extent(sch, kb), kb_max)
    wf = largest_divisor(extent(sch, ow), wi_max)
    kbo, kbi = sch.split(kb, factors=[None, kbf])
    wo, wi = sch.split(ow, factors=[None, wf])
    # an unpadded conv (1x1 shortcut) whose weights outgrow a sample's input (256->512 @7x7:
    # 512 KB vs 50 KB): walk each weight block once over all rows, else every row task
    # re-streams all the weights (Zen 3, in the model: 0.63 -> 0.29 ms).  Not for padded convs:
    # CCT's 7x7 tokenizer (4.8 MB of weights) measured 2 % slower that way, its padding then a
    # serial pass
    data_shape = [int(v) for v in sch.get(pad).reads[0].source.shape]
    unpadded = list(sch.get(pad).writes[0].source.shape) == data_shape
    weights = [int(v) for v in sch.get(conv).reads[1].source.shape]
    weights_outer = unpadded and math.prod(weights) > math.prod(data_shape[1:])
    if weights_outer:
        sch.reorder(n, kbo, oh, wo, rc, rh, rw, wi, kbi, ob)
    else:
        sch.reorder(n, oh, kbo, wo, rc, rh, rw, wi, kbi, ob)
    wb = sch.cache_write(conv, 0, TILE_SCOPE)
    sch.reverse_compute_at(wb, wo)
    row = sch.fuse(n, kbo) if weights_outer else sch.fuse(n, oh)
    sch.parallel(row)
    if unpadded:
        sch.compute_inline(pad)  # no padding (1x1 shortcuts): read the input, no per-task copy
    else:
        sch.compute_at(pad, row)  # each row task pads the input rows it reads
    sch.vectorize(ob)
    sch.unroll(kbi)
    sch.unroll(wi)
    # the NCHW output (+ bias) reads the register tile directly
    sch.compute_inline(wb)
    out = sch.get_sblock("fconv_out")
    sch.reverse_compute_at(out, wo)
    vectorize_innermost(sch, out, wo)  # none when K == 1 and WI == 1 (OW prime > wi_max)
    sch.decompose_reduction(conv, rc)


def schedule_maxpool2d(sch: s_tir.Schedule) -> None:
    """Rows of (n, c, oh) in parallel; per row, the KH-row max into a local row buffer
    (vectorised along w, contiguous), then the strided KW-column max as a plain loop for LLVM
    (64@112, 3x3 s2: 0.54 ms as TVM's fused pool with inlined padding -> ~0.2 ms)."""
    if has_block(sch, "pool_out"):
        _schedule_maxpool2d_blocked(sch)
        return
    pool = sch.get_sblock("pool")
    n, c, oh, _ow = sch.get_loops(pool)
    row = sch.fuse(n, c, oh)
    sch.parallel(row)
    rows = sch.get_sblock("pool_rows")
    sch.compute_at(rows, row)
    sch.set_scope(rows, 0, TILE_SCOPE)
    inner = loops_under(sch, rows, row)  # none for W = 1 (the row loop itself must stay parallel)
    w = inner[-1] if inner else None
    f = pick_factor(extent(sch, w), (16, 8, 4)) if w is not None else 1
    if f > 1:
        _, wi = sch.split(w, factors=[None, f])
        sch.vectorize(wi)


def prelu_stats_blocks(sch: s_tir.Schedule) -> list[tuple]:
    """(partial sums, sum, mean) blocks of each statistic of a prelu_stats PrimFunc."""
    out = []
    while has_block(sch, f"prelu_stats{len(out)}"):
        j = len(out)
        out.append(tuple(sch.get_sblock(f"prelu_stats_{k}{j}") for k in ("part", "sum")) +
                   (sch.get_sblock(f"prelu_stats{j}"),))
    return out


def schedule_prelu_stats(sch: s_tir.Schedule) -> None:
    """One task per (n, c) row, walking it a vector of F lanes at a time: the PReLU writes the
    lanes to ``y`` and the statistics' partial sums (every requested power) accumulate them in the
    same iteration, while they are still in registers: one pass over the row."""
    y, stats = sch.get_sblock("prelu"), prelu_stats_blocks(sch)
    f = extent(sch, sch.get_loops(stats[0][0])[-2])  # (n, c, lane, so)
    n, c, z, i = sch.get_loops(y)
    row = sch.fuse(n, c, z)
    so, lane = sch.split(i, factors=[None, f])
    sch.parallel(row)
    for part, _, _ in stats:
        sch.reverse_compute_at(part, so, preserve_unit_loops=True)
    for _, total, mean in stats:
        sch.reverse_compute_at(total, row, preserve_unit_loops=True)
        sch.reverse_compute_at(mean, row, preserve_unit_loops=True)
    if f > 1:
        sch.vectorize(lane)
        for part, _, _ in stats:
            sch.vectorize(sch.get_loops(part)[-2])  # (lane, unit so)
    for part, total, _ in stats:
        sch.decompose_reduction(part, so)
        sch.decompose_reduction(total, sch.get_loops(total)[-1])


def schedule_token_threshold(sch: s_tir.Schedule, accumulators: int = 4) -> None:
    """One task (the whole kernel is a few microseconds: a parallel launch would cost more),
    except for a prologue's pass (:func:`_token_sums_of_prologue`).  The token sums walk the rows
    with a chunk of up to ``accumulators`` vectors of channels in registers, chunk after chunk
    (all channels of a row at once spilled; one vector per walk re-read the rows: [1, 256, 512]
    20 us at one vector, 6 us at four or more, Zen 4), never across a jump in the source
    (``bnn_run``: a chunk straddling two heads of attention's merged output was a gather, 28 us
    where 3 us); the FCs run as rank-1 updates along their output (``w1t`` / ``w2t`` rows are
    contiguous), one vector of outputs per input element."""
    total, fc1, fc2 = (sch.get_sblock(n) for n in ("thr_sum", "thr_fc1", "thr_fc2"))
    n, d, rl = sch.get_loops(total)
    run = int(sch.get(total).annotations.get("bnn_run", extent(sch, d)))
    chunk = max(c for c in range(1, min(run, 16 * accumulators) + 1)
                if run % c == 0 and (c % 16 == 0 or c <= 16))
    if has_block(sch, "thr_in"):
        _token_sums_of_prologue(sch, total, chunk)
    else:
        d_o, d_i = sch.split(d, factors=[None, chunk])
        sch.reorder(n, d_o, rl, d_i)
        acc = sch.cache_write(total, 0, TILE_SCOPE)
        sch.reverse_compute_at(acc, d_o)
        sch.vectorize(d_i)
        sch.vectorize(sch.get_loops(acc)[-1])
        sch.decompose_reduction(total, rl)
    for blk in (fc1, fc2):
        _n, out, red = sch.get_loops(blk)
        sch.reorder(red, out)
        _vector_lanes(sch, out)
    sch.compute_inline(sch.get_sblock("thr_relu"))
    _vector_lanes(sch, sch.get_loops(sch.get_sblock("thr_out"))[-1])
    for blk in (fc1, fc2):
        sch.decompose_reduction(blk, sch.get_loops(blk)[-3])


_TOKEN_BLOCKS = frozenset({"thr_in", "thr_sum", "thr_fc1", "thr_relu", "thr_fc2", "thr_out"})


def _token_sums_of_prologue(sch: s_tir.Schedule, total, chunk: int) -> None:
    """The prologue (``thr_in``: DyBinaryCCT's GELU, written as an output too) and the token
    sums in one pass: tasks of ``chunk`` channels over all tokens in parallel (the GELU is the
    work here, 17-24 cycles per vector), each row's chunk summed as it is computed."""
    for blk in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(blk).name_hint not in _TOKEN_BLOCKS:
            sch.compute_inline(blk)  # the prologue's stages (the erf polynomial) into thr_in
    y = sch.get_sblock("thr_in")
    n, rows, d = sch.get_loops(y)
    d_o, d_i = sch.split(d, factors=[None, chunk])
    sch.reorder(n, d_o, rows, d_i)
    sch.parallel(sch.fuse(n, d_o))
    sch.reverse_compute_at(total, rows)
    sch.vectorize(d_i)
    sch.vectorize(sch.get_loops(total)[-1])  # (task, row, chunk)
    sch.decompose_reduction(total, rows)


def _vector_lanes(sch: s_tir.Schedule, loop, lanes: int = 16) -> None:
    """Vectors of up to ``lanes`` along ``loop``: vectorising a whole row of 1152 made one
    1152-lane LLVM vector, spilled op by op (DyBinaryCCT-14's 72 -> 1152 FC: 41 us, 2 us in
    16-lane vectors)."""
    sch.vectorize(sch.split(loop, factors=[None, largest_divisor(extent(sch, loop), lanes)])[1])


def _schedule_maxpool2d_blocked(sch: s_tir.Schedule) -> None:
    """NCHWc input: rows of (n, channel block, oh) in parallel; the window maxima are whole
    vectors of the block's channels, kept in local buffers; the pooled row is then transposed to
    NCHW, a vector along ow per channel."""
    out = sch.get_sblock("pool_out")
    pool, rows = sch.get_sblock("pool"), sch.get_sblock("pool_rows")
    n, cb, oh, _ow, _ci = sch.get_loops(pool)
    row = sch.fuse(n, cb, oh)
    sch.parallel(row)
    sch.compute_at(rows, row)
    for blk in (pool, rows):
        sch.set_scope(blk, 0, TILE_SCOPE)
        vectorize_innermost(sch, blk, row)  # ci (a whole channel block, never unit)
    sch.reverse_compute_at(out, row)
    inner = loops_under(sch, out, row)  # (ci, ow) under the row
    w = inner[-1] if inner else None
    f = pick_factor(extent(sch, w), (16, 8, 4)) if w is not None else 1
    if f > 1:
        _, wi = sch.split(w, factors=[None, f])
        sch.vectorize(wi)


def schedule_avgpool2d(sch: s_tir.Schedule) -> None:
    """Rows of (n, c, oh) in parallel; the row's windows as a plain loop, which LLVM vectorises
    itself with de-interleaving loads (TVM's own vectorisation of the stride-KW reads made one
    scalar load per lane: TOPI's pool took 0.24 ms on 64@112 -> 56), except rows too short for
    LLVM's vectors."""
    pool = sch.get_sblock("pool_avg")
    n, c, oh, ow = sch.get_loops(pool)
    sch.parallel(sch.fuse(n, c, oh))
    if extent(sch, ow) < 16:
        # rows shorter than LLVM's vector ran scalar: TVM's vectors, one lane per window, win
        # there (Zen 4, 1 thread: 128@28 -> 14 0.046 -> 0.016 ms, 256@14 -> 7 0.018 -> 0.008)
        sch.vectorize(ow)
