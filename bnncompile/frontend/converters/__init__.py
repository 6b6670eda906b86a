"""The converter registry: one ordered list drives both the claiming (planning, in this order)
and the dispatch at import.

Order matters where a converter reads what an earlier one decided: the binary layers first (the
DynamicSign converter comes from ``bnncompile.custom_ops``), then the scale Mul folded into
them, the signs decided on a binary dense's sums, the bias and residual Adds after the other
denses, the softmax of binary scores read as popcounts, the CPU kernels for float convs and
pools, the epilogue fusion (which needs the binary convs, their folded scales and the signs'
layouts), and the threshold statistics (a mean of a slice, then the token thresholds, last).

Adding a lowering: a module here with a converter class (see :mod:`.base`), one line below, one
test file in ``tests/frontend/converters/``.
"""

from __future__ import annotations

from ...custom_ops import registry as custom_ops
from .attention_product import FUSED_SOFTMAX, AttentionProduct
from .base import op_type
from .binary_conv import BinaryConv, FusedEpilogue
from .binary_dense import BinaryDense
from .binary_matmul import BinaryBatchMatMul
from .count_threshold import CountThreshold
from .dense_epilogue import DenseEpilogue
from .float_conv import FUSED_RELU, FloatConv
from .folded_scale import FoldedScale
from .pooling import AveragePool, MaxPool
from .score_softmax import ScoreSoftmax
from .sliced_mean import SlicedMean
from .statistics import FusedPreluStats, PowerMean
from .token_threshold import TokenThreshold

CONVERTERS = (
    *custom_ops.converters(),  # DynamicSign
    BinaryConv(),
    BinaryDense(),
    BinaryBatchMatMul(),
    AttentionProduct(),  # after the binary matmuls: a Softmax x DynamicSign product is theirs
    FUSED_SOFTMAX,
    FoldedScale(),
    CountThreshold(),  # after the folded scales: a dense's scale Mul may be part of its chain
    DenseEpilogue(),  # the Adds after a dense's folded scale, where no sign decides on its sums
    ScoreSoftmax(),  # after the folded scales: the 1/sqrt(d) Mul sits between matmul and softmax
    MaxPool(),
    AveragePool(),
    FloatConv(),
    FUSED_RELU,
    FusedEpilogue(),
    PowerMean(),
    FusedPreluStats(),
    SlicedMean(),  # after PowerMean: a mean over H, W is its
    TokenThreshold(),  # claims a chain's last node only: the sliced mean it replaces goes unread
)

BY_OP_TYPE = {op_type(c): c for c in CONVERTERS}

__all__ = ["BY_OP_TYPE", "CONVERTERS"]
