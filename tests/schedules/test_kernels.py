"""Bit-exact kernel tests against the independent references, for every CPU schedule that runs
here: the generic "cpu" fallback, "x86", and "arm_cpu" forced on the x86 host (its schedules are
target-independent TIR: the NEON tile sizes on the same loop nests).  Integer accumulators:
assert_array_equal.  Fused float epilogue float32(acc)*scale+bias: rtol=1e-6, atol=1e-5 (LLVM may
contract mul+add into an FMA, which differs from numpy's two roundings by at most one ulp).

Every kernel test takes the ``inputs`` fixture (conftest.py / kernel_harness.py): it runs once per
input kind, three seeded random ones and four adversarial ones (all +1, all -1, alternating, one
flipped element), the kind in the test id, the seed printed with a failure.  Kernels are compiled
once per distinct TIR (run_primfunc caches them), so the kinds cost runs, not compiles; compiles
are what cost time (~0.3 s each), so the epilogue / post-op sweeps take every combination on
x86 and a pairwise-covering half on the others (``_pairwise``), and the dense M x N x K sweep
rotates K (``_dense_sweep``)."""
import itertools

import numpy as np
import pytest
from bnncompile.schedules import packing as pk
from bnncompile.schedules import reference as ref
from testkit import kernel_cases as kc

from bnncompile import schedules as S

SCHEDS = ["cpu", "x86", "arm_cpu"]
FLOAT_TOL = dict(rtol=1e-6, atol=1e-5)


def _tag(shape):
    return "x".join(map(str, shape)) or "scalar"


def _eq(got, expect, inputs):
    np.testing.assert_array_equal(got, expect, err_msg=str(inputs))


def _close(got, expect, inputs, **tol):
    np.testing.assert_allclose(got, expect, err_msg=str(inputs), **(tol or FLOAT_TOL))


# ---------------------------------------------------------------- bitpack
BITPACK_CASES = [
    *kc.BITPACK_CORE,
    ((3, 130, 1, 1), (1, 130, 1, 1)),
    ((2, 70, 1, 9), (2, 70, 1, 1)),
    ((1, 200, 3, 17), (1, 200, 1, 1)),
    ((2, 32, 2, 16), (2, 32, 1, 1)),
    # rows a 16-pixel vector divides: the channels are read in groups of 16 (two words, the
    # second partial; a flattened map as one row)
    ((2, 70, 1, 32), (2, 70, 1, 1)),
    ((1, 130, 2, 48), (1, 130, 1, 1)),
    # the frontend packs NCHW maps as one row [N, C, 1, H*W]: rows of 4-lane chunks (14x14),
    # one odd vector (7x7), pixel by pixel past 64 odd lanes (9x9), several words per pixel
    ((1, 130, 1, 196), (1, 130, 1, 1)),
    ((2, 64, 1, 49), (2, 64, 1, 1)),
    ((1, 65, 1, 81), (1, 65, 1, 1)),
]


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("x_shape,t_shape", BITPACK_CASES,
                         ids=[f"x{_tag(a)}-t{_tag(b)}" for a, b in BITPACK_CASES])
def test_bitpack(x_shape, t_shape, sched, inputs, host, run_primfunc):
    t = inputs.normal(t_shape, 0.5)
    tb = np.broadcast_to(t, x_shape)
    x = inputs.thresholded(x_shape, t)  # adversarial kinds: x == t (ties, bit 1) or just below
    if inputs.random:
        x[..., 0, 0] = tb[..., 0, 0]          # ties x == t (per sample/channel): bit 1
        x.flat[1] = np.nan                     # NaN: bit 0
        x.flat[-1] = -np.inf
    pf = S.make_bitpack(x_shape, t_shape, host, schedule=sched)
    N, C, H, W = x_shape
    got = run_primfunc(pf, [x, t], (N, H, W, pk.num_words(C)), "uint64")
    _eq(got, ref.bitpack_ref(x, t), inputs)
    bits = pk.unpack_bits(got, C)
    assert bits[0, 0, 0].tolist() == list(x[0, :, 0, 0] >= tb[0, :, 0, 0]), inputs


@pytest.mark.parametrize("sched", SCHEDS)
def test_bitpack_zero_threshold_and_signed_zero(sched, host, run_primfunc):
    # x exactly 0 (and -0.0) with t = 0 -> +1 (bit 1): x >= t, not torch.sign semantics.
    x = np.zeros((1, 3, 2, 2), "float32")
    x[0, 1] = -0.0
    x[0, 2, 0, 0] = -1e-30
    t = np.zeros((), "float32")
    pf = S.make_bitpack(x.shape, (), host, schedule=sched)
    got = run_primfunc(pf, [x, t], (1, 2, 2, 1), "uint64")
    assert got[0, 0, 0, 0] == 0b011 and got[0, 1, 1, 0] == 0b111


BITPACK_LAST_CASES = kc.BITPACK_LAST_CASES


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("x_shape,t_shape", BITPACK_LAST_CASES,
                         ids=[f"x{_tag(a)}-t{_tag(b)}" for a, b in BITPACK_LAST_CASES])
def test_bitpack_last(x_shape, t_shape, sched, inputs, host, run_primfunc):
    t = inputs.normal(t_shape)
    x = inputs.thresholded(x_shape, t)
    if inputs.random:
        x[..., :3] = np.broadcast_to(t, x_shape)[..., :3]  # ties
        x.flat[2] = np.nan
    pf = S.make_bitpack_last(x_shape, t_shape, host, schedule=sched)
    got = run_primfunc(pf, [x, t], (*x_shape[:-1], pk.num_words(x_shape[-1])), "uint64")
    _eq(got, ref.bitpack_last_ref(x, t), inputs)


# ---------------------------------------------------------------- bconv2d
CONV_CASES = [
    *kc.CONV_CORE,
    (1, 40, 6, 16, 8, (1, 1), 1, (0, 0, 0, 0), 1),
    (1, 64, 8, 8, 8, (3, 3), 1, (0, 1, 0, 1), 1),
    (1, 5, 3, 8, 8, (5, 5), 1, (2, 2, 2, 2), 1),
    (1, 64, 9, 9, 8, (1, 1), 2, (0, 0, 1, 1), 1),
    (1, 128, 14, 14, 16, (3, 3), 2, (1, 1, 1, 1), 1),
    # a one-pixel-wide map padded only along h: every loop of the per-row padding is unit
    (1, 8, 2, 1, 8, (1, 1), 1, (1, 0, 1, 0), 1),
    # 8+ words per pixel: x86 leaves the words loop rolled (9 words, the last one partial)
    (1, 520, 5, 6, 8, (3, 3), 1, (1, 1, 1, 1), 1),
    (1, 512, 3, 3, 16, (1, 1), 1, (0, 0, 0, 0), 1),
]


def _conv_id(c):
    N, C, H, W, K, (kh, kw), s, p, d = c
    return f"n{N}c{C}_{H}x{W}_k{K}_{kh}x{kw}_s{s}_p{''.join(map(str, p))}_d{d}"


def _conv_args(pf, x, w, s=1, p=0, d=1, pad_value="zero", layout="NCHW"):
    """Packed data, packed weights and (zero padding) the border table, as the frontend passes
    them."""
    args = [pk.pack_bits(x, axis=1), pk.pack_conv_weight(w, block=S.weight_block_of(pf))]
    if pk.needs_border_table(p, pad_value):
        args.append(pk.conv_border_table(w, x.shape[2:], stride=s, padding=p, dilation=d,
                                         out_layout=layout))
    return args


def _conv_operands(case, inputs):
    """x (the operand under test: the input kind's pattern) and random weights."""
    N, C, H, W, K, (KH, KW), *_ = case
    return inputs.pm1((N, C, H, W)), inputs.weights((K, C, KH, KW))


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("pad_value", ["zero", "one"])
@pytest.mark.parametrize("case", CONV_CASES, ids=[_conv_id(c) for c in CONV_CASES])
def test_bconv2d_int(case, pad_value, sched, inputs, host, run_primfunc):
    s, p, d = case[6:]
    x, w = _conv_operands(case, inputs)
    expect = ref.bconv2d_ref(x, w, stride=s, padding=p, dilation=d, pad_value=pad_value)
    pf = S.make_bconv2d(x.shape, w.shape, stride=s, padding=p, dilation=d, pad_value=pad_value,
                        target=host, schedule=sched)
    args = _conv_args(pf, x, w, s, p, d, pad_value, "NCHW")
    assert len(args) + 1 == len(pf.params)
    got = run_primfunc(pf, args, expect.shape, "int32")
    _eq(got, expect, inputs)


EPI_CASES = [CONV_CASES[1], CONV_CASES[5], CONV_CASES[6], CONV_CASES[10], CONV_CASES[12]]


EPILOGUES = {"scale_bias": (True, True), "scale": (True, False), "bias": (False, True)}
LAYOUTS = ("NCHW", "NHWC")


def _pairwise(*axes):
    """(*values, sched) rows: the full product for "x86" (the production schedule, whose
    epilogue has three code paths: pixel-vectorised, k-vectorised, border branches); for "cpu"
    (one injective epilogue pass) and "arm_cpu" (the x86 code with other tile sizes) only the rows
    whose index sum is even, the last axis being the layout: every pair of values still meets."""
    rows = []
    for idx in itertools.product(*(range(len(a)) for a in axes)):
        vals = tuple(a[i] for a, i in zip(axes, idx))
        for sched in SCHEDS:
            if sched == "x86" or sum(idx) % 2 == 0:
                rows.append((*vals, sched))
    return rows


EPI_PARAMS = _pairwise(range(len(EPI_CASES)), list(EPILOGUES), LAYOUTS)


@pytest.mark.parametrize("case_i,epi,layout,sched", EPI_PARAMS,
                         ids=[f"{_conv_id(EPI_CASES[c])}-{e}-{lay}-{s}"
                              for c, e, lay, s in EPI_PARAMS])
def test_bconv2d_fused_epilogue(case_i, epi, layout, sched, inputs, host, run_primfunc):
    case = EPI_CASES[case_i]
    with_scale, with_bias = EPILOGUES[epi]
    K, (s, p, d) = case[4], case[6:]
    x, w = _conv_operands(case, inputs)
    scale = inputs.normal(K) if with_scale else None
    if scale is not None:
        scale[0] = -abs(scale[0]) - 0.5   # negative scales
    bias = inputs.normal(K) if with_bias else None
    expect = ref.bconv2d_ref(x, w, stride=s, padding=p, dilation=d, pad_value="zero",
                             scale=scale, bias=bias, out_layout=layout)
    pf = S.make_bconv2d(x.shape, w.shape, stride=s, padding=p, dilation=d, pad_value="zero",
                        with_scale=with_scale, with_bias=with_bias, out_layout=layout,
                        target=host, schedule=sched)
    args = _conv_args(pf, x, w, s, p, d, "zero", layout)
    args += [a for a in (scale, bias) if a is not None]
    got = run_primfunc(pf, args, expect.shape, "float32")
    _close(got, expect, inputs)


# ReActNet's block tail (residual, RPReLU = shift, prelu, shift) plus the other post-ops, on
# the three x86 code paths: pixel-vectorised, k-vectorised interior and border-branch epilogues.
POST_CASES = [CONV_CASES[10], CONV_CASES[1], CONV_CASES[5], CONV_CASES[16], CONV_CASES[2]]
POST_CHAINS = [("residual", "shift", "prelu", "shift"), ("residual",), ("mul", "relu", "shift"),
               ("prelu", "residual")]


POST_PARAMS = _pairwise(range(len(POST_CASES)), range(len(POST_CHAINS)), LAYOUTS)


@pytest.mark.parametrize("case_i,chain_i,layout,sched", POST_PARAMS,
                         ids=[f"{_conv_id(POST_CASES[c])}-{'-'.join(POST_CHAINS[h])}-{lay}-{s}"
                              for c, h, lay, s in POST_PARAMS])
def test_bconv2d_post_ops(case_i, chain_i, layout, sched, inputs, host, run_primfunc):
    case, post = POST_CASES[case_i], POST_CHAINS[chain_i]
    K, (s, p, d) = case[4], case[6:]
    x, w = _conv_operands(case, inputs)
    scale = inputs.normal(K)
    bias = inputs.normal(K)
    out_shape = ref.bconv2d_ref(x, w, stride=s, padding=p, dilation=d, scale=scale,
                                out_layout=layout).shape
    params = []
    for kind in post:
        if kind == "residual":
            params.append(inputs.normal(out_shape, 8))
        elif kind != "relu":
            params.append(inputs.normal(K))
    it = iter(params)
    post_ref = [(kind, None if kind == "relu" else next(it)) for kind in post]
    expect = ref.bconv2d_ref(x, w, stride=s, padding=p, dilation=d, scale=scale, bias=bias,
                             out_layout=layout, post=post_ref)
    pf = S.make_bconv2d(x.shape, w.shape, stride=s, padding=p, dilation=d, with_scale=True,
                        with_bias=True, out_layout=layout, post=post, target=host, schedule=sched)
    args = _conv_args(pf, x, w, s, p, d, "zero", layout)
    args += [scale, bias, *params]
    assert len(args) + 1 == len(pf.params)
    got = run_primfunc(pf, args, expect.shape, "float32")
    _close(got, expect, inputs)


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", POST_CASES[:3], ids=[_conv_id(c) for c in POST_CASES[:3]])
def test_bconv2d_tiled_residual(case, layout, sched, inputs, host, run_primfunc):
    """Two sibling convs under a channel Concat run as one conv of 2K channels whose shortcut
    (K channels) is added to both halves: output channel k reads residual channel k % K."""
    K, (s, p, d) = case[4], case[6:]
    x, w = _conv_operands(case, inputs)
    scale = inputs.normal(K)
    bias = inputs.normal(K)
    full = ref.bconv2d_ref(x, w, stride=s, padding=p, dilation=d, out_layout=layout).shape
    axis = 1 if layout == "NCHW" else 3
    res_shape = list(full)
    res_shape[axis] = K // 2
    res = inputs.normal(res_shape, 8)
    slope = inputs.normal(K)
    halves = [ref.bconv2d_ref(x, w[h * K // 2:(h + 1) * K // 2], stride=s, padding=p, dilation=d,
                              scale=scale[h * K // 2:(h + 1) * K // 2],
                              bias=bias[h * K // 2:(h + 1) * K // 2], out_layout=layout,
                              post=[("residual", res)]) for h in range(2)]
    expect = ref._post_ref(np.concatenate(halves, axis=axis), [("prelu", slope)], axis)
    pf = S.make_bconv2d(x.shape, w.shape, stride=s, padding=p, dilation=d, with_scale=True,
                        with_bias=True, out_layout=layout, post=("residual", "prelu"),
                        residual_channels=K // 2, target=host, schedule=sched)
    assert "_erpx2_" in str(pf.attrs["global_symbol"])
    args = _conv_args(pf, x, w, s, p, d, "zero", layout)
    got = run_primfunc(pf, [*args, scale, bias, res, slope], expect.shape, "float32")
    _close(got, expect, inputs)


def test_bconv2d_residual_channels_must_divide(host):
    with pytest.raises(ValueError, match="must divide"):
        S.make_bconv2d((1, 64, 8, 8), (12, 64, 1, 1), with_scale=True, post=("residual",),
                       residual_channels=5, target=host)


PACK_CASES = [CONV_CASES[10], CONV_CASES[11], CONV_CASES[5], CONV_CASES[16], CONV_CASES[1],
              (1, 16, 4, 56, 130, (3, 3), 1, (1, 1, 1, 1), 1),
              # rows no 8 divides (ResNet-18's 28, 14, 7): packed in chunks of 14 / 7 in the row
              (1, 16, 3, 28, 64, (3, 3), 1, (1, 1, 1, 1), 1),
              (1, 32, 6, 28, 128, (3, 3), 2, (1, 1, 1, 1), 1),
              (1, 64, 7, 7, 128, (3, 3), 1, (1, 1, 1, 1), 1)]


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("case", PACK_CASES, ids=[_conv_id(c) for c in PACK_CASES])
def test_bconv2d_packed_output(case, sched, inputs, host, run_primfunc_outs):
    """The conv also writes its output binarised and packed for the next binary conv: the words
    must equal bitpack_ref of the float output it wrote (ties included)."""
    N, K, (s, p, d) = case[0], case[4], case[6:]
    x, w = _conv_operands(case, inputs)
    scale = np.round(inputs.normal(K) * 4) / 4
    bias = np.round(inputs.normal(K) * 4) / 4
    expect = ref.bconv2d_ref(x, w, stride=s, padding=p, dilation=d, scale=scale, bias=bias,
                             post=[("shift", bias), ("prelu", np.full(K, 0.25, np.float32))])
    thr = inputs.rng.choice(expect.reshape(-1), K).astype("float32")  # thresholds hit output values
    pf = S.make_bconv2d(x.shape, w.shape, stride=s, padding=p, dilation=d, with_scale=True,
                        with_bias=True, post=("shift", "prelu"), pack_output=True, target=host,
                        schedule=sched)
    args = _conv_args(pf, x, w, s, p, d, "zero", "NCHW")
    args += [scale, bias, bias, np.full(K, 0.25, np.float32), thr.reshape(1, K, 1, 1)]
    out, words = run_primfunc_outs(pf, args, [(expect.shape, "float32"),
                                              ((N, *expect.shape[2:], (K + 63) // 64), "uint64")])
    _close(out, expect, inputs)
    _eq(words, ref.bitpack_ref(out, thr.reshape(1, K, 1, 1)), inputs)


def test_bconv2d_post_ops_need_float_epilogue(host):
    with pytest.raises(ValueError, match="float epilogue"):
        S.make_bconv2d((1, 64, 8, 8), (8, 64, 1, 1), post=("relu",), target=host)
    with pytest.raises(ValueError, match="unknown post-op"):
        S.make_bconv2d((1, 64, 8, 8), (8, 64, 1, 1), with_scale=True, post=("gelu",), target=host)


@pytest.mark.parametrize("mcpu", ["haswell", "icelake-server"])
@pytest.mark.parametrize("case", [CONV_CASES[10], CONV_CASES[11], CONV_CASES[1]],
                         ids=[_conv_id(c) for c in (CONV_CASES[10], CONV_CASES[11], CONV_CASES[1])])
def test_bconv2d_x86_isas(case, mcpu, inputs, run_primfunc):
    """AVX2-only and AVX-512 (VPOPCNTDQ) builds of the x86 schedule, run when the CPU has them."""
    from bnncompile import targets
    flags = targets.cpu_flags()
    if mcpu == "icelake-server" and "avx512_vpopcntdq" not in flags:
        pytest.skip("no AVX512-VPOPCNTDQ here")
    if "avx2" not in flags:
        pytest.skip("no AVX2 here")
    K, (s, p, d) = case[4], case[6:]
    x, w = _conv_operands(case, inputs)
    scale = inputs.normal(K)
    bias = inputs.normal(K)
    tgt = {"kind": "llvm", "mcpu": mcpu}
    expect = ref.bconv2d_ref(x, w, stride=s, padding=p, dilation=d, scale=scale, bias=bias)
    pf = S.make_bconv2d(x.shape, w.shape, stride=s, padding=p, dilation=d, with_scale=True,
                        with_bias=True, target=tgt)
    args = [*_conv_args(pf, x, w, s, p, d), scale, bias]
    got = run_primfunc(pf, args, expect.shape, "float32", target=tgt)
    _close(got, expect, inputs)


# pixel-vectorised (C <= 64, unit w stride, NCHW): 16-pixel and 8-pixel rows, K 8 or 12
PIX_CASES = [(1, 64, 9, 32, 8, (3, 3), 1, (1, 1, 1, 1), 1), (2, 40, 5, 24, 12, (3, 3), 1, (1, 1, 1, 1), 1),
             (1, 32, 6, 16, 8, (1, 1), 1, (0, 0, 0, 0), 1)]


@pytest.mark.parametrize("tile", [(8, 8), (8, 2), (16, 4)], ids=lambda t: f"{t[0]}px-{t[1]}k")
@pytest.mark.parametrize("case", PIX_CASES, ids=[_conv_id(c) for c in PIX_CASES])
def test_bconv2d_pixel_tiles(case, tile, inputs, host, run_primfunc, monkeypatch):
    """The pixel-vectorised tile a CPU family takes (``x86.PIX_TILES``, e.g. 8 px x 8 channels
    on Zen 4) is bit-exact with the fused ReActNet tail: the table is pointed at this host's
    CPU name so the variant runs here."""
    from bnncompile.schedules import x86

    monkeypatch.setitem(x86.PIX_TILES, host["mcpu"], tile)
    K, (s, p, d) = case[4], case[6:]
    x, w = _conv_operands(case, inputs)
    scale, bias, shift = inputs.normal(K), inputs.normal(K), inputs.normal(K)
    expect = ref.bconv2d_ref(x, w, stride=s, padding=p, dilation=d, scale=scale, bias=bias,
                             post=[("shift", shift)])
    pf = S.make_bconv2d(x.shape, w.shape, stride=s, padding=p, dilation=d, with_scale=True,
                        with_bias=True, post=("shift",), target=host)
    assert f"\"bnn_pix_vec\": {tile[0]}" in pf.script() and f"\"bnn_pix_ki\": {tile[1]}" in pf.script()
    got = run_primfunc(pf, [*_conv_args(pf, x, w, s, p, d), scale, bias, shift], expect.shape, "float32")
    _close(got, expect, inputs)


def test_bconv2d_pixel_tile_is_chosen_per_cpu():
    """Compile-only: Zen 4 builds carry its measured tile, other CPUs none (the defaults)."""
    import tvm

    for mcpu, hinted in [("znver4", True), ("znver3", False), ("icelake-server", False)]:
        tgt = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "mtriple": "x86_64-linux-gnu"})
        pf = S.make_bconv2d((1, 64, 8, 16), (8, 64, 3, 3), padding=1, target=tgt)
        assert ("bnn_pix_vec" in pf.script()) == hinted, mcpu


@pytest.mark.parametrize("sched", SCHEDS)
def test_bitpack_then_bconv2d_end_to_end(sched, inputs, host, run_primfunc):
    """float x -> TVM bitpack (per-sample per-channel thresholds, ties) -> TVM bconv2d."""
    N, C, H, W, K = 3, 65, 7, 7, 8
    t = inputs.normal((N, C, 1, 1))
    x = inputs.thresholded((N, C, H, W), t)
    if inputs.random:
        x[:, :, 2, 3] = t[:, :, 0, 0]
        x[0, 0, 0, 0] = 0.0
    w = inputs.weights((K, C, 3, 3))
    packed = run_primfunc(S.make_bitpack(x.shape, t.shape, host, schedule=sched), [x, t],
                          (N, H, W, 2), "uint64")
    pf = S.make_bconv2d(x.shape, w.shape, padding=1, target=host, schedule=sched)
    x_pm1 = np.where(x >= t, 1.0, -1.0).astype("float32")
    got = run_primfunc(pf, [packed, *_conv_args(pf, x_pm1, w, p=1)[1:]], (N, K, H, W), "int32")
    _eq(got, ref.bconv2d_ref(x_pm1, w, padding=1), inputs)


# ---------------------------------------------------------------- dense / batch matmul
def _dense_sweep():
    """Every (M, N_out) of M in {1, 2, 5, 8} x N_out in {1, 3, 5, 7, 8, 9, 17} for every schedule
    (the tile choice depends on both: one row, M without a divisor up to the row tile, N without
    an even divisor), K in {1, 63, 64, 65, 130} rotated so that each schedule meets every (M, K)
    pair; rank 2, 3 (a batch of 2 or of 1) and the int / fused float epilogues alternate."""
    cases = []
    for si, sched in enumerate(SCHEDS):
        for i, (m, n) in enumerate(itertools.product((1, 2, 5, 8), (1, 3, 5, 7, 8, 9, 17))):
            k = (1, 63, 64, 65, 130)[(i + 2 * si) % 5]
            lead = ((), (2,), (1,))[(i + si) % 3]
            epi = ("int", "scale_bias")[(i // 3 + si) % 2]
            cases.append(((*lead, m, k), n, epi, sched))
    return cases


DENSE_CASES = [*kc.DENSE_CORE, ((1, 256), 1000), ((1, 64, 256), 256)]  # the common shapes: 1000 classes, tokens
DENSE_PARAMS = ([(a, n, epi, sched) for (a, n) in DENSE_CASES
                  for epi in ("int", "scale_bias", "cut", "residual", "scale_bias_residual")
                 for sched in SCHEDS] + _dense_sweep())


def _check_bdense(a, w, epi, sched, inputs, host, run_primfunc):
    n_out = w.shape[0]
    fused = epi.startswith("scale_bias")
    scale = inputs.normal(n_out) if fused else None
    bias = inputs.normal(n_out) if fused else None
    residual = inputs.normal((*a.shape[:-1], n_out)) if epi.endswith("residual") else None
    cut = kc.cut_bounds(np.random.default_rng(n_out), n_out, a.shape[-1]) if epi == "cut" else ()
    pf = S.make_bdense(a.shape, w.shape, with_scale=fused, with_bias=fused, with_cut=bool(cut),
                       with_residual=residual is not None, target=host, schedule=sched)
    args = ([pk.pack_bits(a), pk.pack_dense_weight(w, S.dense_weight_bits_of(pf))] + ([scale, bias] if fused else [])
            + ([residual] if residual is not None else []) + list(cut))
    if cut:
        expect = ref.bdense_margin_ref(a, w, *cut)
    else:
        expect = ref.bdense_ref(a, w, scale, bias, residual)
    got = run_primfunc(pf, args, expect.shape, "int32" if epi == "int" else "float32")
    if fused or residual is not None:
        _close(got, expect, inputs)
    else:  # integer sums, or margins of them (integers in float32)
        _eq(got, expect, inputs)


@pytest.mark.parametrize("a_shape,n_out,epi,sched", DENSE_PARAMS,
                         ids=[f"a{_tag(a)}-n{n}-{e}-{s}" for a, n, e, s in DENSE_PARAMS])
def test_bdense(a_shape, n_out, epi, sched, inputs, host, run_primfunc):
    a = inputs.pm1(a_shape)
    w = inputs.weights((n_out, a_shape[-1]))
    _check_bdense(a, w, epi, sched, inputs, host, run_primfunc)


HALF_WORD_CASES = [((1, 256), 16, "scale_bias_residual"), ((2, 3, 130), 17, "cut"), ((5, 63), 33, "int"),
                   ((1, 7, 384), 24, "scale_bias")]


@pytest.mark.parametrize("sched", ["x86", "cpu"])
@pytest.mark.parametrize("a_shape,n_out,epi", HALF_WORD_CASES,
                         ids=[f"a{_tag(a)}-n{n}-{e}" for a, n, e in HALF_WORD_CASES])
def test_bdense_half_words(a_shape, n_out, epi, sched, inputs, host, run_primfunc):
    """32-bit weight words (registry.dense_weight_bits: Zen 4's short rows), forced here so that
    every CPU runs them (LLVM emulates the 32-bit popcount where the CPU has no vpopcntd)."""
    a, w = inputs.pm1(a_shape), inputs.weights((n_out, a_shape[-1]))
    n = w.shape[0]
    fused = epi.startswith("scale_bias")
    scale, bias = (inputs.normal(n), inputs.normal(n)) if fused else (None, None)
    residual = inputs.normal((*a_shape[:-1], n)) if epi.endswith("residual") else None
    cut = kc.cut_bounds(np.random.default_rng(n), n, a_shape[-1]) if epi == "cut" else ()
    pf = S.make_bdense(a_shape, w.shape, with_scale=fused, with_bias=fused, with_cut=bool(cut),
                       with_residual=residual is not None, word_bits=32, target=host, schedule=sched)
    assert S.dense_weight_bits_of(pf) == 32
    args = ([pk.pack_bits(a), pk.pack_dense_weight(w, 32)] + ([scale, bias] if fused else [])
            + ([residual] if residual is not None else []) + list(cut))
    expect = ref.bdense_margin_ref(a, w, *cut) if cut else ref.bdense_ref(a, w, scale, bias, residual)
    got = run_primfunc(pf, args, expect.shape, "int32" if epi == "int" else "float32")
    (_close if fused else _eq)(got, expect, inputs)


PACKED_DENSE_CASES = [((196, 384), 1152, 32), ((2, 3, 130), 128, 64), ((5, 70), 64, 64),
                      ((1, 64, 256), 512, 32), ((7, 100), 192, 64)]


@pytest.mark.parametrize("sched", ["x86", "cpu"])
@pytest.mark.parametrize("a_shape,n_out,bits", PACKED_DENSE_CASES,
                         ids=[f"a{_tag(a)}-n{n}-w{b}" for a, n, b in PACKED_DENSE_CASES])
def test_bdense_cut_packed(a_shape, n_out, bits, sched, inputs, host, run_primfunc):
    """A cut's signs packed by the dense itself (``pack_output``: x86 in its tiles, the generic
    schedule in a pass of its own): bit for bit ``pack_bits(margin >= 0)`` of the reference
    margin, with 64-bit and half-word weights."""
    a, w = inputs.pm1(a_shape), inputs.weights((n_out, a_shape[-1]))
    cut = kc.cut_bounds(np.random.default_rng(n_out), n_out, a_shape[-1])
    pf = S.make_bdense(a_shape, w.shape, with_cut=True, pack_output=True, word_bits=bits, target=host,
                       schedule=sched)
    margin = ref.bdense_margin_ref(a, w, *cut)
    expect = pk.pack_bits(margin >= 0)
    got = run_primfunc(pf, [pk.pack_bits(a), pk.pack_dense_weight(w, bits), *cut], expect.shape, "uint64")
    _eq(got, expect, inputs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(pack_output=True), "needs a cut"),
    (dict(with_cut=True, pack_output=True, n=100), "multiple of 64"),
    (dict(with_cut=True, pack_output=True, schedule="cuda"), "no packed output on cuda"),
])
def test_bdense_packed_output_refused(kwargs, match):
    n = kwargs.pop("n", 128)
    with pytest.raises(ValueError, match=match):
        S.make_bdense((2, 64), (n, 64), **kwargs)


def test_bdense_cut_takes_no_scale():
    with pytest.raises(ValueError, match="cut epilogue takes no scale"):
        S.make_bdense((2, 64), (4, 64), with_scale=True, with_cut=True)


# one row (or, with the arm tile of 4 rows, M = 5) and an odd number of outputs: the x86 / arm
# schedules vectorised the parallel task loop around the tile's local accumulator, and every
# output took the last column's value.  Staircase weights make neighbouring columns differ for
# any activations, so the old kernels fail for every input kind and seed.
ONE_ROW_CASES = [((1, 64), 3, "x86"), ((1, 1, 130), 5, "x86"), ((1, 65), 7, "x86"),
                 ((1, 1, 64), 9, "x86"), ((1, 64), 3, "arm_cpu"), ((1, 1, 130), 5, "arm_cpu"),
                 ((1, 65), 9, "arm_cpu"), ((5, 130), 7, "arm_cpu"), ((1, 5, 130), 3, "arm_cpu")]


@pytest.mark.parametrize("a_shape,n_out,sched", ONE_ROW_CASES,
                         ids=[f"a{_tag(a)}-n{n}-{s}" for a, n, s in ONE_ROW_CASES])
def test_bdense_one_row_odd_outputs_regression(a_shape, n_out, sched, inputs, host, run_primfunc,
                                               staircase_pm1):
    a = inputs.pm1(a_shape)
    w = staircase_pm1(n_out, a_shape[-1])
    _check_bdense(a, w, "int", sched, inputs, host, run_primfunc)


BMM_CASES = [*kc.BMM_CORE, ((2, 1, 64), (2, 3, 64), None), ((1, 7, 1), (1, 1, 1), None),
             ((2, 3, 5, 65), (2, 3, 9, 65), -0.5), ((2, 8, 63), (2, 17, 63), None),
             ((1, 2, 130), (1, 5, 130), None), ((2, 197, 64), (2, 197, 64), None),
             # one word per dot product, N no multiple of 8: x86's wide rows of lanes (28, 12)
             ((2, 6, 64), (2, 28, 64), 0.125), ((1, 4, 40), (1, 12, 40), None),
             ((6, 196, 64), (6, 196, 64), 0.125),
             # the float output as count * (-2 alpha) + k alpha where that is exact (two words),
             # as float(k - 2 count) * alpha where it is not (1/sqrt(48)) or alpha is negative
             ((1, 5, 128), (1, 16, 128), 0.25), ((2, 3, 48), (2, 20, 48), float(np.float32(48 ** -0.5))),
             ((1, 3, 64), (1, 5, 64), -0.5)]


def _check_bbmm(a, b, alpha, sched, inputs, host, run_primfunc):
    pf = S.make_bbatch_matmul(a.shape, b.shape, alpha=alpha, target=host, schedule=sched)
    expect = ref.bbatch_matmul_ref(a, b, alpha)
    got = run_primfunc(pf, [pk.pack_bits(a), pk.pack_bits(b)], expect.shape,
                       "int32" if alpha is None else "float32")
    _eq(got, expect, inputs)  # float outputs too: one rounding of acc * alpha either way


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("a_shape,b_shape,alpha", BMM_CASES,
                         ids=[f"a{_tag(a)}-b{_tag(b)}-alpha{al}" for a, b, al in BMM_CASES])
def test_bbatch_matmul(a_shape, b_shape, alpha, sched, inputs, host, run_primfunc):
    a = inputs.pm1(a_shape)
    b = inputs.weights(b_shape)
    _check_bbmm(a, b, alpha, sched, inputs, host, run_primfunc)


BMM_COUNT_CASES = [((6, 196, 64), (6, 196, 64)), ((2, 7, 64), (2, 28, 64)), ((1, 5, 130), (1, 9, 130)),
                   ((2, 3, 255), (2, 17, 255))]


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("a_shape,b_shape", BMM_COUNT_CASES,
                         ids=[f"a{_tag(a)}-b{_tag(b)}" for a, b in BMM_COUNT_CASES])
def test_bbatch_matmul_counts(a_shape, b_shape, sched, inputs, host, run_primfunc):
    """``counts=True``: the popcounts themselves as bytes (the mismatches c of ``k - 2c``), for
    the softmax that looks their exponentials up (compute.softmax_counts)."""
    a = inputs.pm1(a_shape)
    b = inputs.weights(b_shape)
    k = a_shape[-1]
    pf = S.make_bbatch_matmul(a.shape, b.shape, counts=True, target=host, schedule=sched)
    expect = (k - ref.bbatch_matmul_ref(a, b)) // 2
    got = run_primfunc(pf, [pk.pack_bits(a), pk.pack_bits(b)], expect.shape, "uint8")
    _eq(got, expect.astype(np.uint8), inputs)


def test_bbatch_matmul_counts_refuse_more_than_a_byte(host):
    with pytest.raises(ValueError, match="do not fit uint8"):
        S.make_bbatch_matmul((1, 2, 256), (1, 3, 256), counts=True, target=host)


# M without a divisor up to the row tile (arm: 4, x86: 8) or one row, and N odd
BMM_TAIL_CASES = [((3, 5, 65), (3, 9, 65), "arm_cpu"), ((2, 7, 64), (2, 3, 64), "arm_cpu"),
                  ((2, 1, 65), (2, 5, 65), "x86"), ((1, 11, 64), (1, 3, 64), "x86")]


@pytest.mark.parametrize("a_shape,b_shape,sched", BMM_TAIL_CASES,
                         ids=[f"a{_tag(a)}-b{_tag(b)}-{s}" for a, b, s in BMM_TAIL_CASES])
def test_bbmm_arm_tail_regression(a_shape, b_shape, sched, inputs, host, run_primfunc,
                                  staircase_pm1):
    """One output per parallel task, which the arm / x86 schedules then vectorised (every output
    a constant -3 for 3x5x65 @ 3x9x65 on arm_cpu)."""
    a = inputs.pm1(a_shape)
    b = np.broadcast_to(staircase_pm1(b_shape[-2], b_shape[-1]), b_shape).copy()
    _check_bbmm(a, b, None, sched, inputs, host, run_primfunc)


# ---------------------------------------------------------------- every loop of a tile unit
# Same bug class as the two regressions above, in the other schedules that moved a block under a
# task loop and vectorised that block's last loop: with all its own loops unit, that was the task
# loop (a build error or wrong values).  bconv2d: the per-row padding of a 1-wide map;
# fconv2d: K = 1 and an OW without a divisor up to the pixel tile; maxpool2d: a 1-wide map.
@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("op", ["bconv2d_w1", "fconv2d_k1", "maxpool2d_w1"])
def test_all_unit_tile_loops_regression(op, sched, inputs, host, run_primfunc):
    if op == "bconv2d_w1":
        case = CONV_CASES[-1]
        s, p, d = case[6:]
        x, w = _conv_operands(case, inputs)
        for pad_value in ("zero", "one"):
            expect = ref.bconv2d_ref(x, w, padding=p, pad_value=pad_value)
            pf = S.make_bconv2d(x.shape, w.shape, padding=p, pad_value=pad_value, target=host,
                                schedule=sched)
            got = run_primfunc(pf, _conv_args(pf, x, w, s, p, d, pad_value), expect.shape, "int32")
            _eq(got, expect, inputs)
    elif op == "fconv2d_k1":
        x = inputs.floats((1, 3, 5, 11))
        w = inputs.normal((1, 3, 3, 3))
        expect = ref.fconv2d_ref(x, w, stride=1, padding=(1, 1, 1, 1))
        pf = S.make_fconv2d(x.shape, w.shape, padding=1, target=host, schedule=sched)
        got = run_primfunc(pf, [x, pk.block_conv_weight(w, S.fconv2d_block(host))], expect.shape,
                           "float32")
        _close(got, expect, inputs, rtol=1e-4, atol=1e-4 * np.abs(expect).max())
    else:
        x = inputs.floats((2, 16, 5, 1))
        expect = ref.maxpool2d_ref(x, kernel=(3, 1), stride=(1, 1), padding=(1, 0, 1, 0))
        pf = S.make_maxpool2d(x.shape, kernel=(3, 1), stride=1, padding=(1, 0, 1, 0), target=host,
                              schedule=sched)
        _eq(run_primfunc(pf, [x], expect.shape, "float32"), expect, inputs)


# ---------------------------------------------------------------- maxpool2d
# ResNet's stem pool (3x3 s2 p1), odd sizes, asymmetric padding, a window wider than the stride.
POOL_CASES = [((1, 8, 112, 112), (3, 3), (2, 2), (1, 1, 1, 1)),
              ((2, 3, 9, 7), (3, 3), (2, 2), (1, 1, 1, 1)),
              ((1, 4, 8, 10), (2, 2), (2, 2), (0, 0, 0, 0)),
              ((1, 5, 11, 13), (3, 2), (1, 2), (1, 0, 0, 1)),
              ((1, 2, 6, 6), (5, 5), (1, 1), (2, 2, 2, 2))]


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("shape,k,s,p", POOL_CASES,
                         ids=[f"{_tag(c[0])}-k{c[1][0]}{c[1][1]}-s{c[2][0]}{c[2][1]}"
                              for c in POOL_CASES])
def test_maxpool2d(shape, k, s, p, sched, inputs, host, run_primfunc):
    x = inputs.floats(shape)  # all -1: a zero padding would win; all equal: ties everywhere
    if inputs.random:
        x[0, 0, 0, :3] = -1e30  # all-negative border windows: padding must not win
    expect = ref.maxpool2d_ref(x, kernel=k, stride=s, padding=p)
    pf = S.make_maxpool2d(shape, kernel=k, stride=s, padding=p, target=host, schedule=sched)
    got = run_primfunc(pf, [x], expect.shape, "float32")
    _eq(got, expect, inputs)  # max is exact


# ---------------------------------------------------------------- avgpool2d (stride = kernel)
@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("shape,k", [((1, 8, 56, 56), (2, 2)), ((1, 8, 28, 28), (2, 2)), ((2, 3, 7, 9), (2, 2)),
                                     ((1, 4, 9, 12), (3, 2))], ids=["56", "28", "odd", "k3x2"])
def test_avgpool2d(shape, k, sched, inputs, host, run_primfunc):
    x = inputs.floats(shape)
    expect = ref.avgpool2d_ref(x, k)
    pf = S.make_avgpool2d(shape, kernel=k, target=host, schedule=sched)
    got = run_primfunc(pf, [x], expect.shape, "float32")
    _eq(got, expect, inputs)  # same additions in the same order


# ---------------------------------------------------------- prelu_stats (dynamic PReLU + pools)
# rows of 14x14 / 7x7 / 56x56 maps, an L with no divisor up to 16 but 1 (13), per-channel or
# per-sample shifts and slopes, INSTA's E[y] and E[y^3] together
PRELU_CASES = [((1, 8, 1, 196), (1, 8, 1, 1), (1, 8, 1, 1), (1,)),
               ((2, 5, 1, 49), (2, 5, 1, 1), (1, 5, 1, 1), (1, 3)),
               ((1, 3, 1, 3136), (1, 3, 1, 1), (3, 1, 1), (3,)),
               ((2, 4, 1, 13), (2, 4, 1, 1), (2, 4, 1, 1), (1, 2, 3))]


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("shape,shift_shape,slope_shape,powers", PRELU_CASES,
                         ids=[f"{_tag(c[0])}-p{''.join(map(str, c[3]))}" for c in PRELU_CASES])
def test_prelu_stats(shape, shift_shape, slope_shape, powers, sched, inputs, host,
                     run_primfunc_outs):
    """y is bit-identical to the graph's op order; the means match float64 sums."""
    x = inputs.floats(shape)
    sin, sout = inputs.normal(shift_shape), inputs.normal(shift_shape)
    if inputs.random:
        x[..., :2] = sin  # d == 0 exactly: ties of the d >= 0 test
    slope = (inputs.rng.random(slope_shape) - 0.3).astype("float32")  # some negative slopes too
    ey, es = ref.prelu_stats_ref(x, sin, slope, sout, powers)
    pf = S.make_prelu_stats(shape, shift_shape, slope_shape, shift_shape, powers, target=host,
                            schedule=sched)
    y, *means = run_primfunc_outs(pf, [x, sin, slope, sout],
                                  [(shape, "float32")] + [(shape[:2], "float32")] * len(powers))
    _eq(y, ey, inputs)
    _close(np.stack(means, -1), es[:, :, 0], inputs, rtol=1e-5, atol=1e-5)


def test_prelu_stats_rejects_bad_input(host):
    with pytest.raises(ValueError, match=r"\[N, C, 1, L\]"):
        S.make_prelu_stats((1, 8, 16), (1, 8, 1), (1, 8, 1), (1, 8, 1), (1,), target=host)
    with pytest.raises(ValueError, match=r"\[N, C, 1, L\]"):
        S.make_prelu_stats((1, 8, 4, 4), (1, 8, 1, 1), (1, 8, 1, 1), (1, 8, 1, 1), (1,),
                           target=host)
    with pytest.raises(ValueError, match="power 4"):
        S.make_prelu_stats((1, 8, 1, 16), (1, 8, 1, 1), (8, 1, 1), (1, 8, 1, 1), (4,), target=host)
    with pytest.raises(ValueError, match="no statistics"):
        S.make_prelu_stats((1, 8, 1, 16), (1, 8, 1, 1), (8, 1, 1), (1, 8, 1, 1), (), target=host)


# ---------------------------------------------------------- token_threshold (DySign pool + MLP)
# CCT-like (a chunk of 64 channels), a width no vector divides (10), batch 2, hidden 1
TOKEN_CASES = [((1, 9, 128), 8), ((2, 13, 48), 6), ((1, 5, 10), 3), ((2, 4, 16), 1)]


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("shape,hidden", TOKEN_CASES, ids=[f"{_tag(c[0])}-r{c[1]}" for c in TOKEN_CASES])
def test_token_threshold(shape, hidden, sched, inputs, host, run_primfunc):
    """relu(mean_L(x) @ W1^T + b1) @ W2^T + b2 against float64: the token sums and the FCs run in
    float32, in another order than numpy's."""
    n, _, d = shape
    x = inputs.floats(shape)
    w1, b1 = inputs.normal((hidden, d), 0.3), inputs.normal((hidden,))
    w2, b2 = inputs.normal((d, hidden), 0.3), inputs.normal((d,))
    expect = ref.token_threshold_ref(x, w1, b1, w2, b2)
    pf = S.make_token_threshold(shape, hidden, target=host, schedule=sched)
    got = run_primfunc(pf, [x, np.ascontiguousarray(w1.T), b1, np.ascontiguousarray(w2.T), b2], (n, d), "float32")
    _close(got, expect, inputs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("shape,hidden", TOKEN_CASES[:3], ids=[f"{_tag(c[0])}-r{c[1]}" for c in TOKEN_CASES[:3]])
def test_token_threshold_with_gelu(shape, hidden, sched, inputs, host, run_primfunc_outs):
    """The GELU prologue (DyBinaryCCT's fc2 site): the kernel writes GELU(x) (TVM's erf
    polynomial, ~1e-7 of the true erf) and pools it."""
    n, _, d = shape
    x = inputs.floats(shape, scale=2.0)
    w1, b1 = inputs.normal((hidden, d), 0.3), inputs.normal((hidden,))
    w2, b2 = inputs.normal((d, hidden), 0.3), inputs.normal((d,))
    gelu = ref.gelu_ref(x)
    pf = S.make_token_threshold(shape, hidden, gelu=(np.sqrt(2.0), 1.0, 0.5), target=host, schedule=sched)
    thr, y = run_primfunc_outs(pf, [x, np.ascontiguousarray(w1.T), b1, np.ascontiguousarray(w2.T), b2],
                               [((n, d), "float32"), (shape, "float32")])
    _close(y, gelu, inputs, rtol=1e-6, atol=1e-6)
    _close(thr, ref.token_threshold_ref(gelu, w1, b1, w2, b2), inputs, rtol=1e-5, atol=1e-5)


def test_token_threshold_rejects_bad_input(host):
    with pytest.raises(ValueError, match=r"\[N, L, D\]"):
        S.make_token_threshold((1, 8), 4, target=host)
    with pytest.raises(ValueError, match="not a view"):
        S.make_token_threshold((1, 4, 8), 2, view=((1, 4, 16), [("slice", (2,), (0,), (1,), (8,))]),
                               gelu=(1.5, 1.0, 0.5), target=host)
    with pytest.raises(ValueError, match="needs w1t"):
        from bnncompile.schedules import compute
        from tvm import te

        compute.token_threshold(te.placeholder((1, 4, 8)), te.placeholder((8, 2)), te.placeholder((2,)),
                                te.placeholder((2, 4)), te.placeholder((8,)))


# ---------------------------------------------------------------- fconv2d (float stem / shortcuts)
FCONV_CASES = [((1, 3, 23, 21), 16, (7, 7), 2, (3, 3, 3, 3)),   # ResNet stem geometry
               ((1, 3, 17, 16), 32, (3, 3), 2, (1, 1, 1, 1)),   # ReActNet-A stem geometry
               ((2, 24, 7, 9), 40, (1, 1), 1, (0, 0, 0, 0)),    # shortcut 1x1, no pad (inlined)
               ((1, 5, 8, 8), 3, (3, 2), 1, (0, 1, 2, 0)),
               ((1, 4, 9, 10), 24, (3, 3), 1, (1, 1, 1, 1)),    # 2 blocks per tile, K padded
               # weights larger than the input: unpadded, weight blocks outermost; padded, rows
               ((1, 64, 3, 3), 64, (1, 1), 1, (0, 0, 0, 0)),
               ((2, 32, 5, 5), 48, (3, 3), 1, (1, 1, 1, 1))]


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("shape,k,kernel,s,p", FCONV_CASES,
                         ids=[f"{_tag(c[0])}-k{c[1]}-{c[2][0]}x{c[2][1]}-s{c[3]}"
                              for c in FCONV_CASES])
def test_fconv2d(shape, k, kernel, s, p, with_bias, sched, inputs, host, run_primfunc):
    x = inputs.floats(shape)
    w = inputs.normal((k, shape[1], *kernel))
    bias = inputs.normal(k) if with_bias else None
    expect = ref.fconv2d_ref(x, w, stride=s, padding=p, bias=bias)
    pf = S.make_fconv2d(shape, w.shape, stride=s, padding=p, with_bias=with_bias, target=host,
                        schedule=sched)
    args = [x, pk.block_conv_weight(w, S.fconv2d_block(host))] + ([bias] if with_bias else [])
    got = run_primfunc(pf, args, expect.shape, "float32")
    # float32 accumulation in another order than the float64 reference
    _close(got, expect, inputs, rtol=1e-4, atol=1e-4 * np.abs(expect).max())


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("pool", [((3, 3), (2, 2), (1, 1, 1, 1)), ((2, 3), (1, 2), (0, 1, 1, 0))],
                         ids=["stem_pool", "asym"])
def test_fconv2d_blocked_then_maxpool(pool, relu, sched, inputs, host, run_primfunc):
    """A ResNet stem: the conv writes NCHWc (whole channel blocks), the max-pool reads the blocks
    and writes NCHW; same values as the NCHW conv and pool (max is exact).  With ``relu`` the
    conv applies CCT's tokenizer Relu in its epilogue."""
    ob = S.fconv2d_block(host)
    x = inputs.floats((1, 3, 23, 21))
    w = inputs.normal((2 * ob, 3, 7, 7))
    bias = inputs.normal(2 * ob)
    conv = ref.fconv2d_ref(x, w, stride=2, padding=(3,) * 4, bias=bias)
    conv = np.maximum(conv, 0) if relu else conv
    pf = S.make_fconv2d(x.shape, w.shape, stride=2, padding=3, with_bias=True, out_layout="NCHWc",
                        relu=relu, target=host, schedule=sched)
    blocked_shape = (1, 2, *conv.shape[2:], ob)
    got = run_primfunc(pf, [x, pk.block_conv_weight(w, ob), bias], blocked_shape, "float32")
    as_nchw = got.transpose(0, 1, 4, 2, 3).reshape(conv.shape)
    _close(as_nchw, conv, inputs, rtol=1e-4, atol=1e-4 * np.abs(conv).max())
    k, st, p = pool
    pp = S.make_maxpool2d(blocked_shape, kernel=k, stride=st, padding=p, target=host,
                          schedule=sched)
    expect = ref.maxpool2d_ref(as_nchw, kernel=k, stride=st, padding=p)
    _eq(run_primfunc(pp, [got], expect.shape, "float32"), expect, inputs)


def test_fconv2d_blocked_output_needs_whole_blocks(host):
    ob = S.fconv2d_block(host)
    with pytest.raises(ValueError, match="fill"):
        S.make_fconv2d((1, 3, 8, 8), (ob + 1, 3, 3, 3), out_layout="NCHWc", target=host)
    with pytest.raises(ValueError, match="out_layout"):
        S.make_fconv2d((1, 3, 8, 8), (ob, 3, 3, 3), out_layout="NHWC", target=host)
    with pytest.raises(ValueError, match="NCHWc data"):
        S.make_maxpool2d((1, 3, 8), kernel=2, stride=2, target=host)
