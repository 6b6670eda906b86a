"""bnncompile: PyTorch binary neural networks (incl. DySign / INSTA-BNN dynamic thresholds) to
fast bit-packed TVM kernels, with exact parity checks.

Pipeline functions are imported lazily so that ``import bnncompile`` stays cheap (TVM takes
seconds to import).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "export": ("bnncompile.exporter", "export"),
    "compile_model": ("bnncompile.compiler", "compile_model"),
    "load": ("bnncompile.runtime", "load"),
    "validate_parity": ("bnncompile.validate", "validate_parity"),
    "benchmark": ("bnncompile.bench", "benchmark"),
    "summarize": ("bnncompile.summary", "summarize"),
}


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'bnncompile' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
