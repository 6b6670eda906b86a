"""The frontend as a whole (frontend.from_onnx): switches, unknown ops named.

Graphs are hand-built with onnx.helper; binary accumulators of ±1 data are exact integers, so
with a per-channel float scale the outputs agree with ONNX Runtime to float rounding of one
multiply: rtol 1e-6 / atol 1e-5."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from testkit.onnx_graphs import (
    ATOL,
    RTOL,
    UNCONVERTIBLE,
    build_and_run,
    conv_model,
    import_model,
    int_inputs,
    relax_func_names,
)

from bnncompile.errors import UnsupportedModelError


def test_binary_kernels_off_is_float_and_equal(rng):
    model = conv_model(rng)
    mod, plan = import_model(model, batch=2, binary_kernels=False)
    assert plan.binary == {} and not any(n.startswith("bnn_bconv2d_") for n in relax_func_names(mod))
    x = int_inputs(rng, (2, 5, 6, 7))
    (y_bin,), _ = build_and_run(model, {"x": x}, batch=2)
    (y_flt,), _ = build_and_run(model, {"x": x}, batch=2, binary_kernels=False)
    np.testing.assert_allclose(y_bin, y_flt, rtol=RTOL, atol=ATOL)


def test_unknown_custom_op_names_node():
    node = helper.make_node("Mystery", ["x"], ["y"], domain="com.example", name="odd_node")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [1, 2])],
                              [helper.make_tensor_value_info("y", 1, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("com.example", 1)])
    with pytest.raises(UnsupportedModelError, match=r"odd_node.*com\.example::Mystery"):
        import_model(model)


def test_unconvertible_standard_op_names_node():
    node = helper.make_node(UNCONVERTIBLE, ["x"], ["y"], name="odd_std_op")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", 1, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(UnsupportedModelError, match=rf"odd_std_op.*{UNCONVERTIBLE}"):
        import_model(model)

