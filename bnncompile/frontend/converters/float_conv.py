"""Float convolutions with constant weights (stems, float shortcuts) → bnncompile's blocked float
conv kernel on CPUs, or with ``compile --conv-precision int16|int8`` its quantized twin (the
activations quantized per sample into int16 pairs, then an int32 conv; ``schedules.quantize``;
int8 runs the same numbers as uint8 quads on ``vpdpbusd`` on a CPU with AVX-512 VNNI, and on AMX
tiles on a CPU with AMX-INT8, ``schedules.x86_amx``).
A Relu that alone reads a conv's output is applied in the conv's epilogue (:class:`FusedRelu`),
and a conv whose output (after such a Relu) only a claimed MaxPool reads (a ResNet stem, CCT's
tokenizer) writes its output channel-blocked (NCHWc) for that pool, which transposes its 4x
smaller output instead."""

from __future__ import annotations

import numpy as np

from ...errors import UnsupportedModelError, node_label
from ..graph import attr, is_standard
from ..plan import only_read_by


def _is_plain_float_conv(index, node) -> bool:
    """2-D, groups=1, explicit pads, constant float32 weight (and bias)."""
    if not is_standard(node, "Conv") or len(node.input) < 2:
        return False
    w = index.constant(node.input[1])
    bias_ok = len(node.input) < 3 or not node.input[2] or index.constant(node.input[2]) is not None
    return (w is not None and w.ndim == 4 and w.dtype == np.float32 and bias_ok
            and int(attr(node, "group", 1)) == 1 and attr(node, "auto_pad", "NOTSET") == "NOTSET"
            and len(attr(node, "pads", [0] * 4)) == 4)


class FloatConv:
    name = "FloatConv"
    requires = frozenset({"binary_kernels", "cpu"})

    def plan(self, ctx) -> None:
        for node in ctx.model.graph.node:
            if not ctx.is_claimed(node) and _is_plain_float_conv(ctx.index, node):
                ctx.claim(node, self)
        if "fuse_epilogues" in ctx.switches:
            for n in sorted(ctx.plan.float_convs):
                out = ctx.node(n).output[0]
                readers = ctx.index.consumers.get(out, [])
                if (len(readers) == 1 and is_standard(readers[0], "Relu") and not ctx.is_claimed(readers[0])
                        and only_read_by(ctx.index, out, {readers[0].name}, ctx.keep)):
                    ctx.claim(readers[0], FUSED_RELU)
                    ctx.plan.relu_float_convs[n] = readers[0].name
            pools = ctx.plan.max_pools

            def result(n):  # the tensor the conv's kernel writes: after a fused Relu
                relu = ctx.plan.relu_float_convs.get(n)
                return ctx.node(relu).output[0] if relu else ctx.node(n).output[0]

            ctx.plan.pooled_float_convs = {
                n for n in ctx.plan.float_convs if only_read_by(ctx.index, result(n), pools, ctx.keep)}

    def convert(self, imp, node, inputs, attrs, opset):
        from ...schedules import packing
        from ...schedules.registry import fconv2d_block

        x = inputs[0]
        xs = imp.shape_of(x)
        if len(xs) != 4:
            raise UnsupportedModelError(f"node {node_label(node)}: only 2-D convolutions are supported")
        w = imp.index.constant(node.input[1])
        pads = tuple(int(p) for p in attr(node, "pads", [0, 0, 0, 0]))
        stride = tuple(attr(node, "strides", [1, 1]))
        dil = tuple(attr(node, "dilations", [1, 1]))
        bias = imp.index.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        ob = fconv2d_block(imp.target)
        out = [xs[0], w.shape[0], *(packing.conv_out_size(xs[2 + i], w.shape[2 + i], stride[i], pads[i],
                                                          pads[i + 2], dil[i]) for i in range(2))]
        macs = int(np.prod(out)) * int(np.prod(w.shape[1:]))
        # only a max-pool reads it (a ResNet stem): keep the channel blocks, the pool reads
        # them whole and transposes its 4x smaller output instead (stem 1.54 -> 1.33 ms)
        blocked = node.name in imp.plan.pooled_float_convs and w.shape[0] % ob == 0
        if blocked:
            out = [out[0], out[1] // ob, *out[2:], ob]
        layout = "NCHWc" if blocked else "NCHW"
        relu = node.name in imp.plan.relu_float_convs
        tail = [] if bias is None else [imp.const(bias.astype(np.float32))]
        if imp.plan.conv_precision != "fp32":
            return _quantized(imp, node, x, xs, w, pads, stride, dil, tail, layout, out, macs, relu)
        pf = imp.kernel("fconv2d", xs, w.shape, stride=stride, padding=pads, dilation=dil,
                        with_bias=bias is not None, out_layout=layout, relu=relu)
        args = [x, imp.const(packing.block_conv_weight(w, ob)), *tail]
        return imp.call_kernel(pf, args, out, "float32", layer=node.name, kind="fconv2d", float_macs=macs)


def _quantized(imp, node, x, xs, w, pads, stride, dil, tail, layout, out, macs, relu):
    """quantize_pairs (x -> padded channel groups + per-sample amax), then the int32 conv: int16
    pairs (``vpmaddwd``), or at int8 on a VNNI CPU offset uint8 quads (``vpdpbusd``, 2x the MACs
    per instruction), or on an AMX CPU the AMX kernel.  Where groups along the kernel's width
    pad fewer products (``quantize.width_groups_pay``), quantize_width and those instead.  The
    same numbers every way."""
    from ...schedules import quantize
    from ...schedules.registry import fconv2d_block

    qw = quantize.quantize_conv_weight(w, imp.plan.conv_precision)
    imp.plan.quantized_convs[node.name] = {"qa": qw.qa, "qw": qw.qw}
    if _amx_fits(imp, layout):
        return _amx(imp, node, x, xs, w, pads, stride, dil, qw, tail, layout, out, macs, relu)
    ob = fconv2d_block(imp.target)
    group = 4 if _quads_fit(imp, qw, ob) else 2
    hp = xs[2] + pads[0] + pads[2]
    if quantize.width_groups_pay(xs[1], w.shape[3], group, dil[1]):
        # few channels, a wide kernel (a 3-channel 7x7 stem): the groups run along w
        width = quantize.width_extent(out[3], w.shape[3], stride[1], group)
        groups, qkw = [xs[0], xs[1], hp, width], {"width_group": group}
        pq = imp.kernel("quantize_width", xs, qa=qw.qa, padding=pads, group=group, width=width)
        blocked = quantize.width_blocked(qw.ints, ob, group)
    else:
        groups, qkw = [xs[0], -(-xs[1] // group), hp, xs[3] + pads[1] + pads[3], group], {}
        pq = imp.kernel("quantize_pairs", xs, qa=qw.qa, padding=pads, group=group)
        blocked = quantize.group_blocked(qw.ints, ob, group)
    q, amax = imp.call_kernel(pq, [x], groups, "int16" if group == 2 else "uint8", layer=node.name,
                              kind="quantize", extra_outputs=[((xs[0],), "float32")])
    pf = imp.kernel("qconv2d", groups, w.shape, stride=stride, dilation=dil, with_bias=bool(tail),
                    out_layout=layout, relu=relu, **qkw)
    comp = [imp.const(quantize.offset_compensation(qw.ints))] if group == 4 else []
    args = [q, imp.const(blocked), imp.const(qw.dequant), amax, *comp, *tail]
    return imp.call_kernel(pf, args, out, "float32", layer=node.name,
                           kind="qconv2d" if group == 2 else "qconv2d_vnni", float_macs=macs)


def _quads_fit(imp, qw, ob) -> bool:
    """int8 levels on a CPU with AVX-512 VNNI (16-channel blocks: one zmm ``vpdpbusd``)."""
    from ...schedules.registry_quantized import vnni_available

    return qw.qa <= 127 and qw.qw <= 127 and ob == 16 and vnni_available(imp.target)


def _amx_fits(imp, layout) -> bool:
    """int8 on a CPU with AMX-INT8 (its channel blocks are 16 wide: an NCHWc output needs the
    pool's blocks to be too)."""
    from ...schedules import x86_amx
    from ...schedules.registry import fconv2d_block

    return (imp.plan.conv_precision == "int8" and x86_amx.available(imp.target)
            and (layout == "NCHW" or fconv2d_block(imp.target) == x86_amx.TILE))


def _amx(imp, node, x, xs, w, pads, stride, dil, qw, tail, layout, out, macs, relu):
    """quantize_hwc (x -> padded int8 NHWC + per-sample amax), then the AMX int8 conv: the same
    numbers as the pairs path (``schedules.quantize``, int8 levels), on AMX tiles."""
    from ...schedules import x86_amx

    g = x86_amx.AmxGeometry(int(xs[0]), int(xs[1]), int(xs[2]), int(xs[3]), int(w.shape[0]),
                            int(w.shape[2]), int(w.shape[3]), tuple(int(v) for v in stride),
                            (pads[0], pads[1], pads[2], pads[3]), tuple(int(v) for v in dil))
    pq = imp.kernel("quantize_hwc", xs, qa=qw.qa, padding=pads, rows=g.hq)
    q, amax = imp.call_kernel(pq, [x], [g.n, g.hq, g.wp, g.c], "int8", layer=node.name, kind="quantize",
                              extra_outputs=[((g.n,), "float32")])
    pf = imp.kernel("qconv2d_amx", g, out_layout=layout, relu=relu)
    bias = tail or [imp.const(np.zeros(g.k, np.float32))]
    args = [q, imp.const(x86_amx.block_weight(qw.ints, g)), imp.const(qw.dequant), amax, *bias]
    return imp.call_kernel(pf, args, out, "float32", layer=node.name, kind="qconv2d_amx", float_macs=macs)


class FusedRelu:
    """A Relu that only reads a float conv's output, nothing else reading that: the conv applies
    it in its epilogue (``FloatConv.plan`` claims it), so here it passes its input through.
    CCT's tokenizer (Conv -> Relu -> MaxPool) then also writes channel blocks for the pool."""

    name = "FusedRelu"
    requires = frozenset({"binary_kernels", "cpu"})

    def plan(self, ctx) -> None:
        pass  # claimed by FloatConv, which decides which convs take their Relu

    def convert(self, imp, node, inputs, attrs, opset):
        return inputs[0]


FUSED_RELU = FusedRelu()
