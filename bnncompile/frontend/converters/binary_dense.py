"""Binary dense layers: a Gemm / MatMul whose input is a DynamicSign output and whose weight is a
±1 constant → ``bitpack_last(X, T)`` + the XNOR-popcount ``bdense`` kernel (any leading batch
dims: ``[B, L, D]`` token tensors too).  Gemm's ``alpha`` and ``beta * C`` fold into the kernel's
float epilogue, exactly like a following scale Mul."""

from __future__ import annotations

import numpy as np

from ...errors import UnsupportedModelError, node_label
from ..binary_layers import prove_all
from ..graph import attr, per_channel
from .folded_scale import scale_bias


class BinaryDense:
    name = "BinaryDense"
    requires = frozenset({"binary_kernels"})

    def plan(self, ctx) -> None:
        prove_all(ctx)
        for name, layer in ctx.plan.binary.items():
            if layer.kind == "dense":
                ctx.claim(name, self)
                ctx.plan.sign_layouts.setdefault(layer.signs[0].output[0], set()).add("last")

    def convert(self, imp, node, inputs, attrs, opset):
        layer = imp.plan.binary[node.name]
        x, t = imp.sign_operand(layer.signs[0])
        xs = imp.shape_of(x)
        w = layer.dense_weight()
        n_out = w.shape[0]
        bias = None
        alpha = 1.0
        if node.op_type == "Gemm":
            alpha, beta = float(attr(node, "alpha", 1.0)), float(attr(node, "beta", 1.0))
            if len(node.input) > 2 and node.input[2] and beta != 0.0:
                c = imp.index.constant(node.input[2])
                bias = per_channel(c, n_out, 1)
                if bias is None:
                    raise UnsupportedModelError(
                        f"node {node_label(node)}: Gemm C must be a constant per output (shape [N] "
                        f"or [1, N] or a scalar), got "
                        f"{'a computed tensor' if c is None else list(c.shape)}")
                bias = (bias.astype(np.float64) * beta).astype(np.float32)
        kernel_options, extra, dtype = _epilogue(imp, node.name, n_out, alpha, bias)
        from ... import schedules
        from ...schedules import compute, packing

        cut = imp.plan.count_thresholds.get(node.name)
        packed = cut is not None and _bits_only(imp, cut.sign, n_out)
        pf = imp.kernel("bdense", xs, w.shape, pack_output=packed, **kernel_options)
        args = [imp.pack(x, t, last_axis=True, key=layer.signs[0].output[0]),
                imp.const(packing.pack_dense_weight(w, schedules.dense_weight_bits_of(pf))), *extra]
        out_shape = [*xs[:-1], n_out // 64 if packed else n_out]
        y = imp.call_kernel(pf, args, out_shape, "uint64" if packed else dtype, layer=node.name,
                            kind="bdense", binary_macs=int(np.prod(xs)) * n_out)
        if packed:
            # the bits its binary consumers read; as the sign's margin, the ±1 they stand for
            # (>= 0 exactly where the bit is set: dead code unless a debug build exposes it)
            imp.provide_packed(cut.sign, y, last_axis=True)
            return imp.emit_te(compute.unpack_bits_float, y, [*xs[:-1], n_out], "last", name="unpack_bits")
        if dtype == "float32":
            return y
        from tvm import relax

        return imp.emit(relax.op.astype(y, "float32"))


def _bits_only(imp, sign: str, n_out: int) -> bool:
    """Does only bits leave a dense whose sums decide ``sign``?  Where every consumer of the
    sign is a binary dense reading it as its input (packed along the last axis), the kernel
    writes those bits itself (make_bdense's ``pack_output``) instead of a margin that a pack
    kernel reads back."""
    from ...schedules.registry import dense_packs_output

    if n_out % 64 or not dense_packs_output(imp.target):
        return False
    consumers = imp.index.consumers.get(sign, [])
    return bool(consumers) and all(
        imp.plan.claims.get(c.name) == "BinaryDense" and imp.plan.binary[c.name].signs[0].output[0] == sign
        for c in consumers)


def _epilogue(imp, name: str, n_out: int, alpha: float, bias):
    """``(make_bdense options, the kernel's epilogue arguments, output dtype)``: the margin of a
    sign decided on the sums (converters.count_threshold), or ``acc * scale + bias [+ residual]``
    (the folded scale Mul, Gemm's alpha and C, converters.dense_epilogue), or the int32 sums."""
    cut = imp.plan.count_thresholds.get(name)
    if cut is not None:
        return {"with_cut": True}, [imp.const(v) for v in (cut.lo, cut.hi, cut.sigma)], "float32"
    scale, bias = scale_bias(imp.plan, name, n_out, bias)
    if alpha != 1.0:  # (alpha * (A @ B) + beta * C) * s: alpha scales the integer sum only
        scale = (np.ones(n_out, np.float32) if scale is None else scale) * np.float32(alpha)
    tail = imp.plan.dense_tails.get(name)
    residual = None
    if tail is not None:
        if tail.bias is not None:  # (acc * s + b) + c == acc * s + (b + c), up to rounding
            bias = tail.bias if bias is None else (bias + tail.bias).astype(np.float32)
        scale = np.ones(n_out, np.float32) if scale is None else scale
        residual = imp.value(tail.residual) if tail.residual else None
    options = {"with_scale": scale is not None, "with_bias": bias is not None,
               "with_residual": residual is not None}
    extra = [imp.const(v.astype(np.float32)) for v in (scale, bias) if v is not None]
    extra += [residual] if residual is not None else []
    return options, extra, "float32" if scale is not None else "int32"
