"""DynamicSign's converter (custom_ops.dynamic_sign.Converter): float ±1 for float consumers,
one pack shared by binary ones.

Graphs are hand-built with onnx.helper; binary accumulators of ±1 data are exact integers, so
with a per-channel float scale the outputs agree with ONNX Runtime to float rounding of one
multiply: rtol 1e-6 / atol 1e-5."""

from __future__ import annotations

import numpy as np
from onnx import helper
from testkit.onnx_graphs import (
    build_and_run,
    ds,
    has_binary_kernel,
    import_model,
    int_inputs,
    make_model,
    ort_run,
    pm1,
    relax_func_names,
)


def test_sign_with_float_consumer_is_float_pm1(rng):
    # DynamicSign → Add (float): the float ±1 tensor must exist and be exact (ties → +1)
    nodes = [ds("x", "t", "s"), helper.make_node("Add", ["s", "b"], ["y"], name="add")]
    t = np.array([[[0.0, 1.0, -1.0, 2.0]]], np.float32)
    model = make_model(nodes, {"x": [2, 3, 4]}, {"y": None}, {"t": t, "b": np.float32(0.5)})
    mod, plan = import_model(model, batch=2)
    assert plan.binary == {}
    assert not has_binary_kernel(relax_func_names(mod))
    x = int_inputs(rng, (2, 3, 4))
    (y,), _ = build_and_run(model, {"x": x}, batch=2)
    np.testing.assert_array_equal(y, np.where(x >= t, 1.0, -1.0) + 0.5)
    np.testing.assert_array_equal(y, ort_run(model, {"x": x})[0])


def test_sign_with_binary_and_float_consumers(rng):
    # the same DynamicSign feeds a binary conv and a float ReduceSum
    c = 4
    nodes = [ds("x", "zero", "s"),
             helper.make_node("Conv", ["s", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("ReduceSum", ["s"], ["r"], name="rsum", keepdims=0)]
    model = make_model(nodes, {"x": [1, c, 5, 5]}, {"y": None, "r": None},
                       {"w": pm1(rng, (3, c, 3, 3)), "zero": np.float32(0)})
    _, plan = import_model(model)
    assert list(plan.binary) == ["conv"] and plan.folded_scale == {}
    x = int_inputs(rng, (1, c, 5, 5))
    outs, _ = build_and_run(model, {"x": x})
    for a, b in zip(outs, ort_run(model, {"x": x})):
        np.testing.assert_array_equal(a, b)  # no scale: exact integers

