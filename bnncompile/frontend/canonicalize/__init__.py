"""Canonicalize: every recognised spelling of a binarizer becomes one DynamicSign node, and the ops
around it take the forms :mod:`..binary_layers` proves binary.

Each spelling is one module holding its rules (onnxscript rewrite rules: pattern, exactness
check, replacement; :mod:`.base`), the op types whose presence makes them worth trying
(``ROOT_OPS``) and optionally ``wanted(model, index) -> bool`` for files with none of those ops
that still need it (a hand-written DynamicSign before a Transpose, say).  The modules run in
``SPELLINGS`` order, each to its own fixpoint, and the whole sequence again until nothing changes,
over an ``onnx_ir`` view of the model — only when some node has a root op type or some module
wants the file (files that are already canonical skip the round trip).  Rewritten nodes keep the
matched node's name and record the spelling they came from (:func:`.base.via`).

``Sign`` is the one spelling that is not exact: ONNX ``Sign`` maps 0 to 0, which one bit cannot
hold.  ``sign_zero="plus"`` (the default) compiles it as 0 → +1 and reports each such site
(:func:`sign_zero_sites`, :attr:`Canonicalized.sign_zero_sites`); ``sign_zero="refuse"`` raises
:class:`~bnncompile.errors.UnsupportedModelError` naming the node instead.

Adding a spelling: one module here with ``RULES`` and ``ROOT_OPS``, one line in ``SPELLINGS``,
one test file in ``tests/frontend/canonicalize/``.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from ...errors import UnsupportedModelError, UsageError
from . import (
    bipolar_quant,
    detach_ste,
    larq_sign,
    qonnx_quant,
    sign,
    sign_moves,
    weight_fold,
    weight_scale,
    where_compare,
)
from .base import SIGN_ZERO_KEY, VIA_KEY, via

#: the spellings, in the order their rules are tried: exact sign spellings first (Larq's
#: Sign(Sign(x) + c) before the plain Sign, so it is not counted as a sign(0) site), then the
#: layout moves that bring each sign next to its layer, then the layers' weights
SPELLINGS = (
    where_compare,
    larq_sign,
    bipolar_quant,
    qonnx_quant,
    sign,
    detach_ste,
    sign_moves,
    weight_fold,
    weight_scale,
)

MAX_PASSES = 8
SIGN_ZERO_MODES = ("plus", "refuse")

__all__ = ["SIGN_ZERO_MODES", "SPELLINGS", "VIA_KEY", "Canonicalized", "SignZeroSite",
           "canonicalize", "sign_zero_sites", "via"]


@dataclass(frozen=True)
class SignZeroSite:
    """A DynamicSign compiled from an ONNX ``Sign`` (0 -> 0) as 0 -> +1."""

    node: str  # the DynamicSign node (it keeps the name of the Sign it replaced)
    input: str  # the tensor whose exact zeros now give +1 (count them to see the effect)
    sign: str  # the ONNX Sign node it came from

    def message(self) -> str:
        return (f"node '{self.node}': Sign maps 0 to 0; compiled as 0 -> +1: results differ "
                "where this input is exactly 0")


class Canonicalized(int):
    """The number of rewrites (an int, as before), with the sign(0) sites found."""

    sign_zero_sites: tuple[SignZeroSite, ...] = ()

    def __new__(cls, rewrites: int, sites=()):
        obj = super().__new__(cls, rewrites)
        obj.sign_zero_sites = tuple(sites)
        return obj


def sign_zero_sites(model: onnx.ModelProto) -> list[SignZeroSite]:
    """Every DynamicSign of a canonical ``model`` that came from an ONNX ``Sign``."""
    from ...custom_ops.dynamic_sign import is_dynamic_sign

    sites = []
    for node in model.graph.node:
        if not is_dynamic_sign(node):
            continue
        for prop in node.metadata_props:
            if prop.key == SIGN_ZERO_KEY:
                sites.append(SignZeroSite(node.name, node.input[0], prop.value))
    return sites


def _refuse(sites) -> None:
    names = ", ".join(f"'{s.sign}' (ai.onnx::Sign)" for s in sites)
    raise UnsupportedModelError(
        f"node {names}: Sign maps 0 to 0, which one bit cannot hold (sign_zero=refuse); "
        "compile with --sign-zero plus to binarize it as 0 -> +1 (results differ where its input "
        "is exactly 0), or export the binarizer as where(x >= 0, 1, -1)")


def _wanted(model: onnx.ModelProto) -> bool:
    roots = frozenset().union(*(s.ROOT_OPS for s in SPELLINGS))
    if any(n.op_type in roots for n in model.graph.node):
        return True
    hooks = [s.wanted for s in SPELLINGS if getattr(s, "wanted", None) is not None]
    if not hooks:
        return False
    from ..graph import GraphIndex

    index = GraphIndex(model)
    return any(hook(model, index) for hook in hooks)


def canonicalize(model: onnx.ModelProto, *, sign_zero: str = "plus") -> Canonicalized:
    """Rewrite ``model`` in place; returns the number of rewrites (an int) carrying the sign(0)
    sites.  ``sign_zero="refuse"``: raise instead of compiling an ONNX ``Sign`` as 0 -> +1 (the
    model is then left as it was)."""
    if sign_zero not in SIGN_ZERO_MODES:
        modes = ", ".join(SIGN_ZERO_MODES)
        raise UsageError(f"sign_zero must be one of {modes}, got {sign_zero!r}")
    if not _wanted(model):
        return _result(0, sign_zero_sites(model), sign_zero)
    import onnx_ir as ir
    from onnxscript.rewriter import pattern

    rule_sets = [(s.ROOT_OPS, pattern.RewriteRuleSet([rule.rule() for rule in s.RULES]))
                 for s in SPELLINGS if s.RULES]
    ir_model = ir.from_proto(model)
    total = 0
    for _ in range(MAX_PASSES):
        changed = 0
        for roots, rules in rule_sets:
            if roots and roots.isdisjoint(n.op_type for n in ir_model.graph):
                continue  # none of its spelling left (or created by an earlier rule)
            for _ in range(MAX_PASSES):
                n = rules.apply_to_model(ir_model)
                changed += n
                if not n:
                    break
        total += changed
        if not changed:
            break
    if not total:
        return _result(0, sign_zero_sites(model), sign_zero)
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    RemoveUnusedNodesPass()(ir_model)  # the constants and sign spellings the rewrites left behind
    from ...custom_ops.dynamic_sign import attach_function

    had_value_info = len(model.graph.value_info) > 0
    out = ir.to_proto(ir_model)
    if not had_value_info:  # partial shapes would stop the frontend from inferring the rest
        del out.graph.value_info[:]
    sites = sign_zero_sites(out)
    result = _result(total, sites, sign_zero)  # raises before the model is touched
    model.CopyFrom(out)
    attach_function(model)  # the custom domain's opset import (and function body)
    return result


def _result(total: int, sites, sign_zero: str) -> Canonicalized:
    if sites and sign_zero == "refuse":
        _refuse(sites)
    return Canonicalized(total, sites)
