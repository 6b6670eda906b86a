"""What a canonicalization rule is: an onnxscript rewrite rule (pattern, exactness check,
replacement) that turns one spelling of a binarizer into a ``com.bnncompile::DynamicSign`` node
and records its provenance on that node (``metadata_props["bnncompile.via"]``), so ``inspect``
and ``compile`` can say "binary: yes (via <spelling>)".
"""

from __future__ import annotations

import numpy as np
from onnxscript.rewriter import pattern

from ...custom_ops.dynamic_sign import DOMAIN, OP_TYPE

VIA_KEY = "bnncompile.via"


def const_array(value) -> np.ndarray | None:
    """The numpy value of an onnx_ir value if it is a constant (initializer or Constant)."""
    tensor = getattr(value, "const_value", None)
    if tensor is None:
        return None
    try:
        return np.asarray(tensor.numpy())
    except Exception:  # an external or unreadable tensor: not a constant we can prove anything on
        return None


def is_scalar(value, expected: float, max_rank: int) -> bool:
    """``value`` is a float constant with one element equal to ``expected`` and rank <= max_rank
    (so it broadcasts without raising the result's rank)."""
    a = const_array(value)
    return (a is not None and a.dtype.kind == "f" and a.size == 1 and a.ndim <= max_rank
            and float(a.reshape(-1)[0]) == expected)


def rank(value) -> int | None:
    shape = getattr(value, "shape", None)
    return None if shape is None else len(shape)


def broadcasts_onto(t, x) -> bool:
    """Threshold ``t`` broadcasts unidirectionally onto ``x`` (numpy rules), provably."""
    ts, xs = getattr(t, "shape", None), getattr(x, "shape", None)
    if ts is None:
        a = const_array(t)
        if a is None:
            return False
        ts = a.shape
    if xs is None:
        return len(ts) == 0 or (len(ts) <= 1 and all(d == 1 for d in ts))
    ts, xs = list(ts), list(xs)
    if len(ts) > len(xs):
        return False
    for td, xd in zip(reversed(ts), reversed(xs)):
        if td == 1:
            continue
        if not isinstance(td, int) or td != xd:
            return False
    return True


class SignRule(pattern.RewriteRuleClassBase):
    """Base of the rules: subclasses give ``pattern``, ``check`` (calling :meth:`matched`) and
    ``rewrite`` (returning :meth:`dynamic_sign`); ``via`` names the spelling for reports."""

    via: str = ""

    def matched(self, context) -> bool:
        self._root = context.root.name
        return True

    def dynamic_sign(self, op, x, t=None):
        out = op.DynamicSign(x, t, _domain=DOMAIN) if t is not None else op.DynamicSign(x, _domain=DOMAIN)
        node = out.producer()
        node.name = getattr(self, "_root", None) or node.name
        node.metadata_props[VIA_KEY] = self.via
        return out


def via(node) -> str | None:
    """The spelling a DynamicSign node was rewritten from (None: written as DynamicSign)."""
    for prop in node.metadata_props:
        if prop.key == VIA_KEY:
            return prop.value
    return None


__all__ = [
    "OP_TYPE",
    "VIA_KEY",
    "SignRule",
    "broadcasts_onto",
    "const_array",
    "is_scalar",
    "rank",
    "via",
]
