"""Which float ops after a binary conv run in its epilogue (ONNX pattern matching).

A ReActNet block after the binary conv is ``Mul(scale) → BatchNormalization → Add(residual) →
RPReLU``, where RPReLU is exported as ``Add(shift) → [GreaterOrEqual, Mul(slope), Where] →
Add(shift)``.  Run as separate passes, each reads and writes the whole activation; run in the
conv's copy-out they cost a few vector ops per output element on data already in registers.

:func:`match_chain` walks forward from a conv's output while the next step is an element-wise op
with per-channel constants (or a residual of the output's own shape) whose intermediate values
have no other consumer.  Per-channel affine steps before the first non-affine one fold (in
float64) into the kernel's scale/bias; the rest become ``schedules.compute.POST_OPS``.  The kernel
then produces the *last* tensor of the chain, and every intermediate becomes dead code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .graph import GraphIndex, attr, is_standard, per_channel


@dataclass
class Epilogue:
    """A binary conv's fused output transform."""

    conv: str  # the Conv node's name
    tail: str  # the ONNX node whose output the fused kernel produces
    output: str  # that output's tensor name
    scale: np.ndarray  # float32 [K]: acc * scale + bias ...
    bias: np.ndarray | None  # float32 [K]; None when nothing adds a bias
    #: then these, in order: ("residual", tensor name) | ("shift"|"mul"|"prelu", float32 [K]) |
    #: ("relu", None)
    post: list[tuple[str, object]] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)  # the ONNX nodes the kernel replaces
    #: (DynamicSign output, threshold float32 [K]) for a constant-threshold sign of ``output``:
    #: the kernel also writes the packed bits its binary consumers read (no bit-packing pass)
    pack: tuple[str, np.ndarray] | None = None
    #: sibling convs merged into this kernel (:func:`merge_concat`): their names after ``conv``,
    #: the concatenated ±1 weight ``[sum K, C, KH, KW]``, and the shortcut's channel count when
    #: every part adds the same residual (output channel k then reads its channel k % R)
    siblings: tuple[str, ...] = ()
    weight: np.ndarray | None = None
    residual_channels: int | None = None

    @property
    def post_kinds(self) -> tuple[str, ...]:
        return tuple(kind for kind, _ in self.post)


def _channel_vec(index: GraphIndex, name: str, k: int) -> np.ndarray | None:
    """A constant broadcasting along NCHW's channel axis only (``[1,K,1,1]``, ``[K,1,1]``,
    a scalar) → float64 ``[K]``; None otherwise (a 1-D ``[K]`` broadcasts along W, not C)."""
    vec = per_channel(index.constant(name), k, 3, max_ndim=4)
    return None if vec is None else vec.astype(np.float64)


def _other(node: onnx.NodeProto, cur: str) -> str | None:
    ins = [i for i in node.input if i]
    if len(ins) != 2 or ins.count(cur) != 1:
        return None
    return ins[1] if ins[0] == cur else ins[0]


def _step(index: GraphIndex, cur: str, k: int, shapes: dict):
    """The chain step that consumes ``cur``: (kind, payload, nodes, output) or None."""
    cons = index.consumers.get(cur, [])
    if len(cons) == 3:
        return _prelu_pattern(index, cur, cons, k)
    if len(cons) != 1 or not is_standard(cons[0]) or len(cons[0].output) != 1:
        return None
    node = cons[0]
    op = node.op_type
    if op == "BatchNormalization" and node.input[0] == cur and len(node.input) == 5:
        vals = [index.constant(n) for n in node.input[1:]]
        if any(v is None or v.size != k for v in vals) or attr(node, "training_mode", 0):
            return None
        gamma, beta, mean, var = (v.reshape(-1).astype(np.float64) for v in vals)
        s = gamma / np.sqrt(var + float(attr(node, "epsilon", 1e-5)))
        return "affine", (s, beta - mean * s), [node.name], node.output[0]
    if op == "Relu" and node.input[0] == cur:
        return "relu", None, [node.name], node.output[0]
    if op == "PRelu" and node.input[0] == cur:
        slope = _channel_vec(index, node.input[1], k)
        return None if slope is None else ("prelu", slope, [node.name], node.output[0])
    if op not in ("Add", "Sub", "Mul"):
        return None
    other = _other(node, cur)
    if other is None:
        return None
    vec = _channel_vec(index, other, k)
    if vec is not None:
        if op == "Add":
            return "shift", vec, [node.name], node.output[0]
        if op == "Sub" and node.input[0] == cur:  # x - c == x + (-c) exactly
            return "shift", -vec, [node.name], node.output[0]
        if op == "Mul":
            return "mul", vec, [node.name], node.output[0]
        return None
    if op == "Add" and index.constant(other) is None and cur in shapes and shapes.get(other) == shapes[cur]:
        return "residual", other, [node.name], node.output[0]
    return None


def _prelu_pattern(index: GraphIndex, cur: str, cons, k: int):
    """``Where(GreaterOrEqual(x, 0), x, Mul(slope, x))``, the dynamo export of ``PReLU``."""
    by_op = {n.op_type: n for n in cons}
    ge, mul, where = by_op.get("GreaterOrEqual"), by_op.get("Mul"), by_op.get("Where")
    if ge is None or mul is None or where is None:
        return None
    zero = index.constant(ge.input[1]) if ge.input[0] == cur else None
    if zero is None or zero.size != 1 or float(zero.reshape(-1)[0]) != 0.0:
        return None
    other = _other(mul, cur)
    slope = None if other is None else _channel_vec(index, other, k)
    if slope is None or list(where.input) != [ge.output[0], cur, mul.output[0]]:
        return None
    for n in (ge, mul):
        if [c.name for c in index.consumers.get(n.output[0], [])] != [where.name]:
            return None
    return "prelu", slope, [ge.name, mul.name, where.name], where.output[0]


def _walk(index: GraphIndex, cur: str, k: int, s: np.ndarray, b: np.ndarray, post: list,
          shapes: dict, keep: set[str], *, residuals: bool = True):
    """Extend a chain from ``cur``: per-channel affine steps fold into ``s``/``b`` while ``post``
    is empty, the rest append to ``post``.  → (s, b, post, nodes, last tensor, tail node)."""
    post, nodes, tail = list(post), [], None
    while cur not in keep:
        step = _step(index, cur, k, shapes)
        if step is None or (step[0] == "residual" and not residuals):
            break
        kind, payload, step_nodes, cur = step
        if not post and kind in ("affine", "shift", "mul"):
            # still a per-channel affine map of acc: fold it into scale/bias
            ms, mb = payload if kind == "affine" else ((payload, 0.0) if kind == "mul" else (1.0, payload))
            s, b = s * ms, b * ms + mb
        elif kind == "affine":
            ms, mb = payload
            post += [("mul", ms.astype(np.float32)), ("shift", mb.astype(np.float32))]
        else:
            post.append((kind, payload.astype(np.float32) if isinstance(payload, np.ndarray) else payload))
        nodes += step_nodes
        tail = step_nodes[-1]
    return s, b, post, nodes, cur, tail


def _finish(conv: str, s, b, had_bias: bool, **fields) -> Epilogue:
    no_bias = not had_bias and not np.any(b)
    return Epilogue(conv=conv, scale=s.astype(np.float32),
                    bias=None if no_bias else b.astype(np.float32), **fields)


def match_chain(index: GraphIndex, conv: onnx.NodeProto, start: str, k: int,
                scale: np.ndarray | None, bias: np.ndarray | None, *, shapes: dict,
                keep: set[str]) -> Epilogue | None:
    """The fusable chain after ``start`` (the conv's output, or its folded scale Mul's), given
    the kernel's own ``acc * scale + bias``; None if nothing after ``start`` fuses.  Tensors in
    ``keep`` (graph outputs, debug outputs) end the chain: they must stay materialised."""
    s = np.ones(k, np.float64) if scale is None else scale.astype(np.float64)
    b = np.zeros(k, np.float64) if bias is None else bias.astype(np.float64)
    s, b, post, nodes, out, tail = _walk(index, start, k, s, b, [], shapes, keep)
    if tail is None:
        return None
    return _finish(conv.name, s, b, bias is not None, tail=tail, output=out, post=post, nodes=nodes)


def _conv_signature(layer) -> tuple:
    """What two binary convs must share to run as one kernel with stacked output channels."""
    attrs = tuple(sorted((a.name, str(onnx.helper.get_attribute_value(a))) for a in layer.node.attribute))
    pad = None if layer.pad_node is None else layer.pad_node.name
    return layer.signs[0].output[0], pad, layer.pad_value, layer.pads, attrs, layer.weight.shape[1:]


def merge_concat(index: GraphIndex, concat: onnx.NodeProto, parts: list[Epilogue], layers: list,
                 *, shapes: dict, keep: set[str]) -> Epilogue | None:
    """``Concat(axis=1)`` of fused binary-conv chains that read the same packed input with the
    same geometry and end alike — ReActNet-A's downsampling ``cat[BN(conv_a(x)) + s,
    BN(conv_b(x)) + s]`` — as one conv with the output channels stacked: one pass over the input
    bits instead of one per part, no concatenation copy, and the chain after the Concat (the
    block's RPReLU, the next sign's packing) continues in the same epilogue.  None if the parts
    differ in anything but their per-channel constants."""
    axis = attr(concat, "axis", None)
    if (not is_standard(concat) or axis not in (1, -3) or concat.output[0] in keep
            or len(parts) < 2 or list(concat.input) != [p.output for p in parts]
            or len(set(concat.input)) != len(parts)):
        return None
    if len({_conv_signature(layer) for layer in layers}) != 1:
        return None
    if any(p.pack is not None or p.output in keep
           or [c.name for c in index.consumers.get(p.output, [])] != [concat.name] for p in parts):
        return None
    if len({tuple((kind, v if isinstance(v, str) else None) for kind, v in p.post) for p in parts}) != 1:
        return None  # same post-op kinds, and the same residual tensor in every part
    ks = [len(p.scale) for p in parts]
    residual = next((v for kind, v in parts[0].post if kind == "residual"), None)
    if residual is not None and (len(set(ks)) != 1 or shapes.get(residual, (None, None))[1] != ks[0]):
        return None
    post = []
    for i, (kind, v) in enumerate(parts[0].post):
        post.append((kind, v if v is None or isinstance(v, str)
                     else np.concatenate([p.post[i][1] for p in parts]).astype(np.float32)))
    s = np.concatenate([p.scale for p in parts]).astype(np.float64)
    b = np.concatenate([np.zeros(len(p.scale)) if p.bias is None else p.bias for p in parts]).astype(np.float64)
    k = int(sum(ks))
    # a residual after the Concat would need the full K channels: the chain stops before it
    s, b, post, nodes, out, tail = _walk(index, concat.output[0], k, s, b, post, shapes, keep,
                                         residuals=residual is None)
    return _finish(parts[0].conv, s, b, any(p.bias is not None for p in parts),
                   tail=tail or concat.name, output=out, post=post,
                   nodes=[n for p in parts for n in p.nodes] + [concat.name] + nodes,
                   siblings=tuple(p.conv for p in parts[1:]),
                   weight=np.concatenate([layer.weight for layer in layers]),
                   residual_channels=None if residual is None else ks[0])
