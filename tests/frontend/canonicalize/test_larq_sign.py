"""Larq's ``Sign(Add(Sign(x), c))`` (frontend.canonicalize.larq_sign): DynamicSign with threshold 0,
equal to ONNX Runtime's result on every number including exact zeros; no sign(0) site."""

from __future__ import annotations

import numpy as np
import pytest
from bnncompile.custom_ops.dynamic_sign import is_dynamic_sign
from onnx import helper
from testkit.onnx_graphs import make_model, ort_run, pm1

from bnncompile.frontend import prepare
from bnncompile.frontend.binary_layers import layer_report
from bnncompile.frontend.canonicalize import canonicalize, sign_zero_sites, via


def _model(rng, c, *, c_first=False, c_shape=()):
    inits = {"c": np.full(c_shape, c, np.float32), "w": pm1(rng, (64, 8))}
    add = ["c", "s0"] if c_first else ["s0", "c"]
    nodes = [
        helper.make_node("Sign", ["x"], ["s0"], name="inner"),
        helper.make_node("Add", add, ["a"], name="add"),
        helper.make_node("Sign", ["a"], ["s"], name="outer"),
        helper.make_node("MatMul", ["s", "w"], ["y"], name="dense"),
    ]
    return make_model(nodes, {"x": [3, 64]}, {"y": None}, inits)


def _inputs(rng):
    x = rng.integers(-2, 3, (3, 64)).astype(np.float32)  # exact zeros, both signs
    x[0, :4] = [-0.0, 1e-45, -1e-45, 3.4e38]
    return x


@pytest.mark.parametrize("c", [0.1, 0.5, 0.99999994, 1e-30])
@pytest.mark.parametrize("c_first", [False, True], ids=["sign_c", "c_sign"])
def test_larq_sign_is_exact(c, c_first, rng):
    model = _model(rng, c, c_first=c_first)
    canonical = prepare(model)
    (sign,) = [n for n in canonical.graph.node if is_dynamic_sign(n)]
    assert sign.name == "outer" and via(sign).startswith("Sign(Sign(x) + c)")
    assert not sign_zero_sites(canonical)
    assert layer_report(canonical)["dense"].startswith("yes")
    x = _inputs(rng)
    np.testing.assert_array_equal(ort_run(canonical, {"x": x})[0], ort_run(model, {"x": x})[0])


@pytest.mark.parametrize("c,c_shape", [(1.0, ()), (0.0, ()), (-0.1, ()), (0.1, (1, 1, 64))])
def test_other_constants_are_plain_signs(c, c_shape, rng):
    """c outside (0, 1), or one that would broadcast x up a rank: not Larq's spelling (the outer
    Sign is then a plain Sign, a reported sign(0) site)."""
    model = _model(rng, c, c_shape=c_shape)
    result = canonicalize(model)
    assert "outer" in {s.node for s in result.sign_zero_sites}
    assert not any(
        via(n) and via(n).startswith("Sign(Sign") for n in model.graph.node if is_dynamic_sign(n)
    )
