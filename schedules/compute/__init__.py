"""Target-agnostic TE computes (no schedules here; see the per-target modules beside this
package).  Every compute has a numpy reference in :mod:`bnncompile.schedules.reference` and a
bit-exact test in ``tests/schedules``.

* :mod:`.bitpack`: ``x >= t`` packed into uint64 words, the float ±1 of a DynamicSign, unpacking;
* :mod:`.index_view`: a tensor read through slices, reshapes and transposes without a copy;
* :mod:`.binary`: XNOR-popcount conv2d / dense / batch matmul with fused epilogues;
* :mod:`.float_ops`: the blocked float conv, pooling, threshold statistics, the fused PReLU, softmax (of
  floats, or of binary scores given as popcounts), the token threshold (DySign's pool + MLP);
* :mod:`.quantized_conv`: the float conv on int16 pairs (``compile --conv-precision``);
* :mod:`.quantized_matmul`: attention's probability x value product on int8
  (``compile --attention-precision``).
"""
from .binary import POST_OPS, bbatch_matmul, bconv2d, bdense, score_steps
from .bitpack import bitpack, bitpack_last, dynamic_sign, unpack_bits_float
from .common import WORD, conv_out_size, normalize_2d, normalize_padding, nwords
from .float_ops import (
    avgpool2d,
    fconv2d_blocked,
    gelu_erf,
    maxpool2d,
    power,
    power_mean,
    prelu_stats,
    softmax_counts,
    softmax_last,
    token_threshold,
)
from .index_view import IndexView, view_tag
from .quantized_conv import qconv2d_blocked, quantize_hwc, quantize_pairs, quantize_width
from .quantized_matmul import qbatch_matmul, quantize_columns, quantize_rows

__all__ = [
    "POST_OPS",
    "WORD",
    "IndexView",
    "avgpool2d",
    "bbatch_matmul",
    "bconv2d",
    "bdense",
    "bitpack",
    "bitpack_last",
    "conv_out_size",
    "dynamic_sign",
    "fconv2d_blocked",
    "gelu_erf",
    "maxpool2d",
    "normalize_2d",
    "normalize_padding",
    "nwords",
    "power",
    "power_mean",
    "prelu_stats",
    "qbatch_matmul",
    "qconv2d_blocked",
    "quantize_columns",
    "quantize_hwc",
    "quantize_pairs",
    "quantize_rows",
    "quantize_width",
    "score_steps",
    "softmax_counts",
    "softmax_last",
    "token_threshold",
    "unpack_bits_float",
    "view_tag",
]
