"""What a converter is: the nodes it claims (planning) and how it converts them (import).

A converter is an object with

* ``name``: its registry name; the nodes it claims are imported under the op type
  ``bnncompile::<name>`` so TVM's importer dispatches them back to it;
* ``requires``: the :class:`~bnncompile.frontend.plan.PlanContext` switches it needs
  (``"binary_kernels"``, ``"cpu"``, ``"fuse_epilogues"``); it is skipped when one is off;
* ``plan(ctx)``: claim nodes with ``ctx.claim(node, self)`` and record what the conversion will
  need in ``ctx.plan`` (runs in registry order, without TVM);
* ``convert(imp, node, inputs, attrs, opset)``: emit Relax for one claimed node through the
  importer's helpers (:mod:`bnncompile.frontend.importer`); ``node`` is the node as written in
  the file. Returning ``imp.fallback(...)`` hands the node back to TVM's own converter.

Custom operators (``bnncompile.custom_ops``) define their converter beside their other facets
with the same attributes; they need not import this module.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

MANGLE = "bnncompile::"


class Converter(Protocol):
    name: ClassVar[str]
    requires: ClassVar[frozenset[str]]

    def plan(self, ctx) -> None: ...

    def convert(self, imp, node, inputs, attrs, opset): ...


def op_type(converter) -> str:
    """The op type claimed nodes carry through TVM's importer."""
    return MANGLE + converter.name
