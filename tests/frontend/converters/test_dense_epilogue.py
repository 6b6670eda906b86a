"""The bias and residual Adds after a binary dense, in its epilogue (converters.dense_epilogue),
on hand-written token graphs ``DS(x) @ W [* a] [+ c] [+ r]``: what is fused, what is not, and the
outputs against ONNX Runtime (float rounding of the epilogue's multiply-adds)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from testkit.onnx_graphs import build_and_run, ds, make_model, ort_run, pm1

B, L, D, N = 2, 7, 65, 24


def _graph(rng, *, scale=True, bias=True, residual="input", keep=None):
    """``residual``: "input" (a graph input), "late" (computed after the dense), "broadcast"
    ([1, L, N]), or None."""
    inits = {"t": (rng.standard_normal((1, 1, D)) * 0.1).astype(np.float32), "w": pm1(rng, (D, N)),
             "a": (0.1 + rng.random(N)).astype(np.float32), "c": rng.standard_normal(N).astype(np.float32)}
    inputs = {"x": [B, L, D], "r0": [1 if residual == "broadcast" else B, L, N]}
    nodes = [ds("x", "t", "s"), helper.make_node("MatMul", ["s", "w"], ["y"], name="lin")]
    y = "y"
    if scale:
        nodes.append(helper.make_node("Mul", [y, "a"], ["ya"], name="scale"))
        y = "ya"
    if bias:
        nodes.append(helper.make_node("Add", [y, "c"], ["yc"], name="bias"))
        y = "yc"
    if residual == "input" or residual == "broadcast":
        nodes.append(helper.make_node("Add", ["r0", y], ["z"], name="residual"))
    elif residual == "late":  # the residual's producer comes after the dense in the graph
        nodes += [helper.make_node("Relu", ["r0"], ["r"], name="late_relu"),
                  helper.make_node("Add", [y, "r"], ["z"], name="residual")]
    else:
        nodes.append(helper.make_node("Identity", [y], ["z"]))
    outputs = {"z": None, **({keep: None} if keep else {})}
    model = make_model(nodes, inputs, outputs, inits)
    feeds = {"x": rng.standard_normal(inputs["x"]).astype(np.float32),
             "r0": rng.standard_normal(inputs["r0"]).astype(np.float32)}
    return model, feeds


def _check(model, feeds):
    outs, plan = build_and_run(model, feeds, batch=B)
    for got, expect in zip(outs, ort_run(model, feeds)):
        np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-5)
    return plan


@pytest.mark.parametrize("scale,bias,residual,fused,tag", [
    (True, True, "input", ("bias", "residual"), "_sbr_"),
    (False, True, "input", ("bias", "residual"), "_sbr_"),
    (True, False, "input", ("residual",), "_sr_"),
    (True, True, None, ("bias",), "_sb_"),
    (True, True, "late", ("bias",), "_sb_"),
    (True, True, "broadcast", ("bias",), "_sb_"),
], ids=["scale_bias_residual", "bias_residual", "scale_residual", "bias_only", "residual_after_the_dense",
        "residual_that_broadcasts"])
def test_what_the_epilogue_adds(scale, bias, residual, fused, tag, rng):
    plan = _check(*_graph(rng, scale=scale, bias=bias, residual=residual))
    tail = plan.dense_tails["lin"]
    assert tail.nodes == tuple(fused)
    assert (tail.bias is not None) == bias and (tail.residual is not None) == ("residual" in fused)
    assert any(tag in k for k in plan.kernels if "bdense" in k), sorted(plan.kernels)


@pytest.mark.parametrize("keep,fused", [("ya", ()), ("yc", ("bias",))], ids=["scaled", "biased"])
def test_a_value_read_elsewhere_ends_the_epilogue(keep, fused, rng):
    """A value that is also an output is written as such: the Adds after it stay."""
    plan = _check(*_graph(rng, keep=keep))
    assert (plan.dense_tails["lin"].nodes if "lin" in plan.dense_tails else ()) == fused


def test_two_denses_summed_fuse_into_the_later_one(rng):
    """``lin1(x1) * a1 + lin2(x2) * a2``: the first one's output is computed before the second
    dense, so it is the second's residual (the first cannot take the second's)."""
    inits = {"t": np.zeros((1, 1, D), np.float32), "w1": pm1(rng, (D, N)), "w2": pm1(rng, (D, N)),
             "a1": (0.1 + rng.random(N)).astype(np.float32), "a2": (0.1 + rng.random(N)).astype(np.float32)}
    nodes = [ds("x1", "t", "s1"), helper.make_node("MatMul", ["s1", "w1"], ["y1"], name="lin1"),
             helper.make_node("Mul", ["y1", "a1"], ["z1"], name="scale1"),
             ds("x2", "t", "s2"), helper.make_node("MatMul", ["s2", "w2"], ["y2"], name="lin2"),
             helper.make_node("Mul", ["y2", "a2"], ["z2"], name="scale2"),
             helper.make_node("Add", ["z1", "z2"], ["z"], name="sum")]
    model = make_model(nodes, {"x1": [B, L, D], "x2": [B, L, D]}, {"z": None}, inits)
    feeds = {k: rng.standard_normal((B, L, D)).astype(np.float32) for k in ("x1", "x2")}
    plan = _check(model, feeds)
    assert set(plan.dense_tails) == {"lin2"} and plan.dense_tails["lin2"].residual == "z1"


def test_a_gemm_bias_and_an_add_bias_become_one(rng):
    """``Gemm(s, W, C) + c + r``: the epilogue's bias is ``C + c`` (one rounding fewer)."""
    inits = {"t": np.zeros((1, D), np.float32), "w": pm1(rng, (N, D)),
             "C": rng.standard_normal(N).astype(np.float32), "c": rng.standard_normal(N).astype(np.float32)}
    nodes = [ds("x", "t", "s"), helper.make_node("Gemm", ["s", "w", "C"], ["y"], name="lin", transB=1),
             helper.make_node("Add", ["y", "c"], ["yc"], name="bias"),
             helper.make_node("Add", ["yc", "r"], ["z"], name="residual")]
    model = make_model(nodes, {"x": [B, D], "r": [B, N]}, {"z": None}, inits)
    feeds = {"x": rng.standard_normal((B, D)).astype(np.float32), "r": rng.standard_normal((B, N)).astype(np.float32)}
    plan = _check(model, feeds)
    assert plan.dense_tails["lin"].nodes == ("bias", "residual")
