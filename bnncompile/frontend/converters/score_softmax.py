"""The softmax of binary attention scores from their popcounts: a Softmax over the last axis
whose only input is a binary batch matmul (``Q @ K^T`` of two DynamicSigns, its 1/sqrt(d) folded
in) → the matmul writes its popcounts as bytes and the softmax looks each one's exponential
up in a table computed once per call (``compute.softmax_counts``, ``vpermi2ps`` on AVX-512):
the same floats as the softmax of the float scores, bit for bit.

A K-bit score takes K + 1 values, so the exponentials of a row are a table of those, shifted by
the row's best score.  Taken only where every score and every difference of two is a float32
number (``compute.score_steps``: 1/sqrt(d) a power of two, as for heads of 64), K <= 255, fast
math (the polynomial exponential the table shares with the float softmax) and a CPU that looks
tables up in registers; otherwise the float scores and the float softmax, as before.  An int8
attention product that computes this softmax in its own kernel (``AttentionProduct``) reads
the counts the same way (:func:`counts_of`)."""

from __future__ import annotations

import numpy as np

from ..graph import attr, is_standard, standard_opset
from ..plan import only_read_by


def counts_of(imp, softmax_name: str):
    """``(k, alpha)`` of the popcounts a planned Softmax reads, where its matmul wrote them as
    counts (at import, :class:`~.binary_matmul.BinaryBatchMatMul`); None: float scores."""
    matmul = imp.plan.score_softmaxes.get(softmax_name)
    return None if matmul is None else imp.plan.count_scores.get(matmul)


def steps_const(imp, k: int, alpha: float | None):
    from ...schedules import compute

    return imp.const(compute.score_steps(k, alpha))


def counts_softmax(imp, softmax_name: str, x):
    """The probabilities of the planned Softmax ``softmax_name`` from the popcounts ``x`` its
    matmul wrote (:func:`counts_of` is not None)."""
    from tvm import relax

    from ...schedules.float_glue.count_softmax import softmax_counts_func

    k, alpha = counts_of(imp, softmax_name)
    shape = imp.shape_of(x)
    rows = [int(np.prod(shape[:-2])), *shape[-2:]]  # the kernel's [B, M, N]
    tag = "x".join(map(str, rows))
    func = softmax_counts_func(rows, k, alpha, imp.target).with_attr(
        "global_symbol", f"bnn_softmax_counts_{tag}_k{k}")
    p = imp.call_kernel(func, [imp.emit(relax.op.reshape(x, rows)), steps_const(imp, k, alpha)], rows,
                        "float32", layer=softmax_name, kind="softmax_counts")
    return imp.emit(relax.op.reshape(p, shape))


class ScoreSoftmax:
    name = "ScoreSoftmax"
    requires = frozenset({"binary_kernels", "cpu", "fast_math", "table_lookup"})

    def plan(self, ctx) -> None:
        index, plan = ctx.index, ctx.plan
        opset = standard_opset(ctx.model)
        for name, layer in plan.binary.items():
            if layer.kind != "batch_matmul" or plan.claims.get(name) != "BinaryBatchMatMul":
                continue
            scores = layer.node.output[0]
            folded = plan.folded_scale.get(name)
            if folded is not None:  # the 1/sqrt(d) Mul, applied by the matmul
                if not only_read_by(index, scores, {folded[1]}, ctx.keep):
                    continue
                scores = ctx.node(folded[1]).output[0]
            node = index.only_consumer(scores)
            if node is None or not is_standard(node, "Softmax") or scores in ctx.keep:
                continue
            rank = len(ctx.shapes.get(scores, ()) or ())
            axis = int(attr(node, "axis", -1 if opset >= 13 else 1))
            if rank < 2 or axis not in (-1, rank - 1):  # opset < 13: axis 1 flattens the rest
                continue
            if not ctx.is_claimed(node):
                ctx.claim(node, self)
            elif plan.claims[node.name] != "FusedSoftmax":
                continue
            plan.score_softmaxes[node.name] = name

    def convert(self, imp, node, inputs, attrs, opset):
        if counts_of(imp, node.name) is None:  # the matmul kept float scores
            return imp.fallback("Softmax", inputs, attrs, opset)
        return counts_softmax(imp, node.name, inputs[0])


def wants_counts(imp, matmul_name: str, k: int, alpha: float | None) -> bool:
    """Should the binary batch matmul ``matmul_name`` write popcounts (a planned Softmax reads
    it, and its scores are exact steps)?"""
    from ...schedules import compute

    return (matmul_name in imp.plan.score_softmaxes.values() and 0 < k <= 255
            and compute.score_steps(k, alpha) is not None)
