"""Per-task scratch buffers on the stack: the TIR pipeline every bnncompile library is built with.

A kernel whose parallel tasks keep an intermediate (a softmax's row of exponentials, a tile of
offsets) allocates it inside the task loop, and TVM's ``LowerTVMBuiltin`` turns every such
allocation of 1 KB or more (and every one outside the ``global`` scope, a tensor intrinsic's
scratch register even) into a ``TVMBackendAllocWorkspace`` / ``TVMBackendFreeWorkspace`` pair,
run once per task.  A pair costs ~22 ns (Zen 4, 1 thread: 128 tasks of an 8 KB buffer, 2.5 ->
5.4 us per call), and the attention softmax of CCT-14 ran 4 of them per task: 20 % of its
time.  This pipeline is TVM's own (``s_tir``) with one pass before the host finalisation: an
allocation of a constant size inside a parallel loop, small enough, is annotated
``disable_lower_builtin`` and stays an ``alloca`` in the task's stack frame (the LLVM code
generator places it at the entry of the task's function, once per task function call).

Limits: at most :data:`MAX_BUFFER_BYTES` per buffer and :data:`MAX_TASK_BYTES` per parallel
loop (threads of TVM's pool have the platform's default stack: 8 MB on glibc, 128 KB on musl);
anything larger keeps the workspace pool.  Stack buffers are 16-byte aligned (TVM's code
generator caps an alloca's alignment there); the kernels use unaligned vector loads.
"""

from __future__ import annotations

import tvm
from tvm.tirx import stmt as S

#: the name :func:`register` gives the pipeline (``tvm.compile(..., tir_pipeline=NAME)``)
NAME = "bnncompile"
MAX_BUFFER_BYTES = 32 * 1024
MAX_TASK_BYTES = 64 * 1024
_SCOPES = ("global", "local")
_ANNOTATION = "disable_lower_builtin"  # tvm::tirx::transform::kDisableLowerTVMBuiltin


def constant_bytes(buffer) -> int | None:
    """The size of a flat buffer of constant shape in bytes, else None."""
    try:
        n = 1
        for d in buffer.shape:
            n *= int(d)
    except (TypeError, ValueError):
        return None
    dt = tvm.runtime.DataType(buffer.dtype)
    return n * dt.bits * dt.lanes // 8


class _Budget:
    """Bytes already placed on the stack of the innermost enclosing parallel loop."""

    def __init__(self):
        self.used = 0


def _rewrite(s, budget: _Budget | None, moved: list):
    """``s`` with its eligible allocations annotated (``budget``: the enclosing parallel loop's;
    None outside any).  Rebuilds only the containers on a path to a change."""
    if isinstance(s, S.SeqStmt):
        new = [_rewrite(c, budget, moved) for c in s.seq]
        return s if all(a.same_as(b) for a, b in zip(new, s.seq)) else S.SeqStmt(new)
    if isinstance(s, S.For):
        inner = _Budget() if s.kind == S.ForKind.PARALLEL and budget is None else budget
        body = _rewrite(s.body, inner, moved)
        return s if body.same_as(s.body) else S.For(s.loop_var, s.min, s.extent, s.kind, body,
                                                    s.thread_binding, s.annotations, s.step)
    if isinstance(s, S.AttrStmt):
        body = _rewrite(s.body, budget, moved)
        return s if body.same_as(s.body) else S.AttrStmt(s.node, s.attr_key, s.value, body)
    if isinstance(s, S.IfThenElse):
        then = _rewrite(s.then_case, budget, moved)
        other = None if s.else_case is None else _rewrite(s.else_case, budget, moved)
        same = then.same_as(s.then_case) and (other is None or other.same_as(s.else_case))
        return s if same else S.IfThenElse(s.condition, then, other)
    if isinstance(s, S.While):
        body = _rewrite(s.body, budget, moved)
        return s if body.same_as(s.body) else S.While(s.condition, body)
    if isinstance(s, S.AllocBuffer) and budget is not None:
        size = constant_bytes(s.buffer)
        if (size is None or size > MAX_BUFFER_BYTES or budget.used + size > MAX_TASK_BYTES
                or str(s.buffer.scope()) not in _SCOPES or len(s.buffer.shape) != 1):
            return s
        budget.used += size
        moved.append((s.buffer.name, size))
        annotations = dict(s.annotations or {})
        annotations[_ANNOTATION] = tvm.tirx.IntImm("int32", 1)
        return S.AllocBuffer(s.buffer, annotations)
    return s


def stack_allocations(func) -> tuple:
    """``(func with its per-task scratch on the stack, [(buffer, bytes) moved])``."""
    moved: list = []
    body = _rewrite(func.body, None, moved)
    return (func if body.same_as(func.body) else func.with_body(body)), moved


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="bnncompile.StackScratch")
def stack_scratch(func, _mod, _ctx):
    """The pass: :func:`stack_allocations` of every host PrimFunc."""
    return stack_allocations(func)[0]


def _factory(**kwargs):
    from tvm.tirx import compilation_pipeline

    pipeline, host_passes, device_passes = compilation_pipeline.get_tir_pipeline("s_tir", **kwargs)

    def host():
        return tvm.ir.transform.Sequential([stack_scratch, host_passes()])

    return pipeline, host, device_passes


def register() -> str:
    """Register the pipeline with TVM (idempotent) and return its name for
    ``tvm.compile(..., tir_pipeline=...)``."""
    from tvm.tirx import compilation_pipeline

    if NAME not in compilation_pipeline.PIPELINE_MAP:
        compilation_pipeline.register_tir_pipeline(NAME, _factory)
    return NAME
