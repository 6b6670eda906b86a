"""Reading ONNX graphs: producers/consumers, constants, and proving which layers are binary.

A layer is *binary* only when the graph proves it (ARCHITECTURE.md, "Binary layers"):

* ``Conv`` whose data input is a DynamicSign output (directly, or through a constant ``Pad`` with
  value 0 or 1) and whose weight is an initializer holding exactly ±1 → ``"conv"``;
* ``Gemm`` / ``MatMul`` with a DynamicSign input A and a ±1 initializer B → ``"dense"``;
* ``MatMul`` whose two operands are both DynamicSign outputs → ``"batch_matmul"``.

Weights that merely happen to be ±1 without a DynamicSign input are *not* binary (daBNN's
"aggressive" mode guessed from weights alone and silently broke zero padding).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from .custom_ops.dynamic_sign import is_dynamic_sign


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
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    def sign_producer(self, name: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and is_dynamic_sign(node) else None


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


@dataclass(frozen=True)
class BinaryLayer:
    """A Conv / Gemm / MatMul proven binary from the graph."""

    node: onnx.NodeProto
    kind: str  # "conv" | "dense" | "batch_matmul"
    signs: tuple[onnx.NodeProto, ...]  # the DynamicSign producers of the binary operand(s)
    weight: np.ndarray | None = None  # ±1 weights as stored (Conv: OIHW; Gemm/MatMul: as B)
    pad_node: onnx.NodeProto | None = None
    pad_value: float = 0.0
    pads: tuple[int, ...] = ()  # extra spatial pads (t, l, b, r) contributed by pad_node
    #: batch_matmul only: B is ``Transpose(DynamicSign(x), swap last two axes)``, so ``x`` already
    #: has the ``[..., N, K]`` layout the packed kernel wants (attention's ``Q @ K^T``).
    b_transposed: bool = False


def is_pm1(w: np.ndarray | None) -> bool:
    return w is not None and w.size > 0 and w.dtype.kind == "f" and bool(np.all(np.abs(w) == 1.0))


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _through_pad(index: GraphIndex, name: str):
    """If ``name`` is a constant spatial Pad of a DynamicSign output: (sign, pad node, value, pads)."""
    pad = index.producer.get(name)
    if pad is None or pad.op_type != "Pad" or _attr(pad, "mode", b"constant") not in (b"constant", "constant"):
        return None
    sign = index.sign_producer(pad.input[0])
    if sign is None or len(pad.input) < 2:
        return None
    pads = index.constant(pad.input[1])
    value = index.constant(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.float32(0)
    if pads is None or value is None or pads.size != 8 or float(value) not in (0.0, 1.0, -1.0):
        return None
    pads = [int(p) for p in pads.reshape(-1)]
    if any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:  # only H/W of NCHW may be padded
        return None
    return sign, pad, float(value), (pads[2], pads[3], pads[6], pads[7])


def _transposed_sign(index: GraphIndex, name: str) -> onnx.NodeProto | None:
    """The DynamicSign behind ``Transpose(perm swaps the last two axes only)``, else None."""
    tr = index.producer.get(name)
    if tr is None or tr.op_type != "Transpose":
        return None
    perm = list(_attr(tr, "perm", []) or [])
    n = len(perm)
    if n < 2 or perm != [*range(n - 2), n - 1, n - 2]:
        return None
    return index.sign_producer(tr.input[0])


def classify(index: GraphIndex, node: onnx.NodeProto) -> BinaryLayer | None:
    """Return the BinaryLayer for ``node`` if the graph proves it binary, else None."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Conv":
        w = index.constant(node.input[1]) if len(node.input) > 1 else None
        if not is_pm1(w) or int(_attr(node, "group", 1)) != 1:
            return None
        sign = index.sign_producer(node.input[0])
        if sign is not None:
            return BinaryLayer(node, "conv", (sign,), w)
        padded = _through_pad(index, node.input[0])
        if padded is not None:
            sign, pad, value, pads = padded
            return BinaryLayer(node, "conv", (sign,), w, pad, value, pads)
        return None
    if node.op_type in ("Gemm", "MatMul"):
        a_sign = index.sign_producer(node.input[0])
        if a_sign is None:
            return None
        if node.op_type == "Gemm" and int(_attr(node, "transA", 0)):
            return None
        b_sign = index.sign_producer(node.input[1])
        if node.op_type == "MatMul" and b_sign is not None:
            return BinaryLayer(node, "batch_matmul", (a_sign, b_sign))
        b_t = _transposed_sign(index, node.input[1]) if node.op_type == "MatMul" else None
        if b_t is not None:
            return BinaryLayer(node, "batch_matmul", (a_sign, b_t), b_transposed=True)
        w = index.constant(node.input[1])
        if is_pm1(w) and w.ndim == 2:
            return BinaryLayer(node, "dense", (a_sign,), w)
    return None


def find_binary_layers(model: onnx.ModelProto, index: GraphIndex | None = None) -> dict[str, BinaryLayer]:
    """All binary layers of ``model`` keyed by the layer node's first output name."""
    index = index or GraphIndex(model)
    found = {}
    for node in model.graph.node:
        layer = classify(index, node)
        if layer is not None:
            found[node.output[0]] = layer
    return found
