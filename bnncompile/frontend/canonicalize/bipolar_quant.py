"""QONNX / FINN ``BipolarQuant(x, scale)`` → ``DynamicSign(x)`` (times ``scale``).

Brevitas's ``export_qonnx`` writes every binary quantizer (activations and weights) as
``qonnx.custom_op.general::BipolarQuant`` (older FINN files: ``finn.custom_op.general``), which
qonnx defines (``custom_op/general/bipolar_quant.py``, = Brevitas ``binary_sign``) as::

    y = where(x >= 0, 1, -1) * scale

so 0 maps to +1 and NaN to -1, exactly DynamicSign's contract with threshold 0.  Therefore:

* ``x`` a constant (a weight): the constant ``where(W >= 0, 1, -1) * scale`` — each element
  exactly ``±scale`` (a product with ±1 does not round); a per-output-channel ``scale`` then
  leaves a ``±s_c`` weight that :mod:`.weight_scale` splits back into ±1 and a Mul;
* otherwise ``DynamicSign(x)``, followed by ``Mul(·, scale)`` unless ``scale`` is a one-element
  constant equal to 1 of rank at most x's (the product then broadcasts exactly as before; the
  binary layers move a one-element scale past themselves, :mod:`.weight_scale`).
"""

from __future__ import annotations

import numpy as np

from .base import SignRule, const_array, rank

DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general")


def _unit(scale, x) -> bool:
    a = const_array(scale)
    r = rank(x)
    return (a is not None and a.dtype.kind == "f" and a.size == 1 and float(a.reshape(-1)[0]) == 1.0
            and (a.ndim == 0 or (r is not None and a.ndim <= r)))


class _BipolarQuant(SignRule):
    domain = ""
    via = "BipolarQuant(x, scale)"

    def pattern(self, op, x, scale):
        return op.BipolarQuant(x, scale, _domain=self.domain)

    def check(self, context, x, scale, **_):
        w, s = const_array(x), const_array(scale)
        if s is not None and s.dtype.kind != "f":
            return False
        if w is not None and (w.dtype.kind != "f" or s is None):
            return False
        return self.matched(context)

    def rewrite(self, op, x, scale, **_):
        w = const_array(x)
        if w is not None:
            s = const_array(scale)
            pm1 = np.where(w >= 0, np.float32(1), np.float32(-1)).astype(w.dtype)
            return self.const(op, pm1 * s, "bipolar")
        y = self.dynamic_sign(op, x)
        if _unit(scale, x):
            return y
        return self.emit(op, "Mul", [y, scale], f"{self.root_name}/scale")


class QonnxBipolarQuant(_BipolarQuant):
    domain = DOMAINS[0]


class FinnBipolarQuant(_BipolarQuant):
    domain = DOMAINS[1]


RULES = (QonnxBipolarQuant, FinnBipolarQuant)
ROOT_OPS = frozenset({"BipolarQuant"})
