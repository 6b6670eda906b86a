"""A tensor seen through slices, reshapes and transposes without copying it: a kernel reads
``view(*index)`` and gets the source element those ops would have moved there (attention's head
split ``qkv[..., off:off + H*d] -> [B, L, H, d] -> [B, H, L, d]`` and its merge, read by the bit
packing of the next sign).

A view is a source shape and steps, each one of

* ``("slice", axes, begins, strides, sizes)``: ``out[..., i, ...] = in[..., begin + i * stride,
  ...]`` for ``i < size`` on the sliced axes (inside the input, strides positive);
* ``("reshape", shape)``: the same elements in row-major order;
* ``("permute", axes)``: ``out.shape[i] = in.shape[axes[i]]``,

(:func:`view_shapes` gives the shape after each step).  Reshapes map only the runs of
axes whose sizes they regroup, so a split or merge of the last axes leaves the others as they
are (no division where none is needed)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from math import prod

import numpy as np
from tvm import te


def view_shapes(src_shape: Sequence[int], steps) -> list[list[int]]:
    """The shape after each step (validates the steps)."""
    shape, shapes = [int(s) for s in src_shape], []
    for step in steps:
        kind = step[0]
        if kind == "slice":
            _, axes, begins, strides, sizes = step
            shape = list(shape)
            for a, b, s, n in zip(axes, begins, strides, sizes):
                if s < 1 or n < 1 or b < 0 or b + (n - 1) * s >= shape[a]:
                    raise ValueError(f"index view: {n} elements of axis {a} ({shape[a]}) from {b} by {s}")
                shape[a] = int(n)
        elif kind == "reshape":
            new = [int(v) for v in step[1]]
            if prod(new) != prod(shape):
                raise ValueError(f"index view: reshape {shape} -> {new}")
            shape = new
        elif kind == "permute":
            axes = [int(a) for a in step[1]]
            if sorted(axes) != list(range(len(shape))):
                raise ValueError(f"index view: permutation {axes} of rank {len(shape)}")
            shape = [shape[a] for a in axes]
        else:
            raise ValueError(f"index view: unknown step {kind!r}")
        shapes.append(shape)
    return shapes


class IndexView:
    """``view(*index)`` reads ``source`` through ``steps``; ``shape`` is the view's shape."""

    def __init__(self, source: te.Tensor, steps):
        self.source = source
        self.steps = tuple(steps)
        src_shape = [int(s) for s in source.shape]
        self._shapes = [src_shape, *view_shapes(src_shape, self.steps)]
        self.shape = self._shapes[-1]

    @property
    def last_axis_run(self) -> int:
        """:func:`contiguous_run` of this view."""
        return contiguous_run(self._shapes[0], self.steps)

    def __getitem__(self, index):
        return self(*index) if isinstance(index, tuple) else self(index)

    def __call__(self, *index):
        idx = list(index)
        for step, (in_shape, out_shape) in zip(reversed(self.steps),
                                                reversed(list(zip(self._shapes, self._shapes[1:])))):
            idx = _back(step, idx, in_shape, out_shape)
        return self.source(*idx)


def contiguous_run(src_shape: Sequence[int], steps) -> int:
    """The longest ``r`` dividing the view's last axis such that every aligned run of ``r``
    elements along it lies consecutively in the source: a vector of up to ``r`` lanes along that
    axis is one plain load, a longer one straddles a jump (the merged heads of attention: runs of
    the head dimension) and became a gather."""
    offsets = np.arange(prod(int(s) for s in src_shape), dtype=np.int64).reshape([int(s) for s in src_shape])
    for step in steps:
        if step[0] == "slice":
            _, axes, begins, strides, sizes = step
            cut = [slice(None)] * offsets.ndim
            for a, b, st, n in zip(axes, begins, strides, sizes):
                cut[a] = slice(b, b + (n - 1) * st + 1, st)
            offsets = offsets[tuple(cut)]
        elif step[0] == "reshape":
            offsets = offsets.reshape([int(v) for v in step[1]])
        else:
            offsets = offsets.transpose([int(a) for a in step[1]])
    width = offsets.shape[-1]
    jumps = np.nonzero((np.diff(offsets.reshape(-1, width), axis=1) != 1).any(axis=0))[0] + 1
    return max(r for r in range(1, width + 1) if width % r == 0 and not (jumps % r).any())


def _back(step, idx, in_shape, out_shape):
    """The input index of one step's output index ``idx``."""
    kind = step[0]
    if kind == "slice":
        _, axes, begins, strides, _ = step
        idx = list(idx)
        for a, b, s in zip(axes, begins, strides):
            idx[a] = idx[a] * s + b if s != 1 else idx[a] + b
        return idx
    if kind == "permute":
        src = [None] * len(idx)
        for i, a in enumerate(step[1]):
            src[int(a)] = idx[i]
        return src
    return _reshape_back(idx, in_shape, out_shape)


def _reshape_back(idx, in_shape, out_shape):
    """Row-major reshape, run by run: the smallest runs of axes whose sizes agree on both sides
    map through one linear index; a run of one axis on both sides is the identity."""
    src, i, j = [], 0, 0
    while i < len(out_shape) or j < len(in_shape):
        i0, j0 = i, j
        po, pi = out_shape[i] if i < len(out_shape) else 1, in_shape[j] if j < len(in_shape) else 1
        i, j = i + 1, j + 1
        while po != pi:
            if po < pi:
                po, i = po * out_shape[i], i + 1
            else:
                pi, j = pi * in_shape[j], j + 1
        outs, ins = list(range(i0, min(i, len(out_shape)))), list(range(j0, min(j, len(in_shape))))
        if len(outs) == 1 and len(ins) == 1:
            src.append(idx[outs[0]])
            continue
        linear = 0
        for o in outs:
            linear = linear * out_shape[o] + idx[o]
        for k, a in enumerate(ins):
            inner = prod(in_shape[b] for b in ins[k + 1:])
            v = linear // inner if inner > 1 else linear
            src.append(v % in_shape[a] if k > 0 else v)
    return src


def view_tag(src_shape: Sequence[int], steps) -> str:
    """A short stable name for a view (kernel symbols)."""
    text = repr(([int(s) for s in src_shape], [tuple(_plain(v) for v in st) for st in steps]))
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _plain(v):
    return tuple(int(x) for x in v) if isinstance(v, (list, tuple)) else v
