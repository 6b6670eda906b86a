"""The mean of a slice as a slice of the mean: ``ReduceMean(Slice(x))`` whose slice cuts axes the
mean keeps → one mean of ``x`` (shared by every such slice of it) and a slice of that small
result.  DyBinaryCCT's Q and K thresholds pool ``qkv[..., 0:D]`` and ``qkv[..., D:2D]`` over the
tokens: the slices were copied out of ``qkv`` only for those means (their signs' packs read
``qkv`` in place, :meth:`~bnncompile.frontend.importer.Importer.read_through`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..graph import attr, int_operand, is_standard, standard_opset


@dataclass(frozen=True)
class MeanOfSlice:
    source: str  # the tensor the Slice cuts
    axes: tuple[int, ...]  # the mean's axes (non-negative)
    keepdims: bool
    slice_axes: tuple[int, ...]  # the Slice's (non-negative), begins / ends / steps as given
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    steps: tuple[int, ...]


def _plan_one(ctx, node, opset: int) -> MeanOfSlice | None:
    index = ctx.index
    src = node.input[0]
    cut = index.producer.get(src)
    if cut is None or not is_standard(cut, "Slice") or ctx.is_claimed(cut):
        return None
    rank = len(ctx.shapes.get(cut.input[0], ()) or ())
    axes = int_operand(index, node, 1, "axes") if opset >= 18 else [int(a) for a in attr(node, "axes", [])]
    if not rank or not axes or attr(node, "noop_with_empty_axes", 0):
        return None
    starts, ends = int_operand(index, cut, 1, "starts"), int_operand(index, cut, 2, "ends")
    cut_axes = int_operand(index, cut, 3, "axes") if opset >= 10 else attr(cut, "axes")
    steps = int_operand(index, cut, 4, "steps") if opset >= 10 else None
    if starts is None or ends is None:
        return None
    cut_axes = list(range(len(starts))) if cut_axes is None else cut_axes
    steps = [1] * len(starts) if steps is None else steps
    axes = tuple(sorted(a % rank for a in axes))
    cut_axes = tuple(a % rank for a in cut_axes)
    if set(axes) & set(cut_axes) or any(s < 1 for s in steps):
        return None
    return MeanOfSlice(cut.input[0], axes, bool(attr(node, "keepdims", 1)), cut_axes, tuple(starts),
                      tuple(ends), tuple(steps))


class SlicedMean:
    name = "SlicedMean"
    requires = frozenset({"binary_kernels"})

    def plan(self, ctx) -> None:
        opset = standard_opset(ctx.model)
        for node in ctx.model.graph.node:
            if is_standard(node, "ReduceMean") and not ctx.is_claimed(node):
                found = _plan_one(ctx, node, opset)
                if found is not None:
                    ctx.plan.sliced_means[node.name] = found
                    ctx.claim(node, self)

    def convert(self, imp, node, inputs, attrs, opset):
        from tvm import relax

        spec = imp.plan.sliced_means[node.name]
        key = ("sliced_mean", spec.axes, spec.keepdims)
        mean = imp.provided.get((spec.source, key))
        if mean is None:
            mean = imp.emit(relax.op.mean(imp.value(spec.source), axis=list(spec.axes), keepdims=spec.keepdims))
            imp.provided[(spec.source, key)] = mean
        # without keepdims the slice's axes move down past the reduced ones
        axes = [a if spec.keepdims else a - sum(r < a for r in spec.axes) for a in spec.slice_axes]
        return imp.emit(relax.op.strided_slice(mean, axes, list(spec.starts), list(spec.ends), list(spec.steps)))
