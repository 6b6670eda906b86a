"""Custom operators (installed as ``bnncompile.custom_ops``); see ``registry.py``."""

from . import dynamic_sign
from .registry import CUSTOM_OPS, lookup

__all__ = ["CUSTOM_OPS", "dynamic_sign", "lookup"]
