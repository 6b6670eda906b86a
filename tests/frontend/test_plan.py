"""The lowering plan (frontend.plan): one ordered converter registry claims nodes, each at most
once, and every Conv / Gemm / MatMul that stays float has a reason."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from testkit.onnx_graphs import ds, make_model, pm1

from bnncompile.errors import UnsupportedModelError
from bnncompile.frontend import prepare
from bnncompile.frontend.converters import CONVERTERS
from bnncompile.frontend.graph import GraphIndex
from bnncompile.frontend.plan import plan_lowering

ALL = frozenset({"binary_kernels", "cpu", "fuse_epilogues"})


def _plan(model, switches=ALL, converters=CONVERTERS):
    m = prepare(model)
    return plan_lowering(m, GraphIndex(m), converters, switches=switches)


def _block(rng):
    """sign → binary conv → scale Mul → BN → Relu, plus a float conv and a float MatMul."""
    nodes = [ds("x", "t", "s", name="sign"),
             helper.make_node("Conv", ["s", "w"], ["y"], name="bconv", pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["y", "a"], ["ya"], name="scale"),
             helper.make_node("Relu", ["ya"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "wf"], ["f"], name="fconv"),
             helper.make_node("Conv", ["r", "wg"], ["g"], name="grouped", group=2),
             helper.make_node("Flatten", ["f"], ["ff"], name="flat"),
             helper.make_node("MatMul", ["ff", "m"], ["out"], name="head")]
    inits = {"t": np.zeros((1, 4, 1, 1), np.float32), "w": pm1(rng, (4, 4, 3, 3)),
             "a": np.full((1, 4, 1, 1), 0.5, np.float32), "wf": pm1(rng, (2, 4, 1, 1)),
             "wg": pm1(rng, (2, 2, 1, 1)), "m": rng.standard_normal((2 * 5 * 5, 3)).astype(np.float32)}
    return make_model(nodes, {"x": [1, 4, 5, 5]}, {"out": None, "g": None}, inits)


def test_claims_follow_the_registry(rng):
    plan = _plan(_block(rng))
    assert plan.claims["sign"] == "DynamicSign"
    assert plan.claims["bconv"] == "BinaryConv" and plan.claims["scale"] == "FoldedScale"
    assert plan.claims["relu"] == "FusedEpilogue" and plan.fused_convs == {"bconv": "relu"}
    assert plan.claims["fconv"] == "FloatConv" and "head" not in plan.claims
    assert plan.sign_layout == {"s": "nchw"}


def test_every_float_layer_has_a_reason(rng):
    plan = _plan(_block(rng))
    assert plan.not_binary == {"fconv": "input is not a DynamicSign output",
                               "grouped": "input is not a DynamicSign output",
                               "head": "input is not a DynamicSign output"}


@pytest.mark.parametrize("switches,claimed", [
    (frozenset(), {"sign"}),  # float-only debug build: signs still become float ±1
    (frozenset({"binary_kernels"}), {"sign", "bconv", "scale"}),
    (frozenset({"binary_kernels", "cpu"}), {"sign", "bconv", "scale", "fconv"}),
])
def test_switches_turn_converters_off(switches, claimed, rng):
    assert set(_plan(_block(rng), switches).claims) == claimed


def test_a_new_converter_is_one_class_and_one_registry_line(rng):
    """What adding a lowering takes: a converter object in the registry claims its nodes."""

    class ReluOwner:
        name = "ReluOwner"
        requires = frozenset()

        def plan(self, ctx):
            for node in ctx.model.graph.node:
                if node.op_type == "Relu" and not ctx.is_claimed(node):
                    ctx.claim(node, self)

        def convert(self, imp, node, inputs, attrs, opset):
            return imp.fallback("Relu", inputs, attrs, opset)

    plan = _plan(_block(rng), frozenset({"binary_kernels"}), converters=(*CONVERTERS, ReluOwner()))
    assert plan.claims["relu"] == "ReluOwner"


def test_double_claim_is_an_error_not_a_silent_override(rng):
    class Greedy:
        name, requires = "Greedy", frozenset()

        def plan(self, ctx):
            ctx.claim("bconv", self)

    with pytest.raises(UnsupportedModelError, match="claimed by both BinaryConv and Greedy"):
        _plan(_block(rng), ALL, converters=(*CONVERTERS[:2], Greedy()))
