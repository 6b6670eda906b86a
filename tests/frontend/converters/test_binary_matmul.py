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
    int_inputs,
    make_model,
    ort_run,
    pm1,
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



def _attention(rng, *, heads: int, tokens: int = 17, batch: int = 2, d_model: int = 32):
    """Token attention as a user writes it by hand: binary q/k projections (DynamicSign → ±1
    MatMul), then ``DS(q) @ Transpose(DS(k))`` (3-D, or 4-D after a Reshape + Transpose into
    heads), a 1/sqrt(d) Mul, softmax and a float ``attn @ v``."""
    d = d_model // heads
    inits = {"wq": pm1(rng, (d_model, d_model)), "wk": pm1(rng, (d_model, d_model)),
             "wv": rng.standard_normal((d_model, d_model)).astype(np.float32),
             "t": rng.integers(-1, 2, (1, 1, d_model)).astype(np.float32),
             "alpha": np.float32(d ** -0.5)}
    nodes = [ds("x", "t", "sx", name="sign_x"),
             helper.make_node("MatMul", ["sx", "wq"], ["q"], name="proj_q"),
             helper.make_node("MatMul", ["sx", "wk"], ["k"], name="proj_k"),
             helper.make_node("MatMul", ["x", "wv"], ["v"], name="proj_v")]
    if heads == 1:
        nodes += [ds("q", None, "sq", name="sign_q"), ds("k", None, "sk", name="sign_k"),
                  helper.make_node("Transpose", ["sk"], ["skt"], name="k_t", perm=[0, 2, 1]),
                  helper.make_node("MatMul", ["sq", "skt"], ["s"], name="qk")]
        att_v = [helper.make_node("MatMul", ["p", "v"], ["y"], name="pv")]
    else:
        inits["heads"] = np.array([batch, tokens, heads, d], np.int64)
        inits["merge"] = np.array([batch, tokens, d_model], np.int64)
        for name in ("q", "k", "v"):
            nodes += [helper.make_node("Reshape", [name, "heads"], [f"{name}4"], name=f"split_{name}"),
                      helper.make_node("Transpose", [f"{name}4"], [f"{name}h"], name=f"heads_{name}",
                                       perm=[0, 2, 1, 3])]
        nodes += [ds("qh", None, "sq", name="sign_q"), ds("kh", None, "sk", name="sign_k"),
                  helper.make_node("Transpose", ["sk"], ["skt"], name="k_t", perm=[0, 1, 3, 2]),
                  helper.make_node("MatMul", ["sq", "skt"], ["s"], name="qk")]
        att_v = [helper.make_node("MatMul", ["p", "vh"], ["yh"], name="pv"),
                 helper.make_node("Transpose", ["yh"], ["y4"], name="unheads", perm=[0, 2, 1, 3]),
                 helper.make_node("Reshape", ["y4", "merge"], ["y"], name="merge_heads")]
    nodes += [helper.make_node("Mul", ["s", "alpha"], ["ss"], name="scale"),
              helper.make_node("Softmax", ["ss"], ["p"], name="softmax", axis=-1), *att_v]
    model = make_model(nodes, {"x": [batch, tokens, d_model]}, {"y": None, "s": None}, inits)
    return model, {"x": rng.integers(-2, 3, (batch, tokens, d_model)).astype(np.float32)}


@pytest.mark.parametrize("heads", [1, 4], ids=["single-head-3d", "multi-head-4d"])
def test_hand_written_attention_regression(heads, rng):
    """Both compiled without a word and returned wrong scores (max error 0.36 / 1.4) before the
    odd-N batch-matmul schedule fix; the scores are integers here, so they must be exact."""
    model, feeds = _attention(rng, heads=heads)
    (y, s), plan = build_and_run(model, feeds, batch=2)
    assert plan.binary["qk"].kind == "batch_matmul" and plan.binary["qk"].b_transposed
    assert plan.binary["proj_q"].kind == plan.binary["proj_k"].kind == "dense"
    y_ref, s_ref = ort_run(model, feeds)
    np.testing.assert_array_equal(s, s_ref)  # raw scores: integer accumulators
    np.testing.assert_allclose(y, y_ref, rtol=RTOL, atol=ATOL * 10)  # softmax: fast exp ~1e-6


def test_broadcast_batch_dims(rng):
    """``DS(a)[M, K] @ DS(b)[2, K, N]``: numpy batch broadcasting (was refused)."""
    nodes = [ds("a", None, "sa"), ds("b", None, "sb"),
             helper.make_node("MatMul", ["sa", "sb"], ["y"], name="mm")]
    model = make_model(nodes, {"a": [5, 65], "b": [2, 65, 9]}, {"y": None})
    feeds = {"a": int_inputs(rng, (5, 65)), "b": int_inputs(rng, (2, 65, 9))}
    (y,), plan = build_and_run(model, feeds)
    assert plan.binary["mm"].kind == "batch_matmul"
    np.testing.assert_array_equal(y, ort_run(model, feeds)[0])
