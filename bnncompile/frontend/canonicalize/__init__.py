"""Canonicalize: every recognised spelling of a binarizer becomes one DynamicSign node.

Each spelling is one module holding its rules (onnxscript rewrite rules: pattern, exactness
check, replacement; :mod:`.base`) and the op types its patterns are rooted on.  The rules run to
a fixpoint over an ``onnx_ir`` view of the model, only when some node has a root op type (files
that are already canonical skip the round trip).  Rewritten nodes keep the matched node's name
and record the spelling they came from (:func:`.base.via`).

Adding a spelling: one module here with ``RULES`` and ``ROOT_OPS``, one line in ``SPELLINGS``,
one test file in ``tests/frontend/canonicalize/``.
"""

from __future__ import annotations

import onnx

from . import where_compare
from .base import VIA_KEY, via

#: the spellings, in the order their rules are tried
SPELLINGS = (where_compare,)

MAX_PASSES = 8

__all__ = ["SPELLINGS", "VIA_KEY", "canonicalize", "via"]


def canonicalize(model: onnx.ModelProto) -> int:
    """Rewrite ``model`` in place; returns the number of rewrites."""
    roots = frozenset().union(*(s.ROOT_OPS for s in SPELLINGS))
    if not any(n.op_type in roots for n in model.graph.node):
        return 0
    import onnx_ir as ir
    from onnxscript.rewriter import pattern

    rules = pattern.RewriteRuleSet([rule.rule() for s in SPELLINGS for rule in s.RULES])
    ir_model = ir.from_proto(model)
    total = 0
    for _ in range(MAX_PASSES):
        n = rules.apply_to_model(ir_model)
        total += n
        if not n:
            break
    if total:
        from onnx_ir.passes.common import RemoveUnusedNodesPass

        RemoveUnusedNodesPass()(ir_model)  # the 1 / -1 Constants the rewrites left behind
        from ...custom_ops.dynamic_sign import attach_function

        model.CopyFrom(ir.to_proto(ir_model))
        attach_function(model)  # the custom domain's opset import (and function body)
    return total
