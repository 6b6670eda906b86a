"""ONNX ``Sign`` (frontend.canonicalize.sign): a constant's is folded; an activation's becomes
DynamicSign, reported as a sign(0) site (or refused with ``sign_zero="refuse"``)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from bnncompile.custom_ops.dynamic_sign import is_dynamic_sign
from onnx import helper
from testkit.onnx_graphs import build_and_run, make_model, ort_run, pm1

from bnncompile.errors import UnsupportedModelError, UsageError
from bnncompile.frontend import prepare
from bnncompile.frontend.canonicalize import canonicalize, sign_zero_sites, via


def _model(rng, *, weight_sign=True):
    """Sign(x) → Conv(·, Sign(W)) (TorchScript's torch.sign STE and sign weight)."""
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Sign", ["x"], ["s"], name="act_sign")]
    if weight_sign:
        nodes.append(helper.make_node("Sign", ["w"], ["ws"], name="w_sign"))
    nodes.append(
        helper.make_node(
            "Conv", ["s", "ws" if weight_sign else "w"], ["y"], name="conv", pads=[1, 1, 1, 1]
        )
    )
    return make_model(nodes, {"x": [2, 4, 5, 5]}, {"y": None}, {"w": w})


def test_sign_becomes_dynamic_sign_and_is_reported(rng):
    model = _model(rng)
    canonical = prepare(model)
    signs = [n for n in canonical.graph.node if is_dynamic_sign(n)]
    assert [n.name for n in signs] == ["act_sign"] and "Sign" in via(signs[0])
    assert not any(n.op_type == "Sign" for n in canonical.graph.node)  # the weight's folded too
    (site,) = sign_zero_sites(canonical)
    assert (site.node, site.input, site.sign) == ("act_sign", "x", "act_sign")
    assert site.message() == (
        "node 'act_sign': Sign maps 0 to 0; compiled as 0 -> +1: results "
        "differ where this input is exactly 0"
    )
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)  # no exact zeros
    (y,), plan = build_and_run(model, {"x": x}, batch=2)
    assert plan.binary["conv"].kind == "conv"
    np.testing.assert_allclose(y, ort_run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_zeros_differ_exactly_where_the_input_is_zero(rng):
    model = _model(rng)
    canonical = prepare(model)
    x = rng.integers(-1, 2, (2, 4, 5, 5)).astype(np.float32)
    before = ort_run(model, {"x": x})[0]
    after = ort_run(canonical, {"x": x})[0]
    x_pm = np.where(x == 0, 1.0, x).astype(np.float32)  # what the compiled model binarizes
    np.testing.assert_allclose(after, ort_run(model, {"x": x_pm})[0], rtol=1e-6, atol=1e-5)
    assert np.abs(before - after).max() > 0


def test_canonicalize_returns_the_sites(rng):
    model = _model(rng)
    result = canonicalize(model)
    assert result == 2 and int(result) == 2  # still the rewrite count (two Signs) for older callers
    assert [s.node for s in result.sign_zero_sites] == ["act_sign"]


def test_refuse_names_the_node_and_leaves_the_model(rng):
    model = _model(rng)
    before = model.SerializeToString()
    with pytest.raises(UnsupportedModelError, match=r"'act_sign' \(ai.onnx::Sign\).*0 to 0"):
        canonicalize(model, sign_zero="refuse")
    assert model.SerializeToString() == before
    with pytest.raises(UsageError):
        canonicalize(model, sign_zero="zero")


def test_sign_of_constant_folds_exactly(rng):
    """A weight with an exact zero folds to 0 there: the layer then is not binary (reason given)."""
    model = _model(rng)
    w = onnx.numpy_helper.to_array(model.graph.initializer[0]).copy()
    w[0, 0, 0, 0] = 0.0
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w, "w"))
    canonical = prepare(model)
    from bnncompile.frontend.binary_layers import layer_report

    assert layer_report(canonical)["conv"] == "no (weight is not exactly ±1)"
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(ort_run(canonical, {"x": x})[0], ort_run(model, {"x": x})[0])


def test_pm1_weight_without_sign_is_untouched(rng):
    model = _model(rng, weight_sign=False)
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(pm1(rng, (5, 4, 3, 3)), "w"))
    canonical = prepare(model)
    assert [n.op_type for n in canonical.graph.node] == ["DynamicSign", "Conv"]
