"""The core of the bit-exact kernel sweep, executed on aarch64 (qemu-user, over TVM RPC).

Kernels are built for the registry's aarch64-neon target (so ``arm_cpu`` schedules), cross-linked
with aarch64-linux-gnu-gcc, uploaded to the RPC server under qemu and run there; results are
compared with ``bnncompile.schedules.reference`` computed on the x86 host.  Each case runs on
several seeds and on adversarial inputs (all +1, all -1, alternating, single flipped bits).
Integer outputs: exact.  Fused float epilogues ``float32(acc)*scale+bias...``: rtol=1e-6,
atol=1e-5 as in tests/schedules (LLVM may contract a mul+add into one FMA: one ulp).
QEMU_CPU=cortex-a53 (ARMv8.0-A + NEON): code beyond what aarch64-neon promises would SIGILL.
"""

from __future__ import annotations

import numpy as np
import pytest
from bnncompile.schedules import packing as pk
from bnncompile.schedules import reference as ref
from testkit import kernel_cases as kc

from bnncompile import schedules as S

from .a64 import TARGET

FLOAT_TOL = dict(rtol=1e-6, atol=1e-5)
SEEDS = (0, 1, 2)


# ------------------------------------------------------------------------------ inputs
def _checker(shape) -> np.ndarray:
    """+1/-1 alternating along every axis (a checkerboard over all indices)."""
    return np.where(np.indices(shape).sum(axis=0) % 2 == 0, 1.0, -1.0).astype("float32")


def _flip(shape, axis: int) -> np.ndarray:
    """All +1 except single -1 bits at the first, last-of-first-word (63) and last positions of
    ``axis`` (the tail word) at the middle of the other axes."""
    a = np.ones(shape, "float32")
    mid = [s // 2 for s in shape]
    n = shape[axis]
    for pos in sorted({0, min(63, n - 1), n - 1}):
        idx = list(mid)
        idx[axis] = pos
        a[tuple(idx)] = -1.0
    return a


def pm1_pairs(a_shape, b_shape, a_axis: int, b_axis: int):
    """(name, a, b) +-1 operand pairs: seeds, then adversarial patterns; ``*_axis`` = the packed
    (reduction) axis of each operand."""
    for seed in SEEDS:
        r = np.random.default_rng(seed)
        yield (f"seed{seed}", r.choice([-1.0, 1.0], a_shape).astype("float32"),
               r.choice([-1.0, 1.0], b_shape).astype("float32"))
    r = np.random.default_rng(99)
    ones_a, ones_b = np.ones(a_shape, "float32"), np.ones(b_shape, "float32")
    yield "all+1", ones_a, ones_b
    yield "all-1", -ones_a, -ones_b
    yield "a-1_b+1", -ones_a, ones_b
    yield "alternating", _checker(a_shape), _checker(b_shape)
    yield "alternating_vs_ones", _checker(a_shape), ones_b
    yield "one_flip_a", _flip(a_shape, a_axis), ones_b
    yield "one_flip_b", r.choice([-1.0, 1.0], a_shape).astype("float32"), _flip(b_shape, b_axis)


def float_inputs(x_shape, t_shape, axis: int):
    """(name, x, t) for the bit-packing kernels (``axis`` = the packed one): seeds with
    ties/NaN/-inf, and adversarial x relative to the threshold (all >=, all <, all ties,
    alternating, single flips)."""
    for seed in SEEDS:
        r = np.random.default_rng(seed)
        x = r.standard_normal(x_shape).astype("float32")
        t = np.asarray(r.standard_normal(t_shape) * 0.5, dtype="float32")
        tb = np.broadcast_to(t, x_shape)
        x.reshape(-1)[::7] = tb.reshape(-1)[::7]  # ties x == t: bit 1
        x.flat[1] = np.nan  # NaN: bit 0
        x.flat[-1] = -np.inf
        yield f"seed{seed}", x, t
    r = np.random.default_rng(7)
    t = np.asarray(r.standard_normal(t_shape) * 0.5, dtype="float32")
    tb = np.broadcast_to(t, x_shape).astype("float32")
    yield "all_above", tb + 1.0, t
    yield "all_below", tb - 1.0, t
    yield "all_ties", tb.copy(), t
    yield "alternating", tb + _checker(x_shape), t
    yield "one_flip", tb + _flip(x_shape, axis), t


def check_all(cases, run, expect, *, exact=True):
    """Run every named input case; report all the ones that differ, not just the first."""
    bad = []
    for name, *inputs in cases:
        got, want = run(*inputs), expect(*inputs)
        try:
            if exact:
                np.testing.assert_array_equal(got, want)
            else:
                np.testing.assert_allclose(got, want, **FLOAT_TOL)
        except AssertionError as exc:
            bad.append(f"[{name}] " + "\n".join(str(exc).strip().splitlines()[:6]))
    assert not bad, f"{len(bad)} input case(s) differ on aarch64:\n" + "\n".join(bad)


def _arm(pf):
    sym = str(pf.attrs["global_symbol"])
    assert sym.endswith("_arm_cpu"), f"registry did not pick the arm_cpu schedule: {sym}"
    return pf


# ------------------------------------------------------------------------------ bitpack
BITPACK_CASES = [
    *kc.BITPACK_CORE,
    ((2, 70, 1, 32), (2, 70, 1, 1)),
    ((1, 130, 1, 196), (1, 130, 1, 1)),
    ((1, 65, 1, 81), (1, 65, 1, 1)),
]


def _ids(cases):
    return [f"x{'x'.join(map(str, a))}-t{'x'.join(map(str, b)) or 'scalar'}" for a, b in cases]


@pytest.mark.parametrize("x_shape,t_shape", BITPACK_CASES, ids=_ids(BITPACK_CASES))
def test_bitpack(x_shape, t_shape, a64_kernels):
    pf = _arm(S.make_bitpack(x_shape, t_shape, TARGET))
    N, C, H, W = x_shape
    out_shape = (N, H, W, pk.num_words(C))
    check_all(float_inputs(x_shape, t_shape, 1),
              lambda x, t: a64_kernels.run(pf, [x, t], out_shape, "uint64"), ref.bitpack_ref)


BITPACK_LAST_CASES = kc.BITPACK_LAST_CASES


@pytest.mark.parametrize("x_shape,t_shape", BITPACK_LAST_CASES, ids=_ids(BITPACK_LAST_CASES))
def test_bitpack_last(x_shape, t_shape, a64_kernels):
    pf = _arm(S.make_bitpack_last(x_shape, t_shape, TARGET))
    out_shape = (*x_shape[:-1], pk.num_words(x_shape[-1]))
    check_all(float_inputs(x_shape, t_shape, len(x_shape) - 1),
              lambda x, t: a64_kernels.run(pf, [x, t], out_shape, "uint64"), ref.bitpack_last_ref)


# ------------------------------------------------------------------------------ bconv2d
CONV_CASES = [
    *kc.CONV_CORE,
    (1, 128, 14, 14, 16, (3, 3), 2, (1, 1, 1, 1), 1),
]


def _conv_id(c):
    N, C, H, W, K, (kh, kw), s, p, d = c
    return f"n{N}c{C}_{H}x{W}_k{K}_{kh}x{kw}_s{s}_p{''.join(map(str, p))}_d{d}"


def _conv_args(pf, x, w, s, p, d, pad_value="zero", layout="NCHW"):
    """Packed data, packed weights and (zero padding) the border table, as the frontend
    passes them."""
    args = [pk.pack_bits(x, axis=1), pk.pack_conv_weight(w, block=S.weight_block_of(pf))]
    if pk.needs_border_table(p, pad_value):
        args.append(pk.conv_border_table(w, x.shape[2:], stride=s, padding=p, dilation=d,
                                         out_layout=layout))
    return args


@pytest.mark.parametrize("pad_value", ["zero", "one"])
@pytest.mark.parametrize("case", CONV_CASES, ids=[_conv_id(c) for c in CONV_CASES])
def test_bconv2d_int(case, pad_value, a64_kernels):
    N, C, H, W, K, (KH, KW), s, p, d = case
    pf = _arm(S.make_bconv2d((N, C, H, W), (K, C, KH, KW), stride=s, padding=p, dilation=d,
                             pad_value=pad_value, target=TARGET))

    def expect(x, w):
        return ref.bconv2d_ref(x, w, stride=s, padding=p, dilation=d, pad_value=pad_value)

    out_shape = expect(np.ones((N, C, H, W), "float32"), np.ones((K, C, KH, KW), "float32")).shape

    def run(x, w):
        args = _conv_args(pf, x, w, s, p, d, pad_value)
        assert len(args) + 1 == len(pf.params)
        return a64_kernels.run(pf, args, out_shape, "int32")

    check_all(pm1_pairs((N, C, H, W), (K, C, KH, KW), 1, 1), run, expect)


EPI_CASES = [CONV_CASES[1], CONV_CASES[5], CONV_CASES[6], CONV_CASES[10], CONV_CASES[12]]
#: (with_scale, with_bias, post-op chain): plain epilogues, then ReActNet's block tail
#: (residual, RPReLU = shift, prelu, shift) and the other post-ops
EPILOGUES = [
    (True, True, ()),
    (True, False, ()),
    (False, True, ()),
    (True, True, ("residual", "shift", "prelu", "shift")),
    (True, True, ("mul", "relu", "shift")),
    (True, True, ("prelu", "residual")),
]


def _epi_id(e):
    s, b, post = e
    return ("scale" if s else "") + ("_bias" if b else "") + ("-" + "-".join(post) if post else "")


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("epi", EPILOGUES, ids=[_epi_id(e) for e in EPILOGUES])
@pytest.mark.parametrize("case", EPI_CASES, ids=[_conv_id(c) for c in EPI_CASES])
def test_bconv2d_fused_epilogue(case, epi, layout, a64_kernels, rng):
    N, C, H, W, K, (KH, KW), s, p, d = case
    with_scale, with_bias, post = epi
    scale = rng.standard_normal(K).astype("float32") if with_scale else None
    if scale is not None:
        scale[0] = -abs(scale[0]) - 0.5  # a negative scale
    bias = rng.standard_normal(K).astype("float32") if with_bias else None
    out_shape = ref.bconv2d_ref(np.ones((N, C, H, W), "float32"),
                                np.ones((K, C, KH, KW), "float32"), stride=s, padding=p,
                                dilation=d, out_layout=layout).shape
    params = [(rng.standard_normal(out_shape) * 8).astype("float32") if kind == "residual"
              else rng.standard_normal(K).astype("float32") for kind in post if kind != "relu"]
    it = iter(params)
    post_ref = [(kind, None if kind == "relu" else next(it)) for kind in post]
    pf = _arm(S.make_bconv2d((N, C, H, W), (K, C, KH, KW), stride=s, padding=p, dilation=d,
                             with_scale=with_scale, with_bias=with_bias, out_layout=layout,
                             post=post, target=TARGET))

    def expect(x, w):
        return ref.bconv2d_ref(x, w, stride=s, padding=p, dilation=d, scale=scale, bias=bias,
                               out_layout=layout, post=post_ref)

    def run(x, w):
        args = _conv_args(pf, x, w, s, p, d, "zero", layout)
        args += [a for a in (scale, bias) if a is not None] + params
        assert len(args) + 1 == len(pf.params)
        return a64_kernels.run(pf, args, out_shape, "float32")

    pairs = [c for c in pm1_pairs((N, C, H, W), (K, C, KH, KW), 1, 1)
             if c[0] in ("seed0", "seed1", "all+1", "alternating", "one_flip_a")]
    check_all(pairs, run, expect, exact=False)


PACK_CASES = [CONV_CASES[10], CONV_CASES[5], CONV_CASES[1]]


@pytest.mark.parametrize("case", PACK_CASES, ids=[_conv_id(c) for c in PACK_CASES])
def test_bconv2d_packed_output(case, a64_kernels, rng):
    """The conv also writes its output binarised + packed for the next binary conv (ties incl.)."""
    N, C, H, W, K, (KH, KW), s, p, d = case
    x = rng.choice([-1.0, 1.0], (N, C, H, W)).astype("float32")
    w = rng.choice([-1.0, 1.0], (K, C, KH, KW)).astype("float32")
    scale = np.round(rng.standard_normal(K) * 4).astype("float32") / 4
    bias = np.round(rng.standard_normal(K) * 4).astype("float32") / 4
    slope = np.full(K, 0.25, np.float32)
    expect = ref.bconv2d_ref(x, w, stride=s, padding=p, dilation=d, scale=scale, bias=bias,
                             post=[("shift", bias), ("prelu", slope)])
    thr = rng.choice(expect.reshape(-1), K).astype("float32").reshape(1, K, 1, 1)  # ties
    pf = _arm(S.make_bconv2d(x.shape, w.shape, stride=s, padding=p, dilation=d, with_scale=True,
                             with_bias=True, post=("shift", "prelu"), pack_output=True,
                             target=TARGET))
    args = [*_conv_args(pf, x, w, s, p, d), scale, bias, bias, slope, thr]
    out, words = a64_kernels.run(pf, args, [expect.shape, (N, *expect.shape[2:], pk.num_words(K))],
                                 ["float32", "uint64"])
    np.testing.assert_allclose(out, expect, **FLOAT_TOL)
    np.testing.assert_array_equal(words, ref.bitpack_ref(out, thr))


# ------------------------------------------------------------------------------ dense
# ((..., K_in), N_out); M = 1 with odd N_out and K around 64 (63 / 64 / 65 / 127 / 130)
DENSE_CASES = [
    *kc.DENSE_CORE,
    ((1, 64), 7), ((1, 65), 9), ((1, 63), 5), ((1, 127), 1), ((1, 130), 11),
    ((5, 65), 9), ((4, 64), 3),
]


@pytest.mark.parametrize("epi", ["int", "scale_bias", "cut"])
@pytest.mark.parametrize("a_shape,n_out", DENSE_CASES,
                         ids=[f"a{'x'.join(map(str, a))}-n{n}" for a, n in DENSE_CASES])
def test_bdense(a_shape, n_out, epi, a64_kernels, rng):
    fused = epi == "scale_bias"
    scale = rng.standard_normal(n_out).astype("float32") if fused else None
    bias = rng.standard_normal(n_out).astype("float32") if fused else None
    cut = kc.cut_bounds(rng, n_out, a_shape[-1]) if epi == "cut" else ()
    w_shape = (n_out, a_shape[-1])
    pf = _arm(S.make_bdense(a_shape, w_shape, with_scale=fused, with_bias=fused, with_cut=bool(cut),
                            target=TARGET))
    out_shape = (*a_shape[:-1], n_out)

    def run(a, w):
        args = ([pk.pack_bits(a), pk.pack_dense_weight(w, S.dense_weight_bits_of(pf))]
                + ([scale, bias] if fused else []) + list(cut))
        return a64_kernels.run(pf, args, out_shape, "int32" if epi == "int" else "float32")

    expect = ((lambda a, w: ref.bdense_margin_ref(a, w, *cut)) if cut
              else (lambda a, w: ref.bdense_ref(a, w, scale, bias)))
    check_all(pm1_pairs(a_shape, w_shape, len(a_shape) - 1, 1), run, expect, exact=not fused)


# ------------------------------------------------------------------------------ batch matmul
BMM_CASES = [*kc.BMM_CORE,
             ((1, 1, 64), (1, 9, 64), None), ((2, 4, 63), (2, 5, 63), None)]


@pytest.mark.parametrize("a_shape,b_shape,alpha", BMM_CASES,
                         ids=[f"a{'x'.join(map(str, a))}-b{'x'.join(map(str, b))}-alpha{al}"
                              for a, b, al in BMM_CASES])
def test_bbatch_matmul(a_shape, b_shape, alpha, a64_kernels):
    pf = _arm(S.make_bbatch_matmul(a_shape, b_shape, alpha=alpha, target=TARGET))
    out_shape = (*a_shape[:-1], b_shape[-2])

    def run(a, b):
        return a64_kernels.run(pf, [pk.pack_bits(a), pk.pack_bits(b)], out_shape,
                               "int32" if alpha is None else "float32")

    check_all(pm1_pairs(a_shape, b_shape, len(a_shape) - 1, len(b_shape) - 1), run,
              lambda a, b: ref.bbatch_matmul_ref(a, b, alpha), exact=alpha is None)


# ------------------------------------------------------------------------------ token threshold
@pytest.mark.parametrize("view", [False, True], ids=["plain", "heads_merged"])
def test_token_threshold(view, a64_kernels, rng):
    """DySign's pool + MLP over tokens (float: the float64 reference to float rounding), read
    in place through attention's merged heads on the generic schedule NEON gets."""
    heads, tokens, d, hidden = 4, 9, 16, 5
    src_shape = (heads, tokens, d) if view else (1, tokens, heads * d)
    steps = [("permute", (1, 0, 2)), ("reshape", (1, tokens, heads * d))]
    x = rng.standard_normal(src_shape).astype("float32")
    xv = x.transpose(1, 0, 2).reshape(1, tokens, heads * d) if view else x
    f32 = lambda *shape: rng.standard_normal(shape).astype("float32")  # noqa: E731
    w1, b1, w2, b2 = f32(hidden, heads * d), f32(hidden), f32(heads * d, hidden), f32(heads * d)
    pf = _arm(S.make_token_threshold(xv.shape, hidden, view=(src_shape, steps) if view else None, target=TARGET))
    got = a64_kernels.run(pf, [x, np.ascontiguousarray(w1.T), b1, np.ascontiguousarray(w2.T), b2],
                          (1, heads * d), "float32")
    np.testing.assert_allclose(got, ref.token_threshold_ref(xv, w1, b1, w2, b2), rtol=1e-5, atol=1e-5)


def test_token_threshold_with_gelu(a64_kernels, rng):
    """DyBinaryCCT's fc2 site: the kernel writes the GELU (TVM's erf polynomial) and pools it."""
    shape, hidden = (1, 9, 48), 3
    x = (rng.standard_normal(shape) * 2).astype("float32")
    f32 = lambda *s: rng.standard_normal(s).astype("float32")  # noqa: E731
    w1, b1, w2, b2 = f32(hidden, 48), f32(hidden), f32(48, hidden), f32(48)
    pf = _arm(S.make_token_threshold(shape, hidden, gelu=(np.sqrt(2.0), 1.0, 0.5), target=TARGET))
    thr, y = a64_kernels.run(pf, [x, np.ascontiguousarray(w1.T), b1, np.ascontiguousarray(w2.T), b2],
                             [(1, 48), shape], ["float32", "float32"])
    gelu = ref.gelu_ref(x)
    np.testing.assert_allclose(y, gelu, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(thr, ref.token_threshold_ref(gelu, w1, b1, w2, b2), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ end to end
def test_bitpack_then_bconv2d_end_to_end(a64_kernels, rng):
    """float x -> aarch64 bitpack (per-sample per-channel thresholds, ties) -> aarch64 bconv2d."""
    N, C, H, W, K = 3, 65, 7, 7, 8
    x = rng.standard_normal((N, C, H, W)).astype("float32")
    t = rng.standard_normal((N, C, 1, 1)).astype("float32")
    x[:, :, 2, 3] = t[:, :, 0, 0]
    x[0, 0, 0, 0] = 0.0
    w = rng.choice([-1.0, 1.0], (K, C, 3, 3)).astype("float32")
    packed = a64_kernels.run(_arm(S.make_bitpack(x.shape, t.shape, TARGET)), [x, t],
                             (N, H, W, 2), "uint64")
    pf = _arm(S.make_bconv2d(x.shape, w.shape, padding=1, target=TARGET))
    x_pm1 = np.where(x >= t, 1.0, -1.0).astype("float32")
    got = a64_kernels.run(pf, [packed, *_conv_args(pf, x_pm1, w, 1, 1, 1)[1:]], (N, K, H, W), "int32")
    np.testing.assert_array_equal(got, ref.bconv2d_ref(x_pm1, w, padding=1))



# ------------------------------------------------------------------------------ quantized float conv
@pytest.mark.parametrize("precision", ["int16", "int8"])
def test_quantized_conv_end_to_end(precision, a64_kernels, rng):
    """``--conv-precision``: quantize_pairs (odd C, padding, batch 2) then the int32 conv, on
    aarch64 (the generic schedules: no NEON intrinsic yet): pairs, amax and sums exact."""
    from bnncompile.schedules import quantize as Q

    x = (rng.standard_normal((2, 5, 9, 8)) * 3).astype("float32")
    qw = Q.quantize_conv_weight(rng.standard_normal((12, 5, 3, 3)).astype("float32"), precision)
    pad = (1, 1, 1, 1)
    expect_q, expect_amax = ref.quantize_pairs_ref(x, qw.qa, pad)
    pq = _arm(S.make_quantize_pairs(x.shape, qa=qw.qa, padding=pad, target=TARGET))
    q, amax = a64_kernels.run(pq, [x], [expect_q.shape, expect_amax.shape], ["int16", "float32"])
    np.testing.assert_array_equal(amax, expect_amax)
    np.testing.assert_array_equal(q, expect_q)
    expect = ref.qconv2d_ref(expect_q, qw.ints, stride=2)
    pf = _arm(S.make_qconv2d(expect_q.shape, qw.ints.shape, stride=2, accumulate_only=True, target=TARGET))
    got = a64_kernels.run(pf, [q, Q.pair_blocked(qw.ints, S.fconv2d_block(TARGET)), qw.dequant, amax],
                          expect.shape, "int32")
    np.testing.assert_array_equal(got, expect)


def test_quantized_conv_width_pairs_end_to_end(a64_kernels, rng):
    """A 3-channel 7x7 stem's width pairs (``quantize.width_groups_pay``: what the converter
    picks for it on aarch64 too): the operand and the sums exact."""
    from bnncompile.schedules import quantize as Q

    x = (rng.standard_normal((1, 3, 13, 12)) * 3).astype("float32")
    qw = Q.quantize_conv_weight(rng.standard_normal((8, 3, 7, 7)).astype("float32"), "int16")
    pad = (3, 3, 3, 3)
    pairs, _ = ref.quantize_pairs_ref(x, qw.qa, pad)
    expect = ref.qconv2d_ref(pairs, qw.ints, stride=2)
    width = Q.width_extent(expect.shape[3], 7, 2, 2)
    expect_q, expect_amax = ref.quantize_width_ref(x, qw.qa, pad, 2, width)
    pq = _arm(S.make_quantize_width(x.shape, qa=qw.qa, padding=pad, group=2, width=width, target=TARGET))
    q, amax = a64_kernels.run(pq, [x], [expect_q.shape, expect_amax.shape], ["int16", "float32"])
    np.testing.assert_array_equal(amax, expect_amax)
    np.testing.assert_array_equal(q, expect_q)
    pf = _arm(S.make_qconv2d(q.shape, qw.ints.shape, stride=2, accumulate_only=True, width_group=2,
                             target=TARGET))
    got = a64_kernels.run(pf, [q, Q.width_blocked(qw.ints, S.fconv2d_block(TARGET), 2), qw.dequant, amax],
                          expect.shape, "int32")
    np.testing.assert_array_equal(got, expect)


def test_attention_int8_end_to_end(a64_kernels, rng):
    """``--attention-precision int8``: probabilities per row (LLVM's ``roundeven`` is ``frintn``
    here), values per column, then the int32 product, on aarch64 (generic schedules): levels,
    peaks, sums and the float output exact."""
    b, m, k, n = 2, 5, 10, 16
    z = rng.standard_normal((b, m, k)).astype("float32") * 3
    p = np.exp(z - z.max(-1, keepdims=True))
    p = (p / p.sum(-1, keepdims=True)).astype("float32")
    v = (rng.standard_normal((b, k, n)) * 2).astype("float32")
    pq_ref, pmax_ref = ref.quantize_rows_ref(p)
    vq_ref, vmax_ref = ref.quantize_columns_ref(v)
    pq, pmax = a64_kernels.run(_arm(S.make_quantize_rows(p.shape, target=TARGET)), [p],
                               [pq_ref.shape, pmax_ref.shape], ["uint8", "float32"])
    vq, vmax = a64_kernels.run(_arm(S.make_quantize_columns(v.shape, target=TARGET)), [v],
                               [vq_ref.shape, vmax_ref.shape], ["int8", "float32"])
    for got, want in ((pq, pq_ref), (pmax, pmax_ref), (vq, vq_ref), (vmax, vmax_ref)):
        np.testing.assert_array_equal(got, want)
    _acc, y = ref.qbatch_matmul_ref(pq_ref, vq_ref, pmax_ref, vmax_ref)
    got = a64_kernels.run(_arm(S.make_qbatch_matmul(pq.shape, vq.shape, target=TARGET)), [pq, vq, pmax, vmax],
                          y.shape, "float32")
    np.testing.assert_array_equal(got, y)
