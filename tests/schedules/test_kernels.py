"""Bit-exact kernel tests against the independent references, for every CPU schedule that runs
here (generic "cpu" fallback and "x86").  Integer accumulators: assert_array_equal.  Fused float
epilogue float32(acc)*scale+bias: rtol=1e-6, atol=1e-5 (LLVM may contract mul+add into an FMA,
which differs from numpy's two roundings by at most one ulp of the result)."""
import numpy as np
import pytest
import tvm
from conftest import HOST, run_primfunc

import schedules as S
from schedules import packing as pk
from schedules import reference as ref

SCHEDS = ["cpu", "x86"]
FLOAT_TOL = dict(rtol=1e-6, atol=1e-5)


# ---------------------------------------------------------------- bitpack
BITPACK_CASES = [  # (x_shape, t_shape)
    ((1, 1, 3, 3), ()),
    ((2, 3, 5, 7), (2, 3, 1, 1)),
    ((3, 63, 3, 5), (1, 63, 1, 1)),
    ((1, 64, 4, 4), (1, 1, 1, 1)),
    ((2, 65, 3, 9), (2, 65, 1, 1)),
    ((1, 130, 7, 7), (1, 130, 1, 1)),
    # 1x1 maps with several words and batch > 1 (ResNet layer4 at 32 px): once packed wrongly
    ((2, 512, 1, 1), (2, 512, 1, 1)),
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
                         ids=[f"x{'x'.join(map(str, a))}-t{'x'.join(map(str, b)) or 'scalar'}"
                              for a, b in BITPACK_CASES])
def test_bitpack(x_shape, t_shape, sched, rng):
    x = rng.standard_normal(x_shape).astype("float32")
    t = np.asarray(rng.standard_normal(t_shape) * 0.5, dtype="float32")
    tb = np.broadcast_to(t, x_shape)
    x[..., 0, 0] = tb[..., 0, 0]          # ties x == t (per sample/channel): bit 1
    x.flat[1] = np.nan                     # NaN: bit 0
    x.flat[-1] = -np.inf
    pf = S.make_bitpack(x_shape, t_shape, HOST, schedule=sched)
    N, C, H, W = x_shape
    got = run_primfunc(pf, [x, t], (N, H, W, pk.num_words(C)), "uint64")
    np.testing.assert_array_equal(got, ref.bitpack_ref(x, t))
    bits = pk.unpack_bits(got, C)
    assert bits[0, 0, 0].tolist() == list(x[0, :, 0, 0] >= tb[0, :, 0, 0])


@pytest.mark.parametrize("sched", SCHEDS)
def test_bitpack_zero_threshold_and_signed_zero(sched):
    # x exactly 0 (and -0.0) with t = 0 -> +1 (bit 1): x >= t, not torch.sign semantics.
    x = np.zeros((1, 3, 2, 2), "float32")
    x[0, 1] = -0.0
    x[0, 2, 0, 0] = -1e-30
    t = np.zeros((), "float32")
    got = run_primfunc(S.make_bitpack(x.shape, (), HOST, schedule=sched), [x, t], (1, 2, 2, 1), "uint64")
    assert got[0, 0, 0, 0] == 0b011 and got[0, 1, 1, 0] == 0b111


BITPACK_LAST_CASES = [((5, 64), ()), ((2, 7, 65), (2, 1, 65)), ((3, 4, 130), (1, 1, 130)),
                      ((2, 2, 3, 63), (1, 1, 1, 63))]


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("x_shape,t_shape", BITPACK_LAST_CASES,
                         ids=[f"x{'x'.join(map(str, a))}-t{'x'.join(map(str, b)) or 'scalar'}"
                              for a, b in BITPACK_LAST_CASES])
def test_bitpack_last(x_shape, t_shape, sched, rng):
    x = rng.standard_normal(x_shape).astype("float32")
    t = rng.standard_normal(t_shape).astype("float32")
    x[..., :3] = np.broadcast_to(t, x_shape)[..., :3]  # ties
    x.flat[2] = np.nan
    pf = S.make_bitpack_last(x_shape, t_shape, HOST, schedule=sched)
    got = run_primfunc(pf, [x, t], x_shape[:-1] + (pk.num_words(x_shape[-1]),), "uint64")
    np.testing.assert_array_equal(got, ref.bitpack_last_ref(x, t))


# ---------------------------------------------------------------- bconv2d
# (N, C, H, W, K, (KH, KW), stride, padding(t, l, b, r), dilation)
CONV_CASES = [
    (1, 1, 7, 7, 8, (3, 3), 1, (1, 1, 1, 1), 1),
    (3, 3, 9, 7, 16, (3, 3), 1, (1, 1, 1, 1), 1),
    (1, 63, 7, 9, 8, (1, 1), 1, (0, 0, 0, 0), 1),
    (2, 64, 9, 9, 12, (3, 3), 2, (1, 1, 1, 1), 1),
    (1, 65, 7, 7, 8, (5, 5), 1, (2, 2, 2, 2), 1),
    (1, 130, 9, 7, 16, (3, 3), 1, (2, 2, 2, 2), 2),
    (3, 65, 7, 9, 5, (3, 1), 2, (0, 1, 2, 0), 1),
    (1, 130, 9, 9, 8, (1, 3), 1, (1, 0, 0, 2), 2),
    (1, 3, 7, 7, 3, (5, 3), 2, (2, 1, 1, 2), 1),
    (1, 64, 7, 7, 8, (3, 3), 1, (0, 0, 0, 0), 1),
    # x86 pixel-vectorised path (one word per pixel, unit w stride, OW % 8 == 0) and the
    # border-branch epilogue: rows + cols, cols only, no interior row, padding never reached.
    (1, 64, 9, 16, 8, (3, 3), 1, (1, 1, 1, 1), 1),
    (2, 32, 5, 32, 12, (3, 3), 1, (1, 1, 1, 1), 1),
    (1, 40, 6, 16, 8, (1, 1), 1, (0, 0, 0, 0), 1),
    (1, 64, 8, 8, 8, (3, 3), 1, (0, 1, 0, 1), 1),
    (1, 5, 3, 8, 8, (5, 5), 1, (2, 2, 2, 2), 1),
    (1, 64, 9, 9, 8, (1, 1), 2, (0, 0, 1, 1), 1),
    (1, 128, 14, 14, 16, (3, 3), 2, (1, 1, 1, 1), 1),
]


def _conv_id(c):
    N, C, H, W, K, (kh, kw), s, p, d = c
    return f"n{N}c{C}_{H}x{W}_k{K}_{kh}x{kw}_s{s}_p{''.join(map(str, p))}_d{d}"


def _conv_args(x, w, s=1, p=0, d=1, pad_value="zero", layout="NCHW"):
    """Packed data, packed weights and (zero padding) the border table, as the frontend passes them."""
    args = [pk.pack_bits(x, axis=1), pk.pack_conv_weight(w)]
    if pk.needs_border_table(p, pad_value):
        args.append(pk.conv_border_table(w, x.shape[2:], stride=s, padding=p, dilation=d,
                                         out_layout=layout))
    return args


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("pad_value", ["zero", "one"])
@pytest.mark.parametrize("case", CONV_CASES, ids=[_conv_id(c) for c in CONV_CASES])
def test_bconv2d_int(case, pad_value, sched, rng):
    N, C, H, W, K, (KH, KW), s, p, d = case
    x = rng.choice([-1.0, 1.0], (N, C, H, W)).astype("float32")
    w = rng.choice([-1.0, 1.0], (K, C, KH, KW)).astype("float32")
    expect = ref.bconv2d_ref(x, w, stride=s, padding=p, dilation=d, pad_value=pad_value)
    pf = S.make_bconv2d(x.shape, w.shape, stride=s, padding=p, dilation=d, pad_value=pad_value,
                        target=HOST, schedule=sched)
    args = _conv_args(x, w, s, p, d, pad_value, "NCHW")
    assert len(args) + 1 == len(pf.params)
    got = run_primfunc(pf, args, expect.shape, "int32")
    np.testing.assert_array_equal(got, expect)


EPI_CASES = [CONV_CASES[1], CONV_CASES[5], CONV_CASES[6], CONV_CASES[10], CONV_CASES[12]]


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("with_scale,with_bias", [(True, True), (True, False), (False, True)],
                         ids=["scale_bias", "scale", "bias"])
@pytest.mark.parametrize("case", EPI_CASES, ids=[_conv_id(c) for c in EPI_CASES])
def test_bconv2d_fused_epilogue(case, with_scale, with_bias, layout, sched, rng):
    N, C, H, W, K, (KH, KW), s, p, d = case
    x = rng.choice([-1.0, 1.0], (N, C, H, W)).astype("float32")
    w = rng.choice([-1.0, 1.0], (K, C, KH, KW)).astype("float32")
    scale = rng.standard_normal(K).astype("float32") if with_scale else None
    if scale is not None:
        scale[0] = -abs(scale[0]) - 0.5   # negative scales
    bias = rng.standard_normal(K).astype("float32") if with_bias else None
    expect = ref.bconv2d_ref(x, w, stride=s, padding=p, dilation=d, pad_value="zero",
                             scale=scale, bias=bias, out_layout=layout)
    pf = S.make_bconv2d(x.shape, w.shape, stride=s, padding=p, dilation=d, pad_value="zero",
                        with_scale=with_scale, with_bias=with_bias, out_layout=layout,
                        target=HOST, schedule=sched)
    args = _conv_args(x, w, s, p, d, "zero", layout)
    args += [a for a in (scale, bias) if a is not None]
    got = run_primfunc(pf, args, expect.shape, "float32")
    np.testing.assert_allclose(got, expect, **FLOAT_TOL)


# ReActNet's block tail (residual, RPReLU = shift, prelu, shift) plus the other post-ops, on
# the three x86 code paths: pixel-vectorised, k-vectorised interior and border-branch epilogues.
POST_CASES = [CONV_CASES[10], CONV_CASES[1], CONV_CASES[5], CONV_CASES[16], CONV_CASES[2]]
POST_CHAINS = [("residual", "shift", "prelu", "shift"), ("residual",), ("mul", "relu", "shift"),
               ("prelu", "residual")]


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("post", POST_CHAINS, ids=["-".join(c) for c in POST_CHAINS])
@pytest.mark.parametrize("case", POST_CASES, ids=[_conv_id(c) for c in POST_CASES])
def test_bconv2d_post_ops(case, post, layout, sched, rng):
    N, C, H, W, K, (KH, KW), s, p, d = case
    x = rng.choice([-1.0, 1.0], (N, C, H, W)).astype("float32")
    w = rng.choice([-1.0, 1.0], (K, C, KH, KW)).astype("float32")
    scale = rng.standard_normal(K).astype("float32")
    bias = rng.standard_normal(K).astype("float32")
    out_shape = ref.bconv2d_ref(x, w, stride=s, padding=p, dilation=d, scale=scale,
                                out_layout=layout).shape
    params = []
    for kind in post:
        if kind == "residual":
            params.append(rng.standard_normal(out_shape).astype("float32") * 8)
        elif kind != "relu":
            params.append(rng.standard_normal(K).astype("float32"))
    it = iter(params)
    post_ref = [(kind, None if kind == "relu" else next(it)) for kind in post]
    expect = ref.bconv2d_ref(x, w, stride=s, padding=p, dilation=d, scale=scale, bias=bias,
                             out_layout=layout, post=post_ref)
    pf = S.make_bconv2d(x.shape, w.shape, stride=s, padding=p, dilation=d, with_scale=True,
                        with_bias=True, out_layout=layout, post=post, target=HOST, schedule=sched)
    args = _conv_args(x, w, s, p, d, "zero", layout)
    args += [scale, bias, *params]
    assert len(args) + 1 == len(pf.params)
    got = run_primfunc(pf, args, expect.shape, "float32")
    np.testing.assert_allclose(got, expect, **FLOAT_TOL)


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", POST_CASES[:3], ids=[_conv_id(c) for c in POST_CASES[:3]])
def test_bconv2d_tiled_residual(case, layout, sched, rng):
    """Two sibling convs under a channel Concat run as one conv of 2K channels whose shortcut
    (K channels) is added to both halves: output channel k reads residual channel k % K."""
    N, C, H, W, K, (KH, KW), s, p, d = case
    x = rng.choice([-1.0, 1.0], (N, C, H, W)).astype("float32")
    w = rng.choice([-1.0, 1.0], (K, C, KH, KW)).astype("float32")
    scale = rng.standard_normal(K).astype("float32")
    bias = rng.standard_normal(K).astype("float32")
    full = ref.bconv2d_ref(x, w, stride=s, padding=p, dilation=d, out_layout=layout).shape
    axis = 1 if layout == "NCHW" else 3
    res_shape = list(full)
    res_shape[axis] = K // 2
    res = (rng.standard_normal(res_shape) * 8).astype("float32")
    slope = rng.standard_normal(K).astype("float32")
    halves = [ref.bconv2d_ref(x, w[h * K // 2:(h + 1) * K // 2], stride=s, padding=p, dilation=d,
                              scale=scale[h * K // 2:(h + 1) * K // 2],
                              bias=bias[h * K // 2:(h + 1) * K // 2], out_layout=layout,
                              post=[("residual", res)]) for h in range(2)]
    expect = ref._post_ref(np.concatenate(halves, axis=axis), [("prelu", slope)], axis)
    pf = S.make_bconv2d(x.shape, w.shape, stride=s, padding=p, dilation=d, with_scale=True,
                        with_bias=True, out_layout=layout, post=("residual", "prelu"),
                        residual_channels=K // 2, target=HOST, schedule=sched)
    assert "_erpx2_" in str(pf.attrs["global_symbol"])
    args = _conv_args(x, w, s, p, d, "zero", layout)
    got = run_primfunc(pf, [*args, scale, bias, res, slope], expect.shape, "float32")
    np.testing.assert_allclose(got, expect, **FLOAT_TOL)


def test_bconv2d_residual_channels_must_divide():
    with pytest.raises(ValueError, match="must divide"):
        S.make_bconv2d((1, 64, 8, 8), (12, 64, 1, 1), with_scale=True, post=("residual",),
                       residual_channels=5, target=HOST)


PACK_CASES = [CONV_CASES[10], CONV_CASES[11], CONV_CASES[5], CONV_CASES[16], CONV_CASES[1],
              (1, 16, 4, 56, 130, (3, 3), 1, (1, 1, 1, 1), 1)]


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("case", PACK_CASES, ids=[_conv_id(c) for c in PACK_CASES])
def test_bconv2d_packed_output(case, sched, rng):
    """The conv also writes its output binarised and packed for the next binary conv: the words
    must equal bitpack_ref of the float output it wrote (ties included)."""

    N, C, H, W, K, (KH, KW), s, p, d = case
    x = rng.choice([-1.0, 1.0], (N, C, H, W)).astype("float32")
    w = rng.choice([-1.0, 1.0], (K, C, KH, KW)).astype("float32")
    scale = np.round(rng.standard_normal(K) * 4).astype("float32") / 4
    bias = np.round(rng.standard_normal(K) * 4).astype("float32") / 4
    expect = ref.bconv2d_ref(x, w, stride=s, padding=p, dilation=d, scale=scale, bias=bias,
                             post=[("shift", bias), ("prelu", np.full(K, 0.25, np.float32))])
    thr = rng.choice(expect.reshape(-1), K).astype("float32")  # thresholds hit output values
    pf = S.make_bconv2d(x.shape, w.shape, stride=s, padding=p, dilation=d, with_scale=True,
                        with_bias=True, post=("shift", "prelu"), pack_output=True, target=HOST,
                        schedule=sched)
    args = _conv_args(x, w, s, p, d, "zero", "NCHW")
    args += [scale, bias, bias, np.full(K, 0.25, np.float32), thr.reshape(1, K, 1, 1)]
    lib = tvm.compile(pf, target=tvm.target.Target(HOST)).jit()
    out = tvm.runtime.empty(expect.shape, "float32")
    words = tvm.runtime.empty((N, *expect.shape[2:], (K + 63) // 64), "uint64")
    lib[str(pf.attrs["global_symbol"])](*[tvm.runtime.tensor(a) for a in args], out, words)
    np.testing.assert_allclose(out.numpy(), expect, **FLOAT_TOL)
    np.testing.assert_array_equal(words.numpy(), ref.bitpack_ref(out.numpy(), thr.reshape(1, K, 1, 1)))


def test_bconv2d_post_ops_need_float_epilogue():
    with pytest.raises(ValueError, match="float epilogue"):
        S.make_bconv2d((1, 64, 8, 8), (8, 64, 1, 1), post=("relu",), target=HOST)
    with pytest.raises(ValueError, match="unknown post-op"):
        S.make_bconv2d((1, 64, 8, 8), (8, 64, 1, 1), with_scale=True, post=("gelu",), target=HOST)


@pytest.mark.parametrize("mcpu", ["haswell", "icelake-server"])
@pytest.mark.parametrize("case", [CONV_CASES[10], CONV_CASES[11], CONV_CASES[1]],
                         ids=[_conv_id(c) for c in (CONV_CASES[10], CONV_CASES[11], CONV_CASES[1])])
def test_bconv2d_x86_isas(case, mcpu, rng):
    """AVX2-only and AVX-512 (VPOPCNTDQ) builds of the x86 schedule, run when the CPU has them."""
    from bnncompile import targets
    flags = targets.cpu_flags()
    if mcpu == "icelake-server" and "avx512_vpopcntdq" not in flags:
        pytest.skip("no AVX512-VPOPCNTDQ here")
    if "avx2" not in flags:
        pytest.skip("no AVX2 here")
    N, C, H, W, K, (KH, KW), s, p, d = case
    x = rng.choice([-1.0, 1.0], (N, C, H, W)).astype("float32")
    w = rng.choice([-1.0, 1.0], (K, C, KH, KW)).astype("float32")
    scale = rng.standard_normal(K).astype("float32")
    bias = rng.standard_normal(K).astype("float32")
    tgt = {"kind": "llvm", "mcpu": mcpu}
    expect = ref.bconv2d_ref(x, w, stride=s, padding=p, dilation=d, scale=scale, bias=bias)
    pf = S.make_bconv2d(x.shape, w.shape, stride=s, padding=p, dilation=d, with_scale=True,
                        with_bias=True, target=tgt)
    args = [*_conv_args(x, w, s, p, d), scale, bias]
    got = run_primfunc(pf, args, expect.shape, "float32", target=tgt)
    np.testing.assert_allclose(got, expect, **FLOAT_TOL)


@pytest.mark.parametrize("sched", SCHEDS)
def test_bitpack_then_bconv2d_end_to_end(sched, rng):
    """float x -> TVM bitpack (per-sample per-channel thresholds, ties) -> TVM bconv2d."""
    N, C, H, W, K = 3, 65, 7, 7, 8
    x = rng.standard_normal((N, C, H, W)).astype("float32")
    t = rng.standard_normal((N, C, 1, 1)).astype("float32")
    x[:, :, 2, 3] = t[:, :, 0, 0]
    x[0, 0, 0, 0] = 0.0
    w = rng.choice([-1.0, 1.0], (K, C, 3, 3)).astype("float32")
    packed = run_primfunc(S.make_bitpack(x.shape, t.shape, HOST, schedule=sched), [x, t],
                          (N, H, W, 2), "uint64")
    pf = S.make_bconv2d(x.shape, w.shape, padding=1, target=HOST, schedule=sched)
    x_pm1 = np.where(x >= t, 1.0, -1.0).astype("float32")
    got = run_primfunc(pf, [packed, *_conv_args(x_pm1, w, p=1)[1:]], (N, K, H, W), "int32")
    np.testing.assert_array_equal(got, ref.bconv2d_ref(x_pm1, w, padding=1))


# ---------------------------------------------------------------- dense / batch matmul
DENSE_CASES = [((5, 64), 8), ((3, 130), 12), ((2, 7, 65), 16), ((1, 1), 3), ((2, 3, 4, 63), 8)]


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("epi", ["int", "scale_bias"])
@pytest.mark.parametrize("a_shape,n_out", DENSE_CASES,
                         ids=[f"a{'x'.join(map(str, a))}-n{n}" for a, n in DENSE_CASES])
def test_bdense(a_shape, n_out, epi, sched, rng):
    a = rng.choice([-1.0, 1.0], a_shape)
    w = rng.choice([-1.0, 1.0], (n_out, a_shape[-1]))
    fused = epi == "scale_bias"
    scale = rng.standard_normal(n_out).astype("float32") if fused else None
    bias = rng.standard_normal(n_out).astype("float32") if fused else None
    pf = S.make_bdense(a_shape, w.shape, with_scale=fused, with_bias=fused, target=HOST, schedule=sched)
    args = [pk.pack_bits(a), pk.pack_dense_weight(w)] + ([scale, bias] if fused else [])
    expect = ref.bdense_ref(a, w, scale, bias)
    got = run_primfunc(pf, args, expect.shape, "float32" if fused else "int32")
    if fused:
        np.testing.assert_allclose(got, expect, **FLOAT_TOL)
    else:
        np.testing.assert_array_equal(got, expect)


BMM_CASES = [((2, 6, 64), (2, 16, 64), None), ((3, 5, 65), (3, 9, 65), None),
             ((2, 3, 7, 130), (2, 3, 8, 130), 0.125), ((1, 1, 3), (1, 4, 3), None)]


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("a_shape,b_shape,alpha", BMM_CASES,
                         ids=[f"a{'x'.join(map(str, a))}-b{'x'.join(map(str, b))}-alpha{al}"
                              for a, b, al in BMM_CASES])
def test_bbatch_matmul(a_shape, b_shape, alpha, sched, rng):
    a = rng.choice([-1.0, 1.0], a_shape)
    b = rng.choice([-1.0, 1.0], b_shape)
    pf = S.make_bbatch_matmul(a_shape, b_shape, alpha=alpha, target=HOST, schedule=sched)
    expect = ref.bbatch_matmul_ref(a, b, alpha)
    got = run_primfunc(pf, [pk.pack_bits(a), pk.pack_bits(b)], expect.shape,
                       "int32" if alpha is None else "float32")
    if alpha is None:
        np.testing.assert_array_equal(got, expect)
    else:
        np.testing.assert_allclose(got, expect, **FLOAT_TOL)


# ---------------------------------------------------------------- maxpool2d
# ResNet's stem pool (3x3 s2 p1), odd sizes, asymmetric padding, a window wider than the stride.
POOL_CASES = [((1, 8, 112, 112), (3, 3), (2, 2), (1, 1, 1, 1)),
              ((2, 3, 9, 7), (3, 3), (2, 2), (1, 1, 1, 1)),
              ((1, 4, 8, 10), (2, 2), (2, 2), (0, 0, 0, 0)),
              ((1, 5, 11, 13), (3, 2), (1, 2), (1, 0, 0, 1)),
              ((1, 2, 6, 6), (5, 5), (1, 1), (2, 2, 2, 2))]


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("shape,k,s,p", POOL_CASES,
                         ids=[f"{'x'.join(map(str, c[0]))}-k{c[1][0]}{c[1][1]}-s{c[2][0]}{c[2][1]}"
                              for c in POOL_CASES])
def test_maxpool2d(shape, k, s, p, sched, rng):
    x = rng.standard_normal(shape).astype("float32")
    x[0, 0, 0, :3] = -1e30  # all-negative border windows: padding must not win
    expect = ref.maxpool2d_ref(x, kernel=k, stride=s, padding=p)
    pf = S.make_maxpool2d(shape, kernel=k, stride=s, padding=p, target=HOST, schedule=sched)
    got = run_primfunc(pf, [x], expect.shape, "float32")
    np.testing.assert_array_equal(got, expect)  # max is exact


# ---------------------------------------------------------------- avgpool2d (stride = kernel)
@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("shape,k", [((1, 8, 56, 56), (2, 2)), ((2, 3, 7, 9), (2, 2)), ((1, 4, 9, 12), (3, 2))],
                         ids=["56", "odd", "k3x2"])
def test_avgpool2d(shape, k, sched, rng):
    x = rng.standard_normal(shape).astype("float32")
    expect = ref.avgpool2d_ref(x, k)
    pf = S.make_avgpool2d(shape, kernel=k, target=HOST, schedule=sched)
    got = run_primfunc(pf, [x], expect.shape, "float32")
    np.testing.assert_array_equal(got, expect)  # same additions in the same order


# ---------------------------------------------------------------- prelu_stats (dynamic PReLU + pools)
# rows of 14x14 / 7x7 / 56x56 maps, an L with no divisor up to 16 but 1 (13), per-channel or
# per-sample shifts and slopes, INSTA's E[y] and E[y^3] together
PRELU_CASES = [((1, 8, 1, 196), (1, 8, 1, 1), (1, 8, 1, 1), (1,)),
               ((2, 5, 1, 49), (2, 5, 1, 1), (1, 5, 1, 1), (1, 3)),
               ((1, 3, 1, 3136), (1, 3, 1, 1), (3, 1, 1), (3,)),
               ((2, 4, 1, 13), (2, 4, 1, 1), (2, 4, 1, 1), (1, 2, 3))]


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("shape,shift_shape,slope_shape,powers", PRELU_CASES,
                         ids=[f"{'x'.join(map(str, c[0]))}-p{''.join(map(str, c[3]))}" for c in PRELU_CASES])
def test_prelu_stats(shape, shift_shape, slope_shape, powers, sched, rng):
    """y is bit-identical to the graph's op order; the means match float64 sums."""
    x = rng.standard_normal(shape).astype("float32")
    sin, sout = (rng.standard_normal(shift_shape).astype("float32") for _ in range(2))
    x[..., :2] = sin  # d == 0 exactly: ties of the d >= 0 test
    slope = (rng.random(slope_shape) - 0.3).astype("float32")  # some negative slopes too
    ey, es = ref.prelu_stats_ref(x, sin, slope, sout, powers)
    pf = S.make_prelu_stats(shape, shift_shape, slope_shape, shift_shape, powers, target=HOST, schedule=sched)
    sym = str(pf.attrs["global_symbol"])
    lib = tvm.compile(pf, target=tvm.target.Target(HOST)).jit()
    y = tvm.runtime.empty(shape, "float32")
    means = [tvm.runtime.empty(shape[:2], "float32") for _ in powers]
    lib[sym](*[tvm.runtime.tensor(a) for a in (x, sin, slope, sout)], y, *means)
    np.testing.assert_array_equal(y.numpy(), ey)
    np.testing.assert_allclose(np.stack([m.numpy() for m in means], -1), es[:, :, 0], rtol=1e-5, atol=1e-5)


def test_prelu_stats_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[N, C, 1, L\]"):
        S.make_prelu_stats((1, 8, 16), (1, 8, 1), (1, 8, 1), (1, 8, 1), (1,), target=HOST)
    with pytest.raises(ValueError, match=r"\[N, C, 1, L\]"):
        S.make_prelu_stats((1, 8, 4, 4), (1, 8, 1, 1), (1, 8, 1, 1), (1, 8, 1, 1), (1,), target=HOST)
    with pytest.raises(ValueError, match="power 4"):
        S.make_prelu_stats((1, 8, 1, 16), (1, 8, 1, 1), (8, 1, 1), (1, 8, 1, 1), (4,), target=HOST)
    with pytest.raises(ValueError, match="no statistics"):
        S.make_prelu_stats((1, 8, 1, 16), (1, 8, 1, 1), (8, 1, 1), (1, 8, 1, 1), (), target=HOST)


# ---------------------------------------------------------------- fconv2d (float stem / shortcuts)
FCONV_CASES = [((1, 3, 23, 21), 16, (7, 7), 2, (3, 3, 3, 3)),   # ResNet stem geometry
               ((1, 3, 17, 16), 32, (3, 3), 2, (1, 1, 1, 1)),   # ReActNet-A stem geometry
               ((2, 24, 7, 9), 40, (1, 1), 1, (0, 0, 0, 0)),    # shortcut 1x1, no pad (inlined)
               ((1, 5, 8, 8), 3, (3, 2), 1, (0, 1, 2, 0)),
               ((1, 4, 9, 10), 24, (3, 3), 1, (1, 1, 1, 1))]    # 2 blocks per tile, K padded


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("shape,k,kernel,s,p", FCONV_CASES,
                         ids=[f"{'x'.join(map(str, c[0]))}-k{c[1]}-{c[2][0]}x{c[2][1]}-s{c[3]}" for c in FCONV_CASES])
def test_fconv2d(shape, k, kernel, s, p, with_bias, sched, rng):
    x = rng.standard_normal(shape).astype("float32")
    w = rng.standard_normal((k, shape[1], *kernel)).astype("float32")
    bias = rng.standard_normal(k).astype("float32") if with_bias else None
    expect = ref.fconv2d_ref(x, w, stride=s, padding=p, bias=bias)
    pf = S.make_fconv2d(shape, w.shape, stride=s, padding=p, with_bias=with_bias, target=HOST,
                        schedule=sched)
    args = [x, pk.block_conv_weight(w, S.fconv2d_block(HOST))] + ([bias] if with_bias else [])
    got = run_primfunc(pf, args, expect.shape, "float32")
    # float32 accumulation in another order than the float64 reference
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4 * np.abs(expect).max())


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("pool", [((3, 3), (2, 2), (1, 1, 1, 1)), ((2, 3), (1, 2), (0, 1, 1, 0))],
                         ids=["stem_pool", "asym"])
def test_fconv2d_blocked_then_maxpool(pool, sched, rng):
    """A ResNet stem: the conv writes NCHWc (whole channel blocks), the max-pool reads the blocks
    and writes NCHW; same values as the NCHW conv and pool (max is exact)."""
    ob = S.fconv2d_block(HOST)
    x = rng.standard_normal((1, 3, 23, 21)).astype("float32")
    w = rng.standard_normal((2 * ob, 3, 7, 7)).astype("float32")
    bias = rng.standard_normal(2 * ob).astype("float32")
    conv = ref.fconv2d_ref(x, w, stride=2, padding=(3,) * 4, bias=bias)
    pf = S.make_fconv2d(x.shape, w.shape, stride=2, padding=3, with_bias=True, out_layout="NCHWc",
                        target=HOST, schedule=sched)
    blocked_shape = (1, 2, *conv.shape[2:], ob)
    got = run_primfunc(pf, [x, pk.block_conv_weight(w, ob), bias], blocked_shape, "float32")
    as_nchw = got.transpose(0, 1, 4, 2, 3).reshape(conv.shape)
    np.testing.assert_allclose(as_nchw, conv, rtol=1e-4, atol=1e-4 * np.abs(conv).max())
    k, st, p = pool
    pp = S.make_maxpool2d(blocked_shape, kernel=k, stride=st, padding=p, target=HOST, schedule=sched)
    expect = ref.maxpool2d_ref(as_nchw, kernel=k, stride=st, padding=p)
    np.testing.assert_array_equal(run_primfunc(pp, [got], expect.shape, "float32"), expect)


def test_fconv2d_blocked_output_needs_whole_blocks():
    ob = S.fconv2d_block(HOST)
    with pytest.raises(ValueError, match="fill"):
        S.make_fconv2d((1, 3, 8, 8), (ob + 1, 3, 3, 3), out_layout="NCHWc", target=HOST)
    with pytest.raises(ValueError, match="out_layout"):
        S.make_fconv2d((1, 3, 8, 8), (ob, 3, 3, 3), out_layout="NHWC", target=HOST)
    with pytest.raises(ValueError, match="NCHWc data"):
        S.make_maxpool2d((1, 3, 8), kernel=2, stride=2, target=HOST)
