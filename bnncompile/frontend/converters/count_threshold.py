"""A sign of an elementwise function of a binary dense's sums, decided on the sums: a binary
``MatMul`` whose output reaches one DynamicSign only through elementwise float nodes with
per-channel constants (a transformer MLP's scale, bias and GELU: ``sign(GELU(a * s + b) - t)``)
→ the dense writes a margin ``m`` with ``m >= 0`` exactly where that sign is +1, and the float
chain is never computed.

The sum ``s`` of a K-bit dense takes K + 1 values (``-K, -K + 2, .., K``), so the chain maps each
output channel onto K + 1 floats: ONNX Runtime evaluates the chain's own nodes on all of them
at compile time and the sign's bits form a table per channel.  Where every channel's +1 set is
an interval of sums or the complement of one (a monotone chain gives a prefix or a suffix; GELU
with a threshold in ``(min GELU, 0)`` gives both ends), the dense's epilogue writes
``sigma * min(s - lo, hi - s)`` per channel (integers: exact in float32; ``compute.bdense``'s
``cut``) instead of ``s * scale + bias``, and the sign compares it with 0.  The bits are ONNX
Runtime's for the exact sums, whatever this build's fast math would have computed.  Any other
pattern, a computed threshold (DyBinaryCCT's), or a chain value read elsewhere keeps the float
chain."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ...custom_ops.dynamic_sign import is_dynamic_sign
from ..graph import attr, is_standard, per_channel, standard_opset

#: elementwise ops whose value at each element depends only on that element and per-channel
#: constants (ONNX Runtime evaluates them at compile time)
ELEMENTWISE = frozenset({
    "Abs", "Add", "Ceil", "Clip", "Div", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid",
    "HardSwish", "Identity", "LeakyRelu", "Log", "Max", "Min", "Mul", "Neg", "Pow", "PRelu",
    "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Softplus", "Softsign", "Sqrt",
    "Sub", "Tanh",
})


@dataclass
class CountCut:
    """A K-bit dense layer whose sums decide one DynamicSign: ``+1`` iff ``margin(s) >= 0`` with
    ``margin(s) = sigma * min(s - lo, hi - s)`` per output channel: ``sigma = 1`` for the sums
    ``lo <= s <= hi``, ``-1`` for those outside ``(lo, hi)`` (a suffix of sums has ``hi > K``,
    a prefix ``lo < -K``)."""

    sign: str  # the DynamicSign's output
    k: int
    lo: np.ndarray  # int32 [N]
    hi: np.ndarray
    sigma: np.ndarray
    nodes: tuple[str, ...]  # the chain's nodes, from the dense's output to the sign's input

    def margin(self, s: np.ndarray) -> np.ndarray:
        """Numpy reference of the margin for integer sums ``s`` [..., N]."""
        s = np.asarray(s, np.int64)
        return self.sigma * np.minimum(s - self.lo, self.hi - s)


def sums(k: int) -> np.ndarray:
    """The values a K-bit ±1 dot product takes, ascending."""
    return np.arange(-k, k + 1, 2, dtype=np.int64)


def cut_of(bits: np.ndarray, k: int):
    """Classify the +1 set of each channel of ``bits`` [K + 1, N] (row i: sum ``-K + 2i``) →
    ``(lo, hi, sigma)`` int32 [N] (:class:`CountCut`), or None when some channel's set is neither
    an interval of sums nor the complement of one."""
    s = sums(k)
    far = 3 * k + 4  # beyond any sum: min(s - lo, far - s) == s - lo for every s in range
    out = np.zeros((3, bits.shape[1]), np.int64)
    for n in range(bits.shape[1]):
        found = _classify(bits[:, n], s, far)
        if found is None:
            return None
        out[:, n] = found
    return tuple(out.astype(np.int32))


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True as (first, last) indices."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1))


def _classify(col: np.ndarray, s: np.ndarray, far: int) -> tuple[int, int, int] | None:
    ones = _runs(col)
    last = len(col) - 1
    if not ones:  # never +1: a suffix starting past the largest sum
        return int(s[-1]) + 2, far, 1
    if len(ones) == 1:
        i, j = ones[0]
        return (int(s[i]) if i > 0 else -far), (int(s[j]) if j < last else far), 1
    zeros = _runs(~col)
    if len(zeros) == 1:  # +1 at both ends: -min(s - lo, hi - s) >= 0 iff s <= lo or s >= hi
        i, j = zeros[0]
        return int(s[i]) - 2, int(s[j]) + 2, -1
    return None


def chain_of(ctx, layer):
    """The elementwise nodes from a binary dense's output to one DynamicSign, and that sign →
    ``(nodes, sign)``; None when a chain value goes anywhere else or a constant is not per
    channel.  (The graph is in topological order: a node's chain inputs come before it.)"""
    index, plan = ctx.index, ctx.plan
    out = layer.node.output[0]
    n_out = layer.dense_weight().shape[0]
    rank = len(ctx.shapes.get(out, ()) or ())
    folded = plan.folded_scale.get(layer.node.name)
    values, nodes, signs = {out}, [], []
    for node in ctx.model.graph.node:
        if not any(name in values for name in node.input):
            continue
        if is_dynamic_sign(node):
            if node.input[0] not in values or (len(node.input) > 1 and node.input[1] in values):
                return None
            signs.append(node)
            continue
        owned_by_scale = folded is not None and node.name == folded[1]
        if (not is_standard(node, *ELEMENTWISE) or len(node.output) != 1
                or (ctx.is_claimed(node) and not owned_by_scale)):
            return None
        if not all(not name or name in values or _per_channel_const(index, name, n_out, rank)
                   for name in node.input):
            return None
        nodes.append(node)
        values.add(node.output[0])
    if len(signs) != 1 or rank < 2 or values & ctx.keep:
        return None
    sign = signs[0]
    # every chain value is read inside the chain; only the sign's input leaves it
    inside = {n.name for n in nodes} | {sign.name}
    if any(c.name not in inside for v in values for c in index.consumers.get(v, [])):
        return None
    if len(sign.input) > 1 and sign.input[1] and not _per_channel_const(index, sign.input[1], n_out, rank):
        return None
    return nodes, sign


def _per_channel_const(index, name: str, n_out: int, rank: int) -> bool:
    """A float constant that broadcasts along the last axis only, to no higher rank."""
    value = index.constant(name)
    if value is None or value.dtype.kind != "f" or value.ndim > rank:
        return False
    return all(d == 1 for d in value.shape[:-1]) and (value.ndim == 0 or value.shape[-1] in (1, n_out))


def tabulate(ctx, layer, nodes, sign) -> np.ndarray:
    """The sign's bits [K + 1, N] for every sum, from ONNX Runtime running the chain's nodes
    as written (no graph optimizations: a fused kernel, ORT's Gelu say, need not round as the
    nodes do)."""
    from ...parity import onnx_intermediates

    w = layer.dense_weight()
    n_out, k = w.shape
    out = layer.node.output[0]
    consts = {}
    for node in nodes:
        for name in node.input:
            value = ctx.index.constant(name) if name else None
            if value is not None:
                consts[name] = value
    x_name = sign.input[0]
    graph = onnx.helper.make_graph(
        nodes, "count_threshold",
        [onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, [k + 1, n_out])],
        [onnx.helper.make_tensor_value_info(x_name, onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(v, n) for n, v in consts.items()])
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", standard_opset(ctx.model))], ir_version=8)
    s = np.broadcast_to(sums(k).astype(np.float32)[:, None], (k + 1, n_out)).copy()
    x = s if not nodes else onnx_intermediates(model, {out: s}, [], optimize=False)[x_name]
    x = np.asarray(x, np.float32).reshape(k + 1, n_out)
    t = ctx.index.constant(sign.input[1]) if len(sign.input) > 1 and sign.input[1] else None
    t = np.zeros(n_out, np.float32) if t is None else per_channel(t, n_out, 1)
    with np.errstate(invalid="ignore"):
        return x >= t[None, :]


class CountThreshold:
    name = "CountThreshold"
    requires = frozenset({"binary_kernels", "fuse_epilogues"})  # --no-fuse-epilogues: the float chain

    def plan(self, ctx) -> None:
        plan = ctx.plan
        for name, layer in plan.binary.items():
            if layer.kind != "dense" or plan.claims.get(name) != "BinaryDense" or not _plain_product(layer):
                continue
            found = chain_of(ctx, layer)
            if found is None:
                continue
            nodes, sign = found
            k = layer.dense_weight().shape[1]
            cut = cut_of(tabulate(ctx, layer, nodes, sign), k)
            if cut is None:
                continue
            plan.count_thresholds[name] = CountCut(sign.output[0], k, *cut, tuple(n.name for n in nodes))
            plan.cut_signs[sign.output[0]] = name
            folded = plan.folded_scale.pop(name, None)
            for node in nodes:
                if folded is None or node.name != folded[1]:
                    ctx.claim(node, self)
            if folded is not None:  # the scale is part of the chain now, not of the epilogue
                plan.claims[folded[1]] = self.name

    def convert(self, imp, node, inputs, attrs, opset):
        # every chain value stands for the dense's margin (BinaryDense wrote it); the sign
        # compares it with 0 (Importer.record_sign)
        return next(v for name, v in zip(node.input, inputs) if name and imp.index.constant(name) is None)


def _plain_product(layer) -> bool:
    """A MatMul, or a Gemm adding nothing: its output is the integer sum itself."""
    node = layer.node
    if is_standard(node, "MatMul"):
        return True
    return (is_standard(node, "Gemm") and float(attr(node, "alpha", 1.0)) == 1.0
            and not (len(node.input) > 2 and node.input[2]))
