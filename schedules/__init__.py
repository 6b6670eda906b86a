"""Binary (XNOR-popcount) TVM kernels: TE computes, per-target schedules, packing helpers.

Layout, in the order a kernel is made:

* :mod:`.compute` — target-agnostic tensor expressions (bit-packing, binary conv / dense /
  batch matmul with fused epilogues, the float kernels bnncompile schedules itself);
* :mod:`.generic` (+ :mod:`.generic_quantized`), :mod:`.x86`, :mod:`.arm`, :mod:`.cuda` — hand
  schedules per target, chosen by the target's identity (:mod:`.target_identity`) in
  :mod:`.registry`;
* :mod:`.registry` — the public ``make_*`` builders (compute + schedule → PrimFunc) and the
  dispatch table; :mod:`.registry_quantized` those of the quantized kernels;
* :mod:`.tuning` + ``databases/`` — MetaSchedule records that replace hand schedules;
* :mod:`.float_glue` — default schedules for the float ops TVM legalizes;
* :mod:`.x86_intrinsics` — tensor intrinsics the x86 schedules tensorize with;
* :mod:`.packing` (numpy: weights, tables), :mod:`.quantize` (numpy: the quantized float convs'
  and attention products' numbers) and :mod:`.reference` (independent numpy references).

This package knows nothing about ONNX or bnncompile's frontend.  Names are imported lazily, so
``bnncompile.schedules.target_identity`` or ``.packing`` do not pull in every kernel.
"""
from __future__ import annotations

import importlib

_FROM = {
    "registry": ("SCHEDULES", "bconv_weight_block", "dense_weight_bits", "dense_weight_bits_of",
                 "fconv2d_block", "get_schedule", "make_avgpool2d",
                 "make_bbatch_matmul", "make_bconv2d", "make_bdense", "make_bitpack",
                 "make_bitpack_last", "make_fconv2d", "make_maxpool2d", "make_prelu_stats",
                 "make_token_threshold",
                 "target_key", "weight_block_of"),
    "registry_quantized": ("make_qbatch_matmul", "make_qconv2d", "make_qconv2d_amx", "make_quantize_columns",
                           "make_quantize_hwc", "make_quantize_pairs", "make_quantize_rows",
                           "make_quantize_width", "vnni_available"),
    "packing": ("check_pm1", "num_words", "pack_bits", "pack_conv_weight", "pack_dense_weight",
                "unpack_bits"),
}
_LAZY = {name: module for module, names in _FROM.items() for name in names}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
