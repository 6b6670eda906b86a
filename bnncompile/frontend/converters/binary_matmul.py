"""Binary batch matmul (attention's ``Q @ K^T`` and ``A @ V`` on binarized operands): a MatMul
whose two operands are DynamicSign outputs (B possibly ``Transpose``d over its last two axes) →
both packed along the reduction axis + the XNOR-popcount ``bbatch_matmul`` kernel; batch dims
broadcast as numpy's matmul does; a folded scalar scale Mul (1/sqrt(d)) becomes the kernel's
``alpha``; scores that only a softmax reads leave as popcounts (:mod:`.score_softmax`)."""

from __future__ import annotations

import numpy as np

from ...errors import UnsupportedModelError, node_label
from ..binary_layers import prove_all
from .score_softmax import wants_counts


class BinaryBatchMatMul:
    name = "BinaryBatchMatMul"
    requires = frozenset({"binary_kernels"})

    def plan(self, ctx) -> None:
        prove_all(ctx)
        for name, layer in ctx.plan.binary.items():
            if layer.kind != "batch_matmul":
                continue
            ctx.claim(name, self)
            layouts = ctx.plan.sign_layouts
            layouts.setdefault(layer.signs[0].output[0], set()).add("last")
            if layer.b_transposed:  # B = Transpose(sign): the sign's own last axis is K
                layouts.setdefault(layer.signs[1].output[0], set()).add("last")

    def convert(self, imp, node, inputs, attrs, opset):
        from tvm import relax

        layer = imp.plan.binary[node.name]
        (xa, ta), (xb, tb) = (imp.sign_operand(s) for s in layer.signs)
        a_shape, b_shape = imp.shape_of(xa), imp.shape_of(xb)
        if len(a_shape) < 2 or len(b_shape) < 2:  # 1-D operands: ONNX's vector cases, float
            return imp.fallback("MatMul", inputs, attrs, opset)
        # b_shape as [*batch, N, K] whichever way B is given
        b_nk = b_shape if layer.b_transposed else [*b_shape[:-2], b_shape[-1], b_shape[-2]]
        if a_shape[-1] != b_nk[-1]:
            raise UnsupportedModelError(f"node {node_label(node)}: inner dimensions {a_shape} and "
                                        f"{b_shape} do not match")
        try:
            batch = list(np.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_nk[:-2])))
        except ValueError as exc:
            raise UnsupportedModelError(f"node {node_label(node)}: batch dimensions of {a_shape} "
                                        f"and {b_shape} do not broadcast") from exc
        a_key = layer.signs[0].output[0]
        if a_shape[:-2] != batch:  # numpy broadcasting of the batch dims: materialise A's
            xa = imp.emit(relax.op.broadcast_to(xa, [*batch, *a_shape[-2:]]))
            a_shape, a_key = imp.shape_of(xa), None
        b_key = layer.signs[1].output[0] if layer.b_transposed else None
        if b_shape[:-2] != batch:
            xb = imp.emit(relax.op.broadcast_to(xb, [*batch, *b_shape[-2:]]))
            b_key = None
        if not layer.b_transposed:
            # pack B along its reduction axis (-2): transpose X and the threshold, the threshold
            # at its own broadcastable shape (materialised to X's shape, the pack read a full
            # float tensor of thresholds: CCT-7's values, 0.13 ms of packing per inference)
            tb = relax.const(np.zeros((), np.float32)) if tb is None else tb
            t_shape = imp.shape_of(tb)
            rank = len(imp.shape_of(xb))
            tb = imp.emit(relax.op.reshape(tb, [1] * (rank - len(t_shape)) + t_shape))
            perm = [*range(len(batch)), len(batch) + 1, len(batch)]
            xb = imp.emit(relax.op.permute_dims(xb, perm))
            tb = imp.emit(relax.op.permute_dims(tb, perm))
        b_shape = imp.shape_of(xb)
        folded = imp.plan.folded_scale.get(node.name)
        alpha = float(folded[0][0]) if folded is not None else None
        counts = wants_counts(imp, node.name, a_shape[-1], alpha)
        pf = imp.kernel("bbatch_matmul", a_shape, b_shape, alpha=None if counts else alpha, counts=counts)
        pa = imp.pack(xa, ta, last_axis=True, key=a_key)
        pb = imp.pack(xb, tb, last_axis=True, key=b_key)
        dtype = "uint8" if counts else "float32" if alpha is not None else "int32"
        macs = int(np.prod(a_shape)) * b_shape[-2]
        y = imp.call_kernel(pf, [pa, pb], [*a_shape[:-1], b_shape[-2]], dtype, layer=node.name,
                            kind="bbatch_matmul", binary_macs=macs)
        if counts:  # popcounts for the softmax that reads them (converters.score_softmax)
            imp.plan.count_scores[node.name] = (a_shape[-1], alpha)
            return y
        return y if dtype == "float32" else imp.emit(relax.op.astype(y, "float32"))
