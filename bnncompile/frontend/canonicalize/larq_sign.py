"""Larq's ``Sign(Add(Sign(x), c))``, ``0 < c < 1`` → ``DynamicSign(x)`` (threshold 0).

Larq's ``ste_sign`` / ``SteSign`` / ``approx_sign`` compute ``tf.sign(tf.sign(x) + 0.1)`` so that 0
maps to +1; tf2onnx writes it as ``Sign(Add(Sign(x), c))`` with a scalar float initializer ``c``.
Exact for every number ``x`` when ``c`` is one float in (0, 1):

* ``x > 0``: ``Sign(x) + c = 1 + c > 0`` → +1;  ``x = 0`` (either zero): ``0 + c = c > 0`` → +1;
* ``x < 0``: ``-1 + c`` is negative and never rounds to 0 (``1 - c`` is exact for ``c >= 0.5``
  (Sterbenz) and lies in (0.5, 1) otherwise) → -1;

which is DynamicSign's ``x >= 0``.  A NaN ``x`` gives NaN here and -1 in DynamicSign.  The
``Add`` may have ``c`` first; ``c`` of rank above x's (it would broadcast the result up a rank) or
outside (0, 1) leaves the nodes as they are (the plain ``Sign`` rule then takes the outer Sign,
as a sign(0) site).
"""

from __future__ import annotations

from .base import SignRule, const_array, rank


class _LarqSign(SignRule):
    via = "Sign(Sign(x) + c), 0 < c < 1"
    c_first = False

    def pattern(self, op, x, c):
        inner = op.Sign(x)
        return op.Sign(op.Add(c, inner) if self.c_first else op.Add(inner, c))

    def check(self, context, x, c, **_):
        a = const_array(c)
        r = rank(x)
        if a is None or a.dtype.kind != "f" or a.size != 1 or (r is not None and a.ndim > r):
            return False
        if r is None and a.ndim > 0:
            return False
        return 0.0 < float(a.reshape(-1)[0]) < 1.0 and self.matched(context)

    def rewrite(self, op, x, c, **_):
        return self.dynamic_sign(op, x)


class SignAddC(_LarqSign):
    c_first = False


class SignCAdd(_LarqSign):
    c_first = True


RULES = (SignAddC, SignCAdd)
ROOT_OPS = frozenset({"Sign"})
