"""Index views (compute.index_view) against numpy's slicing / reshape / transpose, and the bit
packing that reads through one (make_bitpack_last(view=...)) against packing the copied tensor."""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from bnncompile.schedules import packing as pk
from bnncompile.schedules import reference as ref
from bnncompile.schedules.compute import IndexView
from bnncompile.schedules.compute.index_view import contiguous_run, view_shapes
from tvm import te

from bnncompile import schedules as S

#: (source shape, steps): attention's head split of a qkv tensor for Q, for K^T taken back, the
#: heads merged again, a strided slice, and reshapes that regroup several axes at once
VIEWS = [
    ((1, 10, 24), [("slice", (2,), (8,), (1,), (8,)), ("reshape", (1, 10, 2, 4)), ("permute", (0, 2, 1, 3))]),
    ((2, 6, 24), [("slice", (2,), (16,), (1,), (8,)), ("reshape", (2, 6, 2, 4)), ("permute", (0, 2, 3, 1)),
                  ("permute", (0, 1, 3, 2))]),
    ((1, 3, 5, 4), [("permute", (0, 2, 1, 3)), ("reshape", (1, 5, 12))]),
    ((3, 9, 7), [("slice", (1, 2), (1, 0), (2, 3), (4, 3)), ("permute", (2, 0, 1))]),
    ((2, 3, 4, 5), [("reshape", (6, 20)), ("permute", (1, 0)), ("reshape", (4, 5, 3, 2))]),
    ((4, 6), [("reshape", (2, 2, 6)), ("reshape", (2, 12)), ("reshape", (24, 1)), ("permute", (1, 0))]),
]


def _numpy(x, steps):
    for step in steps:
        if step[0] == "slice":
            _, axes, begins, strides, sizes = step
            idx = [slice(None)] * x.ndim
            for a, b, s, n in zip(axes, begins, strides, sizes):
                idx[a] = slice(b, b + (n - 1) * s + 1, s)
            x = x[tuple(idx)]
        elif step[0] == "reshape":
            x = x.reshape(step[1])
        else:
            x = x.transpose(step[1])
    return x


@pytest.mark.parametrize("src_shape,steps", VIEWS, ids=[f"view{i}" for i in range(len(VIEWS))])
def test_view_reads_what_numpy_moves(src_shape, steps, rng):
    src = te.placeholder(src_shape, "float32", name="src")
    view = IndexView(src, steps)
    out = te.compute(view.shape, lambda *i: view(*i), name="out")
    f = tvm.compile(te.create_prim_func([src, out]), target="llvm")
    x = rng.standard_normal(src_shape).astype(np.float32)
    expect = _numpy(x, steps)
    y = tvm.runtime.tensor(np.zeros(expect.shape, np.float32))
    f(tvm.runtime.tensor(x), y)
    assert list(expect.shape) == view.shape == view_shapes(src_shape, steps)[-1]
    np.testing.assert_array_equal(y.numpy(), expect)


@pytest.mark.parametrize("bad", [
    [("slice", (1,), (8,), (1,), (3,))],  # past the end
    [("reshape", (7, 10))],
    [("permute", (0, 0, 1))],
])
def test_bad_views_are_refused(bad):
    with pytest.raises(ValueError, match="index view"):
        view_shapes((2, 10, 3), bad)


def _brute_run(src_shape, steps) -> int:
    """contiguous_run's definition, checked chunk by chunk."""
    offsets = _numpy(np.arange(int(np.prod(src_shape))).reshape(src_shape), steps)
    rows = offsets.reshape(-1, offsets.shape[-1])
    width = rows.shape[1]
    for r in range(width, 0, -1):
        chunks = rows.reshape(rows.shape[0], width // r, r) if width % r == 0 else None
        if chunks is not None and (np.diff(chunks, axis=2) == 1).all():
            return r
    raise AssertionError("unreachable: r = 1 always holds")


@pytest.mark.parametrize("src_shape,steps,run", [
    ((2, 5, 24), [], 24),
    ((1, 10, 24), [("slice", (2,), (8,), (1,), (8,))], 8),  # Q of a qkv tensor
    ((1, 10, 24), [("slice", (2,), (1,), (2,), (12,))], 1),  # every other channel
    ((4, 7, 16), [("permute", (1, 0, 2)), ("reshape", (1, 7, 64))], 16),  # heads merged
    ((1, 3, 5, 4), [("permute", (0, 2, 1, 3)), ("reshape", (1, 5, 12))], 4),
    ((4, 6), [("reshape", (2, 2, 6)), ("reshape", (2, 12)), ("reshape", (24, 1)), ("permute", (1, 0))], 24),
], ids=["plain", "slice", "strided", "heads", "heads4", "flat"])
def test_contiguous_run(src_shape, steps, run):
    assert contiguous_run(src_shape, steps) == run == _brute_run(src_shape, steps)


@pytest.mark.parametrize("src_shape,steps", VIEWS, ids=[f"view{i}" for i in range(len(VIEWS))])
def test_contiguous_run_of_every_view(src_shape, steps):
    assert contiguous_run(src_shape, steps) == _brute_run(src_shape, steps)


@pytest.mark.parametrize("sched", ["cpu", "x86", "arm_cpu"])
@pytest.mark.parametrize("src_shape,steps", [
    ((1, 9, 96), [("slice", (2,), (32,), (1,), (32,))]),
    ((4, 9, 16), [("permute", (1, 0, 2)), ("reshape", (1, 9, 64))]),
], ids=["k_slice", "heads_merged"])
def test_token_threshold_through_a_view(src_shape, steps, sched, host, run_primfunc, rng):
    """DyBinaryCCT's K threshold pools its slice of qkv, the projection's its merged heads:
    read where they lie, the result is the copied tensor's."""
    x = rng.standard_normal(src_shape).astype(np.float32)
    view = _numpy(x, steps)
    n, _, d = view.shape
    w1, b1 = rng.standard_normal((5, d)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    w2, b2 = rng.standard_normal((d, 5)).astype(np.float32), rng.standard_normal(d).astype(np.float32)
    pf = S.make_token_threshold(view.shape, 5, view=(src_shape, steps), target=host, schedule=sched)
    got = run_primfunc(pf, [x, np.ascontiguousarray(w1.T), b1, np.ascontiguousarray(w2.T), b2], (n, d), "float32")
    np.testing.assert_allclose(got, ref.token_threshold_ref(view, w1, b1, w2, b2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sched", ["cpu", "x86", "arm_cpu"])
@pytest.mark.parametrize("src_shape,steps,t_shape", [
    ((1, 9, 384), [("slice", (2,), (128,), (1,), (128,)), ("reshape", (1, 9, 2, 64)), ("permute", (0, 2, 1, 3))],
     (1, 2, 1, 64)),
    ((2, 3, 5, 65), [("permute", (0, 2, 1, 3)), ("reshape", (2, 5, 195))], (1, 1, 195)),
], ids=["head_split", "head_merge"])
def test_bitpack_last_through_a_view(src_shape, steps, t_shape, sched, host, run_primfunc, rng):
    x = rng.standard_normal(src_shape).astype(np.float32)
    t = (rng.standard_normal(t_shape) * 0.3).astype(np.float32)
    view = _numpy(x, steps)
    pf = S.make_bitpack_last(view.shape, t_shape, host, view=(src_shape, steps), schedule=sched)
    expect = ref.bitpack_last_ref(view, t)
    got = run_primfunc(pf, [x, t], expect.shape, "uint64")
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(got, pk.pack_bits(np.where(view >= t, 1.0, -1.0).astype(np.float32)))


@pytest.mark.parametrize("sched", ["cpu", "x86", "arm_cpu"])
def test_quantize_columns_through_a_view(sched, host, run_primfunc_outs, rng):
    """Attention's values read from the qkv tensor in place: the same bytes and peaks as the
    columns of the copied, transposed values."""
    src_shape, heads, d, tokens = (1, 13, 3 * 2 * 16), 2, 16, 13
    steps = [("slice", (2,), (64,), (1,), (32,)), ("reshape", (1, tokens, heads, d)),
             ("permute", (0, 2, 1, 3)), ("reshape", (heads, tokens, d))]
    x = (rng.standard_normal(src_shape) * 2).astype(np.float32)
    v = _numpy(x, steps)
    expect_q, expect_max = ref.quantize_columns_ref(np.ascontiguousarray(v))
    pf = S.make_quantize_columns(v.shape, view=(src_shape, steps), target=host, schedule=sched)
    q, vmax = run_primfunc_outs(pf, [x], [(expect_q.shape, "int8"), (expect_max.shape, "float32")])
    np.testing.assert_array_equal(vmax, expect_max)
    np.testing.assert_array_equal(q, expect_q)


@pytest.mark.parametrize("target", [
    {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]},
    {"kind": "cuda", "arch": "sm_80"},
], ids=["aarch64", "cuda"])
def test_view_kernels_build_for_other_targets(target):
    """The views add no block of their own: every target's schedule applies as it is."""
    src_shape, steps = VIEWS[0]
    view = view_shapes(src_shape, steps)[-1]
    tgt = tvm.target.Target(target, host={"kind": "llvm"}) if target["kind"] == "cuda" else tvm.target.Target(target)
    funcs = [S.make_bitpack_last(view, (1, 1, 1, view[-1]), tgt, view=(src_shape, steps))]
    if target["kind"] != "cuda":  # the int8 attention product is a CPU feature
        funcs.append(S.make_quantize_columns([2, 10, 4], view=(src_shape, [*steps[:2], ("reshape", (2, 10, 4))]),
                                             target=tgt))
    for pf in funcs:
        tvm.compile(pf, target=tgt)
