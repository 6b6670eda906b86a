"""A DySign threshold pooled over tokens as one kernel: ``ReduceMean(x, tokens) -> FC -> Relu
-> FC [-> Add constant]`` (DyBinaryCCT's per-sample, per-channel threshold, six per encoder
layer) → ``compute.token_threshold``, where TVM ran a mean and two matrix-vector products as
three kernels of a few microseconds each, plus copies for the means it read through a view:
the Q / K slices of ``qkv`` and attention's merged heads are pooled where they lie
(:meth:`~bnncompile.frontend.importer.Importer.read_through`).  Where the pooled tensor is a
GELU as PyTorch exports it (``x * 0.5 * (1 + Erf(x / sqrt 2))``: DyBinaryCCT's fc2 site) and the
build uses fast math, the kernel computes the GELU too, writes it for the sign's pack and sums
it in the same pass (``compute.gelu_erf``, the same arithmetic as the fast-math legalization).

An FC is a ``Gemm`` (``alpha = beta = 1``, ``transA = 0``, constant B and C) or a ``MatMul`` by a
constant ``[in, out]`` matrix with an optional ``Add`` of a constant bias.  Only the chain's last
node is claimed: the others are imported as written and left without a reader (Relax drops
them), so a tensor of the chain that something else reads (a debug output) is still computed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import attr, int_operand, is_standard, per_channel, standard_opset


@dataclass(frozen=True)
class GeluPrologue:
    """``x * factor * (Erf(x / divisor) + addend)``, the tensor a token threshold pools."""

    x: str
    divisor: float
    addend: float
    factor: float
    node: str  # the last Mul: claimed, its value is the kernel's second output
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class TokenMlp:
    x: str  # the pooled tensor, [N, L, D]
    w1t: np.ndarray  # float32 [D, R]
    b1: np.ndarray  # float32 [R]
    w2t: np.ndarray  # float32 [R, D]
    b2: np.ndarray  # float32 [D]: the second FC's bias plus the constants added after it
    nodes: tuple[str, ...]  # ReduceMean .. the claimed last node
    gelu: GeluPrologue | None = None  # x is this GELU's output: the kernel computes it


def _token_mean(ctx, node, opset: int) -> str | None:
    """The input of a ReduceMean over axis 1 of a rank-3 tensor without keepdims, else None."""
    shape = ctx.shapes.get(node.input[0])
    if not is_standard(node, "ReduceMean") or shape is None or len(shape) != 3:
        return None
    axes = int_operand(ctx.index, node, 1, "axes") if opset >= 18 else attr(node, "axes")
    if axes is None or [int(a) % 3 for a in axes] != [1] or attr(node, "keepdims", 1):
        return None
    return node.input[0]


def _only_reader(ctx, tensor: str, op_type: str):
    node = ctx.index.only_consumer(tensor)
    ok = node is not None and is_standard(node, op_type) and node.input[0] == tensor and not ctx.is_claimed(node)
    return node if ok else None


def _constant_add(ctx, tensor: str, width: int):
    """The only reader of ``tensor`` when it adds a constant per-channel vector: (node, [width])."""
    node = ctx.index.only_consumer(tensor)
    if node is None or not is_standard(node, "Add") or ctx.is_claimed(node) or tensor not in node.input:
        return None
    other = node.input[1] if node.input[0] == tensor else node.input[0]
    vec = per_channel(ctx.index.constant(other), width, 1, max_ndim=2)
    return None if vec is None else (node, vec)


def _fc(ctx, tensor: str, width_in: int):
    """``tensor @ M + c`` read by the only reader of ``tensor``: (M [in, out], c [out], its output,
    its nodes), else None."""
    index = ctx.index
    node = ctx.index.only_consumer(tensor)
    if node is None or ctx.is_claimed(node) or node.input[0] != tensor:
        return None
    if is_standard(node, "Gemm"):
        if attr(node, "transA", 0) or attr(node, "alpha", 1.0) != 1.0 or attr(node, "beta", 1.0) != 1.0:
            return None
        b = index.constant(node.input[1])
        if b is None or b.ndim != 2 or b.dtype.kind != "f":
            return None
        m = b.T if attr(node, "transB", 0) else b
        if m.shape[0] != width_in:
            return None
        c = np.zeros(m.shape[1], np.float32)
        if len(node.input) > 2 and node.input[2]:
            c = per_channel(index.constant(node.input[2]), m.shape[1], 1, max_ndim=2)
            if c is None:
                return None
        return m.astype(np.float32), c, node.output[0], [node.name]
    if is_standard(node, "MatMul"):
        m = index.constant(node.input[1])
        if m is None or m.ndim != 2 or m.dtype.kind != "f" or m.shape[0] != width_in:
            return None
        out, nodes, c = node.output[0], [node.name], np.zeros(m.shape[1], np.float32)
        bias = _constant_add(ctx, out, m.shape[1])
        if bias is not None:
            out, nodes, c = bias[0].output[0], [*nodes, bias[0].name], bias[1]
        return m.astype(np.float32), c, out, nodes
    return None


def _scalar(index, name: str) -> float | None:
    value = index.constant(name)
    ok = value is not None and value.size == 1 and value.dtype.kind == "f"
    return float(value.reshape(-1)[0]) if ok else None


def _single_use(ctx, tensor: str, op_type: str):
    """The producer of ``tensor`` when it is a ``op_type`` node read only there."""
    node = ctx.index.producer.get(tensor)
    ok = (node is not None and is_standard(node, op_type) and not ctx.is_claimed(node)
          and len(ctx.index.consumers.get(tensor, [])) == 1)
    return node if ok else None


def _pairs(node):
    a, b = node.input[0], node.input[1]
    return ((a, b), (b, a))


def _gelu(ctx, y: str) -> GeluPrologue | None:
    """``y = Mul(x, Mul(factor, Add(Erf(Div(x, divisor)), addend)))`` in any operand order."""
    last = ctx.index.producer.get(y)
    if last is None or not is_standard(last, "Mul") or ctx.is_claimed(last):
        return None
    for x, outer in _pairs(last):
        half = _single_use(ctx, outer, "Mul")
        for factor_name, inner in _pairs(half) if half is not None else ():
            factor, add = _scalar(ctx.index, factor_name), _single_use(ctx, inner, "Add")
            for erf_name, addend_name in _pairs(add) if add is not None and factor is not None else ():
                addend, erf = _scalar(ctx.index, addend_name), _single_use(ctx, erf_name, "Erf")
                div = erf and _single_use(ctx, erf.input[0], "Div")
                divisor = div and _scalar(ctx.index, div.input[1])
                if addend is not None and divisor and div.input[0] == x:
                    return GeluPrologue(x, divisor, addend, factor, last.name,
                                        (div.name, erf.name, add.name, half.name, last.name))
    return None


def match(ctx, mean_node, opset: int) -> TokenMlp | None:
    """The threshold MLP over the tokens ``mean_node`` pools, else None."""
    x = _token_mean(ctx, mean_node, opset)
    width = ctx.shapes.get(x, (None,) * 3)[2] if x is not None else None
    if x is None or not isinstance(width, int):
        return None
    first = _fc(ctx, mean_node.output[0], width)
    relu = first and _only_reader(ctx, first[2], "Relu")
    second = relu and _fc(ctx, relu.output[0], first[0].shape[1])
    if not second or second[0].shape[1] != width:
        return None
    (m1, c1, _, n1), (m2, c2, out, n2) = first, second
    b2, nodes = c2.astype(np.float64), [mean_node.name, *n1, relu.name, *n2]
    while (add := _constant_add(ctx, out, width)) is not None:
        b2, out, nodes = b2 + add[1], add[0].output[0], [*nodes, add[0].name]
    gelu = _gelu(ctx, x) if "fast_math" in ctx.switches else None
    return TokenMlp(x, np.ascontiguousarray(m1), c1.astype(np.float32), np.ascontiguousarray(m2),
                    b2.astype(np.float32), tuple(nodes), gelu)


class TokenThreshold:
    name = "TokenThreshold"
    requires = frozenset({"binary_kernels", "cpu"})

    def plan(self, ctx) -> None:
        opset = standard_opset(ctx.model)
        for node in ctx.model.graph.node:
            if is_standard(node, "ReduceMean"):
                found = match(ctx, node, opset)
                if found is not None:
                    ctx.plan.token_thresholds[found.nodes[-1]] = found
                    ctx.claim(found.nodes[-1], self)
                    if found.gelu is not None:
                        ctx.plan.token_gelus[found.gelu.node] = found.nodes[-1]
                        ctx.claim(found.gelu.node, self)

    def convert(self, imp, node, inputs, attrs, opset):
        if node.name in imp.plan.token_gelus:  # the GELU comes first in the graph
            return self._with_gelu(imp, imp.plan.token_thresholds[imp.plan.token_gelus[node.name]],
                                   inputs, attrs, opset)
        done = imp.provided.get(("token_threshold", node.name))
        if done is not None:
            return done
        spec = imp.plan.token_thresholds[node.name]
        x = imp.value(spec.x)
        xs = imp.shape_of(x)
        if len(xs) != 3 or xs[2] != spec.w1t.shape[0]:
            return imp.fallback(node.op_type, inputs, attrs, opset)  # the chain TVM imported
        src, view = imp.read_through(x)
        pf = imp.kernel("token_threshold", xs, spec.w1t.shape[1], view=view)
        return self._call(imp, pf, [src], spec, node.name, xs)

    def _with_gelu(self, imp, spec, inputs, attrs, opset):
        """The GELU's last Mul: the kernel writes the GELU and hands its threshold to the
        chain's last node."""
        gelu = spec.gelu
        xs = imp.shape_of(imp.value(gelu.x))
        if len(xs) != 3 or xs[2] != spec.w1t.shape[0]:
            return imp.fallback("Mul", inputs, attrs, opset)  # the chain then pools it as written
        pf = imp.kernel("token_threshold", xs, spec.w1t.shape[1], gelu=(gelu.divisor, gelu.addend, gelu.factor))
        thr, y = self._call(imp, pf, [imp.value(gelu.x)], spec, spec.nodes[-1], xs, gelu=gelu)
        imp.provided[("token_threshold", spec.nodes[-1])] = thr
        return y

    @staticmethod
    def _call(imp, pf, inputs, spec, layer: str, xs, gelu=None):
        # b2 sums constants ONNX adds one by one: a rounding apart, like the mean's order
        operands = [imp.const(a) for a in (spec.w1t, spec.b1, spec.w2t, spec.b2)]
        # no MAC count: bound by reading x (L x D floats) once, or by the GELU's FMAs
        out = imp.call_kernel(pf, [*inputs, *operands], [xs[0], xs[2]], "float32", layer=layer,
                              kind="token_threshold", extra_outputs=[(xs, "float32")] if gelu else ())
        fused = [*(gelu.nodes if gelu else ()), *spec.nodes[:-1]]
        imp.kernel_info(pf).setdefault("fused", []).extend(fused)
        return out
