"""The bias and residual Adds after a binary dense, in its epilogue: ``MatMul -> [Mul scale] ->
Add(per-channel constant) -> Add(a tensor of the output's shape)`` (a transformer's projection
and MLP output joining the residual stream) → one kernel writing ``acc * scale + bias +
residual``, where TVM ran a float pass over three tensors after it.  Either Add may be absent;
each is taken only where the value before it has no other reader, and the residual only where it
is computed before the dense (the graph's order) and has the output's shape."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import is_standard, per_channel


@dataclass
class DenseTail:
    """What a binary dense's epilogue adds after its scale."""

    bias: np.ndarray | None  # float32 [N]
    residual: str | None  # the ONNX tensor added last
    nodes: tuple[str, ...]  # the Adds (bias first)
    sources: tuple[str, ...]  # each Add's input on the dense's side


def _other(node, tensor: str) -> str | None:
    """The Add's input that is not ``tensor`` (None when both are)."""
    a, b = node.input[0], node.input[1]
    return b if a == tensor else a if b == tensor else None


def _tail(ctx, layer):
    index, plan = ctx.index, ctx.plan
    name = layer.node.name
    n_out = layer.dense_weight().shape[0]
    out = layer.node.output[0]
    rank = len(ctx.shapes.get(out, ()) or ())
    folded = plan.folded_scale.get(name)
    tail = ctx.node(folded[1]).output[0] if folded is not None else out
    bias, residual, nodes, sources = None, None, [], []
    add = index.only_consumer(tail)
    if add is not None and is_standard(add, "Add") and tail not in ctx.keep and not ctx.is_claimed(add):
        other = _other(add, tail)
        const = index.constant(other) if other else None
        if const is not None and const.ndim <= rank:
            bias = per_channel(const, n_out, 1)
        if bias is not None:
            nodes.append(add.name)
            sources.append(tail)
            tail = add.output[0]
            add = index.only_consumer(tail)
    if add is not None and is_standard(add, "Add") and tail not in ctx.keep and not ctx.is_claimed(add):
        other = _other(add, tail)
        shape = ctx.shapes.get(tail)
        if (other and index.constant(other) is None and shape and None not in shape
                and ctx.shapes.get(other) == shape and _before(ctx, other, layer.node)):
            residual = other
            nodes.append(add.name)
            sources.append(tail)
    if not nodes:
        return None
    return DenseTail(bias, residual, tuple(nodes), tuple(sources))


def _before(ctx, tensor: str, node) -> bool:
    """``tensor`` is a graph input or computed by a node before ``node``: converted by then."""
    producer = ctx.index.producer.get(tensor)
    if producer is None:
        return tensor in {i.name for i in ctx.model.graph.input}
    nodes = ctx.model.graph.node
    return next(n.name for n in nodes if n.name in (producer.name, node.name)) == producer.name


class DenseEpilogue:
    name = "DenseEpilogue"
    requires = frozenset({"binary_kernels", "fuse_epilogues"})

    def plan(self, ctx) -> None:
        plan = ctx.plan
        for name, layer in plan.binary.items():
            if layer.kind != "dense" or plan.claims.get(name) != "BinaryDense" or name in plan.count_thresholds:
                continue
            tail = _tail(ctx, layer)
            if tail is not None:
                plan.dense_tails[name] = tail
                for node in tail.nodes:
                    ctx.claim(node, self)

    def convert(self, imp, node, inputs, attrs, opset):
        # the dense already added this: pass on the value from the dense's side
        source = next(src for tail in imp.plan.dense_tails.values()
                      for add, src in zip(tail.nodes, tail.sources) if add == node.name)
        return inputs[list(node.input).index(source)]
