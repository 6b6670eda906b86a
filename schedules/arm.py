"""aarch64 NEON schedules: the x86 tiling with NEON-sized tiles.

A q-register holds 2 u64 lanes, so KI = 4 output channels is 2 registers per pixel; with 32
vector registers a row tile of 8 pixels keeps the 16 accumulators plus operands in registers.
Vector ``llvm.ctpop`` lowers to ``cnt v.16b`` + a ``uaddlp`` widening chain.
"""
from __future__ import annotations

from tvm import s_tir

from . import generic, generic_quantized, x86

KI_ARM = 4
WI_MAX_ARM = 8


def schedule_bconv2d(sch: s_tir.Schedule) -> None:
    # the words loop stays unrolled at any C: x86's limit was measured on Zen 3's 16 ymm
    # registers, and NEON's 32 hold this tile (no aarch64 timing here: qemu only checks results)
    x86.schedule_bconv2d(sch, ki=KI_ARM, wi_max=WI_MAX_ARM, unroll_words_max=None)


def schedule_bdense(sch: s_tir.Schedule) -> None:
    x86.schedule_bdense(sch, nvec=KI_ARM, mi_max=4, pack_intrin=None)


def schedule_bbatch_matmul(sch: s_tir.Schedule) -> None:
    x86.schedule_bbatch_matmul(sch, nvec=KI_ARM, mi_max=4)


schedule_bitpack = generic.schedule_bitpack
schedule_bitpack_last = generic.schedule_bitpack_last
schedule_maxpool2d = generic.schedule_maxpool2d
schedule_avgpool2d = generic.schedule_avgpool2d
schedule_prelu_stats = generic.schedule_prelu_stats
schedule_token_threshold = generic.schedule_token_threshold
schedule_quantize_pairs = generic_quantized.schedule_quantize_pairs
schedule_quantize_hwc = generic_quantized.schedule_quantize_hwc
schedule_quantize_width = generic_quantized.schedule_quantize_width
schedule_qconv2d = generic_quantized.schedule_qconv2d  # no NEON intrinsic yet: int32 lanes, vectorised
schedule_quantize_rows = generic_quantized.schedule_quantize_rows
schedule_quantize_columns = generic_quantized.schedule_quantize_columns
schedule_qbatch_matmul = generic_quantized.schedule_qbatch_matmul


def schedule_fconv2d(sch: s_tir.Schedule) -> None:
    # NEON has 32 q registers: 8 pixels x (OB=4 lanes) fits with room for the weights.
    generic.schedule_fconv2d(sch, wi_max=8)
