"""Ops that commute with a sign, moved across it so a binary layer reads the DynamicSign (or a
constant Pad of it) directly.  Each is exact for every input, NaN included (a NaN is -1 before
and after: the moved ops only permute, copy or compare values):

* ``Transpose(DynamicSign(x, t), perm)`` → ``DynamicSign(Transpose(x, perm), t')`` — Larq/tf2onnx
  runs the sign in NHWC and transposes to NCHW before each Conv.  ``t'`` is ``t`` (one element)
  or the constant ``t`` transposed the same way (its rank raised to x's first, which does not
  change its broadcast); a non-constant ``t`` of more than one element stays.  A perm that only
  swaps the last two axes stays (the binary batch-matmul reads that form; a bnncompile export
  must canonicalize to itself).  A Transpose whose input is a Transpose composes with it
  (identity: both drop).
* ``Reshape`` / ``Flatten`` of ``DynamicSign(x, t)`` with a one-element ``t`` → the sign of the
  reshaped ``x`` (an element-wise op with a scalar commutes with any reshape; ``t`` becomes a
  rank-0 constant so it cannot raise the new rank) — FINN's ``BipolarQuant → Reshape → Gemm``.
* ``MaxPool(DynamicSign(x, t))`` → ``DynamicSign(MaxPool(x), t)`` when ``t`` is constant within
  each pooling window (one element, or only N / C axes non-1: per-channel or per-sample
  thresholds): the sign is monotone, so ``max_i sign(x_i - t) = sign(max_i x_i - t)``; MaxPool's
  padding never wins a max (ONNX pads max pooling with -inf, i.e. ignores it), so padded and
  ceil-mode pools stay exact — FINN's ``BipolarQuant → MaxPool → Conv``.  Only when the Indices
  output is unused.
* ``Transpose(Pad(DynamicSign(x, t), pads, v), perm)`` → ``Pad(Transpose(DynamicSign(x, t)),
  pads', v)`` with the pads permuted the same way (constant mode, no ``axes``) — Larq's
  ``pad_values=1`` pads the NHWC sign before the Transpose; the result is ``Pad(value=1)`` on NCHW
  right before the Conv, the form the binary conv reads.
* ``Reshape(y, [-1 or N, 1, H, W])`` of a ``[N, H, W, 1]`` DynamicSign (or Pad of one) →
  ``Transpose(y, [0, 3, 1, 2])``: with C = 1 the two are the same map of elements (tf2onnx writes
  this Reshape instead of the NHWC→NCHW Transpose for one channel).

A move only happens when the moved op's output goes on to a Conv, or a Gemm / MatMul with a
constant weight (directly or through further moves), and only when the sign has no other
consumer (the matcher requires it).  Two signs meeting in a MatMul (attention's sign → Reshape →
Transpose heads) stay as written, for the batch-matmul converter.
"""

from __future__ import annotations

import numpy as np

from ...custom_ops.dynamic_sign import DOMAIN, OP_TYPE
from .base import (
    SIGN_ZERO_KEY,
    VIA_KEY,
    Rule,
    SignRule,
    attr_ints,
    const_array,
    constant_pad,
    is_sign,
    leads_to_layer,
    producer,
    rank,
    sign_producer,
    static_dims,
    threshold,
)


def _swaps_last_two(perm) -> bool:
    n = len(perm)
    return n >= 2 and list(perm) == [*range(n - 2), n - 1, n - 2]


def _metadata(node) -> dict:
    return {k: v for k, v in node.metadata_props.items() if k in (VIA_KEY, SIGN_ZERO_KEY)}


class _Move(SignRule):
    """Shared: find the matched DynamicSign and its threshold."""

    def sign_of(self, context):
        return next((n for n in context.nodes if is_sign(n)), None)

    def take_sign(self, context):
        """Remember the matched sign; its threshold is kept as it is unless ``_t_new`` is set."""
        self._sign = self.sign_of(context)
        self._t, self._t_new = threshold(self._sign), None
        return self._t

    def moved_threshold(self, op):
        return self._t if self._t_new is None else self.threshold_const(op, self._t_new)

    def moved_sign(self, op, y, t):
        """The DynamicSign of ``y`` that replaces the matched one (its name and provenance)."""
        s = self._sign
        return self.dynamic_sign(op, y, t, name=s.name, metadata=_metadata(s))

    def threshold_const(self, op, t_new):
        return None if t_new is None else self.const(op, t_new, "threshold")


class TransposeOfSign(_Move):
    def pattern(self, op, x):
        return op.Transpose(op.DynamicSign(x, _domain=DOMAIN, _allow_other_inputs=True))

    def check(self, context, x, **_):
        root = context.root
        perm = attr_ints(root, "perm")
        r = rank(x) if rank(x) is not None else (len(perm) if perm else None)
        if not perm or _swaps_last_two(perm) or r != len(perm):
            return False
        if not leads_to_layer(root.outputs[0]):
            return False
        t = self.take_sign(context)
        if t is not None:
            a = const_array(t)
            if a is None:
                return False
            if a.size > 1:
                if a.ndim > r:
                    return False
                a = a.reshape((1,) * (r - a.ndim) + a.shape)
                self._t_new = np.ascontiguousarray(np.transpose(a, perm))
        self._perm = perm
        return self.matched(context)

    def rewrite(self, op, x, **_):
        y = _transpose(self, op, x, self._perm, self.root_name)
        return self.moved_sign(op, y, self.moved_threshold(op))


def _transpose(rule, op, x, perm, name):
    """``Transpose(x, perm)``, composed with a Transpose producing ``x`` (dropped if identity)."""
    inner = producer(x, "Transpose")
    inner_perm = attr_ints(inner, "perm") if inner is not None else None
    if inner_perm is not None and len(inner_perm) == len(perm):
        composed = [inner_perm[p] for p in perm]
        if composed == list(range(len(perm))):
            return inner.inputs[0]
        return rule.emit(op, "Transpose", [inner.inputs[0]], name, perm=composed)
    return rule.emit(op, "Transpose", [x], name, perm=list(perm))


class _ReshapeLike(_Move):
    """A shape change of the sign's output (Reshape / Flatten): moved with a scalar threshold
    only (a per-channel one would need its own reshape)."""

    def check(self, context, x, **_):
        if not leads_to_layer(context.root.outputs[0]):
            return False
        t = self.take_sign(context)
        if t is not None:
            a = const_array(t)
            if a is None or a.size != 1:
                return False
            if a.ndim:
                self._t_new = a.reshape(())
        return self.matched(context)

    def rewrite(self, op, x, shape=None, **_):
        y = self.clone(op, self._root, [x] if shape is None else [x, shape])
        return self.moved_sign(op, y, self.moved_threshold(op))


class ReshapeOfSign(_ReshapeLike):
    def pattern(self, op, x, shape):
        return op.Reshape(op.DynamicSign(x, _domain=DOMAIN, _allow_other_inputs=True), shape)


class FlattenOfSign(_ReshapeLike):
    def pattern(self, op, x):
        return op.Flatten(op.DynamicSign(x, _domain=DOMAIN, _allow_other_inputs=True))


class MaxPoolOfSign(_Move):
    def pattern(self, op, x):
        return op.MaxPool(op.DynamicSign(x, _domain=DOMAIN, _allow_other_inputs=True))

    def check(self, context, x, **_):
        root = context.root
        if len(root.outputs) > 1 and root.outputs[1] is not None and root.outputs[1].uses():
            return False
        if not leads_to_layer(root.outputs[0]):
            return False
        t = self.take_sign(context)
        if t is not None and not self._constant_per_window(t, x):
            return False
        return self.matched(context)

    @staticmethod
    def _constant_per_window(t, x) -> bool:
        """``t`` is one element, or 1 on every spatial axis (per-sample / per-channel)."""
        a = const_array(t)
        if a is not None and a.size == 1:
            return True
        dims = list(a.shape) if a is not None else static_dims(t)
        xd = static_dims(x)
        if dims is None or xd is None or len(dims) > len(xd) or len(xd) < 3:
            return False
        n_spatial = len(xd) - 2
        return all(d == 1 for d in dims[-n_spatial:])

    def rewrite(self, op, x, **_):
        y = self.clone(op, self._root, [x])
        return self.moved_sign(op, y, self._t)


class TransposeOfPaddedSign(Rule):
    def pattern(self, op, y, pads):
        return op.Transpose(op.Pad(y, pads, _allow_other_inputs=True))

    def check(self, context, y, pads, **_):
        root = context.root
        pad = producer(root.inputs[0], "Pad")
        if sign_producer(y) is None or pad is None:
            return False
        cp = constant_pad(pad)
        perm = attr_ints(root, "perm")
        if cp is None or not perm or cp[0].size != 2 * len(perm):
            return False
        if not leads_to_layer(root.outputs[0]):
            return False
        p, n = cp[0], len(perm)
        self._pads = np.array([p[q] for q in perm] + [p[n + q] for q in perm], np.int64)
        self._pad, self._perm = pad, perm
        return self.matched(context)

    def rewrite(self, op, y, pads, **_):
        t = self.emit(op, "Transpose", [y], self.root_name, perm=self._perm)
        inputs = [t, self.const(op, self._pads, "pads"), *self._pad.inputs[2:3]]
        return self.clone(op, self._pad, inputs)


class ReshapeAsTranspose(Rule):
    """``Reshape`` of a one-channel NHWC sign (or Pad of one) to NCHW is a Transpose."""

    def pattern(self, op, y, shape):
        return op.Reshape(y, shape)

    def check(self, context, y, shape, **_):
        src = y
        pad = producer(y, "Pad")
        if pad is not None and constant_pad(pad) is not None:
            src = pad.inputs[0]
        if sign_producer(src) is None:
            return False
        dims, target = static_dims(y), const_array(shape)
        if dims is None or len(dims) != 4 or target is None or target.size != 4:
            return False
        n, h, w, c = dims
        t = [int(v) for v in target.reshape(-1)]
        if c != 1 or h is None or w is None or t[1:] != [1, h, w] or t[0] not in (-1, n):
            return False
        if t[0] == -1 and 0 in (h, w):
            return False
        return leads_to_layer(context.root.outputs[0]) and self.matched(context)

    def rewrite(self, op, y, shape, **_):
        return self.emit(op, "Transpose", [y], self.root_name, perm=[0, 3, 1, 2])


RULES = (ReshapeAsTranspose, TransposeOfPaddedSign, TransposeOfSign, ReshapeOfSign, FlattenOfSign,
         MaxPoolOfSign)
ROOT_OPS = frozenset()

_MOVABLE = ("Transpose", "Reshape", "Flatten", "MaxPool", "Pad")


def wanted(model, index) -> bool:
    """A DynamicSign already in the file feeding an op this module moves, on to a Conv or a
    Gemm / MatMul with a constant weight."""
    from ..graph import attr, is_standard

    def reaches_layer(tensor: str, depth: int) -> bool:
        for user in index.consumers.get(tensor, []):
            if user.input[0] != tensor:
                continue
            if is_standard(user, "Conv") or (is_standard(user, "Gemm", "MatMul")
                                             and index.constant(user.input[1]) is not None):
                return True
            if depth and is_standard(user, *_MOVABLE) and reaches_layer(user.output[0], depth - 1):
                return True
        return False

    for node in model.graph.node:
        if node.domain != DOMAIN or node.op_type != OP_TYPE:
            continue
        for user in index.consumers.get(node.output[0], []):
            if not is_standard(user, *_MOVABLE) or user.input[0] != node.output[0]:
                continue
            if user.op_type == "Transpose" and _swaps_last_two(list(attr(user, "perm", []) or [])):
                continue
            if reaches_layer(user.output[0], 3):
                return True
    return False
