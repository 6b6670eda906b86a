"""A binary layer's weight computed from constants, folded into one constant.

PyTorch exporters write weight binarizers as ops over the float parameter:
``MatMul(x, Transpose(Sign(W)))`` (TorchScript ``F.linear``), ReActNet's scaled sign
``Mul(ReduceMean(ReduceMean(ReduceMean(Abs(W)))), Sign(W))``, QONNX's
``Transpose(BipolarQuant(W, s))``.  The ``Sign`` / ``BipolarQuant`` of a constant are folded by
their own rules (:mod:`.sign`, :mod:`.bipolar_quant`); what is left is a small cone of standard
ops over constants, which this rule evaluates with ONNX's reference implementation
(``onnx.reference``, the evaluator onnxscript's constant folder uses) and replaces by one
initializer — for the weight input of a Conv / Gemm / MatMul whose data input is a DynamicSign
(directly, through a constant Pad, or times a scalar), so float layers are left alone.

The folded tensor holds the values the ops compute in float32; a reduction (ReActNet's mean|W|)
may differ from another runtime's by its summation order (an ulp of the mean), as it would
between any two runtimes.  Every element of ``mean_c * sign(W)`` is exactly ``±mean_c``, which
:mod:`.weight_scale` then splits into ±1 and a per-channel Mul.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from .base import Rule, binary_operand, const_array, producer_cone

#: deterministic standard ops a weight cone may hold (no subgraphs, no randomness)
FOLDABLE = frozenset({
    "Abs", "Add", "Cast", "CastLike", "Ceil", "Clip", "Concat", "Div", "Equal", "Expand", "Flatten",
    "Floor", "Greater", "GreaterOrEqual", "Identity", "Less", "LessOrEqual", "Max", "Min", "Mul",
    "Neg", "Not", "Pow", "Reciprocal", "ReduceL1", "ReduceL2", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceSum", "Reshape", "Round", "Sign", "Sqrt", "Squeeze", "Sub", "Transpose",
    "Unsqueeze", "Where",
})
MAX_CONE = 32


def constant_cone(value) -> list | None:
    """The nodes computing ``value`` from constants only (graph order), or None."""
    return producer_cone(value, FOLDABLE, limit=MAX_CONE)


def evaluate_cone(nodes, value, opset: int) -> np.ndarray | None:
    """``value`` computed by ``nodes`` (their leaves constants) with onnx.reference."""
    from onnx.reference import ReferenceEvaluator

    names: dict[int, str] = {}

    def name(v):
        if v is None:
            return ""
        if id(v) not in names:
            names[id(v)] = f"v{len(names)}"
        return names[id(v)]

    inits, protos = [], []
    inside = {id(o) for n in nodes for o in n.outputs}
    for n in nodes:
        for v in n.inputs:
            if v is not None and id(v) not in inside and id(v) not in names:
                inits.append(onnx.numpy_helper.from_array(const_array(v), name(v)))
        p = onnx.helper.make_node(n.op_type, [name(v) for v in n.inputs],
                                  [name(o) for o in n.outputs])
        p.attribute.extend(ir.serde.serialize_attribute(a) for a in n.attributes.values())
        protos.append(p)
    out = onnx.helper.make_value_info(name(value), onnx.TypeProto())
    graph = onnx.helper.make_graph(protos, "weight", [], [out], inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    try:
        (out,) = ReferenceEvaluator(model).run(None, {})
    except Exception:
        return None
    return np.asarray(out)


class _FoldWeight(Rule):
    op_type = ""

    def pattern(self, op, x, w):
        return getattr(op, self.op_type)(x, w, _allow_other_inputs=True)

    def check(self, context, x, w, **_):
        if const_array(w) is not None or binary_operand(x) is None:
            return False
        cone = constant_cone(w)
        if not cone:
            return False
        imports = context.model.opset_imports
        opset = imports.get("", None) or imports.get("ai.onnx", 18)
        value = evaluate_cone(cone, w, opset)
        if value is None or value.dtype.kind != "f":
            return False
        self._value = value
        return self.matched(context)

    def rewrite(self, op, x, w, **_):
        weight = self.const(op, self._value, "weight")
        return self.clone(op, self._root, [x, weight, *self._root.inputs[2:]])


class FoldConvWeight(_FoldWeight):
    op_type = "Conv"


class FoldGemmWeight(_FoldWeight):
    op_type = "Gemm"


class FoldMatMulWeight(_FoldWeight):
    op_type = "MatMul"


RULES = (FoldConvWeight, FoldGemmWeight, FoldMatMulWeight)
ROOT_OPS = frozenset()
