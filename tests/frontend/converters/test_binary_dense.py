"""Binary dense layers (converters.binary_dense): Gemm / MatMul with ±1 weights.

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
    build_and_run,
    ds,
    import_model,
    int_inputs,
    make_model,
    ort_run,
    pm1,
    relax_func_names,
)


@pytest.mark.parametrize("op,d,n", [("gemm", 70, 9), ("gemm_transB", 70, 9), ("matmul", 70, 9),
                                    ("gemm_transB", 65, 65), ("gemm_nobias_transB", 66, 66)])
def test_dense_is_binary(rng, op, d, n):
    """K not a multiple of 64; square transB weights would hide a wrong transpose by shape."""
    w = pm1(rng, (n, d))
    inits = {"t": rng.integers(-1, 2, size=(1, d)).astype(np.float32)}
    if op == "gemm":
        inits["w"], inits["c"] = w.T.copy(), rng.standard_normal(n).astype(np.float32)
        mm = helper.make_node("Gemm", ["s", "w", "c"], ["y"], name="lin")
    elif op == "gemm_nobias_transB":
        inits["w"] = w
        mm = helper.make_node("Gemm", ["s", "w"], ["y"], name="lin", transB=1)
    elif op == "gemm_transB":
        inits["w"], inits["c"] = w, rng.standard_normal(n).astype(np.float32)
        mm = helper.make_node("Gemm", ["s", "w", "c"], ["y"], name="lin", transB=1)
    else:
        inits["w"] = w.T.copy()
        mm = helper.make_node("MatMul", ["s", "w"], ["y"], name="lin")
    inits["a"] = (rng.random(n) - 0.5).astype(np.float32)
    nodes = [ds("x", "t", "s"), mm, helper.make_node("Mul", ["y", "a"], ["z"], name="scale")]
    model = make_model(nodes, {"x": [3, d]}, {"z": None}, inits)
    mod, plan = import_model(model, batch=3)
    assert plan.binary["lin"].kind == "dense" and "lin" in plan.folded_scale
    names = relax_func_names(mod)
    assert any(x.startswith("bnn_bdense_") for x in names) and any(x.startswith("bnn_bitpack_last_") for x in names)
    x = int_inputs(rng, (3, d))
    (y,), _ = build_and_run(model, {"x": x}, batch=3)
    np.testing.assert_allclose(y, ort_run(model, {"x": x})[0], rtol=RTOL, atol=ATOL)


def test_token_matmul_is_binary(rng):
    b, length, d, n = 2, 5, 65, 6
    inits = {"t": rng.standard_normal((b, 1, d)).astype(np.float32), "w": pm1(rng, (d, n))}
    nodes = [ds("x", "t", "s"), helper.make_node("MatMul", ["s", "w"], ["y"], name="lin")]
    model = make_model(nodes, {"x": [b, length, d]}, {"y": None}, inits)
    _, plan = import_model(model, batch=b)
    assert plan.binary["lin"].kind == "dense"
    x = rng.standard_normal((b, length, d)).astype(np.float32)
    (y,), _ = build_and_run(model, {"x": x}, batch=b)
    np.testing.assert_array_equal(y, ort_run(model, {"x": x})[0])



@pytest.mark.parametrize("alpha,beta,bias_shape", [(0.5, 2.0, (7,)), (-1.5, 1.0, (1, 7)), (1.0, 0.0, (7,)),
                                                   (0.37, -0.25, ())])
def test_gemm_alpha_beta_fold_into_the_epilogue(alpha, beta, bias_shape, rng):
    """A standard Gemm (transB=1, alpha, beta, C) with a binary input: alpha scales the integer
    sum and beta * C becomes the bias (was refused with "Gemm alpha/beta != 1")."""
    nodes = [ds("x", None, "s"),
             helper.make_node("Gemm", ["s", "w", "c"], ["y"], name="fc", transB=1, alpha=alpha, beta=beta)]
    inits = {"w": pm1(rng, (7, 65)), "c": rng.standard_normal(bias_shape).astype(np.float32)}
    model = make_model(nodes, {"x": [3, 65]}, {"y": None}, inits)
    feeds = {"x": int_inputs(rng, (3, 65))}
    (y,), plan = build_and_run(model, feeds, batch=3)
    assert plan.binary["fc"].kind == "dense"
    np.testing.assert_allclose(y, ort_run(model, feeds)[0], rtol=RTOL, atol=ATOL)
