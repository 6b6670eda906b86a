"""The quantized kernels' ``make_*`` builders (``compile --conv-precision`` and
``--attention-precision``): activation quantizers, the int32 conv on pairs / quads / AMX tiles,
attention's int8 product.  Same contract as :mod:`.registry` (scheduled PrimFuncs with a
descriptive ``global_symbol``), dispatched through its table."""
from __future__ import annotations

from collections.abc import Sequence

import tvm
from tvm import te

from . import compute
from .compute import normalize_2d, normalize_padding
from .registry import TargetLike, _finish, _shape_tag, fconv2d_block, target_key, viewed_input
from .target_identity import as_target, has_x86_features

__all__ = ["make_qbatch_matmul", "make_qconv2d", "make_qconv2d_amx", "make_quantize_columns",
           "make_quantize_hwc", "make_quantize_pairs", "make_quantize_rows", "make_quantize_width",
           "vnni_available"]


def make_quantize_pairs(data_shape_nchw: Sequence[int], *, qa: int, padding=0, group: int = 2,
                        target: TargetLike = None, schedule: str | None = None, tuning=None) -> tvm.tirx.PrimFunc:
    """Per-sample symmetric quantization into padded channel groups (``quantize``): int16 pairs,
    or with ``group=4`` the offset uint8 quads of VNNI CPUs (:func:`vnni_available`).

    PrimFunc params: ``(data float32[N,C,H,W], q int16[N,ceil(C/2),H+pt+pb,W+pl+pr,2] (uint8
    [N,ceil(C/4),...,4] for quads), amax float32[N])``.
    """
    shape = tuple(int(v) for v in data_shape_nchw)
    pd = normalize_padding(padding)
    data = te.placeholder(shape, "float32", name="data")
    q, amax = compute.quantize_pairs(data, qa=int(qa), padding=pd, group=int(group))
    kind = "pairs" if group == 2 else "quads"
    name = f"bnn_quantize_{kind}_{_shape_tag(shape)}_q{int(qa)}_p{'x'.join(map(str, pd))}"
    return _finish([data, q, amax], "quantize_pairs", name, target, schedule, tuning)


def make_quantize_width(data_shape_nchw: Sequence[int], *, qa: int, padding=0, group: int, width: int,
                        target: TargetLike = None, schedule: str | None = None, tuning=None) -> tvm.tirx.PrimFunc:
    """Per-sample symmetric quantization into a padded map whose conv groups run along w
    (``compute.quantize_width``; ``width`` from ``quantize.width_extent``).

    PrimFunc params: ``(data float32[N,C,H,W], q int16|uint8[N,C,H+pt+pb,width], amax float32[N])``.
    """
    shape = tuple(int(v) for v in data_shape_nchw)
    pd = normalize_padding(padding)
    data = te.placeholder(shape, "float32", name="data")
    q, amax = compute.quantize_width(data, qa=int(qa), padding=pd, group=int(group), width=int(width))
    name = (f"bnn_quantize_width{int(group)}_{_shape_tag(shape)}_q{int(qa)}_p{'x'.join(map(str, pd))}"
            f"_w{int(width)}")
    return _finish([data, q, amax], "quantize_width", name, target, schedule, tuning)


def vnni_available(target: TargetLike) -> bool:
    """Does ``target`` (a TVM llvm target) have AVX-512 VNNI (``vpdpbusd`` on zmm), the quads'
    instruction?"""
    return has_x86_features(target, ["avx512vnni"])


def make_qconv2d(pairs_shape: Sequence[int], weight_shape: Sequence[int], *, stride=1, dilation=1,
                 with_bias: bool = False, out_layout: str = "NCHW", accumulate_only: bool = False,
                 relu: bool = False, width_group: int | None = None, target: TargetLike = None,
                 schedule: str | None = None, tuning=None) -> tvm.tirx.PrimFunc:
    """int32 conv of :func:`make_quantize_pairs` output with OIHW ``weight_shape`` weights,
    group-blocked (``quantize.group_blocked(ints, fconv2d_block(target), G)``, ``G`` the data's
    last axis: 2 for int16 pairs, 4 for offset uint8 quads).

    PrimFunc params: ``(q int16[N,C2,HP,WP,2] | uint8[N,C4,HP,WP,4], weight int16[KB,C2,KH,KW,OB,2]
    | int8[KB,C4,KH,KW,OB,4], dequant float32[K], amax float32[N], [compensation int32[K]
    (quads: quantize.offset_compensation)], [bias float32[K]], out)``; out is
    ``float32[N,K,OH,OW]`` (``float32[N,KB,OH,OW,OB]`` for ``out_layout="NCHWc"``,
    ``int32[N,K,OH,OW]`` sums with ``accumulate_only``).

    ``width_group`` (2 or 4): the data are width groups instead (:func:`make_quantize_width`,
    ``[N,C,HP,WPG]``), the weight ``quantize.width_blocked(ints, fconv2d_block(target), G)``
    (``[KB,C,KH,ceil(KW/G),OB,G]``); everything else as above.
    """
    K, C, KH, KW = (int(v) for v in weight_shape)
    if width_group is not None:
        N, CG, HP, WP = (int(v) for v in pairs_shape)
        G, KW = int(width_group), -(-KW // int(width_group))
        if CG != C:
            raise ValueError(f"qconv2d: weight in-channels {C} differ from the width groups' {CG}")
    else:
        N, CG, HP, WP, G = (int(v) for v in pairs_shape)
        if -(-C // G) != CG:
            raise ValueError(f"qconv2d: weight in-channels {C} do not fill the {CG} groups of {G} of the data")
    if G not in (2, 4):
        raise ValueError(f"qconv2d: data groups of {G}; expected 2 (int16) or 4 (uint8)")
    if G == 4 and (schedule or target_key(target)) == "x86" and not vnni_available(target):
        raise ValueError(f"qconv2d: the x86 schedule runs offset quads on vpdpbusd; target "
                         f"{as_target(target)} has no AVX-512 VNNI (quantize into pairs instead)")
    ob = fconv2d_block(target)
    kb = -(-K // ob)
    st, dl = normalize_2d(stride, "stride"), normalize_2d(dilation, "dilation")
    q = te.placeholder((N, CG, HP, WP) if width_group else (N, CG, HP, WP, G), "int16" if G == 2 else "uint8",
                       name="q")
    weight = te.placeholder((kb, CG, KH, KW, ob, G), "int16" if G == 2 else "int8", name="weight")
    dequant = te.placeholder((K,), "float32", name="dequant")
    amax = te.placeholder((N,), "float32", name="amax")
    comp = te.placeholder((K,), "int32", name="compensation") if G == 4 else None
    bias = te.placeholder((K,), "float32", name="bias") if with_bias else None
    out = compute.qconv2d_blocked(q, weight, dequant, amax, out_channels=K, stride=st, dilation=dl,
                                  bias=bias, out_layout=out_layout, accumulate_only=accumulate_only,
                                  relu=relu, compensation=comp)
    args = [q, weight, dequant, amax] + ([comp] if comp is not None else []) + \
        ([bias] if bias is not None else []) + [out]
    groups = f"w{G}" if width_group else ("" if G == 2 else "x4")
    name = (f"bnn_qconv2d_{N}x{CG}x{HP}x{WP}{groups}_k{K}x{KH}x{int(weight_shape[3])}_s{st[0]}x{st[1]}"
            f"_d{dl[0]}x{dl[1]}{'_b' if with_bias else ''}{'_r' if relu else ''}"
            f"{'_c' if out_layout == 'NCHWc' else ''}{'_acc' if accumulate_only else ''}")
    return _finish(args, "qconv2d", name, target, schedule, tuning)


def make_quantize_rows(p_shape: Sequence[int], *, target: TargetLike = None, schedule: str | None = None,
                       tuning=None) -> tvm.tirx.PrimFunc:
    """Attention probabilities into unsigned bytes per row (``quantize.quantize_rows``).

    PrimFunc params: ``(p float32[B,M,K], pq uint8[B,M,K4], pmax float32[B,M])``, ``K4`` = K
    rounded up to 4 (zeros past K).
    """
    shape = tuple(int(v) for v in p_shape)
    p = te.placeholder(shape, "float32", name="p")
    pq, pmax = compute.quantize_rows(p)
    return _finish([p, pq, pmax], "quantize_rows", f"bnn_quantize_rows_{_shape_tag(shape)}", target,
                   schedule, tuning)


def make_quantize_columns(v_shape: Sequence[int], *, view=None, target: TargetLike = None,
                          schedule: str | None = None, tuning=None) -> tvm.tirx.PrimFunc:
    """Attention values into int8 per column, grouped by 4 rows (``quantize.quantize_columns``).

    PrimFunc params: ``(v float32[B,K,N], vq int8[B,K4/4,N,4], vmax float32[B,N])``; with
    ``view = (source shape, steps)`` (:mod:`.compute.index_view`) ``v`` is that source, read as
    the ``[B,K,N]`` tensor those slices / reshapes / transposes make of it.
    """
    src, v, tag = viewed_input(v_shape, view, "v", "quantize_columns")
    vq, vmax = compute.quantize_columns(v)
    return _finish([src, vq, vmax], "quantize_columns", f"bnn_quantize_cols_{tag}", target, schedule, tuning)


def make_qbatch_matmul(pq_shape: Sequence[int], vq_shape: Sequence[int], *, accumulate_only: bool = False,
                       target: TargetLike = None, schedule: str | None = None, tuning=None) -> tvm.tirx.PrimFunc:
    """Attention's int8 probability x value product (``quantize.attention_product``) of
    :func:`make_quantize_rows` and :func:`make_quantize_columns` outputs; on x86 ``vpdpbusd``
    where the target has AVX-512 VNNI (columns in blocks of 16), else plain int32 vectors.

    PrimFunc params: ``(pq uint8[B,M,K4], vq int8[B,K4/4,N,4], pmax float32[B,M], vmax
    float32[B,N], out float32[B,M,N])`` (``int32`` sums with ``accumulate_only``).
    """
    B, M, K4 = (int(v) for v in pq_shape)
    _, KQ, N, G = (int(v) for v in vq_shape)
    key = schedule or target_key(target)
    vnni = key == "x86" and vnni_available(target)
    if key == "x86" and not vnni:
        schedule = "cpu"  # the x86 schedule is the vpdpbusd one
    block = 16 if vnni and N % 16 == 0 else max(d for d in (16, 8, 4, 2, 1) if N % d == 0)
    pq = te.placeholder((B, M, K4), "uint8", name="pq")
    vq = te.placeholder((B, KQ, N, G), "int8", name="vq")
    pmax = te.placeholder((B, M), "float32", name="pmax")
    vmax = te.placeholder((B, N), "float32", name="vmax")
    out = compute.qbatch_matmul(pq, vq, pmax, vmax, block=block, accumulate_only=accumulate_only)
    name = f"bnn_qbmm_{B}x{M}x{K4}_n{N}{'_acc' if accumulate_only else ''}"
    return _finish([pq, vq, pmax, vmax, out], "qbatch_matmul", name, target, schedule, tuning)


def make_quantize_hwc(data_shape_nchw: Sequence[int], *, qa: int, padding=0, rows: int,
                      target: TargetLike = None, schedule: str | None = None, tuning=None) -> tvm.tirx.PrimFunc:
    """Per-sample symmetric quantization into padded int8 NHWC with ``rows`` rows, the AMX conv's
    operand (``compute.quantize_hwc``; ``rows`` = ``x86_amx.AmxGeometry.hq``).

    PrimFunc params: ``(data float32[N,C,H,W], q int8[N,rows,W+pl+pr,C], amax float32[N])``.
    """
    shape = tuple(int(v) for v in data_shape_nchw)
    pd = normalize_padding(padding)
    data = te.placeholder(shape, "float32", name="data")
    q, amax = compute.quantize_hwc(data, qa=int(qa), padding=pd, rows=int(rows))
    name = f"bnn_quantize_hwc_{_shape_tag(shape)}_q{int(qa)}_p{'x'.join(map(str, pd))}_r{int(rows)}"
    return _finish([data, q, amax], "quantize_hwc", name, target, schedule, tuning)


def make_qconv2d_amx(geometry, *, out_layout: str = "NCHW", accumulate_only: bool = False,
                     relu: bool = False, target: TargetLike = None,
                     schedule: str | None = None, tuning=None) -> tvm.tirx.PrimFunc:
    """The AMX int8 conv (:mod:`.x86_amx`) for an ``x86_amx.AmxGeometry``: hand-written TIR (its
    tile registers are beyond the scheduler), so neither a schedule key nor tuning applies.

    PrimFunc params: ``(q int8[N,HQ,WP,C] (make_quantize_hwc), weight int8[NT,KC,16,16,4]
    (x86_amx.block_weight), dequant float32[K], amax float32[N], bias float32[K], out)``; out as
    :func:`make_qconv2d` (``float32[N,K/16,OH,OW,16]`` for ``out_layout="NCHWc"``; int32 sums
    with ``accumulate_only``).
    """
    from . import x86_amx

    if not x86_amx.available(target):
        raise ValueError(f"qconv2d_amx: target {as_target(target)} has no AMX-INT8 "
                         f"(needs +{', +'.join(x86_amx.FEATURES)})")
    symbol = (f"bnn_qconv2d_amx_{geometry.tag()}{'_r' if relu else ''}{'_c' if out_layout == 'NCHWc' else ''}"
              f"{'_acc' if accumulate_only else ''}")
    func = x86_amx.build(geometry, out_layout=out_layout, accumulate_only=accumulate_only, relu=relu,
                         name=symbol)
    return (func.with_attr("tirx.is_scheduled", True)
            .with_attr("bnn.param_names", ["q", "weight", "dequant", "amax", "bias", "out"]))
