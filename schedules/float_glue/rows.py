"""Row rules: reductions along contiguous trailing axes (:class:`RowReduction`: H x W means,
LayerNorm, E[x^2], E[x^3]) and the scheduled softmax over the last axis (of binary scores
given as popcounts: :mod:`.count_softmax`)."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule, try_inline_contiguous_spatial
from tvm.target import Target

from ..generic import vectorize_row
from ..target_identity import vector_bits
from .common import normalized, parallel_outer, vector_lanes, vectorize_inner


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


def _lane_loop(sch: s_tir.Schedule, rf, lanes: int):
    """The loop of an rfactor block's lane iter (extent ``lanes``): not the last spatial loop,
    which after ``compute_at`` may be a unit row loop (then the partial results ran serially)."""
    return next(lp for lp in _bound_loops(sch, rf, "S") if int(sch.get(lp).extent) == lanes)


def _fold_lanes(f: int, native: int) -> list[int]:
    """Lanes of the partial-result stages after the first ``f`` (possibly none): one native
    register, then 4 lanes, each where it divides the stage before.  ``f`` partials summed
    into one value form a chain of ``f`` dependent scalar ops per row (~100 cycles of a
    ~370-cycle LayerNorm row of 256 on Zen 3); folded to a register first, ``f / g`` vector ops
    and ``g`` scalar ones; folded on to 4 lanes, a 16-lane register's own chain of 16 becomes
    4 vector ops and 4 scalar ones (Zen 4, 1 thread, softmax [1,4,256,256] 0.141 -> 0.127 ms,
    [1,4,128,128] 0.0275 -> 0.0236, [1,4,64,64] 0.0091 -> 0.0068, [1,6,196,196] unchanged)."""
    stages, last = [], f
    for c in (native, 4):
        if c < last and last % c == 0:
            stages.append(c)
            last = c
    return stages


def _vector_partials(sch: s_tir.Schedule, blk, f: int, native: int) -> list:
    """Split ``blk``'s innermost reduction loop into ``f`` lanes of partial results
    (``rfactor``, the lanes last in the partials buffer: one contiguous vector per row), folded
    into one register's worth and then 4 lanes (:func:`_fold_lanes`) where those divide.
    Returns ``[(rfactor block, lanes), ...]``, producer first; ``blk`` then reduces the last
    stage."""
    axis = len(sch.get(blk).writes[0].region)
    stages = []
    for lanes in (f, *_fold_lanes(f, native)):
        _, inner = sch.split(sch.get_loops(blk)[-1], factors=[None, lanes])
        stages.append((sch.rfactor(inner, factor_axis=axis), lanes))
    return stages


def vectorize_partials(sch: s_tir.Schedule, pairs) -> None:
    """Each ``(partials block, lanes)`` of :func:`_vector_partials`, once placed: its lanes
    innermost and vectorised, its reduction's init split off."""
    for rf, lanes in pairs:
        ri = _lane_loop(sch, rf, lanes)
        ros = _bound_loops(sch, rf, "R")
        sch.reorder(*ros, ri)
        sch.vectorize(ri)
        sch.decompose_reduction(rf, ros[0])


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
        if isinstance(func, tirx.PrimFunc) and _calls_libm(func):
            # softmax: exp is a scalar libm call per lane; vector partial sums of exp(x - max)
            # measured slower (6.7 vs 5.7 ms on [1,4,256,256]) than dlight's serial rows
            return None
        opened = normalized(func, target)
        if opened is None:
            return None
        sch, infos = opened
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
        lanes = vector_lanes(target)
        rf_blocks = []
        rf_of = []  # (reduction block, its rfactor block)
        for bi in reds:
            blk = bi.block_rv
            loops = [it.loop_rv for it in bi.iters]
            if len(sch.get_loops(blk)) != len(loops):
                return None
            sch.reorder(*loops)
            n_s = len(bi.iters) - len(bi.dom_kind().lstrip("S"))
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
            for stage in _vector_partials(sch, blk, f, vector_bits(target) // 32):
                rf_blocks.append(stage)
                rf_of.append((blk, stage[0]))
        # the row loop: leading spatial loops of the last block, in parallel
        last = infos[-1].block_rv
        last_loops = sch.get_loops(last)
        if infos[-1].is_injective():
            sch.reorder(*[it.loop_rv for it in infos[-1].iters])
            last_loops = sch.get_loops(last)
        lead = last_loops[:n_lead]
        row = parallel_outer(sch, list(lead)) if lead else None
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
                    vectorize_inner(sch, bi.block_rv, lanes)
        for rf, f in rf_blocks:
            # (..., R loops in iter order (h, w_o), ri [S]): partial-sum lanes innermost, vectorised
            ri = _lane_loop(sch, rf, f)
            ros = _bound_loops(sch, rf, "R")
            sch.reorder(*ros, ri)
            sch.vectorize(ri)
        for rf, _ in rf_blocks:
            try:
                sch.decompose_reduction(rf, _bound_loops(sch, rf, "R")[0])
            except Exception:
                pass
        return sch


def _softmax_lanes(n: int, lanes: int, registers: int = 4) -> int:
    """Vector chunk of a softmax row: the largest divisor of ``n`` up to ``registers``
    registers' worth (AVX2, 4: 196 -> 28, 256 -> 32; LLVM splits a 28-lane vector into
    registers); the whole row when it is that short; 0 (serial) for a long row without such a
    divisor (a 1009-lane vector would only bloat the code).  AVX-512 takes 2: the exponential's
    temporaries for 4 zmm spill (Emerald Rapids, 1 thread, [1,6,196,196] 49 lanes 0.208 ms, 28
    lanes 0.120; [1,4,64,64] 64 lanes 0.033 ms, 32 lanes 0.013)."""
    if n <= registers * lanes:
        return n
    return max((d for d in range(registers * lanes, 1, -1) if n % d == 0 and d >= 4), default=0)


def _softmax_chunks(sch: s_tir.Schedule, target: Target) -> tuple[int, int, int, int]:
    """:func:`row_chunks` of the softmax's rows (``sm_out``'s last loop)."""
    return row_chunks(int(sch.get(sch.get_loops(sch.get_sblock("sm_out"))[-1]).extent), target)


def row_chunks(n: int, target: Target) -> tuple[int, int, int, int]:
    """``(n, native, registers, f)`` for softmax rows of ``n``: floats per register
    (``vector_lanes`` doubles AVX2's; this is one), registers per chunk and the chunk of
    :func:`_softmax_lanes`."""
    native = vector_bits(target) // 32
    registers = 2 if native >= 16 else 4
    return n, native, registers, _softmax_lanes(n, native, registers)


def schedule_softmax_last(sch: s_tir.Schedule, target: Target, matrix_rows: int | None = None,
                          passes: bool = True):
    """:func:`compute.softmax_last`: rows in parallel, each row's max, exponentials and sum
    computed inside its task (the exponentials stay in a row buffer), element-wise passes in
    vector chunks, both reductions as a vector of partial results.  Zen 3, 1 thread, attention
    [1,6,196,196]: TOPI's fast_softmax under dlight's rule 0.37 ms -> 0.20 ms; with chunks of
    4 native registers (28 lanes, not 49) and vectorised partial results 0.17 ms.
    ``matrix_rows``: the parallel tasks are whole matrices of that many rows (their rows in
    order inside), for consumers placed under the returned task loop; ``passes=False`` leaves
    the element-wise passes to the caller (:func:`vectorize_softmax_passes`, after those)."""
    out = sch.get_sblock("sm_out")
    *lead, _ = sch.get_loops(out)
    row = sch.fuse(*lead) if len(lead) > 1 else lead[0]
    task = row
    if matrix_rows:  # tasks of whole matrices, their rows in order (returned for consumers)
        task, row = sch.split(row, factors=[None, matrix_rows])
    sch.parallel(task)
    sch.compute_inline(sch.get_sblock("sm_diff"))
    n, native, _, f = _softmax_chunks(sch, target)
    rfs = []  # per reduction, its (partials, lanes) stages consumer first
    for name in ("sm_max", "sm_sum"):
        if 0 < f < n:
            rfs.append(_vector_partials(sch, sch.get_sblock(name), f, native)[::-1])
    # consumers first (each compute_at needs its consumers under the row already):
    # 1/sum <- sum <- its partial sums <- exponentials <- max <- its partial maxima
    rf_max, rf_sum = (rfs if rfs else [[], []])
    for blk in (sch.get_sblock("sm_rec"), sch.get_sblock("sm_sum"), *(b for b, _ in rf_sum),
                sch.get_sblock("T_fast_exp"), sch.get_sblock("sm_max"), *(b for b, _ in rf_max)):
        sch.compute_at(blk, row, preserve_unit_loops=True)
    vectorize_partials(sch, (pair for chain in rfs for pair in chain))
    if passes:
        vectorize_softmax_passes(sch, target)
    return task


def vectorize_softmax_passes(sch: s_tir.Schedule, target: Target) -> None:
    """The softmax's element-wise passes (exponentials, probabilities) in vector chunks of
    :func:`_softmax_lanes`, or, where those would not fill whole registers (196 -> 28 lanes on
    AVX-512), chunks of whole registers and a short tail (:func:`generic.vectorize_row`).
    Last, after any consumer placed under the row: the tail's loop partition renames the
    blocks."""
    chunks = _softmax_chunks(sch, target)
    for name in ("T_fast_exp", "sm_out"):
        vectorize_row_pass(sch, sch.get_sblock(name), chunks)


def vectorize_row_pass(sch: s_tir.Schedule, blk, chunks: tuple[int, int, int, int]) -> None:
    """One element-wise pass of a softmax row (``blk``'s innermost loop) in the vector chunks
    ``chunks`` = :func:`_softmax_chunks`'s ``(n, native, registers, f)``."""
    n, native, registers, f = chunks
    inner = sch.get_loops(blk)[-1]
    if f % native and vectorize_row(sch, inner, registers * native):
        return
    if 0 < f < n:
        _, inner = sch.split(inner, factors=[None, f])
    if f > 1:
        sch.vectorize(inner)


def softmax_last_func(shape, target: Target):
    """A scheduled PrimFunc ``(x float32[shape], out float32[shape])``, rank >= 2: softmax
    along the last axis (:func:`compute.softmax_last`), marked scheduled so the glue rules
    leave it alone."""
    from tvm import te

    from .. import compute

    x = te.placeholder(tuple(int(v) for v in shape), "float32", name="x")
    sch = s_tir.Schedule(te.create_prim_func([x, compute.softmax_last(x)]))
    schedule_softmax_last(sch, target)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)



def softmax_quantize_rows_func(shape, target: Target):
    """A scheduled PrimFunc ``(x float32[B, M, K], pq uint8[B, M, K4], pmax float32[B, M])``:
    :func:`softmax_last_func`'s softmax, then ``compute.quantize_rows`` of its rows
    (``--attention-precision int8``), one (batch x head) matrix at a time: its softmax rows,
    then its quantizer's rows, while the matrix's probabilities are in L2 instead of a whole
    float tensor written out and read back.  Zen 4, 1 thread, CCT-7's [4,256,256]: 0.120 ms
    against 0.126 + 0.043 as two kernels; CCT-14's [6,196,196] 0.163 against 0.104 + 0.063
    (fused per row instead: 0.194, the two reductions' latency chains in one loop body).  K
    must be a multiple of 4."""
    from tvm import te

    from .. import compute
    from ..generic_quantized import quantize_rows_in

    if int(shape[-1]) % compute.quantized_matmul.GROUP:
        # the zero bytes past K read garbage once TVM drops their guard here (a row of 10 gave
        # the next row's levels in its padding); such rows take the two kernels
        raise ValueError(f"softmax_quantize_rows: rows of {shape[-1]} are not whole 4-byte words")
    x = te.placeholder(tuple(int(v) for v in shape), "float32", name="x")
    pq, pmax = compute.quantize_rows(compute.softmax_last(x))
    sch = s_tir.Schedule(te.create_prim_func([x, pq, pmax]))
    matrix = schedule_softmax_last(sch, target, matrix_rows=int(shape[-2]), passes=False)
    for name in ("qrow_part", "qrow_max", "qrow_inv", "qrows"):  # unit row loops kept: a
        # matrix of one row (one query) otherwise loses the row loop quantize_rows_in places under
        sch.reverse_compute_at(sch.get_sblock(name), matrix, preserve_unit_loops=True)
    # the bytes read the softmax's rows, produced in the matrix's own row loop
    quantize_rows_in(sch, sch.get_loops(sch.get_sblock("qrow_max"))[-2], bytes_in_row=False)
    vectorize_softmax_passes(sch, target)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)
