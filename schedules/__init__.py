"""Binary (XNOR-popcount) TVM kernels: TE computes, per-target schedules, packing helpers.

Public entry points (see :mod:`.registry` for PrimFunc parameter orders): ``make_bitpack``,
``make_bitpack_last``, ``make_bconv2d``, ``make_bdense``, ``make_bbatch_matmul``, ``make_fconv2d``,
``make_maxpool2d``, ``make_avgpool2d``, ``make_prelu_stats``; numpy packing
helpers in :mod:`.packing`; independent references in :mod:`.reference`.
"""
from .packing import (
    check_pm1,
    num_words,
    pack_bits,
    pack_conv_weight,
    pack_dense_weight,
    unpack_bits,
)
from .registry import (
    SCHEDULES,
    fconv2d_block,
    get_schedule,
    make_avgpool2d,
    make_bbatch_matmul,
    make_bconv2d,
    make_bdense,
    make_bitpack,
    make_bitpack_last,
    make_fconv2d,
    make_maxpool2d,
    make_prelu_stats,
    target_key,
)

__all__ = [
    "SCHEDULES",
    "check_pm1",
    "get_schedule",
    "make_avgpool2d",
    "make_bbatch_matmul",
    "make_bconv2d",
    "make_bdense",
    "make_bitpack",
    "make_bitpack_last",
    "make_fconv2d",
    "make_maxpool2d",
    "make_prelu_stats",
    "fconv2d_block",
    "num_words",
    "pack_bits",
    "pack_conv_weight",
    "pack_dense_weight",
    "target_key",
    "unpack_bits",
]
