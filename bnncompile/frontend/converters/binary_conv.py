"""Binary convolutions: ``bitpack(X, T)`` + the XNOR-popcount ``bconv2d`` kernel, and the float
chain after it (BN, residual add, RPReLU, the next sign's packing) fused into its epilogue.

* :class:`BinaryConv` claims every Conv proven binary (:mod:`..binary_layers`).  A conv whose
  chain is fused emits nothing itself: the chain's tail node emits the kernel, because the
  chain's residual inputs may come later in the graph.
* :class:`FusedEpilogue` claims the tail node of each fused chain (:mod:`..epilogue`): per-channel
  affine steps fold into the kernel's scale/bias, the rest become post-ops, sibling convs under
  a channel Concat run as one kernel, and a following DynamicSign with a constant threshold is
  packed by the same kernel.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ...errors import UnsupportedModelError, node_label
from ..binary_layers import BinaryLayer, conv_geometry, prove_all
from ..epilogue import Epilogue, match_chain, merge_concat
from ..graph import per_channel
from ..plan import require_constant
from .folded_scale import scale_bias


def conv_scale_bias(plan, index, node, k: int):
    """The kernel's own ``acc * scale + bias`` from the conv bias and the folded scale Mul."""
    bias = require_constant(index, node, 2, "conv bias")
    return scale_bias(plan, node.name, k, None if bias is None else bias.reshape(-1).astype(np.float32))


class BinaryConv:
    name = "BinaryConv"
    requires = frozenset({"binary_kernels"})

    def plan(self, ctx) -> None:
        prove_all(ctx)
        for name, layer in ctx.plan.binary.items():
            if layer.kind == "conv":
                ctx.claim(name, self)
                ctx.plan.sign_layouts.setdefault(layer.signs[0].output[0], set()).add("nchw")

    def convert(self, imp, node, inputs, attrs, opset):
        layer = imp.plan.binary[node.name]
        if node.name in imp.plan.fused_convs:
            # The chain's tail emits the kernel; until then the chain computes on a placeholder
            # that dead-code elimination removes.
            from tvm import relax

            xs = imp.shape_of(imp.sign_operand(layer.signs[0])[0])
            return imp.emit(relax.op.zeros(out_shape(layer, xs), "float32"))
        scale, bias = conv_scale_bias(imp.plan, imp.index, node, layer.weight.shape[0])
        return emit_bconv(imp, node, layer, scale, bias)


class FusedEpilogue:
    name = "FusedEpilogue"
    requires = frozenset({"binary_kernels", "fuse_epilogues"})

    def plan(self, ctx) -> None:
        plan, index = ctx.plan, ctx.index
        for name, layer in plan.binary.items():
            if layer.kind != "conv":
                continue
            k = layer.weight.shape[0]
            start = layer.node.output[0]
            if name in plan.folded_scale:  # the folded Mul is the conv's only consumer
                start = index.consumers[start][0].output[0]
            scale, bias = conv_scale_bias(plan, index, layer.node, k)
            epi = match_chain(index, layer.node, start, k, scale, bias, shapes=ctx.shapes, keep=ctx.keep)
            if epi is not None:
                plan.epilogues[epi.tail] = epi
                plan.fused_convs[name] = epi.tail
                epi.pack = _packable_sign(plan, index, epi)
        by_output = {epi.output: epi for epi in plan.epilogues.values()}
        for node in ctx.model.graph.node:
            if node.op_type != "Concat":
                continue
            parts = [by_output.get(name) for name in node.input]
            if len(parts) < 2 or any(p is None for p in parts):
                continue
            merged = merge_concat(index, node, parts, [plan.binary[p.conv] for p in parts],
                                  shapes=ctx.shapes, keep=ctx.keep)
            if merged is None:
                continue
            for part in parts:
                del plan.epilogues[part.tail]
                plan.fused_convs[part.conv] = merged.tail
            plan.epilogues[merged.tail] = merged
            merged.pack = _packable_sign(plan, index, merged)
        for tail in plan.epilogues:
            ctx.claim(tail, self)

    def convert(self, imp, tail, inputs, attrs, opset):
        epi = imp.plan.epilogues[tail.name]
        layer = imp.plan.binary[epi.conv]
        if epi.weight is not None:  # sibling convs under a Concat, output channels stacked
            layer = dataclasses.replace(layer, weight=epi.weight)
        post_args = []
        for kind, payload in epi.post:
            if kind == "residual":
                post_args.append(imp.value(payload))
            elif payload is not None:
                post_args.append(imp.const(payload))
        pack = None
        if epi.pack is not None:
            sign_out, thr = epi.pack
            pack = (sign_out, imp.const(thr.reshape(1, -1, 1, 1)))
        return emit_bconv(imp, layer.node, layer, epi.scale, epi.bias, epi.post_kinds, post_args,
                          fused=epi.nodes, pack=pack, residual_channels=epi.residual_channels,
                          siblings=epi.siblings)


def _packable_sign(plan, index, epi: Epilogue):
    """A DynamicSign of the chain's output whose bits only binary convs read, with a constant
    per-channel threshold (ReActNet, Bi-Real) → (sign output, threshold [K]); DyBNN / INSTA
    thresholds are pooled from the output itself, so the conv cannot know them yet."""
    from ...custom_ops.dynamic_sign import is_dynamic_sign

    k = len(epi.scale)
    for sign in index.consumers.get(epi.output, []):
        if (not is_dynamic_sign(sign) or sign.input[0] != epi.output
                or plan.sign_layout.get(sign.output[0]) != "nchw"):
            continue
        t = sign.input[1] if len(sign.input) > 1 and sign.input[1] else None
        if t is None:
            return sign.output[0], np.zeros(k, np.float32)
        thr = per_channel(index.constant(t), k, 3, max_ndim=4)
        if thr is not None:
            return sign.output[0], thr
    return None


def out_shape(layer: BinaryLayer, xs) -> list[int]:
    from ...schedules.packing import conv_out_size

    g = conv_geometry(layer, xs[2:])
    return [xs[0], layer.weight.shape[0],
            *(conv_out_size(xs[2 + i], g.kernel[i], g.stride[i], g.pads[i], g.pads[i + 2], g.dilation[i])
              for i in range(2))]


def emit_bconv(imp, node, layer, scale, bias, post=(), post_args=(), fused=(), pack=None,
               residual_channels=None, siblings=()):
    """Emit the bconv2d kernel of ``layer`` reading its sign's packed bits.  ``pack`` =
    (DynamicSign output, threshold [1, K, 1, 1]): the kernel also writes the packed bits of its
    output for that sign's binary consumers.  ``residual_channels``, ``siblings``: the shared
    shortcut's channel count and the other conv nodes when sibling convs under a Concat run as
    this one kernel (epilogue.merge_concat)."""
    from ...schedules import packing

    x, t = imp.sign_operand(layer.signs[0])
    xs = imp.shape_of(x)
    if len(xs) != 4:
        raise UnsupportedModelError(f"node {node_label(node)}: binary conv needs NCHW input, got {xs}")
    g = conv_geometry(layer, xs[2:])
    shape = out_shape(layer, xs)
    res_shape = list(shape)
    if residual_channels is not None:
        res_shape[1] = residual_channels
    for kind, arg in zip([k for k in post if k != "relu"], post_args):
        if kind == "residual" and imp.shape_of(arg) != res_shape:
            raise UnsupportedModelError(
                f"node {node_label(node)}: fused residual has shape {imp.shape_of(arg)}, "
                f"expected {res_shape} (graph value_info disagrees with the import)")
    pf = imp.kernel("bconv2d", xs, layer.weight.shape, stride=g.stride, padding=g.pads,
                    dilation=g.dilation, pad_value=g.pad_value, with_scale=scale is not None,
                    with_bias=bias is not None, post=post, pack_output=pack is not None,
                    residual_channels=residual_channels)
    packed = imp.pack(x, t, last_axis=False, key=layer.signs[0].output[0])
    from ...schedules.registry import weight_block_of

    args = [packed, imp.const(packing.pack_conv_weight(layer.weight, block=weight_block_of(pf)))]
    if packing.needs_border_table(g.pads, g.pad_value):
        args.append(imp.const(packing.conv_border_table(
            layer.weight, xs[2:], stride=g.stride, padding=g.pads, dilation=g.dilation)))
    args += [imp.const(v.astype(np.float32)) for v in (scale, bias) if v is not None]
    args += list(post_args)
    if pack is not None:
        args.append(pack[1])
    dtype = "float32" if scale is not None else "int32"
    macs = int(np.prod(shape)) * int(np.prod(layer.weight.shape[1:]))
    packed_shape = [shape[0], *shape[2:], (shape[1] + 63) // 64]
    extra = [(packed_shape, "uint64")] if pack is not None else []
    y = imp.call_kernel(pf, args, shape, dtype, layer=node.name, kind="bconv2d", binary_macs=macs,
                        extra_outputs=extra)
    if pack is not None:
        y, words = y
        imp.provide_packed(pack[0], words)  # the sign's binary consumers read these
    info = imp.kernel_info(pf)
    info["layers"].extend(siblings)
    if fused:
        info.setdefault("fused", []).extend(fused)
    if dtype == "float32":
        return y
    from tvm import relax

    return imp.emit(relax.op.astype(y, "float32"))
