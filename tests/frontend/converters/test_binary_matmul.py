"""Binary batch matmul (converters.binary_matmul): both operands DynamicSign outputs.

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
    make_model,
    ort_run,
    relax_func_names,
)


@pytest.mark.parametrize("transposed", [False, True])
def test_matmul_of_two_signs_is_batch_matmul(rng, transposed):
    b, h, length, dh = 2, 2, 5, 67
    if transposed:  # Q @ Transpose(sign(K)): K stored (B,h,L,dh)
        nodes = [ds("q", "tq", "sq"), ds("k", "tk", "sk"),
                 helper.make_node("Transpose", ["sk"], ["skt"], name="tr", perm=[0, 1, 3, 2]),
                 helper.make_node("MatMul", ["sq", "skt"], ["y"], name="qk")]
        kshape, tk = [b, h, length, dh], rng.standard_normal((b, 1, 1, dh)).astype(np.float32)
    else:  # Kᵀ already (B,h,dh,L)
        nodes = [ds("q", "tq", "sq"), ds("k", "tk", "sk"),
                 helper.make_node("MatMul", ["sq", "sk"], ["y"], name="qk")]
        kshape, tk = [b, h, dh, length], rng.standard_normal((b, 1, dh, 1)).astype(np.float32)
    nodes.append(helper.make_node("Mul", ["y", "alpha"], ["z"], name="scale"))
    inits = {"tq": rng.standard_normal((b, 1, 1, dh)).astype(np.float32), "tk": tk,
             "alpha": np.float32(dh ** -0.5)}
    model = make_model(nodes, {"q": [b, h, length, dh], "k": kshape}, {"z": None}, inits)
    mod, plan = import_model(model, batch=b)
    layer = plan.binary["qk"]
    assert layer.kind == "batch_matmul" and layer.b_transposed == transposed
    assert "qk" in plan.folded_scale
    assert any(n.startswith("bnn_bbmm_") for n in relax_func_names(mod))
    feeds = {"q": rng.standard_normal((b, h, length, dh)).astype(np.float32),
             "k": rng.standard_normal(kshape).astype(np.float32)}
    (y,), _ = build_and_run(model, feeds, batch=b)
    np.testing.assert_allclose(y, ort_run(model, feeds)[0], rtol=RTOL, atol=ATOL)

