"""What a canonicalization rule is: an onnxscript rewrite rule (pattern, exactness check,
replacement) over an ``onnx_ir`` view of the model.  Sign rules turn one spelling of a binarizer
into a ``com.bnncompile::DynamicSign`` node and record its provenance on that node
(``metadata_props["bnncompile.via"]``), so ``inspect`` and ``compile`` can say "binary: yes (via
<spelling>)"; layout rules move ops across a DynamicSign or rewrite a binary layer's weight.

Every rule works on the main graph only (never inside a model-local function: the DynamicSign
function body is itself a ``Where(GreaterOrEqual)`` spelling) and keeps the matched node's name.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from ...custom_ops.dynamic_sign import DOMAIN, OP_TYPE

VIA_KEY = "bnncompile.via"
#: on a DynamicSign that replaced an ONNX ``Sign`` (0 -> 0): the name of that Sign node
SIGN_ZERO_KEY = "bnncompile.sign_zero"
STANDARD = ("", "ai.onnx")
LAYER_OPS = ("Conv", "Gemm", "MatMul")


def const_array(value) -> np.ndarray | None:
    """The numpy value of an onnx_ir value if it is a constant (initializer or Constant)."""
    tensor = getattr(value, "const_value", None)
    if tensor is None:
        return None
    try:
        return np.asarray(tensor.numpy())
    except Exception:  # an external or unreadable tensor: not a constant we can prove anything on
        return None


def is_scalar(value, expected: float, max_rank: int) -> bool:
    """``value`` is a float constant with one element equal to ``expected`` and rank <= max_rank
    (so it broadcasts without raising the result's rank)."""
    a = const_array(value)
    return (a is not None and a.dtype.kind == "f" and a.size == 1 and a.ndim <= max_rank
            and float(a.reshape(-1)[0]) == expected)


#: ops whose output has the rank of their first input
_SAME_RANK = frozenset({
    "Abs", "AveragePool", "BatchNormalization", "Ceil", "Clip", "Conv", "ConvTranspose", "Dropout",
    "Elu", "Exp", "Floor", "GlobalAveragePool", "GlobalMaxPool", "HardSigmoid", "HardSwish",
    "Identity", "InstanceNormalization", "LeakyRelu", "Log", "LpNormalization", "MaxPool", "Neg",
    "Pad", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Softmax", "Softplus", "Sqrt",
    "Tanh", "Transpose",
})
#: element-wise ops with multidirectional broadcast: the largest input rank
_BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "PRelu"})


def rank(value, depth: int = 32) -> int | None:
    """``value``'s rank: from its shape, or its constant, or (when the file has no shapes)
    through the producers whose output rank follows from their inputs'."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        return len(shape)
    a = const_array(value)
    if a is not None:
        return a.ndim
    node = value.producer() if value is not None else None
    if node is None or depth <= 0:
        return None
    if is_sign(node) or (node.op_type in ("BipolarQuant", "Quant") and node.domain not in STANDARD):
        return rank(node.inputs[0], depth - 1)
    if node.domain not in STANDARD:
        return None
    if node.op_type == "Conv" and len(node.inputs) > 1 and const_array(node.inputs[1]) is not None:
        return const_array(node.inputs[1]).ndim
    if node.op_type in _SAME_RANK:
        return rank(node.inputs[0], depth - 1)
    if node.op_type in ("Flatten", "Gemm"):
        return 2
    if node.op_type == "Reshape" and len(node.inputs) > 1:
        target = const_array(node.inputs[1])
        return None if target is None else int(target.size)
    if node.op_type in _BROADCAST or node.op_type == "MatMul":
        ranks = [rank(v, depth - 1) for v in node.inputs if v is not None]
        return None if not ranks or None in ranks else max(ranks)
    return None


def static_dims(value) -> list | None:
    """``value``'s dims (ints, or None where symbolic), following shape-preserving producers
    (DynamicSign, constant Pad, Transpose) when the value itself carries no shape."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        return [d if isinstance(d, int) else None for d in shape]
    node = value.producer() if value is not None else None
    if node is None:
        return None
    if is_sign(node):
        return static_dims(node.inputs[0])
    if is_op(node, "Transpose"):
        dims = static_dims(node.inputs[0])
        perm = attr_ints(node, "perm")
        return None if dims is None or perm is None else [dims[p] for p in perm]
    if is_op(node, "Pad") and len(node.inputs) >= 2:
        dims = static_dims(node.inputs[0])
        pads = const_array(node.inputs[1])
        if dims is None or pads is None or pads.size != 2 * len(dims) or pad_axes(node) is not None:
            return None
        n = len(dims)
        return [None if d is None else d + int(pads[i]) + int(pads[i + n])
                for i, d in enumerate(dims)]
    return None


def broadcasts_onto(t, x) -> bool:
    """Threshold ``t`` broadcasts unidirectionally onto ``x`` (numpy rules), provably."""
    ts, xs = getattr(t, "shape", None), getattr(x, "shape", None)
    if ts is None:
        a = const_array(t)
        if a is None:
            return False
        ts = a.shape
    if xs is None:
        xs = static_dims(x)
    if xs is None:
        return len(ts) == 0 or (len(ts) <= 1 and all(d == 1 for d in ts))
    ts, xs = list(ts), list(xs)
    if len(ts) > len(xs):
        return False
    for td, xd in zip(reversed(ts), reversed(xs)):
        if td == 1:
            continue
        if isinstance(td, int):
            if td != xd:
                return False
        elif isinstance(xd, int) or getattr(td, "value", None) is None or td != xd:
            return False  # a symbolic dim broadcasts only onto the same named symbol
    return True


# -- reading the onnx_ir graph --------------------------------------------------------------------


def is_op(node, *op_types: str) -> bool:
    return node is not None and node.domain in STANDARD and node.op_type in op_types


def is_sign(node) -> bool:
    return node is not None and node.domain == DOMAIN and node.op_type == OP_TYPE


def producer(value, *op_types: str):
    """The standard-domain node of one of ``op_types`` that produces ``value``, else None."""
    node = value.producer() if value is not None else None
    return node if is_op(node, *op_types) else None


def sign_producer(value):
    node = value.producer() if value is not None else None
    return node if is_sign(node) else None


def threshold(sign_node):
    """The ``T`` input of a DynamicSign node (None when omitted)."""
    t = sign_node.inputs[1] if len(sign_node.inputs) > 1 else None
    return t


def attr_ints(node, name: str, default=None):
    a = node.attributes.get(name)
    if a is None:
        return default
    try:
        return [int(v) for v in a.as_ints()]
    except Exception:
        return default


def attr_int(node, name: str, default=None):
    a = node.attributes.get(name)
    if a is None:
        return default
    try:
        return int(a.as_int())
    except Exception:
        return default


def attr_float(node, name: str, default=None):
    a = node.attributes.get(name)
    if a is None:
        return default
    try:
        return float(a.as_float())
    except Exception:
        return default


def attr_str(node, name: str, default=None):
    a = node.attributes.get(name)
    if a is None:
        return default
    try:
        return a.as_string()
    except Exception:
        return default


def pad_axes(node):
    """A Pad node's explicit ``axes`` input (None when absent)."""
    return node.inputs[3] if len(node.inputs) > 3 and node.inputs[3] is not None else None


def constant_pad(node) -> tuple[np.ndarray, float] | None:
    """``(pads, value)`` of a constant-mode Pad without axes whose pads and value are constants."""
    if not is_op(node, "Pad") or (attr_str(node, "mode", "constant") or "constant") != "constant":
        return None
    if len(node.inputs) < 2 or pad_axes(node) is not None:
        return None
    pads = const_array(node.inputs[1])
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        value = const_array(node.inputs[2])
    else:
        value = np.zeros((), np.float32)
    if pads is None or value is None or value.size != 1:
        return None
    return pads.reshape(-1).astype(np.int64), float(value.reshape(-1)[0])


def binary_operand(value):
    """How a layer's data input reads a DynamicSign, if it does: ``("sign", sign, None)`` for the
    sign's output, ``("pad", sign, None)`` through a constant Pad, ``("scaled", sign, a)`` for
    ``Mul(sign, a)`` with a one-element float constant ``a`` (QONNX's activation scale); None
    otherwise."""
    node = sign_producer(value)
    if node is not None:
        return "sign", node, None
    pad = producer(value, "Pad")
    if (pad is not None and constant_pad(pad) is not None
            and sign_producer(pad.inputs[0]) is not None):
        return "pad", sign_producer(pad.inputs[0]), None
    mul = producer(value, "Mul")
    if mul is not None and len(mul.inputs) == 2:
        for i in (0, 1):
            s, a = sign_producer(mul.inputs[i]), const_array(mul.inputs[1 - i])
            if (s is not None and a is not None and a.dtype.kind == "f" and a.size == 1
                    and (rank(s.outputs[0]) is None or a.ndim <= rank(s.outputs[0]))):
                return "scaled", s, float(a.reshape(-1)[0])
    return None


def constant_like(value, depth: int = 12) -> bool:
    """``value`` is a constant or computed from constants only (a weight quantizer's output)."""
    if value is None:
        return True
    if const_array(value) is not None:
        return True
    node = value.producer()
    if node is None or depth <= 0:
        return False
    return all(constant_like(v, depth - 1) for v in node.inputs)


def leads_to_layer(value, depth: int = 4) -> bool:
    """``value`` is the data input of a Conv, or of a Gemm / MatMul whose weight is constant (the
    layers a DynamicSign makes binary with a ±1 weight), directly or through ops the layout rules
    move (Pad, Transpose, Reshape, Flatten, MaxPool, a scalar Mul).  Attention's sign → Reshape →
    Transpose → MatMul of two signs is left to the batch-matmul converter as written."""
    if value is None or depth < 0:
        return False
    for node, i in value.uses():
        dense = is_op(node, "Gemm", "MatMul") and constant_like(node.inputs[1])
        if i == 0 and (is_op(node, "Conv") or dense):
            return True
        if is_op(node, "Pad", "Transpose", "Reshape", "Flatten", "MaxPool") and i == 0:
            if leads_to_layer(node.outputs[0], depth - 1):
                return True
        if is_op(node, "Mul") and leads_to_layer(node.outputs[0], depth - 1):
            return True
    return False


# -- rules ----------------------------------------------------------------------------------------


class Rule(pattern.RewriteRuleClassBase):
    """Base of every canonicalization rule: subclasses give ``pattern``, ``check`` (which must call
    :meth:`matched`) and ``rewrite``."""

    def matched(self, context) -> bool:
        """Record the match (root node, graph) for ``rewrite``; False inside a function."""
        if isinstance(context.graph_or_function, ir.Function):
            return False
        self._root = context.root
        self._graph = context.graph_or_function
        self._names = set()
        return True

    @property
    def root_name(self) -> str:
        root = getattr(self, "_root", None)
        return (root.name if root is not None else None) or type(self).__name__

    def const(self, op, array: np.ndarray, hint: str) -> ir.Value:
        """A new initializer holding ``array`` (a unique name derived from the matched node)."""
        base = f"{self.root_name}/{hint}"
        name, k = base, 0
        while name in self._graph.initializers or name in self._names:
            k += 1
            name = f"{base}#{k}"
        self._names.add(name)
        return op.initializer(ir.tensor(np.ascontiguousarray(array)), name=name)

    def clone(self, op, node, inputs, *, name: str | None = None) -> ir.Value:
        """``node`` re-emitted with ``inputs`` (same op, domain, attributes, name)."""
        out = op.call_op(node.op_type, list(inputs), dict(node.attributes), domain=node.domain,
                         name=name if name is not None else node.name)
        return out

    def emit(self, op, op_type: str, inputs, name: str, **attrs) -> ir.Value:
        return op.call_op(op_type, list(inputs), attrs, name=name)


class SignRule(Rule):
    """Base of the sign rules: ``rewrite`` returns :meth:`dynamic_sign`; ``via`` names the
    spelling for reports."""

    via: str = ""

    def dynamic_sign(self, op, x, t=None, *, name: str | None = None, metadata=None,
                     sign_zero: str | None = None):
        """A DynamicSign of ``x`` (threshold ``t``), named after the matched node (or ``name``),
        carrying ``metadata`` (moved signs keep their provenance) or this rule's ``via``."""
        inputs = [x, t] if t is not None else [x]
        out = op.call_op(OP_TYPE, inputs, {}, domain=DOMAIN, name=name or self.root_name)
        node = out.producer()
        if metadata is not None:
            for k, v in metadata.items():
                node.metadata_props[k] = v
        else:
            node.metadata_props[VIA_KEY] = self.via
        if sign_zero is not None:
            node.metadata_props[SIGN_ZERO_KEY] = sign_zero
        if getattr(x, "shape", None) is not None:
            out.shape = ir.Shape(list(x.shape))
        if getattr(x, "type", None) is not None:
            out.type = x.type
        return out


def via(node) -> str | None:
    """The spelling a DynamicSign node was rewritten from (None: written as DynamicSign)."""
    for prop in node.metadata_props:
        if prop.key == VIA_KEY:
            return prop.value
    return None


__all__ = [
    "LAYER_OPS",
    "OP_TYPE",
    "SIGN_ZERO_KEY",
    "VIA_KEY",
    "Rule",
    "SignRule",
    "binary_operand",
    "broadcasts_onto",
    "const_array",
    "constant_pad",
    "is_scalar",
    "rank",
    "via",
]


def producer_cone(value, ops, *, limit: int, stop=None, scalar_constants: bool = False) -> list | None:
    """The nodes computing ``value`` (in graph order) from constants — and ``stop``, a value the
    cone may read — through standard ``ops`` only, at most ``limit`` of them; None otherwise.
    ``scalar_constants``: every constant read must hold one element."""
    nodes, seen, stack = [], set(), [value]
    while stack:
        v = stack.pop()
        if v is None or (stop is not None and v is stop):
            continue
        a = const_array(v)
        if a is not None:
            if scalar_constants and a.size != 1:
                return None
            continue
        node = v.producer()
        if node is None or node.domain not in STANDARD or node.op_type not in ops:
            return None
        if id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        if len(nodes) > limit:
            return None
        stack.extend(node.inputs)
    order = {id(n): i for i, n in enumerate(nodes[0].graph)} if nodes else {}
    return sorted(nodes, key=lambda n: order.get(id(n), 0))

