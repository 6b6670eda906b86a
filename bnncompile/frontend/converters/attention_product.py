"""Attention's probability x value product on int8 (``compile --attention-precision int8``): a
float ``MatMul(P, V)`` whose ``P`` is a Softmax over its last axis and whose ``V`` is an
activation (not an initializer) → ``P`` quantized per row into unsigned bytes, ``V`` per
column into int8, an exact int32 batch matmul (``vpdpbusd`` on AVX-512 VNNI) and the float
output (``schedules.quantize``'s attention numbers).  Every other MatMul keeps its float
lowering; so does one whose shapes do not fit (batch dims that broadcast, rank < 3).  A Softmax
that only this MatMul reads is computed in the quantizer's kernel (fast math builds: the same
polynomial softmax, ``float_glue.softmax_quantize_rows_func``), one matrix at a time."""

from __future__ import annotations

import numpy as np

from ...errors import UnsupportedModelError, node_label
from ..graph import attr, is_standard, standard_opset
from ..plan import only_read_by
from . import score_softmax
from .score_softmax import counts_of, steps_const


def _softmax_axis(index, tensor: str, opset: int) -> int | None:
    """The axis of the Softmax that produces ``tensor`` (None: not a Softmax)."""
    node = index.producer.get(tensor)
    if node is None or not is_standard(node, "Softmax"):
        return None
    return int(attr(node, "axis", -1 if opset >= 13 else 1))


class AttentionProduct:
    name = "AttentionProduct"
    requires = frozenset({"binary_kernels", "cpu", "attention_int8"})

    def plan(self, ctx) -> None:
        opset = standard_opset(ctx.model)
        for node in ctx.model.graph.node:
            if not (is_standard(node, "MatMul") and not ctx.is_claimed(node) and len(node.input) == 2
                    and ctx.index.constant(node.input[1]) is None):
                continue
            axis = _softmax_axis(ctx.index, node.input[0], opset)
            if axis is not None:
                ctx.claim(node, self)  # its axis is checked against the rank at import
                softmax = ctx.index.producer[node.input[0]]
                if ("fast_math" in ctx.switches and axis == -1
                        and not ctx.is_claimed(softmax)
                        and only_read_by(ctx.index, node.input[0], {node.name}, ctx.keep)):
                    ctx.claim(softmax, FUSED_SOFTMAX)
                    ctx.plan.fused_softmaxes[node.name] = softmax.name

    def convert(self, imp, node, inputs, attrs, opset):
        from tvm import relax

        from ...schedules import quantize
        from ...schedules.registry_quantized import vnni_available

        p, v = inputs  # p: the Softmax's input where the Softmax is fused (FusedSoftmax)
        fused = node.name in imp.plan.fused_softmaxes
        ps, vs = imp.shape_of(p), imp.shape_of(v)
        axis = _softmax_axis(imp.index, node.input[0], opset)
        if (len(ps) < 3 or len(ps) != len(vs) or ps[:-2] != vs[:-2] or ps[-1] != vs[-2]
                or axis not in (-1, len(ps) - 1)):
            if fused:  # stays float, as written: the softmax too
                p = self._softmax(imp, node, p)
            return imp.fallback("MatMul", [p, v], attrs, opset)
        batch, (m, k), n = ps[:-2], ps[-2:], vs[-1]
        if k > quantize.ATTENTION_MAX_K:
            raise UnsupportedModelError(
                f"node {node_label(node)}: --attention-precision int8 sums {k} products of 255 x 127 "
                f"in int32 (at most {quantize.ATTENTION_MAX_K}); compile it with fp32")
        b = int(np.prod(batch))
        if fused and k % 4:  # the fused kernel takes whole 4-byte words: two kernels instead
            fused, p = False, self._softmax(imp, node, p)
        p3 = imp.emit(relax.op.reshape(p, [b, m, k]))
        v3 = imp.emit(relax.op.reshape(v, [b, k, n]))
        k4 = -(-k // 4) * 4
        counts = counts_of(imp, imp.plan.fused_softmaxes[node.name]) if fused else None
        row_inputs = [p3]
        if counts is not None:  # the scores as popcounts (converters.score_softmax)
            from ...schedules.float_glue.count_softmax import softmax_counts_quantize_rows_func

            rows = softmax_counts_quantize_rows_func([b, m, k], *counts, imp.target).with_attr(
                "global_symbol", f"bnn_softmax_counts_quantize_rows_{b}x{m}x{k}_k{counts[0]}")
            row_inputs.append(steps_const(imp, *counts))
        elif fused:
            from ...schedules.float_glue.rows import softmax_quantize_rows_func

            rows = softmax_quantize_rows_func([b, m, k], imp.target).with_attr(
                "global_symbol", f"bnn_softmax_quantize_rows_{b}x{m}x{k}")
        else:
            rows = imp.kernel("quantize_rows", [b, m, k])
        pq, pmax = imp.call_kernel(rows, row_inputs, [b, m, k4], "uint8", layer=node.name, kind="quantize",
                                   extra_outputs=[((b, m), "float32")])
        v_src, view = imp.read_through(v3)  # the values' head split read in place (no copy)
        cols = imp.kernel("quantize_columns", [b, k, n], view=view)
        vq, vmax = imp.call_kernel(cols, [v_src], [b, k4 // 4, n, 4], "int8", layer=node.name, kind="quantize",
                                   extra_outputs=[((b, n), "float32")])
        pf = imp.kernel("qbatch_matmul", [b, m, k4], [b, k4 // 4, n, 4])
        y = imp.call_kernel(pf, [pq, vq, pmax, vmax], [b, m, n], "float32", layer=node.name,
                            kind="qbmm_vnni" if vnni_available(imp.target) else "qbmm", float_macs=b * m * k * n)
        imp.plan.quantized_matmuls[node.name] = {"p_levels": quantize.P_LEVELS, "v_levels": quantize.V_LEVELS}
        return imp.emit(relax.op.reshape(y, [*batch, m, n]))

    @staticmethod
    def _softmax(imp, node, p):
        """The fused Softmax emitted on its own after all (the product stays float, or its rows
        are no whole words): from popcounts where its matmul wrote them."""
        from tvm import relax

        softmax = imp.index.producer[node.input[0]]
        imp.plan.fused_softmaxes.pop(node.name)
        if counts_of(imp, softmax.name) is None:
            return imp.emit(relax.op.nn.softmax(p, axis=-1))
        return score_softmax.counts_softmax(imp, softmax.name, p)


class FusedSoftmax:
    """A Softmax that only an int8 attention product reads, computed in that product's
    quantizer kernel (:class:`AttentionProduct` claims it): here it passes its input through."""

    name = "FusedSoftmax"
    requires = frozenset({"binary_kernels", "cpu", "attention_int8", "fast_math"})

    def plan(self, ctx) -> None:
        pass  # claimed by AttentionProduct

    def convert(self, imp, node, inputs, attrs, opset):
        return inputs[0]


FUSED_SOFTMAX = FusedSoftmax()
