"""Threshold statistics (converters.statistics): power means and the fused dynamic PReLU.

Graphs are hand-built with onnx.helper; binary accumulators of ±1 data are exact integers, so
with a per-channel float scale the outputs agree with ONNX Runtime to float rounding of one
multiply: rtol 1e-6 / atol 1e-5."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from testkit.onnx_graphs import (
    build_and_run,
    make_model,
    ort_run,
)


@pytest.mark.parametrize("form", ["cube", "cube_swapped", "square", "square_used_twice"])
def test_power_mean_is_one_reduction(rng, form):
    """INSTA's E[x³] / E[x²] over H, W: one pass over x, not x³ written out and read back."""
    axes = np.array([2, 3], np.int64)
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"], name="sq")]
    if form == "cube":
        nodes.append(helper.make_node("Mul", ["sq", "x"], ["p"], name="cube"))
    elif form == "cube_swapped":
        nodes.append(helper.make_node("Mul", ["x", "sq"], ["p"], name="cube"))
    nodes.append(helper.make_node("ReduceMean", ["sq" if form.startswith("square") else "p", "axes"],
                                  ["m"], name="mean", keepdims=1))
    outputs = {"m": None}
    if form == "square_used_twice":  # x*x is also an output: it must stay, no rewrite
        outputs["sq"] = None
    model = make_model(nodes, {"x": [2, 5, 6, 7]}, outputs, {"axes": axes})
    x = rng.standard_normal((2, 5, 6, 7)).astype(np.float32)
    outs, plan = build_and_run(model, {"x": x}, batch=2)
    for got, ref in zip(outs, ort_run(model, {"x": x})):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # x*x kept as an output: a plain mean of it (power 1), no rewrite of the Mul
    expect = ("sq", 1, True) if form == "square_used_twice" else ("x", 2 if form == "square" else 3, True)
    assert plan.power_means == {"mean": expect}


@pytest.mark.parametrize("hw,keepdims", [((8, 8), 1), ((8, 8), 0), ((7, 7), 1), ((4, 16), 1)],
                         ids=["flat_keep", "flat_squeeze", "rows_7x7", "rows_w16"])
def test_hw_mean_is_one_reduction(rng, hw, keepdims):
    """A plain ReduceMean over H, W (the thresholds' pools) runs as one reduction kernel, over the
    flattened H*W row where W is no multiple of 16 but H*W is."""
    node = helper.make_node("ReduceMean", ["x", "axes"], ["m"], name="pool", keepdims=keepdims)
    model = make_model([node], {"x": [2, 5, *hw]}, {"m": None}, {"axes": np.array([2, 3], np.int64)})
    x = rng.standard_normal((2, 5, *hw)).astype(np.float32)
    (got,), plan = build_and_run(model, {"x": x}, batch=2)
    np.testing.assert_allclose(got, ort_run(model, {"x": x})[0], rtol=1e-5, atol=1e-6)
    assert plan.power_means == {"pool": ("x", 1, bool(keepdims))}


def _dynamic_prelu(shift_shape, *, extra_use: bool = False, cube: bool = False):
    """y = Where(d >= 0, d, slope * d) + s_out, d = x - s_in (DyBNN's DPReLU as exported), its
    H, W mean (and INSTA's E[y^3] with ``cube``), and y itself as outputs."""
    nodes = [helper.make_node("Sub", ["x", "s_in"], ["d"], name="sub"),
             helper.make_node("GreaterOrEqual", ["d", "zero"], ["ge"], name="ge"),
             helper.make_node("Mul", ["slope", "d"], ["m"], name="mul"),
             helper.make_node("Where", ["ge", "d", "m"], ["w"], name="where"),
             helper.make_node("Add", ["w", "s_out"], ["y"], name="prelu_out"),
             helper.make_node("ReduceMean", ["y", "axes"], ["mean"], name="pool", keepdims=1)]
    outputs = {"y": None, "mean": None}
    if cube:
        nodes += [helper.make_node("Mul", ["y", "y"], ["y2"], name="sq"),
                  helper.make_node("Mul", ["y2", "y"], ["y3"], name="cube"),
                  helper.make_node("ReduceMean", ["y3", "axes"], ["m3"], name="pool3", keepdims=0)]
        outputs["m3"] = None
    if extra_use:  # d is also read elsewhere: it must stay, no fusion
        nodes.append(helper.make_node("Neg", ["d"], ["nd"], name="neg"))
        outputs["nd"] = None
    inits = {"zero": np.array(0.0, np.float32), "axes": np.array([2, 3], np.int64),
             "slope": np.array([0.25, -0.5, 1.0, 0.1], np.float32).reshape(1, 4, 1, 1)}
    return make_model(nodes, {"x": [2, 4, 7, 8], "s_in": shift_shape, "s_out": shift_shape}, outputs, inits)


@pytest.mark.parametrize("shift_shape,cube,fused", [
    ([2, 4, 1, 1], False, True),   # per sample and channel (DyBNN)
    ([1, 4, 1, 1], True, True),    # per channel, E[y] and E[y^3] from one kernel (INSTA)
    ([2, 4, 7, 1], False, False),  # varies over H: imported as it is
], ids=["dybnn", "insta_cube", "h_varying_shift"])
def test_dynamic_prelu_computes_its_pools(rng, shift_shape, cube, fused):
    model = _dynamic_prelu(shift_shape, cube=cube)
    x = rng.standard_normal((2, 4, 7, 8)).astype(np.float32)
    feeds = {"x": x, "s_in": rng.standard_normal(shift_shape).astype(np.float32),
             "s_out": rng.standard_normal(shift_shape).astype(np.float32)}
    x[0, 0, 0, :3] = feeds["s_in"].reshape(-1)[0]  # d == 0 exactly: the tie of the >= test
    outs, plan = build_and_run(model, feeds, batch=2)
    ref = ort_run(model, feeds)
    np.testing.assert_array_equal(outs[0], ref[0])  # y bit-identical
    for got, want in zip(outs[1:], ref[1:]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert list(plan.prelu_stats) == ["prelu_out"]  # planned structurally, shapes checked at import
    kernels = [v for v in plan.kernels.values() if v["kind"] == "prelu_stats"]
    assert len(kernels) == (1 if fused else 0)
    if fused:  # the sidecar says what the kernel replaced: the PReLU's nodes and the pools
        assert kernels[0]["layers"] == ["prelu_out"]
        assert set(kernels[0]["fused"]) == {"sub", "ge", "mul", "where", "pool"} | ({"pool3"} if cube else set())


def test_dynamic_prelu_with_shared_intermediate_is_not_fused(rng):
    model = _dynamic_prelu([2, 4, 1, 1], extra_use=True)
    feeds = {"x": rng.standard_normal((2, 4, 7, 8)).astype(np.float32),
             "s_in": rng.standard_normal((2, 4, 1, 1)).astype(np.float32),
             "s_out": rng.standard_normal((2, 4, 1, 1)).astype(np.float32)}
    outs, plan = build_and_run(model, feeds, batch=2)
    for got, want in zip(outs, ort_run(model, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert plan.prelu_stats == {}


def test_dynamic_prelu_fusion_follows_the_epilogue_switch(rng):
    model = _dynamic_prelu([2, 4, 1, 1])
    feeds = {"x": rng.standard_normal((2, 4, 7, 8)).astype(np.float32),
             "s_in": rng.standard_normal((2, 4, 1, 1)).astype(np.float32),
             "s_out": rng.standard_normal((2, 4, 1, 1)).astype(np.float32)}
    _, plan = build_and_run(model, feeds, batch=2, fuse_epilogues=False)
    assert plan.prelu_stats == {}

