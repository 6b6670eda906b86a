"""Default CPU schedules for the float "glue" TVM legalizes from standard ONNX ops.

TVM 0.27's CPU pipeline leaves legalized PrimFuncs (stem conv, BN, PReLU, pooling, residual adds,
FC, threshold generators) unscheduled: one thread, no explicit vectorization. Once the binary
layers are fast this glue dominates (Amdahl), so every such PrimFunc gets a
dlight-style rule here:

* :class:`SpatialReduction` — one reduction block ``S..S R..R`` (conv2d, matmul, pooling, mean)
  plus inlinable producers (padding) and consumers (bias, BN, PReLU, adds): the innermost
  spatial axis is split into SIMD-width register tiles accumulated locally, the reduction loops
  run outside the tile, leading spatial axes are fused and run in parallel.
* :class:`Injective` — element-wise / broadcast / layout chains: inline into the last block,
  fuse, parallel outer, vectorized inner.

Anything a rule cannot handle stays as TVM produced it (correct, just slow); the rules never
change what is computed, only the loop structure.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule, get_extent, try_inline_contiguous_spatial
from tvm.target import Target


def _vector_lanes(target: Target, bits: int = 32) -> int:
    """Elements per vector tile row: one AVX-512 / NEON register, but two AVX2 registers (the
    16-float tile gives two independent FMA chains per broadcast: Zen 3, attention's
    6x196x196 @ 196x64, 4 rows x 8 floats 0.60 ms, x 16 floats 0.33 ms)."""
    from .target_identity import vector_bits

    width = vector_bits(target)
    return max((512 if width == 256 else width) // bits, 4)


def _is_cpu(target: Target) -> bool:
    return target.kind.name == "llvm"


def _vectorize_inner(sch: s_tir.Schedule, block, lanes: int) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    inner = loops[-1]
    extent = get_extent(sch, inner)
    if not isinstance(extent, int):
        return
    if extent > lanes and extent % lanes == 0:
        _, vec = sch.split(inner, factors=[None, lanes])
        sch.vectorize(vec)
    elif 2 <= extent <= lanes * 2:
        sch.vectorize(inner)


def _parallel_outer(sch: s_tir.Schedule, loops, min_tasks: int = 2):
    """Fuse leading loops until there are enough tasks to spread over the cores; parallelize."""
    if not loops:
        return None
    n = 1
    total = 1
    for loop in loops:
        ext = get_extent(sch, loop)
        if not isinstance(ext, int):
            break
        total *= ext
        if total >= min_tasks * 8:
            break
        n += 1
    n = max(1, min(n, len(loops)))
    fused = sch.fuse(*loops[:n]) if n > 1 else loops[0]
    sch.parallel(fused)
    return fused


def _row_vector(w: int, lanes: int) -> int:
    """Vector width for a row of ``w`` contiguous elements: a multiple of the lanes that divides
    ``w``, else the whole row if short (7, 14, 28), else the largest divisor of ``w`` within
    [lanes / 2, 2 * lanes] (56 -> 28); 0 if none fits."""
    for c in (2 * lanes, lanes):
        if w % c == 0:
            return c
    if 2 <= w <= 2 * lanes:
        return w
    return max((d for d in range(lanes // 2, 2 * lanes + 1) if w % d == 0), default=0)


class Injective(ScheduleRule):
    """Element-wise, broadcast and layout chains."""

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc) or not _is_cpu(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos or not all(bi.is_injective() for bi in infos):
            return None
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
        lanes = _vector_lanes(target)
        extents = [get_extent(sch, lp) for lp in loops]
        if not all(isinstance(e, int) for e in extents):
            return None
        w_vec = _row_vector(extents[-1], lanes)
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
            _parallel_outer(sch, list(loops[:-1]))
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
            _parallel_outer(sch, rest)
        return sch


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
        if not isinstance(func, tirx.PrimFunc) or not _is_cpu(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos:
            return None
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
        lanes = _vector_lanes(target)
        inner_ext = get_extent(sch, spatial[-1])
        if not isinstance(inner_ext, int):
            return None
        outer_ext = [get_extent(sch, lp) for lp in spatial[:-1]]
        if all(e == 1 for e in outer_ext) and inner_ext >= 4 * lanes:
            return _schedule_gemv(sch, block, spatial, reduce_loops, infos, red, lanes, inner_ext)
        # register tile along the innermost spatial axis (ow for NCHW conv, N for matmul)
        tile = next((c for c in (lanes, lanes // 2, 4) if inner_ext % c == 0), 1)
        if tile == 1 and inner_ext <= 2 * lanes:
            tile = inner_ext
        # a few rows of the next spatial axis too: independent accumulators hide FMA latency
        rows_ext = get_extent(sch, spatial[-2]) if n_s >= 2 else 1
        rows = next((c for c in (4, 2) if isinstance(rows_ext, int) and rows_ext % c == 0), 1)
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
            write_back = sch.cache_write(block, 0, "local")
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
            _parallel_outer(sch, outer_spatial)
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
    write_back = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(write_back, s_o, preserve_unit_loops=True)
    for c in (bi.block_rv for bi in infos if bi.is_injective() and bi is not red):
        try:
            sch.reverse_compute_inline(c)
        except Exception:
            pass
    sch.vectorize(v_i)
    wb = sch.get_loops(write_back)[-1]
    w_o, w_i = sch.split(wb, factors=[None, vec])
    sch.vectorize(w_i)
    sch.parallel(sch.fuse(*spatial[:-1], s_o) if len(spatial) > 1 else s_o)
    try:
        sch.decompose_reduction(block, reduce_loops[0])
    except Exception:
        pass
    return sch


def _reads_innermost(sch: s_tir.Schedule, block, var) -> bool:
    """Does ``var`` appear in the innermost index of some buffer the block reads?"""
    for region in sch.get(block).reads:
        if region.region and any(v.same_as(var) for v in
                                 tirx.analysis.undefined_vars(region.region[-1].min)):
            return True
    return False


def _bound_loops(sch: s_tir.Schedule, block, kind: str) -> list:
    """The loops bound one-to-one to the block's iters of ``kind`` ("S" / "R"), in iter order
    (unit loops of the row and fused bindings are skipped)."""
    from tvm.s_tir.dlight.analysis.common_analysis import get_sblockrealize

    realize = get_sblockrealize(sch, block)
    want = tirx.IterVar.CommReduce if kind == "R" else tirx.IterVar.DataPar
    loops = sch.get_loops(block)
    loop_vars = [sch.get(lp).loop_var for lp in loops]
    found = []
    for iv, val in zip(realize.block.iter_vars, realize.iter_values):
        if iv.iter_type == want:
            found += [lp for lp, lv in zip(loops, loop_vars) if val.same_as(lv)]
    return found


def _loop_binding(sch: s_tir.Schedule, block, kind: str):
    """The loop bound to the last block iter of ``kind`` ("S" / "R")."""
    found = _bound_loops(sch, block, kind)
    if not found:
        raise ValueError(f"no {kind} loop")
    return found[-1]


def _calls_libm(func) -> bool:
    """exp / erf / tanh: scalar libm calls per lane once vectorised (no TIR visitor in 0.27's
    Python API, so the printed script is searched)."""
    text = func.script()
    return any(f"T.{fn}(" in text for fn in ("exp", "erf", "tanh"))


def _partial_sum_lanes(r_ext: int, inner_ext: int, lanes: int) -> int:
    """Vector lanes F of partial sums for a row of ``r_ext`` elements whose innermost reduced
    axis has ``inner_ext``; 0 for a serial chain.  F divides the innermost axis, which is split
    on its own: splitting a fused (h, w) made lane groups straddle rows and read
    ``x[(f*F+l) // W, (f*F+l) % W]``, which neither TVM nor LLVM turn back into one contiguous
    load (mean over 56x56 ran as scalar loads, ~0.3 ms per GAP in DyBNN's thresholds).  Rows
    narrower than the preferred widths (W = 7, 14) use F = W, one odd-width vector per row."""
    for c in (2 * lanes, lanes, lanes // 2, 4):
        if r_ext % c == 0 and inner_ext % c == 0 and r_ext >= 2 * c:
            return c
    if 4 <= inner_ext <= 2 * lanes and r_ext >= 2 * inner_ext:
        return inner_ext
    return 0


class RowReduction(ScheduleRule):
    """Reductions along contiguous trailing axes, with element-wise blocks around them:
    ``mean`` over H×W of NCHW, softmax / LayerNorm over the last axis of tokens, E[x²], E[x³].

    dlight's cpu ``Reduction`` runs each row as one serial ``+=`` chain (latency-bound: one add
    per FP-add latency).  Here each reduction is split into ``F`` vector lanes of partial sums
    (``rfactor``; the lanes are a vector register, the partial-sum loop runs outside it), which are
    then summed per row; the chain shares the parallel row loop (``compute_at``) as in dlight, and
    the element-wise blocks are vectorised along their innermost axis.

    Loops are identified by the block iter they bind (``normalize_prim_func`` may order the loops
    differently from the block's iters) and put in iter order first.  The reassociation changes
    the float rounding of the sums (the order of additions), not what is summed.
    """

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc) or not _is_cpu(target):
            return None
        if _calls_libm(func):
            # softmax: exp is a scalar libm call per lane; vector partial sums of exp(x - max)
            # measured slower (6.7 vs 5.7 ms on [1,4,256,256]) than dlight's serial rows
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos:
            return None
        infos = try_inline_contiguous_spatial(sch, infos)
        if not infos:
            return None
        reds = [bi for bi in infos if not bi.is_injective()]
        if not reds:
            return None
        n_lead = None
        for bi in infos:
            kinds = bi.dom_kind()
            n_s = len(kinds) - len(kinds.lstrip("S"))
            if n_s == 0:
                return None
            if not bi.is_injective():
                if set(kinds[n_s:]) != {"R"}:
                    return None
                # a row reduction: the innermost reduction iter walks contiguous memory
                if not _reads_innermost(sch, bi.block_rv, bi.iters[-1].var):
                    return None
            n_lead = n_s if n_lead is None else min(n_lead, n_s)
        ext0 = [it.dom for it in infos[-1].iters[:n_lead]]
        for bi in infos:
            if [it.dom for it in bi.iters[:n_lead]] != ext0 or not all(isinstance(e, int) for e in ext0):
                return None
        lanes = _vector_lanes(target)
        rf_blocks = []
        rf_of = []  # (reduction block, its rfactor block)
        for bi in reds:
            blk = bi.block_rv
            loops = [it.loop_rv for it in bi.iters]
            if len(sch.get_loops(blk)) != len(loops):
                return None
            sch.reorder(*loops)
            n_s = len(bi.iters) - len(bi.dom_kind().lstrip("S"))
            red_loops = loops[n_s:]
            r_ext = 1
            for it in bi.iters[n_s:]:
                if not isinstance(it.dom, int):
                    return None
                r_ext *= it.dom
            inner_ext = bi.iters[-1].dom
            f = _partial_sum_lanes(r_ext, inner_ext, lanes)
            if not f:
                continue  # short / odd rows: a serial chain, as dlight does
            # split the innermost reduced axis itself, (h, w) not fused: the lanes then read
            # x[.., h, wo*F + l], one contiguous vector load (F divides W)
            _, ri = sch.split(red_loops[-1], factors=[None, f])
            # partial sums last in the rf buffer: [..row.., F], one contiguous vector per row
            rf = sch.rfactor(ri, factor_axis=len(sch.get(blk).writes[0].region))
            rf_blocks.append(rf)
            rf_of.append((blk, rf))
        # the row loop: leading spatial loops of the last block, in parallel
        last = infos[-1].block_rv
        last_loops = sch.get_loops(last)
        if infos[-1].is_injective():
            sch.reorder(*[it.loop_rv for it in infos[-1].iters])
            last_loops = sch.get_loops(last)
        lead = last_loops[:n_lead]
        row = _parallel_outer(sch, list(lead)) if lead else None
        if row is None:
            return None
        # everything before the last block runs per row task (consumers first)
        chain = []
        def rf_for(blk):
            return [rf for b, rf in rf_of if b.same_as(blk)]

        for bi in infos[:-1]:
            chain += rf_for(bi.block_rv)
            chain.append(bi.block_rv)
        chain += rf_for(infos[-1].block_rv)
        for b in reversed(chain):
            sch.compute_at(b, row, preserve_unit_loops=True)
        for bi in infos:
            if bi.is_injective():
                inner = sch.get_loops(bi.block_rv)[-1]
                if not sch.get(inner).same_as(sch.get(row)):  # only loops inside the row task
                    _vectorize_inner(sch, bi.block_rv, lanes)
        for rf in rf_blocks:
            # (..., R loops in iter order (h, w_o), ri [S]): partial-sum lanes innermost, vectorised
            ri, ros = _loop_binding(sch, rf, "S"), _bound_loops(sch, rf, "R")
            sch.reorder(*ros, ri)
            sch.vectorize(ri)
        for rf in rf_blocks:
            try:
                sch.decompose_reduction(rf, _bound_loops(sch, rf, "R")[0])
            except Exception:
                pass
        return sch


def _softmax_lanes(n: int, lanes: int) -> int:
    """Vector chunk of a softmax row: the largest divisor of ``n`` up to 4 registers' worth
    (196 -> 28, 256 -> 32; LLVM splits a 28-lane vector into registers); the whole row when it
    is that short; 0 (serial) for a long row without such a divisor (a 1009-lane vector would
    only bloat the code)."""
    if n <= 4 * lanes:
        return n
    return max((d for d in range(4 * lanes, 1, -1) if n % d == 0 and d >= 4), default=0)


def schedule_softmax_last(sch: s_tir.Schedule, target: Target) -> None:
    """:func:`compute.softmax_last`: rows in parallel, each row's max, exponentials and sum
    computed inside its task (the exponentials stay in a row buffer), element-wise passes in
    vector chunks, both reductions as a vector of partial results.  Zen 3, 1 thread, attention
    [1,6,196,196]: TOPI's fast_softmax under dlight's rule 0.37 ms -> 0.20 ms."""
    out = sch.get_sblock("sm_out")
    *lead, _ = sch.get_loops(out)
    row = sch.fuse(*lead) if len(lead) > 1 else lead[0]
    sch.parallel(row)
    sch.compute_inline(sch.get_sblock("sm_diff"))
    n = int(sch.get(sch.get_loops(out)[-1]).extent)
    f = _softmax_lanes(n, _vector_lanes(target))
    rfs = []
    for name in ("sm_max", "sm_sum"):
        blk = sch.get_sblock(name)
        r = sch.get_loops(blk)[-1]
        if 0 < f < n:
            _, ri = sch.split(r, factors=[None, f])
            rfs.append(sch.rfactor(ri, factor_axis=len(sch.get(blk).writes[0].region)))
    # consumers first (each compute_at needs its consumers under the row already):
    # sum <- its partial sums <- exponentials <- max <- its partial maxima
    rf_max, rf_sum = (rfs if rfs else [None, None])
    for blk in (sch.get_sblock("sm_sum"), rf_sum, sch.get_sblock("T_fast_exp"),
                sch.get_sblock("sm_max"), rf_max):
        if blk is not None:
            sch.compute_at(blk, row, preserve_unit_loops=True)
    for name in ("T_fast_exp", "sm_out"):
        blk = sch.get_sblock(name)
        inner = sch.get_loops(blk)[-1]
        if 0 < f < n:
            _, inner = sch.split(inner, factors=[None, f])
        if f > 1:
            sch.vectorize(inner)
    for rf in rfs:
        ri, ros = _loop_binding(sch, rf, "S"), _bound_loops(sch, rf, "R")
        sch.reorder(*ros, ri)
        sch.vectorize(ri)
        sch.decompose_reduction(rf, ros[0])


def softmax_last_func(shape, target: Target):
    """A scheduled PrimFunc ``(x float32[shape], out float32[shape])``, rank >= 2: softmax
    along the last axis (:func:`compute.softmax_last`), marked scheduled so the glue rules
    leave it alone."""
    from tvm import te

    from . import compute

    x = te.placeholder(tuple(int(v) for v in shape), "float32", name="x")
    sch = s_tir.Schedule(te.create_prim_func([x, compute.softmax_last(x)]))
    schedule_softmax_last(sch, target)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


class _Guarded(ScheduleRule):
    """A rule that declines (None) instead of failing the build when a primitive refuses."""

    def __init__(self, rule: ScheduleRule):
        self.rule = rule

    def apply(self, func, target, tunable):
        if isinstance(func, tirx.PrimFunc) and _has_unit_reduction(func):
            return None
        try:
            return self.rule.apply(func, target, tunable)
        except Exception:
            return None


def _has_unit_reduction(func) -> bool:
    """A reduction block whose reduction iters all have extent 1 (a matmul with K = 1).  TVM
    0.27's ``reverse_compute_inline`` of an epilogue into such a block puts the epilogue into
    both its init and its update (a bias added twice; found by tests/fuzz), so the rules leave
    these functions unscheduled: correct, and too small to matter."""
    sch = s_tir.Schedule(func)
    todo = [sch.get_sblock("root")]
    while todo:
        for child in sch.get_child_blocks(todo.pop()):
            todo.append(child)
            red = [iv for iv in sch.get(child).iter_vars if iv.iter_type == tirx.IterVar.CommReduce]
            if red and all(isinstance(iv.dom.extent, tirx.IntImm) and int(iv.dom.extent) == 1
                           for iv in red):
                return True
    return False


def rules():
    """The float-glue rules, most specific first (dlight order)."""
    from tvm.s_tir.dlight import cpu as dl_cpu

    return [_Guarded(r) for r in (SpatialReduction(), RowReduction(), dl_cpu.Reduction(), Injective())]


def schedule_pass():
    """``ApplyDefaultSchedule`` over every unscheduled PrimFunc (ours are marked scheduled)."""
    from tvm.s_tir.dlight import ApplyDefaultSchedule

    return ApplyDefaultSchedule(*rules())
