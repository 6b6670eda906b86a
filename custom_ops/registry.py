"""The explicit list of bnncompile's custom ONNX operators: ``(domain, op_type) -> module``.

Adding an op means one module beside this file, one line here, and one test file.
"""

from __future__ import annotations

from types import ModuleType

from . import dynamic_sign

CUSTOM_OPS: dict[tuple[str, str], ModuleType] = {
    (dynamic_sign.DOMAIN, dynamic_sign.OP_TYPE): dynamic_sign,
}


def lookup(domain: str, op_type: str) -> ModuleType | None:
    return CUSTOM_OPS.get((domain, op_type))


def custom_domains() -> set[str]:
    return {d for d, _ in CUSTOM_OPS}


def converters() -> list:
    """Each op's frontend converter (its TVM facet), for the frontend's converter registry."""
    return [module.CONVERTER for module in CUSTOM_OPS.values()]


def translation_table() -> dict:
    """Merged ``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``."""
    table: dict = {}
    for module in CUSTOM_OPS.values():
        table.update(module.translation_table())
    return table
