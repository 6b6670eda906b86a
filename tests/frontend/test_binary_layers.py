"""Which Conv / Gemm / MatMul the graph proves binary (frontend.binary_layers), and why not.

Graphs are hand-built with onnx.helper; binary accumulators of ±1 data are exact integers, so
with a per-channel float scale the outputs agree with ONNX Runtime to float rounding of one
multiply: rtol 1e-6 / atol 1e-5."""

from __future__ import annotations

import numpy as np
from onnx import helper
from testkit.onnx_graphs import (
    check_against_ort,
    conv_model,
    ds,
    has_binary_kernel,
    import_model,
    int_inputs,
    make_model,
    pm1,
    relax_func_names,
)


def test_pm1_weights_without_sign_input_are_float(rng):
    model = conv_model(rng, pre="no_sign")
    mod, plan = import_model(model, batch=2)
    assert plan.binary == {}
    assert not has_binary_kernel(relax_func_names(mod))
    # zero padding of a non-±1 input: a binary lowering would be wrong here
    check_against_ort(model, rng.standard_normal((2, 5, 6, 7)).astype(np.float32))


def test_sign_of_relu_is_still_a_sign(rng):
    model = conv_model(rng, pre="relu")
    _, plan = import_model(model, batch=2)
    assert list(plan.binary) == ["conv"]
    check_against_ort(model, rng.standard_normal((2, 5, 6, 7)).astype(np.float32))


def test_weights_not_all_pm1_compile_as_float(rng):
    w = pm1(rng, (7, 5, 3, 3))
    w[3, 2, 1, 1] = 0.5
    model = conv_model(rng, weight=w)
    mod, plan = import_model(model, batch=2)
    assert plan.binary == {}
    assert not any(n.startswith("bnn_bconv2d_") for n in relax_func_names(mod))
    check_against_ort(model, int_inputs(rng, (2, 5, 6, 7)))


def test_matmul_sign_times_float_is_not_binary(rng):
    nodes = [ds("q", "zero", "sq"), helper.make_node("MatMul", ["sq", "k"], ["y"], name="qk")]
    model = make_model(nodes, {"q": [1, 4, 8], "k": [1, 8, 4]}, {"y": None}, {"zero": np.float32(0)})
    _, plan = import_model(model)
    assert plan.binary == {}

