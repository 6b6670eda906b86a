"""The softmax of binary attention scores from their popcounts (``compute.softmax_counts``),
scheduled, alone and followed by the int8 attention product's row quantizer.

A K-bit score takes K + 1 values, so a row's exponentials are entries of one table (computed
once per call) and each element is a lookup, 16 at a time from registers (``vpermi2ps``,
AVX-512 F).  Where a CPU has no such lookups the one-hot sums run as written (correct, slow:
the converters keep the float scores there).

Zen 4, 1 thread, against the float scores' kernels (``rows.softmax_last_func``,
``rows.softmax_quantize_rows_func``; same outputs bit for bit):

==========================  ======================  =============================
shape                       softmax                 softmax + int8 row quantizer
==========================  ======================  =============================
[4, 256, 256] (CCT-7)       0.130 -> 0.064 ms       0.126 -> 0.090 (probabilities)
[6, 196, 196] (CCT-14)      0.090 -> 0.064          0.123 -> 0.099 (probabilities)
==========================  ======================  =============================
"""

from __future__ import annotations

from tvm import s_tir, te
from tvm.target import Target

from ..generic import extent, largest_divisor, vectorize_row
from ..target_identity import has_x86_features
from .rows import _vector_partials, row_chunks, vectorize_partials, vectorize_row_pass


def table_lookup_available(target) -> bool:
    """Does ``target`` look tables up in registers (``vpermi2ps``, AVX-512 F)?  Where it does
    not, the softmax over counts would run its one-hot sums: the converters keep float scores."""
    return has_x86_features(target, ["avx512f"])


def _rows_per_task(rows: int, limit: int = 4) -> int:
    """Rows per parallel task (a divisor of a matrix's ``rows``: a task across two matrices has
    no rectangular region): each stage runs over the task's rows before the next starts, so the
    rows' latency chains (min, lookups, sum, 1/sum) overlap.  Zen 4, 1 thread, with the int8
    quantizer, its scratch on the stack (stack_scratch), two runs: [4,256,256] 1 row 0.087 ms,
    2 rows 0.086, 4 rows 0.070-0.074, 8 rows 0.073-0.082, 32 rows 0.099-0.114; [6,196,196] 4
    rows 0.076-0.077, 7 rows (8's divisor) 0.077-0.078.  (Before stack_scratch, every task's
    workspace allocations made 1 row 0.110 and 4-8 rows 0.068-0.070 without the quantizer.)"""
    return max(d for d in range(1, min(rows, limit) + 1) if rows % d == 0)


def _chunks(sch: s_tir.Schedule, target: Target) -> tuple[int, int, int, int]:
    """``rows.row_chunks`` of ``compute.softmax_counts``' rows (the row length from its sum: its
    lookups run over padded rows)."""
    return row_chunks(int(sch.get(sch.get_sblock("sm_sum")).iter_vars[-1].dom.extent), target)


def _lookups(sch: s_tir.Schedule, target: Target, used: int) -> None:
    """``sm_offset`` and ``sm_gather``: the offsets in byte vectors (the row's padding, copies of
    its last count, on their own), the lookups 16 per ``vpermi2ps`` group on AVX-512 (offsets
    below ``used``); elsewhere the one-hot sums as written."""
    n = int(sch.get(sch.get_sblock("sm_sum")).iter_vars[-1].dom.extent)
    i = sch.get_loops(sch.get_sblock("sm_offset"))[-1]
    if extent(sch, i) > n:
        i, tail = sch.loop_partition(i, factors=[n, None])
        sch.vectorize(tail)
    if not vectorize_row(sch, i, 64):
        sch.vectorize(sch.split(i, factors=[None, largest_divisor(n, 64)])[1])
    blk = sch.get_sblock("sm_gather")
    *_, gi, j = sch.get_loops(blk)
    if not table_lookup_available(target):  # correct, not fast: the converters do not pick it
        init = sch.decompose_reduction(blk, gi)
        sch.vectorize(sch.get_loops(init)[-1])
        return
    from ..x86_intrinsics import table_lookup

    _, inner = sch.split(gi, factors=[None, 16])
    init = sch.decompose_reduction(blk, inner)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(inner, table_lookup(extent(sch, j), used))


def schedule_softmax_counts(sch: s_tir.Schedule, target: Target, used: int):
    """``compute.softmax_counts`` (up to ``sm_rec``) under tasks of a few rows (:func:`_rows_per_task`) of ``sm_out``,
    each stage over the task's rows in turn: the fewest mismatches and the sums as vectors of
    partial results (as ``rows.schedule_softmax_last``), the offsets and lookups as
    :func:`_lookups` (``used``: the table entries an offset can reach, ``k + 1``).  ``sm_out``
    stays in the task's row loop, unvectorised.  Returns the task loop."""
    *lead, _ = sch.get_loops(sch.get_sblock("sm_out"))
    per_task = _rows_per_task(extent(sch, lead[-1]))
    row = sch.fuse(*lead) if len(lead) > 1 else lead[0]
    task, _ = sch.split(row, factors=[None, per_task])
    sch.parallel(task)
    n, native, _, f = _chunks(sch, target)
    # the lookups fill whole vectors: the sum claims the rows' padding, so compute_at keeps it
    # (before its partial sums split it: the annotation takes one range per block iter)
    total = sch.get_sblock("sm_sum")
    padded = int(sch.get(sch.get_sblock("sm_gather")).iter_vars[-2].dom.extent)
    at = [r.source.name for r in sch.get(total).reads].index("sm_gather")
    sch.annotate_buffer_access(total, at, "read", lambda *v: (*v[:-1], (0, padded)))
    rf_max, rf_sum = ([_vector_partials(sch, sch.get_sblock(name), f, native)[::-1] if 0 < f < n else []
                       for name in ("sm_max", "sm_sum")])
    # consumers first: each compute_at needs its consumers under the task already
    for blk in (sch.get_sblock("sm_rec"), sch.get_sblock("sm_sum"), *(b for b, _ in rf_sum),
                sch.get_sblock("sm_gather"), sch.get_sblock("sm_offset"), sch.get_sblock("sm_max"),
                *(b for b, _ in rf_max)):
        sch.compute_at(blk, task, preserve_unit_loops=True)
    vectorize_partials(sch, (*rf_max, *rf_sum))
    table = sch.get_sblock("T_fast_exp")
    sch.vectorize(sch.split(sch.get_loops(table)[-1], factors=[None, native])[1])
    _lookups(sch, target, used)
    return task


def _vectorize_probabilities(sch: s_tir.Schedule, target: Target) -> None:
    vectorize_row_pass(sch, sch.get_sblock("sm_out"), _chunks(sch, target))


def _inputs(shape, k: int, alpha: float | None):
    from .. import compute

    if len(shape) != 3:  # rows of several lead axes fused into a task bind non-affinely
        raise ValueError(f"softmax_counts: expected counts [B, M, N], got {list(shape)}")
    steps = compute.score_steps(k, alpha)
    if steps is None:
        raise ValueError(f"softmax_counts: scores of k={k}, alpha={alpha} are not exact float32 "
                         f"steps (compute.exact_affine); their softmax takes the float scores")
    counts = te.placeholder(tuple(int(v) for v in shape), "uint8", name="counts")
    return counts, te.placeholder((len(steps),), "float32", name="steps")


def softmax_counts_func(shape, k: int, alpha: float | None, target: Target):
    """A scheduled PrimFunc ``(counts uint8[B, M, N], steps float32[T], out float32[B, M, N])``:
    ``rows.softmax_last_func`` of the scores ``float32(k - 2c) * alpha`` that
    ``compute.bbatch_matmul(counts=True)`` leaves as popcounts ``c``, bit for bit, with ``steps =
    compute.score_steps(k, alpha)`` (ValueError where that is None)."""
    from .. import compute

    counts, steps = _inputs(shape, k, alpha)
    sch = s_tir.Schedule(te.create_prim_func([counts, steps, compute.softmax_counts(counts, steps)]))
    schedule_softmax_counts(sch, target, k + 1)
    _vectorize_probabilities(sch, target)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def softmax_counts_quantize_rows_func(shape, k: int, alpha: float | None, target: Target):
    """``rows.softmax_quantize_rows_func`` with :func:`softmax_counts_func`'s softmax, bit for
    bit: ``(counts uint8[B, M, N], steps float32[T], pq uint8[B, M, N], pmax float32[B, M])``,
    N a multiple of 4, the quantizer's rows in the softmax's tasks.  Each row's peak is
    ``1 * (1/sum)``, looked up in the softmax's padding (``compute.softmax_counts(peak=True)``)
    instead of a pass for the row's maximum: Zen 4, 1 thread, scratch on the stack,
    [6,196,196] 0.077 -> 0.068 ms, [4,256,256] 0.070-0.074 -> 0.067.  (Each row's bytes are a
    function of the offsets too, so they could be looked up in a per-row byte table with
    ``vpermi2b``; built and measured, it did not pay: docs/benchmarks.md G14.)"""
    from .. import compute
    from ..generic_quantized import vectorize_row_bytes

    if int(shape[-1]) % compute.quantized_matmul.GROUP:
        raise ValueError(f"softmax_quantize_rows: rows of {shape[-1]} are not whole 4-byte words")
    counts, steps = _inputs(shape, k, alpha)
    # each row's maximum rides in one more column of the softmax: no pass over the row for it
    pq, pmax = compute.quantize_rows(compute.softmax_counts(counts, steps, peak=True), peak_column=True)
    sch = s_tir.Schedule(te.create_prim_func([counts, steps, pq, pmax]))
    task = schedule_softmax_counts(sch, target, k + 1)
    for name in ("qrow_max", "qrow_inv", "qrows"):
        sch.reverse_compute_at(sch.get_sblock(name), task, preserve_unit_loops=True)
    _vectorize_probabilities(sch, target)
    vectorize_row_bytes(sch, sch.get_loops(sch.get_sblock("qrows"))[-1])
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)
