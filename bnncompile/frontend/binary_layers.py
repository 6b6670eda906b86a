"""Which Conv / Gemm / MatMul nodes are binary layers, proven from the graph, and why the others
are not.

A layer is *binary* only when the graph proves it (README, "Semantics users must know"):

* ``Conv`` whose data input is a DynamicSign output (directly, or through a constant ``Pad`` with
  value 0 or 1) and whose weight is an initializer holding exactly ±1 → ``"conv"``;
* ``Gemm`` / ``MatMul`` with a DynamicSign input A and a ±1 initializer B → ``"dense"``;
* ``MatMul`` whose two operands are both DynamicSign outputs (B possibly transposed over its
  last two axes) → ``"batch_matmul"``.

Weights that merely happen to be ±1 without a DynamicSign input are *not* binary (daBNN's
"aggressive" mode guessed from weights alone and silently broke zero padding).  Every other
Conv / Gemm / MatMul gets a one-line reason (:func:`classify`), which ``inspect`` and
``compile`` print.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import UnsupportedModelError, node_label
from .graph import GraphIndex, attr, is_standard

LAYER_OPS = ("Conv", "Gemm", "MatMul")


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

    def dense_weight(self) -> np.ndarray:
        """±1 weight as ``[N_out, K_in]`` whatever the node stored (Gemm ``transB`` or not)."""
        return self.weight if int(attr(self.node, "transB", 0)) else self.weight.T


def is_pm1(w: np.ndarray | None) -> bool:
    return w is not None and w.size > 0 and w.dtype.kind == "f" and bool(np.all(np.abs(w) == 1.0))


def _through_pad(index: GraphIndex, name: str):
    """If ``name`` is a constant spatial Pad of a DynamicSign output: (sign, pad node, value, pads)."""
    pad = index.producer.get(name)
    if pad is None or not is_standard(pad, "Pad") or attr(pad, "mode", "constant") != "constant":
        return None
    sign = index.sign_producer(pad.input[0])
    if sign is None or len(pad.input) < 2:
        return None
    pads = index.constant(pad.input[1])
    value = index.constant(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.float32(0)
    if len(pad.input) > 3 and pad.input[3]:  # explicit axes: not the 4-D NCHW form handled here
        return None
    if pads is None or value is None or pads.size != 8 or value.size != 1:
        return None
    pads = [int(p) for p in pads.reshape(-1)]
    if any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:  # only H/W of NCHW may be padded
        return None
    return sign, pad, float(value.reshape(-1)[0]), (pads[2], pads[3], pads[6], pads[7])


def _transposed_sign(index: GraphIndex, name: str) -> onnx.NodeProto | None:
    """The DynamicSign behind ``Transpose(perm swaps the last two axes only)``, else None."""
    tr = index.producer.get(name)
    if tr is None or not is_standard(tr, "Transpose"):
        return None
    perm = list(attr(tr, "perm", []) or [])
    n = len(perm)
    if n < 2 or perm != [*range(n - 2), n - 1, n - 2]:
        return None
    return index.sign_producer(tr.input[0])


def _weight_reason(w: np.ndarray | None) -> str:
    if w is None:
        return "weight is not a constant"
    if w.dtype.kind != "f":
        return f"weight dtype {w.dtype} is not float"
    return "weight is not exactly ±1"


def classify(index: GraphIndex, node: onnx.NodeProto) -> tuple[BinaryLayer | None, str]:
    """``(layer, "")`` if the graph proves ``node`` binary, else ``(None, reason)``."""
    if not is_standard(node, *LAYER_OPS):
        return None, f"{node.op_type} is not a Conv/Gemm/MatMul"
    if node.op_type == "Conv":
        return _classify_conv(index, node)
    a_sign = index.sign_producer(node.input[0])
    b_sign = index.sign_producer(node.input[1]) if node.op_type == "MatMul" else None
    b_t = _transposed_sign(index, node.input[1]) if node.op_type == "MatMul" else None
    if a_sign is None:
        if b_sign is not None or b_t is not None:
            return None, "only the second operand is a DynamicSign output"
        return None, "input is not a DynamicSign output"
    if node.op_type == "Gemm" and int(attr(node, "transA", 0)):
        return None, "Gemm transA=1 is not supported"
    if b_sign is not None:
        return BinaryLayer(node, "batch_matmul", (a_sign, b_sign)), ""
    if b_t is not None:
        return BinaryLayer(node, "batch_matmul", (a_sign, b_t), b_transposed=True), ""
    w = index.constant(node.input[1])
    if not is_pm1(w):
        if w is None and index.producer.get(node.input[1]) is not None:
            return None, "second operand is neither a ±1 constant nor a DynamicSign output"
        return None, _weight_reason(w)
    if w.ndim != 2:
        return None, f"weight has rank {w.ndim}; binary dense needs a 2-D weight"
    return BinaryLayer(node, "dense", (a_sign,), w), ""


def _classify_conv(index: GraphIndex, node: onnx.NodeProto) -> tuple[BinaryLayer | None, str]:
    w = index.constant(node.input[1]) if len(node.input) > 1 else None
    sign = index.sign_producer(node.input[0])
    padded = None if sign is not None else _through_pad(index, node.input[0])
    if sign is None and padded is None:
        return None, "input is not a DynamicSign output"
    if not is_pm1(w):
        return None, _weight_reason(w)
    if w.ndim != 4:
        return None, f"{w.ndim - 2}-D convolution; only 2-D binary convs are supported"
    if int(attr(node, "group", 1)) != 1:
        return None, f"group={attr(node, 'group')} is not supported"
    if sign is not None:
        return BinaryLayer(node, "conv", (sign,), w), ""
    sign, pad, value, pads = padded
    if value not in (0.0, 1.0):
        return None, f"input Pad value {value:g}: only 0 (zero) and 1 (one) padding have a bit-packed form"
    if value == 1.0 and (attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID")
                         or any(attr(node, "pads", []) or [])):
        return None, "Pad(value=1) followed by conv zero padding has no exact bit-packed form"
    return BinaryLayer(node, "conv", (sign,), w, pad, value, pads), ""


def find_binary_layers(model: onnx.ModelProto, index: GraphIndex | None = None) -> dict[str, BinaryLayer]:
    """All binary layers of ``model`` keyed by the layer node's first output name."""
    index = index or GraphIndex(model)
    found = {}
    for node in model.graph.node:
        layer, _ = classify(index, node)
        if layer is not None:
            found[node.output[0]] = layer
    return found


def describe(layer: BinaryLayer) -> str:
    """``"yes (via <spelling>)"``: how the layer's signs were written in the file."""
    from .canonicalize import via

    spellings = sorted({via(s) or "DynamicSign" for s in layer.signs})
    return f"yes (via {', '.join(spellings)})"


def layer_report(model: onnx.ModelProto, index: GraphIndex | None = None) -> dict[str, str]:
    """Every Conv / Gemm / MatMul → ``"yes (via ...)"`` or ``"no (<reason>)"``, in graph order
    (``model`` canonicalized)."""
    index = index or GraphIndex(model)
    out = {}
    for node in model.graph.node:
        if is_standard(node, *LAYER_OPS):
            layer, why = classify(index, node)
            out[node.name] = describe(layer) if layer is not None else f"no ({why})"
    return out


@dataclass(frozen=True)
class ConvGeometry:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    dilation: tuple[int, int]
    pad_value: str  # "zero" | "one"


def conv_pads(node: onnx.NodeProto, in_hw, kernel, stride, dilation) -> tuple[int, int, int, int]:
    """Explicit (top, left, bottom, right) pads of a 2-D Conv / pool, ``auto_pad`` resolved the
    way ONNX defines it (SAME_UPPER puts the odd pad at the end, SAME_LOWER at the start)."""
    auto_pad = attr(node, "auto_pad", "NOTSET")
    if auto_pad == "NOTSET":
        pads = list(attr(node, "pads", [0, 0, 0, 0]))
        if len(pads) != 4:
            raise UnsupportedModelError(f"node {node_label(node)}: only 2-D convolutions are supported")
        return tuple(int(p) for p in pads)
    if auto_pad == "VALID":
        return (0, 0, 0, 0)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise UnsupportedModelError(f"node {node_label(node)}: auto_pad={auto_pad} is not an ONNX value")
    lo, hi = [], []
    for size, k, s, d in zip(in_hw, kernel, stride, dilation):
        out = -(-int(size) // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - int(size))
        small, big = total // 2, total - total // 2
        lo.append(small if auto_pad == "SAME_UPPER" else big)
        hi.append(big if auto_pad == "SAME_UPPER" else small)
    return (lo[0], lo[1], hi[0], hi[1])


def conv_geometry(layer: BinaryLayer, in_hw) -> ConvGeometry:
    """Kernel, stride, explicit pads (a preceding ``Pad`` node merged in) and pad value of a
    binary conv reading an ``in_hw`` map (the map *before* any Pad node)."""
    node = layer.node
    kh, kw = (int(v) for v in layer.weight.shape[2:])
    strides = tuple(int(v) for v in attr(node, "strides", [1, 1]))
    dilations = tuple(int(v) for v in attr(node, "dilations", [1, 1]))
    if len(strides) != 2 or len(dilations) != 2:
        raise UnsupportedModelError(f"node {node_label(node)}: only 2-D convolutions are supported")
    if layer.pad_node is None:
        pads = conv_pads(node, in_hw, (kh, kw), strides, dilations)
        return ConvGeometry((kh, kw), strides, pads, dilations, "zero")
    pt, pl, pb, pr = layer.pads
    padded_hw = (int(in_hw[0]) + pt + pb, int(in_hw[1]) + pl + pr)
    pads = conv_pads(node, padded_hw, (kh, kw), strides, dilations)
    if layer.pad_value == 1.0:  # classify() proved the conv adds no zero padding of its own
        return ConvGeometry((kh, kw), strides, (pt, pl, pb, pr), dilations, "one")
    return ConvGeometry((kh, kw), strides, (pads[0] + pt, pads[1] + pl, pads[2] + pb, pads[3] + pr),
                        dilations, "zero")


def prove_all(ctx) -> None:
    """Classify every Conv / Gemm / MatMul once per plan: ``plan.binary`` gets the proven layers
    (keyed by node name), ``plan.not_binary`` the reason for each of the others."""
    plan = ctx.plan
    if plan.binary or plan.not_binary:  # already classified by an earlier converter
        return
    for node in ctx.model.graph.node:
        if not is_standard(node, *LAYER_OPS):
            continue
        layer, why = classify(ctx.index, node)
        if layer is not None:
            plan.binary[node.name] = layer
        else:
            plan.not_binary[node.name] = why
