"""The scale Mul after a binary layer (converters.folded_scale).

Graphs are hand-built with onnx.helper; binary accumulators of ±1 data are exact integers, so
with a per-channel float scale the outputs agree with ONNX Runtime to float rounding of one
multiply: rtol 1e-6 / atol 1e-5."""

from __future__ import annotations

import numpy as np
from onnx import helper
from testkit.onnx_graphs import (
    check_against_ort,
    conv_model,
    import_model,
    int_inputs,
)


def test_nonchannel_mul_is_not_folded(rng):
    # regression: FuseTIR once fused the kernel with this Mul ("Inconsistent buffers")
    # a Mul by a spatial map after a binary conv is not a per-channel scale: keep it float
    model = conv_model(rng, with_scale=False)
    model.graph.node.append(helper.make_node("Mul", ["y", "m"], ["z"], name="spatial"))
    from onnx import numpy_helper
    model.graph.initializer.append(numpy_helper.from_array(
        rng.standard_normal((1, 1, 6, 7)).astype(np.float32), "m"))
    model.graph.output[0].name = "z"
    _, plan = import_model(model, batch=2)
    assert "conv" in plan.binary and plan.folded_scale == {}
    check_against_ort(model, int_inputs(rng, (2, 5, 6, 7)))

