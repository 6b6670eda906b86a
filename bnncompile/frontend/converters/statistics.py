"""The dynamic thresholds' statistics: means over H, W of ``x``, ``x*x`` and ``x*x*x`` (DySign's
pool, INSTA-BNN's E[x], E[x^2], E[x^3]) as one reduction of ``x`` each, and a dynamic PReLU whose
output is pooled that way as one kernel computing the PReLU and its pools together."""

from __future__ import annotations

from ..graph import attr, is_standard
from ..plan import PreluStats


def _hw_mean(index, node) -> bool | None:
    """keepdims of a ``ReduceMean`` over axes {2, 3} of a 4-D tensor, else None."""
    if not is_standard(node, "ReduceMean"):
        return None
    axes = index.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    axes = attr(node, "axes") if axes is None else axes.reshape(-1).tolist()
    if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]:
        return None
    return bool(attr(node, "keepdims", 1))


def _power_of(index, name: str, keep: set[str]) -> tuple[str, int] | None:
    """``name`` = x*x → (x, 2); (x*x)*x or x*(x*x) → (x, 3); intermediates used only here."""
    def single_use_mul(t):
        node = index.producer.get(t)
        ok = (node is not None and is_standard(node, "Mul") and t not in keep
              and len(index.consumers.get(t, [])) == 1)
        return node if ok else None

    top = single_use_mul(name)
    if top is None:
        return None
    a, b = top.input
    if a == b:
        return a, 2
    for sq, x in ((a, b), (b, a)):
        inner = single_use_mul(sq)
        if inner is not None and inner.input[0] == inner.input[1] == x:
            return x, 3
    return None


class PowerMean:
    """``ReduceMean(Mul(Mul(x, x), x), axes=[2, 3])`` (INSTA's E[x³]; E[x²] likewise): TVM fuses
    the mean with its consumers but not with the Mul producer, so x³ was written out as a whole
    tensor and read back.  Plain means (power 1) go the same way so that the reduction can run
    over the flattened H*W row."""

    name = "PowerMean"
    requires = frozenset({"binary_kernels"})

    def plan(self, ctx) -> None:
        for node in ctx.model.graph.node:
            keepdims = _hw_mean(ctx.index, node)
            if keepdims is None or ctx.is_claimed(node):
                continue
            match = _power_of(ctx.index, node.input[0], ctx.keep) or (node.input[0], 1)
            ctx.plan.power_means[node.name] = (*match, keepdims)
            ctx.claim(node, self)

    def convert(self, imp, node, inputs, attrs, opset):
        from tvm import relax

        from ...schedules import compute

        src, power, keepdims = imp.plan.power_means[node.name]
        fused = imp.provided.get((src, power))
        if fused is not None:  # computed with the PReLU that made src
            n, c = imp.shape_of(fused)
            return imp.emit(relax.op.reshape(fused, [n, c, 1, 1])) if keepdims else fused
        x = imp.value(src)
        xs = imp.shape_of(x)
        if len(xs) != 4:
            return imp.fallback("ReduceMean", inputs, attrs, opset)
        n, c, h, w = xs
        # Reduce over the flattened H*W row (a free reshape) where that gives the float
        # glue's RowReduction wider vector lanes of partial sums than the map's rows: a row
        # of 28 takes 4 lanes, 28*28 = 784 takes 16 (a mean over 256x28x28: 23 -> 9 us).
        # Rows of 7 or 14 stay rows (7*7 = 49 has no lanes at all).
        if w % 16 != 0 and (h * w) % 16 == 0:
            x = imp.emit(relax.op.reshape(x, [n, c, 1, h * w]))
        return imp.emit_te(compute.power_mean, x, power, keepdims=keepdims, name=f"mean_pow{power}")


class FusedPreluStats:
    """Dynamic PReLUs (ONNX: Sub → GreaterOrEqual(·, 0) → Mul(slope, ·) → Where → Add) whose
    output is pooled over H, W: DyBNN's DPReLU feeding the next DySign's pool, INSTA's PReLU
    feeding E[y] / E[y³].  The PReLU pass and those pools read the same activation; one kernel
    (schedules.compute.prelu_stats) writes y and sums its powers while they are in registers.
    Shapes are checked at import; a PReLU that does not fit there is imported as it is."""

    name = "PreluStats"
    requires = frozenset({"binary_kernels", "fuse_epilogues"})

    def plan(self, ctx) -> None:
        by_src: dict[str, list] = {}
        for name, (src, power, _) in ctx.plan.power_means.items():
            by_src.setdefault(src, []).append((name, power))
        for y, means in by_src.items():
            add = ctx.index.producer.get(y)
            if add is None or not is_standard(add, "Add") or ctx.is_claimed(add):
                continue
            match = _match_dynamic_prelu(ctx.index, add, ctx.keep)
            if match is not None:
                ctx.plan.prelu_stats[add.name] = PreluStats(*match[:4], means=sorted(means), nodes=match[4])
                ctx.claim(add, self)

    def convert(self, imp, node, inputs, attrs, opset):
        from tvm import relax

        fused = imp.plan.prelu_stats[node.name]
        x = imp.value(fused.x)
        xs = imp.shape_of(x)
        ops = [imp.value(t) for t in (fused.shift_in, fused.slope, fused.shift_out)]
        shapes = [imp.shape_of(t) for t in ops]
        per_nc = len(xs) == 4 and all(len(s) == 4 and s[2:] == [1, 1] and s[1] == xs[1]
                                      and s[0] in (1, xs[0]) for s in shapes)
        if not per_nc:  # e.g. a token PReLU, or a shift that varies over H, W
            return imp.fallback("Add", inputs, attrs, opset)
        n, c, h, w = xs
        powers = sorted({p for _, p in fused.means})
        # the kernel reads the map as [N, C, 1, H*W] (free reshapes) and the graph's own
        # [N|1, C, 1, 1] views of the shifts and slope
        flat = imp.emit(relax.op.reshape(x, [n, c, 1, h * w]))
        pf = imp.kernel("prelu_stats", [n, c, 1, h * w], *shapes, powers)
        y, *means = imp.call_kernel(pf, [flat, *ops], [n, c, 1, h * w], "float32", layer=node.name,
                                    kind="prelu_stats", extra_outputs=[([n, c], "float32")] * len(powers))
        info = imp.kernel_info(pf)
        info.setdefault("fused", []).extend(fused.nodes[:-1] + [m for m, _ in fused.means])
        for p, m in zip(powers, means):
            imp.provided[(node.output[0], p)] = m
        return imp.emit(relax.op.reshape(y, [n, c, h, w]))


def _match_dynamic_prelu(index, add, keep: set[str]):
    """(x, shift_in, slope, shift_out, nodes) if ``add`` ends a PReLU with tensor shifts."""
    def only(t, n_uses=1):
        node = index.producer.get(t)
        ok = (node is not None and is_standard(node) and t not in keep
              and len(index.consumers.get(t, [])) == n_uses)
        return node if ok else None

    for w_in, out_in in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        where = only(w_in)
        if where is None or where.op_type != "Where":
            continue
        ge, mul = only(where.input[0]), only(where.input[2])
        d = where.input[1]
        sub = only(d, n_uses=3)
        if (ge is None or mul is None or sub is None or ge.op_type != "GreaterOrEqual"
                or mul.op_type != "Mul" or sub.op_type != "Sub" or ge.input[0] != d or d not in mul.input):
            continue
        zero = index.constant(ge.input[1])
        if zero is None or zero.size != 1 or float(zero.reshape(-1)[0]) != 0.0:
            continue
        slope = mul.input[1] if mul.input[0] == d else mul.input[0]
        return sub.input[0], sub.input[1], slope, out_in, [sub.name, ge.name, mul.name, where.name, add.name]
    return None
