"""Float convs with constant weights (converters.float_conv).

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


@pytest.mark.parametrize("conv_out_is_output", [False, True], ids=["stem", "conv_output_kept"])
def test_stem_conv_feeds_its_pool_channel_blocks(rng, conv_out_is_output):
    """Conv → MaxPool (a ResNet stem): the conv writes NCHWc and the pool reads it, unless the
    conv's output is needed as it is."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="stem", kernel_shape=[7, 7],
                              strides=[2, 2], pads=[3, 3, 3, 3]),
             helper.make_node("MaxPool", ["c"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1])]
    outputs = {"y": None, **({"c": None} if conv_out_is_output else {})}
    model = make_model(nodes, {"x": [1, 3, 30, 28]}, outputs,
                       {"w": rng.standard_normal((32, 3, 7, 7)).astype(np.float32),
                        "b": rng.standard_normal(32).astype(np.float32)})
    x = rng.standard_normal((1, 3, 30, 28)).astype(np.float32)
    outs, plan = build_and_run(model, {"x": x})
    for got, want in zip(outs, ort_run(model, {"x": x})):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert plan.pooled_float_convs == (set() if conv_out_is_output else {"stem"})
    blocked = [k for k in plan.kernels if k.startswith("bnn_fconv2d") and "_c_" in k]
    assert len(blocked) == (0 if conv_out_is_output else 1)

