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
* :class:`RowReduction` — reductions along contiguous trailing axes (H x W means, LayerNorm,
  E[x^2], E[x^3]) as vectors of partial sums; and softmax over the last axis, which the
  compiler legalizes to an already-scheduled kernel (:func:`softmax_last_func`).

``spatial.py`` holds the first two, ``rows.py`` the row reductions and softmax, ``common.py``
the tile helpers they share; ``count_softmax.py`` the softmax of binary attention scores from
their popcounts (a kernel the frontend emits itself, not a rule).

Anything a rule cannot handle stays as TVM produced it (correct, just slow); the rules never
change what is computed, only the loop structure.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule

from .rows import RowReduction, schedule_softmax_last, softmax_last_func
from .spatial import Injective, SpatialReduction

__all__ = ["rules", "schedule_pass", "schedule_softmax_last", "softmax_last_func"]


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
