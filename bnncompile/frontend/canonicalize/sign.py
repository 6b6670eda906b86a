"""ONNX ``Sign``: of a constant, folded; of anything else → ``DynamicSign(x)``, a sign(0) site.

* ``Sign(W)`` with ``W`` a constant (PyTorch's ``torch.sign(self.weight)``, which the TorchScript
  exporter never folds and the dynamo exporter folds only up to 8192 elements) becomes the
  constant ``np.sign(W)`` — the same values, 0 kept as 0 (a weight with exact zeros then is not
  ±1 and its layer stays float, with that reason).
* ``Sign(x)`` otherwise becomes ``DynamicSign(x)``: equal wherever ``x != 0`` (and -1 for NaN
  where Sign gives NaN), but ONNX ``Sign`` maps 0 to 0 and DynamicSign maps it to +1 — one bit
  cannot hold a third value.  The node is marked (``metadata_props["bnncompile.sign_zero"]``) so
  :func:`..canonicalize` reports it ("Sign maps 0 to 0; compiled as 0 -> +1: results differ where
  this input is exactly 0") or refuses it (``sign_zero="refuse"``).  A ``Sign`` of a known
  non-float32 type stays as it is (DynamicSign is float32).

Larq's ``Sign(Add(Sign(x), c))`` (:mod:`.larq_sign`) is matched first and is exact.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .base import Rule, SignRule, const_array


class SignOfConstant(Rule):
    def pattern(self, op, w):
        return op.Sign(w)

    def check(self, context, w, **_):
        a = const_array(w)
        return a is not None and a.dtype.kind in "fiu" and self.matched(context)

    def rewrite(self, op, w, **_):
        return self.const(op, np.sign(const_array(w)), "sign")


class PlainSign(SignRule):
    via = "Sign(x) (0 -> +1)"

    def pattern(self, op, x):
        return op.Sign(x)

    def check(self, context, x, **_):
        if const_array(x) is not None:
            return False
        dtype = getattr(getattr(x, "type", None), "dtype", None)
        if dtype is not None and dtype != ir.DataType.FLOAT:
            return False
        return self.matched(context)

    def rewrite(self, op, x, **_):
        return self.dynamic_sign(op, x, sign_zero=self.root_name)


RULES = (SignOfConstant, PlainSign)
ROOT_OPS = frozenset({"Sign"})
