"""``Where(x >= t, 1, -1)`` and its spellings become DynamicSign (frontend.canonicalize
.where_compare): the binary layer is found, the result equals ONNX Runtime's, and spellings that
are not exactly a sign stay as they are."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from bnncompile.custom_ops.dynamic_sign import is_dynamic_sign
from onnx import helper
from testkit.onnx_graphs import build_and_run, make_model, ort_run, pm1

from bnncompile.frontend import prepare
from bnncompile.frontend.canonicalize import via

SPELLINGS = {  # compare op, operand order, (value if true, value if false)
    "ge": ("GreaterOrEqual", ("x", "t"), (1.0, -1.0)),
    "le": ("LessOrEqual", ("t", "x"), (1.0, -1.0)),
    "lt": ("Less", ("x", "t"), (-1.0, 1.0)),
    "gt": ("Greater", ("t", "x"), (-1.0, 1.0)),
}


def _model(rng, spelling, *, hi=None, lo=None, t_shape=(1, 6, 1, 1), const_nodes=False, conv=True):
    op, operands, (vt, vf) = SPELLINGS[spelling]
    vt, vf = hi if hi is not None else vt, lo if lo is not None else vf
    inits = {"t": rng.integers(-1, 2, t_shape).astype(np.float32), "w": pm1(rng, (5, 6, 3, 3))}
    nodes = [helper.make_node(op, list(operands), ["c"], name="cmp")]
    if const_nodes:  # TorchScript writes the scalars as Constant nodes
        nodes += [helper.make_node("Constant", [], ["vt"], value_float=vt, name="c_t"),
                  helper.make_node("Constant", [], ["vf"], value_float=vf, name="c_f")]
    else:
        inits.update(vt=np.array(vt, np.float32), vf=np.array(vf, np.float32))
    nodes.append(helper.make_node("Where", ["c", "vt", "vf"], ["s"], name="binarize"))
    if not conv:
        del inits["w"]
        return make_model(nodes, {"x": [2, 6, 5, 5]}, {"s": None}, inits)
    nodes.append(helper.make_node("Conv", ["s", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]))
    return make_model(nodes, {"x": [2, 6, 5, 5]}, {"y": None}, inits)


@pytest.mark.parametrize("const_nodes", [False, True], ids=["initializers", "constants"])
@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_spelling_becomes_dynamic_sign(spelling, const_nodes, rng):
    model = _model(rng, spelling, const_nodes=const_nodes)
    canonical = prepare(model)
    signs = [n for n in canonical.graph.node if is_dynamic_sign(n)]
    assert len(signs) == 1 and signs[0].name == "binarize"
    assert via(signs[0]).startswith("Where(")
    assert not any(n.op_type in ("Where", SPELLINGS[spelling][0]) for n in canonical.graph.node)
    x = rng.integers(-2, 3, (2, 6, 5, 5)).astype(np.float32)  # integer data: ties x == t
    (y,), plan = build_and_run(model, {"x": x}, batch=2)
    assert plan.binary["conv"].kind == "conv"
    np.testing.assert_array_equal(y, ort_run(model, {"x": x})[0])  # exact integer sums


@pytest.mark.parametrize("hi,lo,t_shape", [
    (2.0, -1.0, (1, 6, 1, 1)),  # not ±1
    (1.0, 1.0, (1, 6, 1, 1)),
    (1.0, -1.0, (3, 2, 6, 1, 1)),  # the threshold would broadcast x up a rank
])
def test_non_signs_stay(hi, lo, t_shape, rng):
    model = _model(rng, "ge", hi=hi, lo=lo, t_shape=t_shape, conv=False)
    canonical = prepare(model)
    assert not any(is_dynamic_sign(n) for n in canonical.graph.node)
    assert any(n.op_type == "Where" for n in canonical.graph.node)


def test_prelu_where_is_not_a_sign(rng):
    """PReLU exports as Where(x >= 0, x, slope * x): same ops, not constant branches."""
    nodes = [helper.make_node("GreaterOrEqual", ["x", "z"], ["c"]),
             helper.make_node("Mul", ["x", "a"], ["ax"]),
             helper.make_node("Where", ["c", "x", "ax"], ["y"])]
    model = make_model(nodes, {"x": [1, 3, 2, 2]}, {"y": None},
                       {"z": np.zeros((), np.float32), "a": np.full((1, 3, 1, 1), 0.25, np.float32)})
    assert prepare(model).graph.node[-1].op_type == "Where"


def test_canonical_file_is_untouched(exported_small):
    """A bnncompile export has Where nodes (PReLU) but no sign spelling: the round trip through
    onnx_ir must leave it as it was."""
    model = onnx.load(str(exported_small.model_path))
    canonical = prepare(model)
    assert [(n.name, n.op_type) for n in canonical.graph.node] == [(n.name, n.op_type) for n in model.graph.node]
