"""2-D pooling on CPUs: MaxPool → bnncompile's separable max-pool kernel (it also reads the
channel-blocked output of a stem conv), AveragePool whose windows tile the map (stride = kernel,
the downsampling shortcuts of ResNet / ReActNet) → the average-pool kernel."""

from __future__ import annotations

from ..graph import attr, is_standard


def _is_plain_max_pool(node) -> bool:
    """2-D MaxPool, explicit pads, no dilation / ceil mode / indices output."""
    return (is_standard(node, "MaxPool") and len(node.output) == 1
            and len(attr(node, "kernel_shape", [])) == 2 and not attr(node, "ceil_mode", 0)
            and all(d == 1 for d in attr(node, "dilations", [1, 1]))
            and attr(node, "auto_pad", "NOTSET") == "NOTSET" and not attr(node, "storage_order", 0))


def _is_plain_avg_pool(node) -> bool:
    k = list(attr(node, "kernel_shape", []))
    return (is_standard(node, "AveragePool") and len(node.output) == 1 and len(k) == 2
            and list(attr(node, "strides", [1, 1])) == k and not any(attr(node, "pads", [0] * 4))
            and not attr(node, "ceil_mode", 0) and all(d == 1 for d in attr(node, "dilations", [1, 1]))
            and attr(node, "auto_pad", "NOTSET") == "NOTSET")


class MaxPool:
    name = "MaxPool"
    requires = frozenset({"binary_kernels", "cpu"})

    def plan(self, ctx) -> None:
        for node in ctx.model.graph.node:
            if _is_plain_max_pool(node):
                ctx.claim(node, self)

    def convert(self, imp, node, inputs, attrs, opset):
        from ...schedules.packing import conv_out_size

        x = inputs[0]
        xs = imp.shape_of(x)
        if len(xs) not in (4, 5):  # 1-D / 3-D pooling: TVM's converter
            return imp.fallback("MaxPool", inputs, attrs, opset)
        k = tuple(attr(node, "kernel_shape"))
        stride = tuple(attr(node, "strides", [1, 1]))
        pads = tuple(attr(node, "pads", [0, 0, 0, 0]))
        # 5-D: the NCHWc output of a float conv only this pool reads (converters.float_conv)
        pf = imp.kernel("maxpool2d", xs, kernel=k, stride=stride, padding=pads)
        channels = xs[1] * xs[4] if len(xs) == 5 else xs[1]
        out = [xs[0], channels, *(conv_out_size(xs[2 + i], k[i], stride[i], pads[i], pads[i + 2], 1)
                                  for i in range(2))]
        return imp.call_kernel(pf, [x], out, "float32", layer=node.name, kind="maxpool2d")


class AveragePool:
    name = "AveragePool"
    requires = frozenset({"binary_kernels", "cpu"})

    def plan(self, ctx) -> None:
        for node in ctx.model.graph.node:
            if _is_plain_avg_pool(node):
                ctx.claim(node, self)

    def convert(self, imp, node, inputs, attrs, opset):
        x = inputs[0]
        xs = imp.shape_of(x)
        if len(xs) != 4:
            return imp.fallback("AveragePool", inputs, attrs, opset)
        k = tuple(attr(node, "kernel_shape"))
        pf = imp.kernel("avgpool2d", xs, kernel=k)
        out = [xs[0], xs[1], xs[2] // k[0], xs[3] // k[1]]
        return imp.call_kernel(pf, [x], out, "float32", layer=node.name, kind="avgpool2d")
