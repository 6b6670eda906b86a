"""Reading ONNX graphs: producers and consumers, constants, attributes, per-channel vectors."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..custom_ops.dynamic_sign import is_dynamic_sign

STANDARD_DOMAINS = ("", "ai.onnx")


def is_standard(node: onnx.NodeProto, *op_types: str) -> bool:
    """``node`` is an ai.onnx op (of one of ``op_types``, when given)."""
    return node.domain in STANDARD_DOMAINS and (not op_types or node.op_type in op_types)


def standard_opset(model: onnx.ModelProto) -> int:
    """The model's ai.onnx opset (18 when it names none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)


def attr(node: onnx.NodeProto, name: str, default=None):
    """An attribute's value (strings decoded), or ``default``."""
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: attr(node, a.name) for a in node.attribute}


def int_operand(index: GraphIndex, node: onnx.NodeProto, i: int, name: str) -> list[int] | None:
    """Integers a node takes as input ``i`` (newer opsets: Slice's starts, ReduceMean's axes) or,
    where that input is absent, as attribute ``name``; None where they are computed."""
    if len(node.input) > i and node.input[i]:
        value = index.constant(node.input[i])
        return None if value is None else [int(v) for v in value.reshape(-1)]
    value = attr(node, name)
    return None if value is None else [int(v) for v in value]


@dataclass
class GraphIndex:
    """Lookup tables over one ONNX graph."""

    model: onnx.ModelProto
    producer: dict[str, onnx.NodeProto] = field(default_factory=dict)
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)

    def __post_init__(self):
        g = self.model.graph
        self.initializers = {t.name: t for t in g.initializer}
        for node in g.node:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers.setdefault(inp, []).append(node)

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or a ``Constant`` node output, else None."""
        if not name:
            return None
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and is_standard(node, "Constant"):
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name in ("value_float", "value_int"):
                    return np.asarray(onnx.helper.get_attribute_value(a),
                                      np.float32 if a.name == "value_float" else np.int64)
                if a.name in ("value_floats", "value_ints"):
                    return np.asarray(onnx.helper.get_attribute_value(a),
                                      np.float32 if a.name == "value_floats" else np.int64)
        return None

    def sign_producer(self, name: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and is_dynamic_sign(node) else None

    def only_consumer(self, tensor: str) -> onnx.NodeProto | None:
        cons = self.consumers.get(tensor, [])
        return cons[0] if len(cons) == 1 else None


def per_channel(vec: np.ndarray | None, channels: int, axis_from_end: int,
                max_ndim: int | None = None) -> np.ndarray | None:
    """A float constant that varies only along one channel axis (``axis_from_end`` counted from
    the last; 3 = C of NCHW) or is a scalar → that ``[channels]`` vector (float32), else None.
    ``max_ndim``: reject constants of higher rank (they would broadcast the result up a rank)."""
    if vec is None or vec.dtype.kind != "f" or (max_ndim is not None and vec.ndim > max_ndim):
        return None
    if vec.size == 1:
        return np.full(channels, float(vec.reshape(-1)[0]), np.float32)
    if vec.size != channels or vec.ndim < axis_from_end or vec.shape[-axis_from_end] != channels:
        return None
    return vec.reshape(-1).astype(np.float32)


def value_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """Tensor name → dims (ints or symbol names) from the graph's value_info, inputs and outputs
    (ONNX shape inference fills value_info first when the file has none; the exporter writes it)."""
    shapes = {}
    if not model.graph.value_info:
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # no shapes: residual adds are then simply not fused
            pass
    g = model.graph
    for v in (*g.value_info, *g.input, *g.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            shapes[v.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                   for d in t.shape.dim)
    return shapes
