"""Pooling kernels (converters.pooling).

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


@pytest.mark.parametrize("attrs", [dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
                                   dict(kernel_shape=[2, 3], strides=[1, 2], pads=[0, 1, 1, 0])])
def test_max_pool_uses_the_separable_kernel(rng, attrs):
    node = helper.make_node("MaxPool", ["x"], ["y"], name="pool", **attrs)
    model = make_model([node], {"x": [2, 3, 9, 10]}, {"y": None})
    x = rng.standard_normal((2, 3, 9, 10)).astype(np.float32)
    (y,), plan = build_and_run(model, {"x": x}, batch=2)
    np.testing.assert_array_equal(y, ort_run(model, {"x": x})[0])
    assert plan.max_pools == {"pool"}
    assert [v["kind"] for v in plan.kernels.values()] == ["maxpool2d"]


def test_max_pool_with_ceil_mode_stays_with_tvm(rng):
    node = helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2],
                            ceil_mode=1)
    model = make_model([node], {"x": [1, 2, 8, 8]}, {"y": None})
    x = rng.standard_normal((1, 2, 8, 8)).astype(np.float32)
    (y,), plan = build_and_run(model, {"x": x})
    np.testing.assert_array_equal(y, ort_run(model, {"x": x})[0])
    assert not plan.max_pools


@pytest.mark.parametrize("attrs,ours", [
    (dict(kernel_shape=[2, 2], strides=[2, 2]), True),             # the downsampling shortcut
    (dict(kernel_shape=[3, 2], strides=[3, 2]), True),
    (dict(kernel_shape=[2, 2], strides=[1, 1]), False),            # overlapping windows: TVM's
    (dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1]), False),
], ids=["2x2", "3x2", "overlap", "padded"])
def test_avg_pool_with_tiling_windows_uses_the_kernel(rng, attrs, ours):
    node = helper.make_node("AveragePool", ["x"], ["y"], name="pool", **attrs)
    model = make_model([node], {"x": [2, 3, 12, 10]}, {"y": None})
    x = rng.standard_normal((2, 3, 12, 10)).astype(np.float32)
    (y,), plan = build_and_run(model, {"x": x}, batch=2)
    np.testing.assert_allclose(y, ort_run(model, {"x": x})[0], rtol=1e-6, atol=1e-6)
    assert (plan.avg_pools == {"pool"}) == ours
    assert [v["kind"] for v in plan.kernels.values()] == (["avgpool2d"] if ours else [])

