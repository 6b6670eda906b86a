"""``Where(x >= t, 1, -1)`` and its spellings → ``DynamicSign(x, t)``.

This is DynamicSign's own ONNX function body, so a bnncompile export passed through an ONNX
function inliner (``export --portable``, what OpenVINO needs) or a hand-written file comes back
to the same binary layers.  Recognised, each exactly:

* ``Where(GreaterOrEqual(x, t), 1, -1)`` and ``Where(LessOrEqual(t, x), 1, -1)``: +1 where
  ``x >= t``, NaN → -1, as DynamicSign;
* ``Where(Less(x, t), -1, 1)`` and ``Where(Greater(t, x), -1, 1)``: equal for every number; a NaN
  ``x`` gives +1 here and -1 in DynamicSign (``validate`` warns on NaN inputs).

The 1 / -1 may be initializers or Constant nodes of any rank up to x's (no broadcast up a
rank), or ``CastLike(c, x)`` of such a constant: DynamicSign's own function body casts its 1 / -1
to X's type, so a file passed through ``onnx.inliner.inline_local_functions`` (what OpenVINO
needs) reads ``Where(GreaterOrEqual(X, T), CastLike(Constant(1), X), CastLike(Constant(-1), X))``;
±1 is exact in every float type and the result has X's type either way.  ``t`` must broadcast
onto ``x`` (DynamicSign's contract), else the node stays as it is.
"""

from __future__ import annotations

from .base import SignRule, broadcasts_onto, is_scalar, producer, rank


def _branch(value, x):
    """The constant behind a Where branch: itself, or ``c`` of ``CastLike(c, x)``."""
    cast = producer(value, "CastLike")
    if cast is not None and len(cast.inputs) == 2 and cast.inputs[1] is x:
        return cast.inputs[0]
    return value


class _WhereCompare(SignRule):
    compare = ""
    x_first = True
    if_true = 1.0

    def pattern(self, op, a, b, hi, lo):
        return op.Where(getattr(op, self.compare)(a, b), hi, lo)

    def _xt(self, a, b):
        return (a, b) if self.x_first else (b, a)

    def check(self, context, a, b, hi, lo, **_):
        x, t = self._xt(a, b)
        r = rank(x)
        r = 8 if r is None else r
        hi, lo = _branch(hi, x), _branch(lo, x)
        if not (is_scalar(hi, self.if_true, r) and is_scalar(lo, -self.if_true, r)):
            return False
        return broadcasts_onto(t, x) and self.matched(context)

    def rewrite(self, op, a, b, hi, lo, **_):
        x, t = self._xt(a, b)
        return self.dynamic_sign(op, x, t)


class GreaterOrEqualXT(_WhereCompare):
    compare, x_first, if_true, via = "GreaterOrEqual", True, 1.0, "Where(x >= t, 1, -1)"


class LessOrEqualTX(_WhereCompare):
    compare, x_first, if_true, via = "LessOrEqual", False, 1.0, "Where(t <= x, 1, -1)"


class LessXT(_WhereCompare):
    compare, x_first, if_true, via = "Less", True, -1.0, "Where(x < t, -1, 1)"


class GreaterTX(_WhereCompare):
    compare, x_first, if_true, via = "Greater", False, -1.0, "Where(t > x, -1, 1)"


RULES = (GreaterOrEqualXT, LessOrEqualTX, LessXT, GreaterTX)
ROOT_OPS = frozenset({"Where"})
