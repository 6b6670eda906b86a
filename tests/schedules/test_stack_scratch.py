"""Per-task scratch on the stack (``schedules.stack_scratch``): the pipeline every library is
built with moves a parallel task's small constant-size buffers out of TVM's workspace pool and
nothing else; the kernels compute the same bits either way."""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from bnncompile.schedules import compute, stack_scratch
from bnncompile.schedules.float_glue.count_softmax import softmax_counts_quantize_rows_func
from tvm import s_tir, te

from bnncompile import targets

WORKSPACE = "TVMBackendAllocWorkspace@GOTPCREL"


def _host():
    return targets.tvm_target(targets.host_spec(), num_cores=1)


def _per_task_kernel(row: int, copies: int = 1):
    """``out[i, j] = sum_c (x[i, j] + c) + 1`` (int32) over 16 parallel rows, each stage
    ``x + c`` a row buffer computed under the row's task, all live together (one per-task
    buffer each, none merged)."""
    x = te.placeholder((16, row), "int32", name="x")
    def stage(c):
        return te.compute((16, row), lambda i, j: x[i, j] + c, name=f"stage{c}")

    stages = [stage(c) for c in range(copies)]

    def total(i, j):
        acc = stages[0][i, j]
        for st in stages[1:]:
            acc = acc + st[i, j]
        return acc + 1

    out = te.compute((16, row), total, name="out")
    sch = s_tir.Schedule(te.create_prim_func([x, out]))
    task = sch.get_loops(sch.get_sblock("out"))[0]
    sch.parallel(task)
    for c in range(copies):
        sch.compute_at(sch.get_sblock(f"stage{c}"), task)
    return sch.mod["main"]


def _expected(x, copies):
    return sum(x + c for c in range(copies)) + 1


def _run(ex, x):
    out = tvm.runtime.empty(x.shape, "int32")
    ex.jit()["main"](tvm.runtime.tensor(x), out)
    return out.numpy()


def _compile_recording(func, monkeypatch):
    """Build ``func`` with bnncompile's pipeline → (executable, [(buffer, bytes) moved])."""
    moved = []
    original = stack_scratch.stack_allocations

    def record(f):
        out, found = original(f)
        moved.extend(found)
        return out, found

    monkeypatch.setattr(stack_scratch, "stack_allocations", record)
    return _build(func, stack_scratch.register()), moved


def _build(func, pipeline):
    return tvm.compile(func, target=tvm.target.Target(_host()), tir_pipeline=pipeline)


def test_softmax_scratch_moves_to_the_stack_same_bits():
    """The attention softmax of CCT-14 (4 workspace pairs per task with TVM's pipeline): none
    with bnncompile's, and its bytes and row peaks bit for bit the same."""
    shape = (6, 196, 196)
    func = softmax_counts_quantize_rows_func(shape, 64, 0.125, _host())
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 65, size=shape).astype(np.uint8)
    results = {}
    for pipeline in ("default", stack_scratch.register()):
        ex = _build(func, pipeline)
        asm = ex.mod.inspect_source("asm")
        results[pipeline] = asm.count(WORKSPACE)
        args = [tvm.runtime.tensor(counts), tvm.runtime.tensor(compute.score_steps(64, 0.125)),
                tvm.runtime.empty(shape, "uint8"), tvm.runtime.empty(shape[:2], "float32")]
        ex.jit()["main"](*args)
        results[pipeline, "out"] = [a.numpy() for a in args[2:]]
    assert results["default"] > 0, "TVM's own pipeline no longer allocates per task: revisit the pass"
    assert results[stack_scratch.NAME] == 0
    for a, b in zip(results["default", "out"], results[stack_scratch.NAME, "out"]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("row,moved", [(256, True), (stack_scratch.MAX_BUFFER_BYTES // 4 + 16, False)])
def test_only_buffers_up_to_the_limit_move(row, moved, monkeypatch):
    ex, found = _compile_recording(_per_task_kernel(row), monkeypatch)
    assert bool(found) == moved
    assert (ex.mod.inspect_source("asm").count(WORKSPACE) == 0) == moved
    x = np.random.default_rng(1).integers(-1000, 1000, (16, row)).astype(np.int32)
    np.testing.assert_array_equal(_run(ex, x), _expected(x, 1))


def test_a_task_keeps_within_its_stack_budget(monkeypatch):
    """Three 24 KB buffers in one task: two fit the 64 KB budget, the third keeps the pool."""
    row = 24 * 1024 // 4
    ex, found = _compile_recording(_per_task_kernel(row, copies=3), monkeypatch)
    assert [size for _, size in found] == [row * 4] * 2
    assert sum(size for _, size in found) <= stack_scratch.MAX_TASK_BYTES
    x = np.random.default_rng(2).integers(-1000, 1000, (16, row)).astype(np.int32)
    np.testing.assert_array_equal(_run(ex, x), _expected(x, 3))


def test_buffers_outside_parallel_loops_stay(monkeypatch):
    """A serial kernel's intermediate is allocated once per call: not the pass's business."""
    x = te.placeholder((64, 64), "float32", name="x")
    mid = te.compute((64, 64), lambda i, j: x[i, j] * 2.0, name="mid")
    out = te.compute((64, 64), lambda i, j: mid[i, j] + 1.0, name="out")
    ex, found = _compile_recording(te.create_prim_func([x, out]), monkeypatch)
    assert found == []
    assert ex.mod.inspect_source("asm").count(WORKSPACE) > 0


def test_register_is_idempotent():
    assert stack_scratch.register() == stack_scratch.register() == stack_scratch.NAME
