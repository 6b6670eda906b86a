"""Spatial rules: element-wise / broadcast / layout chains (:class:`Injective`) and one
reduction block with spatial register tiles (:class:`SpatialReduction`: conv2d, matmul,
pooling)."""

from __future__ import annotations

import re

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule, get_extent, try_inline_contiguous_spatial

from ..generic import TILE_SCOPE
from ..target_identity import vector_bits
from .common import normalized, parallel_outer, row_vector, vector_lanes


class Injective(ScheduleRule):
    """Element-wise, broadcast and layout chains."""

    def apply(self, func, target, tunable):
        opened = normalized(func, target)
        if opened is None or not all(bi.is_injective() for bi in opened[1]):
            return None
        sch, infos = opened
        infos = try_inline_contiguous_spatial(sch, infos)
        if not infos or len(infos) != 1:
            return None
        block = infos[0].block_rv
        loops = sch.get_loops(block)
        if not loops:
            return sch
        # Vectorize a contiguous tail (the last axis, or the last two: H*W of NCHW) and keep the
        # channel axis outside it, so per-channel BN/PReLU parameters are loop-invariant scalars
        # instead of per-lane gathers; parallelize what is left.
        lanes = vector_lanes(target)
        extents = [get_extent(sch, lp) for lp in loops]
        if not all(isinstance(e, int) for e in extents):
            return None
        if extents[-1] % (2 * lanes) == 0 and _is_polynomial(sch.get(block)):
            lanes *= 2
        w_vec = row_vector(extents[-1], lanes)
        if w_vec and len(loops) > 1 and extents[-1] % lanes != 0:
            # Vectorise within the last axis (W of NCHW): fusing H*W first made each lane group
            # straddle rows, and x[(f*L+l) // W, (f*L+l) % W] compiled to scalar gathers
            # (DyBNN's dynamic-PReLU pass over 128x56x56 ran at ~5 GB/s).
            inner = loops[-1]
            if w_vec < extents[-1]:
                inner, vec = sch.split(inner, factors=[None, w_vec])
            else:
                vec, inner = inner, None
            sch.vectorize(vec)
            parallel_outer(sch, list(loops[:-1]))
            return sch
        n_tail = 1 if extents[-1] % lanes == 0 or len(loops) == 1 else 2
        tail = loops[-n_tail:]
        inner = sch.fuse(*tail) if len(tail) > 1 else tail[0]
        rest = list(loops[:-n_tail])
        tail_ext = 1
        for e in extents[-n_tail:]:
            tail_ext *= e
        if tail_ext % lanes == 0:
            outer_in, vec = sch.split(inner, factors=[None, lanes])
            sch.vectorize(vec)
            if not rest:  # a 1-D tensor: the vector chunks are the parallel tasks
                rest = [outer_in]
        if rest:
            parallel_outer(sch, rest)
        return sch


#: Float constants in an element-wise block from which it counts as a polynomial (TVM's fast
#: erf has 13, fast exp 9; a BN / PReLU / residual chain has a handful).
POLYNOMIAL_CONSTANTS = 8


def _is_polynomial(block) -> bool:
    """An element-wise body like GELU's rational ``fast_erf``: ~20 vector ops per element, a
    third of them loads of broadcast coefficients LLVM cannot keep in 16 AVX2 registers.  Twice
    the usual vector tile (4 AVX2 registers) shares each coefficient load among more vectors
    and keeps more independent chains in flight (Zen 3, 1 thread, CCT-14's GELU 196x1152:
    16 lanes 0.116 ms, 32 lanes 0.098 ms).  No TIR visitor in 0.27's Python API: the constants
    are counted in the printed block."""
    return len(re.findall(r"T\.float32\(", str(block))) >= POLYNOMIAL_CONSTANTS


def _contiguous_in_some_read(sch: s_tir.Schedule, block, iter_index: int) -> bool:
    """Does block iter ``iter_index`` index the innermost dimension of some read buffer?

    Then a vector tile along it reads contiguous memory (ow of an NCHW conv input, j of B in
    A @ B); otherwise the tile would turn every load into a gather.
    """
    stmt = sch.get(block)
    var = stmt.iter_vars[iter_index].var
    for region in stmt.reads:
        if not region.region:
            continue
        free = tirx.analysis.undefined_vars(region.region[-1].min)  # the vars the index uses
        if any(v.same_as(var) for v in free):
            return True
    return False


class SpatialReduction(ScheduleRule):
    """One ``S..S R..R`` reduction with inlinable producers/consumers (conv, matmul, pool)."""

    def apply(self, func, target, tunable):
        opened = normalized(func, target)
        if opened is None:
            return None
        sch, infos = opened
        infos = try_inline_contiguous_spatial(sch, infos)
        reductions = [bi for bi in infos if not bi.is_injective()]
        if len(reductions) != 1:
            return None
        red = reductions[0]
        kinds = red.dom_kind()
        n_s = len(kinds) - len(kinds.lstrip("S"))
        if n_s == 0 or set(kinds[n_s:]) != {"R"}:
            return None
        block = red.block_rv
        loops = sch.get_loops(block)
        if len(loops) != len(kinds):
            return None
        spatial, reduce_loops = loops[:n_s], loops[n_s:]
        if not _contiguous_in_some_read(sch, block, n_s - 1):
            return None  # e.g. mean over H,W: tiling channels would gather; dlight's rule fits
        lanes = vector_lanes(target)
        inner_ext = get_extent(sch, spatial[-1])
        if not isinstance(inner_ext, int):
            return None
        outer_ext = [get_extent(sch, lp) for lp in spatial[:-1]]
        if all(e == 1 for e in outer_ext) and inner_ext >= 4 * lanes:
            return _schedule_gemv(sch, block, spatial, reduce_loops, infos, red, lanes, inner_ext)
        # register tile along the innermost spatial axis (ow for NCHW conv, N for matmul), and
        # a few rows of the next spatial axis: independent accumulators hide FMA latency.
        # AVX-512's 32 registers hold up to 16 (2 vectors x 8 rows): Emerald Rapids, 1 thread,
        # CCT-14's attention P.V (6 x 196x196 @ 196x64) 0.269 -> 0.186 ms, 196x384 @ 384x384
        # 0.55 -> 0.36 ms; 4 x 1 vectors (AVX2's choice, tuned on Zen 3) leave half the FMA
        # pipes idle there.
        wide = vector_bits(target) >= 512
        tiles = (2 * lanes, lanes, lanes // 2, 4) if wide else (lanes, lanes // 2, 4)
        tile = next((c for c in tiles if inner_ext % c == 0), 1)
        if tile == 1 and inner_ext <= 2 * lanes:
            tile = inner_ext
        rows_ext = get_extent(sch, spatial[-2]) if n_s >= 2 else 1
        rows = next((c for c in ((8, 7, 4, 2) if wide else (4, 2))
                     if isinstance(rows_ext, int) and rows_ext % c == 0), 1)
        r_i = None
        if tile > 1 and rows > 1:
            r_o, r_i = sch.split(spatial[-2], factors=[None, rows])
            spatial = [*spatial[:-2], r_o, spatial[-1]]
        if tile > 1 and tile != inner_ext:
            s_o, s_i = sch.split(spatial[-1], factors=[None, tile])
            outer_spatial = [*spatial[:-1], s_o]
        elif tile > 1:
            s_i = spatial[-1]
            outer_spatial = list(spatial[:-1])
        else:
            s_i, outer_spatial = None, list(spatial)
        if s_i is not None:
            sch.reorder(*outer_spatial, *reduce_loops, *([r_i] if r_i is not None else []), s_i)
            if r_i is not None:
                sch.unroll(r_i)
        consumers = [bi.block_rv for bi in infos if bi.is_injective() and bi is not red]
        if s_i is not None and outer_spatial:
            write_back = sch.cache_write(block, 0, TILE_SCOPE)
            sch.reverse_compute_at(write_back, outer_spatial[-1], preserve_unit_loops=True)
            for c in consumers:
                try:
                    sch.reverse_compute_inline(c)
                except Exception:
                    pass
            sch.vectorize(s_i)
            wb_loops = sch.get_loops(write_back)
            sch.vectorize(wb_loops[-1])
        if outer_spatial:
            parallel_outer(sch, outer_spatial)
        try:
            sch.decompose_reduction(block, reduce_loops[0])
        except Exception:
            pass
        return sch


def _schedule_gemv(sch, block, spatial, reduce_loops, infos, red, lanes: int, n: int):
    """A single output row (``x[1, K] @ W[K, N]``: the DyBNN / INSTA threshold MLPs, the
    classifier): stream W row by row, each task accumulating a chunk of up to 512 columns in
    registers/L1.  The generic tile (16 columns, all K rows, then the next 16 columns) walked W
    column-chunk by column-chunk, touching every cache line of a multi-MB matrix twice, far
    apart (1024x1000 head: 0.36 ms; streamed it is memory-bound at ~0.2 ms)."""
    vec = next((c for c in (lanes, lanes // 2, 4) if n % c == 0), 0)
    if not vec:
        return None
    chunk = max(c for c in range(vec, min(n, 512) + 1, vec) if n % c == 0)
    s_o, s_i = sch.split(spatial[-1], factors=[None, chunk])
    v_o, v_i = sch.split(s_i, factors=[None, vec])
    sch.reorder(*spatial[:-1], s_o, *reduce_loops, v_o, v_i)
    write_back = sch.cache_write(block, 0, TILE_SCOPE)
    sch.reverse_compute_at(write_back, s_o, preserve_unit_loops=True)
    for c in (bi.block_rv for bi in infos if bi.is_injective() and bi is not red):
        try:
            sch.reverse_compute_inline(c)
        except Exception:
            pass
    sch.vectorize(v_i)
    wb = sch.get_loops(write_back)[-1]
    _w_o, w_i = sch.split(wb, factors=[None, vec])
    sch.vectorize(w_i)
    sch.parallel(sch.fuse(*spatial[:-1], s_o) if len(spatial) > 1 else s_o)
    try:
        sch.decompose_reduction(block, reduce_loops[0])
    except Exception:
        pass
    return sch

