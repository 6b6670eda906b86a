"""The detach STE ``sign(x) - p(x) + p(x)`` (frontend.canonicalize.detach_ste): ReActNet's
surrogate is proven to leave the sign unchanged, surrogates that do not are left alone, and the
interval evaluation behind the proof bounds every concrete float32 value."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper
from testkit.onnx_graphs import build_and_run, make_model, ort_run, pm1

from bnncompile.frontend import prepare
from bnncompile.frontend.binary_layers import layer_report
from bnncompile.frontend.canonicalize import detach_ste, sign_zero_sites, via


def _reactnet_p(x, out):
    """Bi-Real / ReActNet ``out3`` as torch.onnx.export(dynamo=True) writes it."""
    n = helper.make_node
    return [
        n("Less", [x, "m1"], ["lt"]),
        n("Less", [x, "zero"], ["lt1"]),
        n("Less", [x, "one"], ["lt2"]),
        n("Cast", ["lt"], ["c0"], to=1),
        n("Mul", ["c0", "m1"], ["mul"]),
        n("Mul", [x, x], ["xx"]),
        n("Mul", [x, "two"], ["x2"]),
        n("Add", ["xx", "x2"], ["add"]),
        n("Sub", ["one", "c0"], ["sub"]),
        n("Mul", ["add", "sub"], ["mul3"]),
        n("Add", ["mul", "mul3"], ["add1"]),
        n("Cast", ["lt1"], ["c1"], to=1),
        n("Mul", ["add1", "c1"], ["mul4"]),
        n("Neg", [x], ["neg"]),
        n("Mul", ["neg", x], ["mul5"]),
        n("Add", ["mul5", "x2"], ["add2"]),
        n("Sub", ["one", "c1"], ["sub1"]),
        n("Mul", ["add2", "sub1"], ["mul7"]),
        n("Add", ["mul4", "mul7"], ["add3"]),
        n("Cast", ["lt2"], ["c2"], to=1),
        n("Mul", ["add3", "c2"], ["mul8"]),
        n("Sub", ["one", "c2"], ["sub2"]),
        n("Add", ["mul8", "sub2"], [out]),
    ]


CONSTS = {"m1": np.float32(-1), "zero": np.float32(0), "one": np.float32(1), "two": np.float32(2)}


def _model(rng, p_nodes, extra=None):
    nodes = [
        helper.make_node("Sign", ["x"], ["s"], name="sign"),
        *p_nodes,
        helper.make_node("Sub", ["s", "p"], ["d"], name="ste_sub"),
        helper.make_node("Add", ["d", "p"], ["a"], name="ste_add"),
        helper.make_node("Conv", ["a", "w"], ["y"], pads=[1, 1, 1, 1], name="conv"),
    ]
    return make_model(
        nodes,
        {"x": [2, 4, 5, 5]},
        {"y": None},
        {**CONSTS, "w": pm1(rng, (3, 4, 3, 3)), **(extra or {})},
    )


def test_reactnet_ste_is_the_sign(rng):
    model = _model(rng, _reactnet_p("x", "p"))
    canonical = prepare(model)
    assert [n.op_type for n in canonical.graph.node] == ["DynamicSign", "Conv"]
    assert "detach STE" in via(canonical.graph.node[0])
    assert [s.node for s in sign_zero_sites(canonical)] == ["sign"]  # the Sign's 0 still reported
    assert layer_report(canonical)["conv"].startswith("yes")
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    x[0, 0, 0, :5] = [1e-45, -1e-45, 1.0, -1.0, 0.5]
    (y,), plan = build_and_run(model, {"x": x}, batch=2)
    assert plan.binary["conv"].kind == "conv"
    np.testing.assert_array_equal(y, ort_run(model, {"x": x})[0])  # integer sums: exact


@pytest.mark.parametrize("p", ["identity", "negated", "scaled_up", "per_channel"])
def test_unproven_surrogates_stay(p, rng):
    """p = x (unbounded), -x (opposite sign), 3x clipped to [-3, 3], a per-channel constant."""
    n = helper.make_node
    extra = {}
    if p == "identity":
        nodes = [n("Identity", ["x"], ["p"])]
    elif p == "negated":
        nodes = [n("Neg", ["x"], ["nx"]), n("Clip", ["nx", "m1", "one"], ["p"])]
    elif p == "scaled_up":
        extra = {"three": np.float32(3), "m3": np.float32(-3)}
        nodes = [n("Mul", ["x", "three"], ["x3"]), n("Clip", ["x3", "m3", "three"], ["p"])]
    else:
        extra = {"k": np.full((1, 4, 1, 1), 0.5, np.float32)}
        nodes = [n("Mul", ["x", "k"], ["p"])]
    model = _model(rng, nodes, extra)
    canonical = prepare(model)
    assert "Add" in [nd.op_type for nd in canonical.graph.node]
    assert layer_report(canonical)["conv"].startswith("no")


def test_clipped_identity_surrogate_is_proven(rng):
    """p = clip(x, -1, 1) (the clipped-identity STE): same sign as x, |p| <= 1."""
    n = helper.make_node
    model = _model(rng, [n("Clip", ["x", "m1", "one"], ["p"])])
    assert [nd.op_type for nd in prepare(model).graph.node] == ["DynamicSign", "Conv"]


def test_interval_bounds_contain_every_value(rng):
    """Soundness of the proof's evaluator: for sampled float32 x (every binade, specials), the
    surrogate's value computed by ONNX Runtime lies within its piece's interval."""
    model = make_model(_reactnet_p("x", "p"), {"x": [4096]}, {"p": [4096]}, CONSTS)
    graph = ir.from_proto(model).graph
    x_value = graph.inputs[0]
    nodes = list(graph)
    p_value = graph.outputs[0]
    lo, hi = detach_ste.intervals([-1.0, 0.0, 1.0])
    iv = detach_ste.evaluate(nodes, x_value, lo, hi)
    bits = rng.integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32).copy()
    x[:8] = [0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 2.0**64, -(2.0**64)]
    x = np.where(np.isnan(x), np.float32(0.75), x).astype(np.float32)
    p = ort_run(model, {"x": x})[0]
    order = np.argsort(lo)
    idx = order[np.searchsorted(lo[order], x, side="right") - 1]
    neg_zero = (x == 0) & np.signbit(x)
    idx = np.where(
        x == 0,
        np.where(
            neg_zero,
            np.nonzero((lo == 0) & np.signbit(lo))[0][0],
            np.nonzero((lo == 0) & ~np.signbit(lo))[0][0],
        ),
        idx,
    )
    assert np.all((lo[idx] <= x) & (x <= hi[idx]))
    ok = iv.bad[idx] | np.isnan(p) | ((iv.lo[idx] <= p) & (p <= iv.hi[idx]))
    assert ok.all(), (x[~ok][:5], p[~ok][:5])
    assert detach_ste.proves_identity(nodes, x_value, p_value, [-1.0, 0.0, 1.0])
