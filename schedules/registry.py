"""Schedule dispatch and the public ``make_*`` builders the frontend calls.

Dispatch: ``(op, key) -> schedule function``, where ``key`` is the target's schedule key
(:mod:`.target_identity`: "cuda", "arm_cpu", "x86"), falling back to "cpu" (the generic llvm
schedules).

Every ``make_*`` returns a scheduled ``tvm.tirx.PrimFunc`` with attrs ``tirx.is_scheduled = True``
and a descriptive ``global_symbol`` unique per shape/options/target key, ready for
``relax.BlockBuilder.add_func`` + ``call_tir``.  Parameter order is documented per function.

``tuning``: an optional object with ``schedule(prim_func, *, op, symbol, key, hand, target,
forced)`` that may return a scheduled PrimFunc in place of the hand schedule (a tuning-database
session, or a workload collector; :mod:`.tuning`).  It is passed explicitly, never ambient.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import tvm
from tvm import s_tir, te

from . import arm, compute, cuda, generic, generic_quantized, x86
from .compute import normalize_2d, normalize_padding
from .packing import border_row_classes, needs_border_table
from .target_identity import as_target, has_x86_features, identify, vector_bits

TargetLike = tvm.target.Target | dict | None

OPS = ("bitpack", "bitpack_last", "bconv2d", "bdense", "bbatch_matmul", "fconv2d", "maxpool2d",
       "avgpool2d", "prelu_stats", "quantize_pairs", "quantize_width", "qconv2d", "quantize_hwc",
       "quantize_rows", "quantize_columns", "qbatch_matmul", "token_threshold")
#: CPU kernels only (``compile --conv-precision`` / ``--attention-precision``, AMX operands):
#: no CUDA schedule
CPU_ONLY_OPS = ("quantize_pairs", "quantize_width", "qconv2d", "quantize_hwc", "quantize_rows", "quantize_columns",
                "qbatch_matmul", "token_threshold")

SCHEDULES: dict[tuple[str, str], Callable[[s_tir.Schedule], None]] = {}
for _key, _mods in (("cpu", (generic, generic_quantized)), ("x86", (x86,)), ("arm_cpu", (arm,)),
                    ("cuda", (cuda,))):
    for _op in OPS:
        if _key != "cuda" or _op not in CPU_ONLY_OPS:
            SCHEDULES[(_op, _key)] = next(getattr(m, "schedule_" + _op) for m in _mods
                                          if hasattr(m, "schedule_" + _op))

# Compute options that depend on the target (CUDA: 32-bit accumulators, __popcll returns int).
_ACC_DTYPE = {"cuda": "int32"}

__all__ = [
    "SCHEDULES",
    "bconv_weight_block",
    "dense_weight_bits",
    "dense_weight_bits_of",
    "fconv2d_block",
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
    "make_token_threshold",
    "target_key",
    "weight_block_of",
]


def target_key(target: TargetLike) -> str:
    """Schedule key for ``target``: "cuda", "arm_cpu", "x86" or "cpu" (generic llvm)."""
    return identify(target).schedule_key


def get_schedule(op: str, target: TargetLike = None, schedule: str | None = None):
    """Return ``(key, fn)``; ``schedule`` forces a key (e.g. "cpu" for the generic fallback)."""
    key = schedule or target_key(target)
    if key == "cuda" and op in CPU_ONLY_OPS:
        raise ValueError(f"{op} is a CPU kernel: no CUDA schedule (compile CUDA targets with "
                         "--conv-precision / --attention-precision fp32)")
    fn = SCHEDULES.get((op, key)) or SCHEDULES[(op, "cpu")]
    return key, fn


def _finish(args, op: str, name: str, target: TargetLike, schedule: str | None, tuning=None):
    key, fn = get_schedule(op, target, schedule)
    pf = te.create_prim_func(list(args))
    symbol = f"{name}_{key}"
    func = None
    if tuning is not None:  # a tuned schedule for this unscheduled workload, or None
        func = tuning.schedule(pf, op=op, symbol=symbol, key=key, hand=fn, target=target,
                               forced=schedule is not None)
    if func is None:
        sch = s_tir.Schedule(pf)
        fn(sch)
        func = sch.mod["main"]
    # bnn.param_names lets the caller check which optional params the function takes.
    names = [str(a.op.name) for a in args]
    return (func.with_attr("global_symbol", symbol)
            .with_attr("tirx.is_scheduled", True)  # ApplyDefaultSchedule (dlight) skips it
            .with_attr("bnn.param_names", names))


def _acc(target: TargetLike, schedule: str | None) -> str:
    key = schedule or target_key(target)
    return _ACC_DTYPE.get(key, "int64")


def _shape_tag(shape) -> str:
    return "x".join(str(int(s)) for s in shape) if len(shape) else "s"


def make_bitpack(x_shape: Sequence[int], t_shape: Sequence[int], target: TargetLike = None, *,
                 schedule: str | None = None, tuning=None) -> tvm.tirx.PrimFunc:
    """Binarise + pack NCHW activations.

    PrimFunc params: ``(x float32[N,C,H,W], t float32[t_shape], out uint64[N,H,W,ceil(C/64)])``;
    bit set iff ``x >= t`` (NaN -> 0).
    """
    x = te.placeholder(tuple(x_shape), "float32", name="x")
    t = te.placeholder(tuple(t_shape), "float32", name="t")
    out = compute.bitpack(x, t)
    name = f"bnn_bitpack_{_shape_tag(x_shape)}_t{_shape_tag(t_shape)}"
    return _finish([x, t, out], "bitpack", name, target, schedule, tuning)


def viewed_input(shape: Sequence[int], view, name: str, op: str):
    """A kernel's float32 input of ``shape``: ``(placeholder, what the compute reads, symbol
    tag)``; with ``view = (source shape, steps)`` the placeholder is the source, read through a
    :class:`~.compute.IndexView` that must make ``shape``."""
    if view is None:
        x = te.placeholder(tuple(int(v) for v in shape), "float32", name=name)
        return x, x, _shape_tag(shape)
    src = te.placeholder(tuple(int(v) for v in view[0]), "float32", name=name)
    x = compute.IndexView(src, view[1])
    if list(x.shape) != [int(v) for v in shape]:
        raise ValueError(f"{op}: the view makes {x.shape}, not {list(shape)}")
    return src, x, f"{_shape_tag(view[0])}_v{compute.view_tag(*view)}"


def make_bitpack_last(x_shape: Sequence[int], t_shape: Sequence[int], target: TargetLike = None, *,
                      view=None, schedule: str | None = None, tuning=None) -> tvm.tirx.PrimFunc:
    """Binarise + pack the last axis.

    PrimFunc params: ``(x float32[..., D], t float32[t_shape], out uint64[..., ceil(D/64)])``;
    with ``view = (source shape, steps)`` (:mod:`.compute.index_view`) ``x`` is that source,
    packed as the ``x_shape`` tensor those slices / reshapes / transposes make of it.
    """
    t = te.placeholder(tuple(t_shape), "float32", name="t")
    src, x, tag = viewed_input(x_shape, view, "x", "bitpack_last")
    out = compute.bitpack_last(x, t)
    name = f"bnn_bitpack_last_{tag}_t{_shape_tag(t_shape)}"
    return _finish([src, t, out], "bitpack_last", name, target, schedule, tuning)


#: one letter per post-op in kernel symbols (residual, sHift, Mul, Prelu, relU)
_POST_TAG = {"residual": "r", "shift": "h", "mul": "m", "prelu": "p", "relu": "u"}


#: x86's binary conv reads 8 output channels' words per tap (one 512-bit vector, or the AVX2
#: kernel's 4 / 8): blocked so, one tile's weights are one contiguous run the hardware prefetcher
#: streams.  Laid out [KH, KW, CW, K] they sat K * 8 bytes apart (4 KB for K = 512), a new page
#: per word: Emerald Rapids, 1 thread, 512->512 3x3 @7x7 with its weights evicted from the
#: caches 0.33 ms against 0.11 ms warm, and 0.26 ms per call inside ReActNet-18.
X86_WEIGHT_BLOCK = 8


def bconv_weight_block(target: TargetLike = None, schedule: str | None = None) -> int | None:
    """Channel block of the binary conv's packed weights for this target's schedule (None: the
    plain ``[KH, KW, CW, K]`` layout)."""
    key = schedule or target_key(target)
    return X86_WEIGHT_BLOCK if key == "x86" else None


def make_bconv2d(data_shape_nchw: Sequence[int], weight_pm1_shape: Sequence[int], *, stride=1,
                 padding=0, dilation=1, pad_value: str = "zero", with_scale: bool = False,
                 with_bias: bool = False, out_layout: str = "NCHW", post: Sequence[str] = (),
                 pack_output: bool = False, residual_channels: int | None = None,
                 target: TargetLike = None, schedule: str | None = None, tuning=None) -> tvm.tirx.PrimFunc:
    """Binary conv2d on packed operands.

    ``data_shape_nchw`` = ``(N, C, H, W)`` of the float activation, ``weight_pm1_shape`` =
    ``(K, C, KH, KW)`` of the +-1 weight; padding int / (ph, pw) / (top, left, bottom, right).

    PrimFunc params, in order:
      ``data   uint64[N, H, W, CW]``  (CW = ceil(C/64), from make_bitpack)
      ``weight uint64[KH, KW, CW, K]`` (packing.pack_conv_weight), channel-blocked
                                      ``[KB, KH, KW, CW, KI]`` where :func:`bconv_weight_block`
                                      says so (``pack_conv_weight(w, block=KI)``)
      ``border_table int32[classes, K, OW]`` ([classes, OW, K] for NHWC;
                                      packing.conv_border_table; only if
                                      packing.needs_border_table(padding, pad_value))
      ``scale  float32[K]``            (only if with_scale)
      ``bias   float32[K]``            (only if with_bias)
      one parameter per ``post`` op (compute.POST_OPS): ``residual float32[<out shape>]`` (with
                                      ``residual_channels`` R < K channels instead of K: output
                                      channel k adds channel k % R, see compute.bconv2d),
      ``shift`` / ``mul`` / ``prelu`` ``float32[K]``; ``relu`` takes none
      ``threshold float32[1, K, 1, 1]`` (only if pack_output)
      ``out    int32[N, K, OH, OW]``  (float32 if with_scale or with_bias; NHWC if out_layout="NHWC")
      ``packed uint64[N, OH, OW, ceil(K/64)]`` (only if pack_output: ``out >= threshold`` bits,
                                      as make_bitpack packs them, for the next binary conv)
    """
    N, C, H, W = (int(v) for v in data_shape_nchw)
    K, C2, KH, KW = (int(v) for v in weight_pm1_shape)
    if C2 != C:
        raise ValueError(f"weight in-channels {C2} != data channels {C} (only groups=1)")
    CW = compute.nwords(C)
    st, dl, pd = normalize_2d(stride, "stride"), normalize_2d(dilation, "dilation"), normalize_padding(padding)
    data = te.placeholder((N, H, W, CW), "uint64", name="data")
    block = bconv_weight_block(target, schedule)
    weight = te.placeholder((-(-K // block), KH, KW, CW, block) if block else (KH, KW, CW, K), "uint64",
                            name="weight")
    scale = te.placeholder((K,), "float32", name="scale") if with_scale else None
    bias = te.placeholder((K,), "float32", name="bias") if with_bias else None
    OH = compute.conv_out_size(H, KH, st[0], pd[0], pd[2], dl[0])
    OW = compute.conv_out_size(W, KW, st[1], pd[1], pd[3], dl[1])
    tpc = None
    if needs_border_table(pd, pad_value):
        classes = len(border_row_classes(H, OH, KH, st[0], pd[0], dl[0])[2])
        tpc = te.placeholder((classes, K, OW) if out_layout == "NCHW" else (classes, OW, K), "int32",
                             name="border_table")
    rc = K if residual_channels is None else int(residual_channels)
    if rc <= 0 or K % rc:
        raise ValueError(f"residual_channels {residual_channels} must divide the {K} output channels")
    res_shape = (N, rc, OH, OW) if out_layout == "NCHW" else (N, OH, OW, rc)
    post_ops = []
    for i, kind in enumerate(post):
        if kind not in compute.POST_OPS:
            raise ValueError(f"unknown post-op {kind!r}; expected one of {compute.POST_OPS}")
        shape = res_shape if kind == "residual" else (K,)
        post_ops.append((kind, None if kind == "relu" else te.placeholder(shape, "float32", name=f"{kind}{i}")))
    hints = x86.bconv2d_hints(as_target(target)) if (schedule or target_key(target)) == "x86" else {}
    out = compute.bconv2d(data, weight, in_channels=C, kernel=(KH, KW), stride=st, padding=pd,
                          dilation=dl, pad_value=pad_value, scale=scale, bias=bias,
                          out_layout=out_layout, acc_dtype=_acc(target, schedule), border_table=tpc,
                          post=post_ops, out_channels=K, hints=hints)
    args = ([data, weight] + [a for a in (tpc, scale, bias) if a is not None]
            + [p for _, p in post_ops if p is not None])
    if pack_output:
        if out_layout != "NCHW" or not (with_scale or with_bias):
            raise ValueError("pack_output needs a float NCHW output")
        thr = te.placeholder((1, K, 1, 1), "float32", name="threshold")
        # the same compute as make_bitpack, reading the conv's output: bit-identical words
        args += [thr, out, compute.bitpack(out, thr, name="bconv_pack")]
    else:
        args.append(out)
    epi = ("s" if with_scale else "") + ("b" if with_bias else "")
    if post:
        epi += "_e" + "".join(_POST_TAG[k] for k in post)
        if rc != K and "residual" in post:
            epi += f"x{K // rc}"  # the residual tiles the channels K // rc times
    name = (f"bnn_bconv2d_{N}x{C}x{H}x{W}_k{K}x{KH}x{KW}_s{st[0]}x{st[1]}_p{'x'.join(map(str, pd))}"
            f"_d{dl[0]}x{dl[1]}_{pad_value}{'_' + epi if epi else ''}_{out_layout.lower()}"
            f"{'_pk' if pack_output else ''}")
    # the weight layout travels with the kernel: callers pack with weight_block_of(func)
    return _finish(args, "bconv2d", name, target, schedule, tuning).with_attr("bnn.weight_block", block or 0)


def weight_block_of(func) -> int | None:
    """The ``block`` to pack a binary conv's weights with for this kernel
    (``packing.pack_conv_weight(w, block=weight_block_of(func))``)."""
    return int(func.attrs["bnn.weight_block"]) or None


#: x86 CPUs (LLVM names) whose dense layers of at most :data:`HALF_WORD_MAX_WORDS` 64-bit words
#: per row sum 32-bit popcounts in int32 lanes, 16 outputs per register (the epilogue converts 16
#: sums at a time, where 64-bit sums took two registers of 8).  Measured on Zen 4 only (1 thread,
#: each kernel alone, % of the popcount ceiling): 256 -> 768 71 -> 80, 256 -> 512 71 -> 80,
#: 384 -> 1152 79 -> 86, 384 -> 384 79 -> 84; longer rows lose (512 -> 256 83 -> 57, 1152 -> 384
#: 88 -> 58); in CCT-7 +2-3 points.  Other CPUs keep 64-bit words until measured.
HALF_WORD_CPUS = frozenset({"znver4"})
HALF_WORD_MAX_WORDS = 6


def dense_weight_bits(in_features: int, target: TargetLike = None, schedule: str | None = None) -> int:
    """The word size (32 or 64) of :func:`make_bdense`'s packed weights for this target."""
    if target is None or (schedule or target_key(target)) != "x86":
        return 64
    cpu = str(as_target(target).attrs.get("mcpu", "") or "")
    short = compute.nwords(in_features) <= HALF_WORD_MAX_WORDS
    return 32 if short and cpu in HALF_WORD_CPUS and has_x86_features(target, ["avx512vpopcntdq"]) else 64


def dense_weight_bits_of(func) -> int:
    """The ``word_bits`` to pack a binary dense's weights with for this kernel
    (``packing.pack_dense_weight(w, word_bits=dense_weight_bits_of(func))``)."""
    return int(func.attrs["bnn.weight_bits"])


#: schedule keys whose binary dense can write a sign's bits packed (make_bdense's
#: ``pack_output``, in its tiles on x86, a pass of its own in the generic schedule); ARM (not
#: measured) and CUDA keep the margin and a pack kernel of their own
_DENSE_PACK_KEYS = frozenset({"x86", "cpu"})


def dense_packs_output(target: TargetLike = None, schedule: str | None = None) -> bool:
    """Can :func:`make_bdense` write a cut's bits packed (``pack_output``) for this target?"""
    return (schedule or target_key(target)) in _DENSE_PACK_KEYS


def make_bdense(data_shape: Sequence[int], weight_pm1_shape: Sequence[int], *,
                with_scale: bool = False, with_bias: bool = False, with_cut: bool = False,
                with_residual: bool = False, pack_output: bool = False, word_bits: int | None = None,
                target: TargetLike = None, schedule: str | None = None, tuning=None) -> tvm.tirx.PrimFunc:
    """Binary dense ``y = x @ W.T`` on packed operands.

    ``data_shape`` = float input shape ``(..., K_in)`` (rank >= 2, e.g. ``(B, L, D)``),
    ``weight_pm1_shape`` = ``(N_out, K_in)``.

    PrimFunc params: ``(a uint64[..., KW], w uint64[KW, N_out] (packing.pack_dense_weight; uint32
    [2 * KW, N_out] where :func:`dense_weight_bits_of` says 32),
    [scale float32[N_out]], [bias float32[N_out]], out int32|float32[..., N_out])``; with
    ``with_cut`` (no scale or bias) ``(a, w, lo, hi, sigma int32[N_out], out float32)``: the
    margin ``sigma * min(y - lo, hi - y)`` (compute.bdense's ``cut``); ``with_residual`` adds a
    ``residual float32[..., N_out]`` param after scale / bias (a float output ``+ residual``).
    ``pack_output`` (with ``with_cut``, N_out a multiple of 64, a target of
    :func:`dense_packs_output`): the output is ``out uint64[..., N_out / 64]``, the bits
    ``margin >= 0`` packed as :func:`make_bitpack_last` packs them.
    ``word_bits``: the weights' word size, 32 or 64 (None: :func:`dense_weight_bits`).
    """
    shape = [int(v) for v in data_shape]
    if len(shape) < 2:
        raise ValueError(f"bdense: data rank must be >= 2, got {shape}")
    Nout, Kin = (int(v) for v in weight_pm1_shape)
    if shape[-1] != Kin:
        raise ValueError(f"bdense: data features {shape[-1]} != weight in-features {Kin}")
    KWd = compute.nwords(Kin)
    bits = word_bits or dense_weight_bits(Kin, target, schedule)
    if bits not in (32, 64):
        raise ValueError(f"bdense: word_bits must be 32 or 64, got {bits}")
    a = te.placeholder(tuple(shape[:-1]) + (KWd,), "uint64", name="a")
    w = te.placeholder((KWd * 64 // bits, Nout), f"uint{bits}", name="w")
    scale = te.placeholder((Nout,), "float32", name="scale") if with_scale else None
    bias = te.placeholder((Nout,), "float32", name="bias") if with_bias else None
    if with_cut and (with_scale or with_bias or with_residual):
        raise ValueError("bdense: a cut epilogue takes no scale, bias or residual")
    if pack_output and not dense_packs_output(target, schedule):
        raise ValueError(f"bdense: no packed output on {schedule or target_key(target)} targets "
                         f"(dense_packs_output)")
    cut = tuple(te.placeholder((Nout,), "int32", name=n) for n in ("lo", "hi", "sigma")) if with_cut else None
    res = te.placeholder((*shape[:-1], Nout), "float32", name="residual") if with_residual else None
    out = compute.bdense(a, w, in_features=Kin, scale=scale, bias=bias, cut=cut, residual=res,
                         pack=pack_output, acc_dtype=_acc(target, schedule))
    args = [a, w] + [v for v in (scale, bias, res, *(cut or ())) if v is not None] + [out]
    epi = (("s" if with_scale else "") + ("b" if with_bias else "") + ("r" if with_residual else "")
           + ("cut" if with_cut else "") + ("_pk" if pack_output else ""))
    name = f"bnn_bdense_{_shape_tag(shape)}_n{Nout}{'_' + epi if epi else ''}{'_w32' if bits == 32 else ''}"
    return _finish(args, "bdense", name, target, schedule, tuning).with_attr("bnn.weight_bits", bits)


def make_bbatch_matmul(a_shape: Sequence[int], b_shape: Sequence[int], *, alpha: float | None = None,
                       counts: bool = False, target: TargetLike = None, schedule: str | None = None,
                       tuning=None) -> tvm.tirx.PrimFunc:
    """Binary batched ``A @ B^T``; shapes are the float shapes ``(*batch, M, K)``, ``(*batch, N, K)``.

    PrimFunc params: ``(a uint64[*batch, M, KW], b uint64[*batch, N, KW],
    out int32[*batch, M, N] (float32 = acc * alpha when alpha is given; uint8 popcounts with
    counts=True, for ``float_glue.count_softmax.softmax_counts_func``))``.
    """
    ash, bsh = [int(v) for v in a_shape], [int(v) for v in b_shape]
    if len(ash) < 2 or ash[-1] != bsh[-1] or ash[:-2] != bsh[:-2] or len(ash) != len(bsh):
        raise ValueError(f"bbatch_matmul: incompatible shapes {ash}, {bsh}")
    k = ash[-1]
    KWd = compute.nwords(k)
    a = te.placeholder(tuple(ash[:-1]) + (KWd,), "uint64", name="a")
    b = te.placeholder(tuple(bsh[:-1]) + (KWd,), "uint64", name="b")
    out = compute.bbatch_matmul(a, b, k=k, alpha=alpha, acc_dtype=_acc(target, schedule), counts=counts)
    tag = "" if alpha is None else "_alpha" + repr(float(alpha)).replace(".", "p").replace("-", "m")
    tag = "_counts" if counts else tag
    name = f"bnn_bbmm_{_shape_tag(ash)}_n{bsh[-2]}{tag}"
    return _finish([a, b, out], "bbatch_matmul", name, target, schedule, tuning)


def make_avgpool2d(data_shape_nchw: Sequence[int], *, kernel, target: TargetLike = None,
                   schedule: str | None = None, tuning=None) -> tvm.tirx.PrimFunc:
    """Float average pooling, stride = kernel, no padding (compute.avgpool2d).

    PrimFunc params: ``(data float32[N,C,H,W], out float32[N,C,H//KH,W//KW])``.
    """
    shape = tuple(int(v) for v in data_shape_nchw)
    if len(shape) != 4:
        raise ValueError(f"avgpool2d: expected NCHW data, got shape {list(shape)}")
    k = normalize_2d(kernel, "kernel")
    data = te.placeholder(shape, "float32", name="data")
    out = compute.avgpool2d(data, kernel=k)
    name = f"bnn_avgpool2d_{_shape_tag(shape)}_k{k[0]}x{k[1]}"
    return _finish([data, out], "avgpool2d", name, target, schedule, tuning)


def make_prelu_stats(x_shape: Sequence[int], shift_in_shape: Sequence[int], slope_shape: Sequence[int],
                     shift_out_shape: Sequence[int], powers: Sequence[int], *, target: TargetLike = None,
                     schedule: str | None = None, tuning=None) -> tvm.tirx.PrimFunc:
    """Dynamic PReLU plus the means of its output's powers over each row (compute.prelu_stats).

    PrimFunc params: ``(x float32[N, C, 1, L], shift_in, slope, shift_out float32 (broadcastable
    to [N, C, 1, 1]), y float32[N, C, 1, L], then mean_p float32[N, C] for each p in powers)``.
    """
    x = te.placeholder(tuple(int(v) for v in x_shape), "float32", name="x")
    if len(x.shape) != 4:
        raise ValueError(f"prelu_stats: x must be [N, C, 1, L], got {list(x_shape)}")
    ops = [te.placeholder(tuple(int(v) for v in shp), "float32", name=nm) for shp, nm in
           ((shift_in_shape, "shift_in"), (slope_shape, "slope"), (shift_out_shape, "shift_out"))]
    y, means = compute.prelu_stats(x, *ops, powers=tuple(int(p) for p in powers))
    name = (f"bnn_prelu_stats_{_shape_tag(x_shape)}_i{_shape_tag(shift_in_shape)}"
            f"_s{_shape_tag(slope_shape)}_o{_shape_tag(shift_out_shape)}"
            f"_p{''.join(str(int(p)) for p in powers)}")
    return _finish([x, *ops, y, *means], "prelu_stats", name, target, schedule, tuning)


def make_token_threshold(x_shape: Sequence[int], hidden: int, *, view=None, gelu=None,
                         target: TargetLike = None, schedule: str | None = None,
                         tuning=None) -> tvm.tirx.PrimFunc:
    """A DySign threshold pooled over tokens, pool and MLP in one kernel (compute.token_threshold).

    PrimFunc params: ``(x float32[N, L, D], w1t float32[D, hidden], b1 float32[hidden], w2t
    float32[hidden, D], b2 float32[D], thr float32[N, D])``; with ``view = (source shape,
    steps)`` ``x`` is that source, read as the ``x_shape`` tensor the view makes of it; with
    ``gelu = (divisor, addend, factor)`` the threshold pools ``compute.gelu_erf(x, ...)``, which
    the kernel also writes after ``thr`` (``y float32[N, L, D]``).
    """
    if len(x_shape) != 3:
        raise ValueError(f"token_threshold: x must be [N, L, D], got {list(x_shape)}")
    if gelu is not None and view is not None:
        raise ValueError("token_threshold: a GELU prologue reads a plain tensor, not a view")
    src, x, tag = viewed_input(x_shape, view, "x", "token_threshold")
    d, r = int(x_shape[2]), int(hidden)
    w1t, b1 = te.placeholder((d, r), "float32", name="w1t"), te.placeholder((r,), "float32", name="b1")
    w2t, b2 = te.placeholder((r, d), "float32", name="w2t"), te.placeholder((d,), "float32", name="b2")
    if gelu is None:
        outs, suffix = [compute.token_threshold(x, w1t, b1, w2t, b2)], ""
    else:
        divisor, addend, factor = (float(v) for v in gelu)
        prologue = lambda t: compute.gelu_erf(t, divisor, addend, factor)  # noqa: E731
        outs = list(compute.token_threshold(x, w1t, b1, w2t, b2, prologue=prologue))
        suffix = "_gelu" + hashlib.sha1(repr((divisor, addend, factor)).encode()).hexdigest()[:6]
    return _finish([src, w1t, b1, w2t, b2, *outs], "token_threshold", f"bnn_token_threshold_{tag}_r{r}{suffix}",
                   target, schedule, tuning)


def fconv2d_block(target: TargetLike = None) -> int:
    """Output-channel block of the float conv: float32 SIMD lanes of the target (4 if unknown)."""
    t = as_target(target)
    if t.kind.name != "llvm":
        return 8
    return max(4, vector_bits(t) // 32)


def make_fconv2d(data_shape_nchw: Sequence[int], weight_shape: Sequence[int], *, stride=1, padding=0,
                 dilation=1, with_bias: bool = False, out_layout: str = "NCHW", relu: bool = False,
                 target: TargetLike = None, schedule: str | None = None, tuning=None) -> tvm.tirx.PrimFunc:
    """Float conv2d (NCHW input, zero padding, groups=1) on output-channel-blocked weights.

    PrimFunc params: ``(data float32[N,C,H,W], weight float32[KB,C,KH,KW,OB]
    (packing.block_conv_weight(w, fconv2d_block(target))), [bias float32[K]],
    out float32[N,K,OH,OW])``; with ``out_layout="NCHWc"`` out is ``float32[N,KB,OH,OW,OB]``
    (K must fill the blocks), for make_maxpool2d.  ``relu``: ``max(y, 0)`` fused.
    """
    N, C, H, W = (int(v) for v in data_shape_nchw)
    K, C2, KH, KW = (int(v) for v in weight_shape)
    if C2 != C:
        raise ValueError(f"fconv2d: weight in-channels {C2} != data channels {C} (only groups=1)")
    ob = fconv2d_block(target)
    kb = -(-K // ob)
    st, dl, pd = normalize_2d(stride, "stride"), normalize_2d(dilation, "dilation"), normalize_padding(padding)
    data = te.placeholder((N, C, H, W), "float32", name="data")
    weight = te.placeholder((kb, C, KH, KW, ob), "float32", name="weight")
    bias = te.placeholder((K,), "float32", name="bias") if with_bias else None
    out = compute.fconv2d_blocked(data, weight, out_channels=K, kernel=(KH, KW), stride=st,
                                  padding=pd, dilation=dl, bias=bias, out_layout=out_layout, relu=relu)
    args = [data, weight] + ([bias] if bias is not None else []) + [out]
    name = (f"bnn_fconv2d_{N}x{C}x{H}x{W}_k{K}x{KH}x{KW}_s{st[0]}x{st[1]}_p{'x'.join(map(str, pd))}"
            f"_d{dl[0]}x{dl[1]}{'_b' if with_bias else ''}{'_r' if relu else ''}"
            f"{'_c' if out_layout == 'NCHWc' else ''}")
    return _finish(args, "fconv2d", name, target, schedule, tuning)


def make_maxpool2d(data_shape: Sequence[int], *, kernel, stride=1, padding=0,
                   target: TargetLike = None, schedule: str | None = None, tuning=None) -> tvm.tirx.PrimFunc:
    """Float max pooling (no dilation, floor rounding) of an NCHW map, or of an NCHWc one
    ``[N, CB, H, W, CI]`` (make_fconv2d(out_layout="NCHWc")).

    PrimFunc params: ``(data float32[data_shape], out float32[N,C,OH,OW])``.
    """
    shape = tuple(int(v) for v in data_shape)
    if len(shape) not in (4, 5):
        raise ValueError(f"maxpool2d: expected NCHW or NCHWc data, got shape {list(shape)}")
    k, st, pd = normalize_2d(kernel, "kernel"), normalize_2d(stride, "stride"), normalize_padding(padding)
    data = te.placeholder(shape, "float32", name="data")
    out = compute.maxpool2d(data, kernel=k, stride=st, padding=pd)
    name = (f"bnn_maxpool2d_{_shape_tag(shape)}_k{k[0]}x{k[1]}_s{st[0]}x{st[1]}"
            f"_p{'x'.join(map(str, pd))}")
    return _finish([data, out], "maxpool2d", name, target, schedule, tuning)
