"""Quantized float convolutions (``compile --conv-precision``): the numbers, in numpy.

The float convs a BNN keeps (the stem, CCT's tokenizer, 1x1 shortcuts) may run on integer
units instead of FP32 FMAs.  One definition serves the compiler (weights quantized at compile
time), the kernels' references and the quantization-faithful ONNX model that ``compile --verify``
and ``validate`` compare the build with (``bnncompile.frontend.quantized_reference``):

* weights: per output channel, symmetric, ``wq = rint(w / s_w)``, ``s_w = max|w_k| / qw``;
* activations: per sample, symmetric, from the sample's own range (no calibration data):
  ``amax = max|x|``, ``xq = rint(x * (qa / amax))`` clipped to ``[-qa, qa]`` (0 when amax is 0);
* ``y = float(sum xq * wq) * (amax * (s_w / qa)) + bias``, the sum exact in int32.

``int8`` uses ``qa = qw = 127`` (what VNNI / AMX int8 units compute).  ``int16`` uses the widest
levels for which no int32 sum can overflow: ``R * qa * qw < 2**31`` for a reduction of ``R``
products, split evenly (``qa = qw = floor(sqrt((2**31 - 1) / R))``, at most 32767); the AVX2
kernel (``vpmaddwd``: int16 pairs into int32) runs both at the same speed.  Rounding is
half-to-even everywhere (numpy ``rint``, ONNX ``Round``, LLVM ``roundeven``).

CPUs with AVX-512 VNNI run int8 as channel quads (``vpdpbusd``: 4 unsigned x signed byte
products into int32, 64 MACs per zmm instruction): the activations are stored offset by
:data:`VNNI_OFFSET` (``xq + 128`` in ``[1, 255]``, 128 in the padding), and the sum subtracts
``128 * sum(wq)`` per output channel (:func:`offset_compensation`): the same exact integers.

A conv with few input channels and a wide kernel (a 3-channel 7x7 stem) groups along the
kernel's width instead (*width groups*, :func:`width_groups_pay`): the group is ``G``
neighbouring input columns of one channel, read straight from the padded NCHW map, and the
weights past ``KW`` are zero (3 x 7 x 8 products per output channel instead of 4 x 7 x 7).

Attention's probability x value product (``compile --attention-precision int8``): both operands
are activations, so both are quantized at run time, each from its own range:

* probabilities ``P [..., M, K]`` (a Softmax output, >= 0) per row, to unsigned bytes:
  ``pq = clip(rint(p * (255 / pmax)), 0, 255)``, ``pmax`` the row's max (0 where it is <= 0);
* values ``V [..., K, N]`` per column, symmetric: ``vq = clip(rint(v * (127 / vmax)), -127,
  127)``, ``vmax = max|v|`` over the column;
* ``y = float(sum pq * vq) * ((pmax / 255) * (vmax / 127))``, the sum exact in int32 (``K`` up
  to :data:`ATTENTION_MAX_K`): ``vpdpbusd`` multiplies the bytes as they are, no offset.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PRECISIONS = ("fp32", "int16", "int8")
INT32_MAX = 2**31 - 1
VNNI_OFFSET = 128  #: int8 activations + 128 are the unsigned bytes ``vpdpbusd`` multiplies
ATTENTION_PRECISIONS = ("fp32", "int8")
P_LEVELS, V_LEVELS = 255, 127  #: attention int8: probabilities as uint8, values as int8
ATTENTION_MAX_K = INT32_MAX // (P_LEVELS * V_LEVELS)  #: longest reduction an int32 sum holds

__all__ = [
    "ATTENTION_MAX_K",
    "ATTENTION_PRECISIONS",
    "PRECISIONS",
    "P_LEVELS",
    "VNNI_OFFSET",
    "V_LEVELS",
    "QuantizedConvWeight",
    "activation_levels",
    "attention_product",
    "group_blocked",
    "levels",
    "offset_compensation",
    "pair_blocked",
    "quantize_activation",
    "quantize_columns",
    "quantize_conv_weight",
    "quantize_rows",
    "reduction_length",
    "tie_rtol",
    "width_blocked",
    "width_extent",
    "width_groups_pay",
]


def reduction_length(weight_shape) -> int:
    """Products per output of a conv with OIHW ``weight_shape``, input channels padded to pairs."""
    _, c, kh, kw = (int(v) for v in weight_shape)
    return (c + c % 2) * kh * kw


def levels(precision: str, reduction: int) -> tuple[int, int]:
    """``(qa, qw)``: the largest |integer| of the activations and of the weights."""
    if precision == "int8":
        qa = qw = 127
    elif precision == "int16":
        qa = qw = min(32767, math.isqrt(INT32_MAX // max(int(reduction), 1)))
    else:
        raise ValueError(f"conv precision {precision!r}: expected one of {', '.join(PRECISIONS[1:])}")
    if qa < 1 or int(reduction) * qa * qw > INT32_MAX:
        raise ValueError(f"a reduction of {reduction} products cannot be summed in int32 at "
                         f"{precision} (|x| <= {qa}, |w| <= {qw})")
    return qa, qw


@dataclass(frozen=True)
class QuantizedConvWeight:
    ints: np.ndarray  #: int16 OIHW ``wq``
    dequant: np.ndarray  #: float32 ``[K]``: ``s_w / qa``, the output scale per unit of amax
    qa: int
    qw: int


def quantize_conv_weight(w: np.ndarray, precision: str) -> QuantizedConvWeight:
    """Per-output-channel symmetric quantization of a float OIHW weight."""
    w = np.asarray(w, np.float32)
    if w.ndim != 4:
        raise ValueError(f"conv weight: expected rank 4 [K, C, KH, KW], got shape {w.shape}")
    qa, qw = levels(precision, reduction_length(w.shape))
    wmax = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
    s_w = np.where(wmax > 0, wmax / np.float32(qw), np.float32(1)).astype(np.float32)
    ints = np.clip(np.rint(w / s_w[:, None, None, None]), -qw, qw).astype(np.int16)
    return QuantizedConvWeight(ints, (s_w / np.float32(qa)).astype(np.float32), qa, qw)


def group_blocked(ints: np.ndarray, block: int, group: int) -> np.ndarray:
    """OIHW integers -> ``[KB, CG, KH, KW, block, group]``: input channel ``group*cg + j`` at
    ``[..., j]``, output channel ``kb*block + b`` at ``[kb, ..., b, :]``, both zero-padded (one
    instruction multiplies a broadcast group of activations with ``block`` such weight groups):
    int16 pairs for ``vpmaddwd`` (``group=2``), int8 quads for ``vpdpbusd`` (``group=4``)."""
    k, c, kh, kw = ints.shape
    kb, cg = -(-k // block), -(-c // group)
    dtype = np.int16 if group == 2 else np.int8
    padded = np.zeros((kb * block, cg * group, kh, kw), dtype)
    padded[:k, :c] = ints
    return np.ascontiguousarray(padded.reshape(kb, block, cg, group, kh, kw).transpose(0, 2, 4, 5, 1, 3))


def width_groups_pay(channels: int, kernel_w: int, group: int, dilation_w: int) -> bool:
    """Do groups of ``group`` kernel columns pad fewer products than groups of channels?  (A
    3-channel 7x7 stem: 3 x 8 against 4 x 7 per kernel row.)  Only without dilation along w:
    a group is then ``group`` contiguous input columns."""
    along_w = channels * -(-kernel_w // group) * group
    along_c = -(-channels // group) * group * kernel_w
    return int(dilation_w) == 1 and along_w < along_c


def width_extent(out_width: int, kernel_w: int, stride_w: int, group: int) -> int:
    """Columns of a width-grouped map: every column the conv's groups read, the zero-weight
    ones past ``KW`` included (``(OW - 1) * SW + ceil(KW / G) * G``)."""
    return (int(out_width) - 1) * int(stride_w) + -(-int(kernel_w) // group) * group


def width_blocked(ints: np.ndarray, block: int, group: int) -> np.ndarray:
    """OIHW integers -> ``[KB, C, KH, ceil(KW/G), block, G]``: kernel column ``G*g + j`` at
    ``[..., g, :, j]``, zero past ``KW`` and past the last output channel (the width groups'
    layout, :func:`width_groups_pay`)."""
    k, c, kh, kw = ints.shape
    kb, kg = -(-k // block), -(-kw // group)
    padded = np.zeros((kb * block, c, kh, kg * group), np.int16 if group == 2 else np.int8)
    padded[:k, :, :, :kw] = ints
    return np.ascontiguousarray(padded.reshape(kb, block, c, kh, kg, group).transpose(0, 2, 3, 4, 1, 5))


def pair_blocked(ints: np.ndarray, block: int) -> np.ndarray:
    """int16 OIHW -> ``[KB, C2, KH, KW, block, 2]`` (:func:`group_blocked` in pairs)."""
    return group_blocked(ints, block, 2)


def offset_compensation(ints: np.ndarray) -> np.ndarray:
    """int32 ``[K]``: ``VNNI_OFFSET * sum(wq)`` per output channel, what the offset activations
    add to every sum (padding included: it holds the offset too)."""
    return (VNNI_OFFSET * ints.reshape(ints.shape[0], -1).astype(np.int64).sum(axis=1)).astype(np.int32)


def quantize_activation(x: np.ndarray, qa: int) -> tuple[np.ndarray, np.ndarray]:
    """``(xq int16 [N, ...], amax float32 [N])`` per sample, in float32 as the kernel does it."""
    x = np.asarray(x, np.float32)
    amax = np.abs(x).reshape(x.shape[0], -1).max(axis=1).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(qa) / amax, np.float32(0)).astype(np.float32)
    scaled = x * inv.reshape(-1, *([1] * (x.ndim - 1)))
    return np.clip(np.rint(scaled), -qa, qa).astype(np.int16), amax


def _levels_of(x: np.ndarray, peak: np.ndarray, levels: int, lo: int) -> np.ndarray:
    """``clip(rint(x * (levels / peak)), lo, levels)`` in float32 (0 where the peak is <= 0),
    ``peak`` broadcastable to ``x``."""
    with np.errstate(divide="ignore"):
        inv = np.where(peak > 0, np.float32(levels) / peak, np.float32(0)).astype(np.float32)
    return np.clip(np.rint(x * inv), lo, levels)


def quantize_rows(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Attention probabilities ``[..., M, K]`` -> ``(uint8 levels, pmax float32 [..., M])``."""
    p = np.asarray(p, np.float32)
    pmax = p.max(axis=-1)
    return _levels_of(p, pmax[..., None], P_LEVELS, 0).astype(np.uint8), pmax


def quantize_columns(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Attention values ``[..., K, N]`` -> ``(int8 levels, vmax float32 [..., N])``."""
    v = np.asarray(v, np.float32)
    vmax = np.abs(v).max(axis=-2)
    return _levels_of(v, vmax[..., None, :], V_LEVELS, -V_LEVELS).astype(np.int8), vmax


def attention_product(pq: np.ndarray, pmax: np.ndarray, vq: np.ndarray,
                      vmax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(int64 sums [..., M, N], float32 y)``: the exact sums and ``float(sum) * ((pmax / 255)
    * (vmax / 127))``, each step rounded to float32 as the kernel and the ONNX reference do."""
    acc = np.matmul(pq.astype(np.int64), vq.astype(np.int64))
    dp, dv = pmax / np.float32(P_LEVELS), vmax / np.float32(V_LEVELS)
    scale = (dp[..., :, None] * dv[..., None, :]).astype(np.float32)
    return acc, (acc.astype(np.float32) * scale).astype(np.float32)


def activation_levels(convs: dict, matmuls: dict | None = None) -> list[int]:
    """Every activation quantizer's levels in a build: its quantized convs' ``qa`` (the plan's or
    sidecar's ``quantized_convs``) and its attention products' (``quantized_matmuls``)."""
    return ([int(c["qa"]) for c in convs.values()] +
            [int(m[k]) for m in (matmuls or {}).values() for k in ("p_levels", "v_levels")])


def tie_rtol(activation_levels, base: float) -> float:
    """The near-tie margin of a build whose convs quantize activations to ``activation_levels``
    (their ``qa``): an ulp of float glue upstream (TVM and ONNX Runtime sum in different orders)
    can move an input across a rounding boundary, one step of ``amax / qa``, and a sign downstream
    then moves by about that much relative (dybnn_reactnet_18 at int16, qa 2896: a flip at
    4.4e-4 = 1.3 / qa).  4 steps of the coarsest quantizer, at least ``base``."""
    qas = [int(q) for q in activation_levels]
    return max(base, 4.0 / min(qas)) if qas else base
