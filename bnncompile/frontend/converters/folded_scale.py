"""The per-output-channel scale ``Mul`` after a binary layer (ReActNet's mean|W|, a transformer's
1/sqrt(d)) folded into the kernel's ``acc * scale + bias``: the popcount result never exists as a
float tensor, and the Mul itself converts to its input."""

from __future__ import annotations

import numpy as np

from ..graph import per_channel


def scale_bias(plan, name: str, k: int, bias: np.ndarray | None):
    """``(scale, bias)`` of a binary kernel's ``acc * scale + bias``: the folded Mul and the
    layer's own bias; ``(None, None)`` for a plain integer output."""
    folded = plan.folded_scale.get(name)
    scale = folded[0] if folded is not None else None
    if scale is not None and bias is not None:
        bias = bias * scale  # (acc + b) * s == acc * s + b * s
    if scale is None and bias is not None:
        scale = np.ones(k, np.float32)
    return scale, bias


class FoldedScale:
    name = "FoldedScale"
    requires = frozenset({"binary_kernels"})

    def plan(self, ctx) -> None:
        index = ctx.index
        for name, layer in ctx.plan.binary.items():
            out = layer.node.output[0]
            mul = index.only_consumer(out)
            if out in ctx.keep or mul is None or mul.op_type != "Mul" or ctx.is_claimed(mul):
                continue
            other = mul.input[1] if mul.input[0] == out else mul.input[0]
            const = index.constant(other)
            if layer.kind == "conv":
                vec = per_channel(const, layer.weight.shape[0], 3, max_ndim=4)
            elif layer.kind == "dense":
                vec = per_channel(const, layer.dense_weight().shape[0], 1)
                rank = len(ctx.shapes.get(out, ()) or ())
                if vec is not None and const.ndim > max(rank, 1):
                    vec = None  # the Mul would broadcast the output up a rank
            else:  # batch matmul: one scalar (attention's 1/sqrt(d))
                vec = (const.reshape(-1)[:1].astype(np.float32)
                       if const is not None and const.size == 1 and const.dtype.kind == "f" else None)
            if vec is not None:
                ctx.plan.folded_scale[name] = (vec, mul.name)
                ctx.claim(mul, self)

    def convert(self, imp, node, inputs, attrs, opset):
        # the producer already applied this scale in its epilogue
        producer = imp.index.producer.get(node.input[0])
        first = producer is not None and producer.name in imp.plan.folded_scale
        return inputs[0 if first else 1]
