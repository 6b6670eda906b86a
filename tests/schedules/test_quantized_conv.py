"""The quantized float conv (``compile --conv-precision``): activation quantization bit-exact
(int16 pairs or offset uint8 quads, and amax) against ``reference.quantize_pairs_ref``, int32
sums bit-exact against ``reference.qconv2d_ref`` (int64), the float output against the same
formula in numpy; every CPU schedule that runs here ("x86" tensorizes ``vpmaddwd`` on pairs and
``vpdpbusd`` on quads, the latter on AVX-512 VNNI hosts; "cpu" / "arm_cpu" vectorise int32).
Adversarial kinds of the ``inputs`` fixture give ±1 maps: exact ties of ``x * qa / amax`` at .5
never arise there, the random kinds hit the rounding and clipping paths."""
import numpy as np
import pytest
from bnncompile.schedules import quantize as Q
from bnncompile.schedules import reference as ref

from bnncompile import schedules as S

SCHEDS = ["cpu", "x86", "arm_cpu"]
GROUPS = [2, 4]  # int16 pairs (vpmaddwd), offset uint8 quads (vpdpbusd)
VNNI = {"kind": "llvm", "mcpu": "icelake-server"}  # AVX-512 VNNI code: Ice Lake+, Zen 4+


def _target(group, sched, host):
    """The x86 schedule runs quads on ``vpdpbusd`` (AVX-512 VNNI code, run where the CPU has
    it); every other case runs the host's AVX2 code."""
    from bnncompile import targets

    if group != 4 or sched != "x86":
        return host
    if "avx512_vnni" not in targets.cpu_flags():
        pytest.skip("the x86 quads kernel needs AVX-512 VNNI; this CPU has none (cpu/arm_cpu ran)")
    return VNNI

# (data NCHW, K, kernel, stride, padding, dilation)
CASES = [((1, 3, 23, 21), 16, (7, 7), 2, (3, 3, 3, 3), 1),    # ResNet stem: C odd, padded pair
         ((1, 16, 15, 14), 24, (7, 7), 2, (3, 3, 3, 3), 1),   # CCT tokenizer geometry
         ((2, 24, 7, 9), 40, (1, 1), 1, (0, 0, 0, 0), 1),     # 1x1 shortcut, batch 2
         ((1, 5, 8, 8), 3, (3, 2), 1, (0, 1, 2, 0), 1),       # K < one block, asymmetric pads
         ((1, 6, 11, 10), 10, (3, 3), 1, (2, 2, 2, 2), 2)]    # dilation, K padded to 2 blocks


def _tag(c):
    return f"{'x'.join(map(str, c[0]))}-k{c[1]}-{c[2][0]}x{c[2][1]}-s{c[3]}-d{c[5]}"


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("group,qa", [(2, 127), (2, 3000), (4, 127)])
@pytest.mark.parametrize("shape,pad", [((2, 5, 9, 16), (1, 2, 0, 3)), ((1, 64, 7, 7), (0, 0, 0, 0))],
                         ids=["odd_c-batch2", "1x1"])
def test_quantize_pairs_exact(shape, pad, group, qa, sched, inputs, host, run_primfunc_outs):
    x = inputs.floats(shape, scale=3.0)
    if inputs.random:
        x[0, 0, 0, :3] = [0.0, -x[0].max(), np.abs(x[0]).max()]  # zero and the range's ends
    expect_q, expect_amax = ref.quantize_pairs_ref(x, qa, pad, group=group)
    pf = S.make_quantize_pairs(shape, qa=qa, padding=pad, group=group, target=host, schedule=sched)
    q, amax = run_primfunc_outs(pf, [x], [(expect_q.shape, str(expect_q.dtype)), (expect_amax.shape, "float32")])
    np.testing.assert_array_equal(amax, expect_amax, err_msg=str(inputs))
    np.testing.assert_array_equal(q, expect_q, err_msg=str(inputs))


def test_quantize_pairs_all_zero_sample(host, run_primfunc_outs):
    """amax 0 (a dead feature map): all zeros, no NaN from 0 * (qa / 0); quads hold the offset
    (128) for zero, in the padding channel too."""
    x = np.zeros((2, 3, 4, 4), np.float32)
    x[1] = 1.5
    pf = S.make_quantize_pairs(x.shape, qa=127, target=host)
    q, amax = run_primfunc_outs(pf, [x], [((2, 2, 4, 4, 2), "int16"), ((2,), "float32")])
    assert amax.tolist() == [0.0, 1.5]
    assert not q[0].any() and (q[1, :, :, :, 0] == 127).all() and (q[1, 1, :, :, 1] == 0).all()
    pf = S.make_quantize_pairs(x.shape, qa=127, group=4, target=host)
    q, amax = run_primfunc_outs(pf, [x], [((2, 1, 4, 4, 4), "uint8"), ((2,), "float32")])
    assert amax.tolist() == [0.0, 1.5]
    assert (q[0] == 128).all() and (q[1, ..., :3] == 255).all() and (q[1, ..., 3] == 128).all()


def _args(group, ints, block, n):
    """The conv's weight, dequant, amax (1: the sums) and, for quads, compensation operands."""
    qw_blocked = Q.group_blocked(ints, block, group)
    comp = [Q.offset_compensation(ints)] if group == 4 else []
    return [qw_blocked, np.ones(ints.shape[0], np.float32), np.ones(n, np.float32), *comp]


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("precision,group", [("int16", 2), ("int8", 2), ("int8", 4)])
@pytest.mark.parametrize("shape,k,kernel,s,p,d", CASES, ids=[_tag(c) for c in CASES])
def test_qconv2d_sums_exact(shape, k, kernel, s, p, d, precision, group, sched, inputs, host, run_primfunc):
    """int32 sums at the precision's largest levels (|x| = qa, |w| = qw reached), from pairs or
    offset quads (their compensation subtracted), against the conv of the unoffset integers."""
    tgt = _target(group, sched, host)
    x = inputs.floats(shape)
    qw = Q.quantize_conv_weight(inputs.normal((k, shape[1], *kernel)), precision)
    pairs, _ = ref.quantize_pairs_ref(x, qw.qa, p)
    expect = ref.qconv2d_ref(pairs, qw.ints, stride=s, dilation=d)
    data, _ = ref.quantize_pairs_ref(x, qw.qa, p, group=group)
    pf = S.make_qconv2d(data.shape, qw.ints.shape, stride=s, dilation=d, accumulate_only=True,
                        target=tgt, schedule=sched)
    got = run_primfunc(pf, [data, *_args(group, qw.ints, S.fconv2d_block(tgt), shape[0])], expect.shape,
                       "int32", target=tgt)
    np.testing.assert_array_equal(got, expect, err_msg=str(inputs))


# width groups (quantize.width_groups_pay): (data NCHW, K, kernel, stride, padding)
WCASES = [((1, 3, 23, 21), 16, (7, 7), 2, (3, 3, 3, 3)),     # ResNet / CCT stem
          ((2, 1, 12, 13), 8, (3, 5), 1, (1, 2, 1, 2)),      # grayscale, K < one block, batch 2
          ((1, 2, 11, 17), 40, (5, 6), 3, (0, 2, 1, 3))]     # asymmetric pads, KW a multiple of 2


def _width_data(x, qa, pad, kernel, stride, group):
    """The conv's width-grouped operand (``reference.quantize_width_ref``) and its output width."""
    ow = (x.shape[3] + pad[1] + pad[3] - kernel[1]) // stride + 1
    width = Q.width_extent(ow, kernel[1], stride, group)
    return ref.quantize_width_ref(x, qa, pad, group, width)


def test_width_groups_pay():
    """3 x 8 products per kernel row against 4 x 7 for a 3-channel 7x7 stem; never with dilation
    along w (a group would not be contiguous), nor where channel groups pad nothing."""
    assert Q.width_groups_pay(3, 7, 4, 1) and Q.width_groups_pay(3, 7, 2, 1) and Q.width_groups_pay(1, 3, 4, 1)
    assert not Q.width_groups_pay(3, 7, 4, 2)
    assert not Q.width_groups_pay(3, 3, 4, 1)  # 3 x 4 = 4 x 3: ties stay channel groups
    assert not Q.width_groups_pay(16, 7, 4, 1) and not Q.width_groups_pay(64, 1, 4, 1)
    assert Q.width_extent(112, 7, 2, 4) == 230 and Q.width_extent(112, 7, 2, 2) == 230
    assert Q.width_extent(5, 3, 1, 4) == 8


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("group,qa", [(2, 3000), (4, 127)])
@pytest.mark.parametrize("case", WCASES, ids=lambda c: "x".join(map(str, c[0])))
def test_quantize_width_exact(case, group, qa, sched, inputs, host, run_primfunc_outs):
    """The width-grouped operand bit for bit (levels, offset, padding, the extra columns past
    the padded width) and amax, against ``reference.quantize_width_ref``."""
    shape, _k, kernel, stride, pad = case
    x = inputs.floats(shape, scale=3.0)
    expect_q, expect_amax = _width_data(x, qa, pad, kernel, stride, group)
    pf = S.make_quantize_width(shape, qa=qa, padding=pad, group=group, width=expect_q.shape[3], target=host,
                               schedule=sched)
    q, amax = run_primfunc_outs(pf, [x], [(expect_q.shape, str(expect_q.dtype)), (expect_amax.shape, "float32")])
    np.testing.assert_array_equal(amax, expect_amax, err_msg=str(inputs))
    np.testing.assert_array_equal(q, expect_q, err_msg=str(inputs))


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("precision,group", [("int16", 2), ("int8", 2), ("int8", 4)])
@pytest.mark.parametrize("case", WCASES, ids=lambda c: "x".join(map(str, c[0])))
def test_qconv2d_width_groups_sums_exact(case, precision, group, sched, inputs, host, run_primfunc):
    """int32 sums from width groups (the zero weights past KW, the extra columns, the quads'
    offset compensated) equal the conv of the unoffset integers: the numbers of channel groups."""
    shape, k, kernel, s, p = case
    tgt = _target(group, sched, host)
    x = inputs.floats(shape)
    qw = Q.quantize_conv_weight(inputs.normal((k, shape[1], *kernel)), precision)
    pairs, _ = ref.quantize_pairs_ref(x, qw.qa, p)
    expect = ref.qconv2d_ref(pairs, qw.ints, stride=s)
    data, _ = _width_data(x, qw.qa, p, kernel, s, group)
    pf = S.make_qconv2d(data.shape, qw.ints.shape, stride=s, accumulate_only=True, width_group=group,
                        target=tgt, schedule=sched)
    assert f"w{group}_k" in str(pf.attrs["global_symbol"])
    comp = [Q.offset_compensation(qw.ints)] if group == 4 else []
    args = [data, Q.width_blocked(qw.ints, S.fconv2d_block(tgt), group), np.ones(k, np.float32),
            np.ones(shape[0], np.float32), *comp]
    got = run_primfunc(pf, args, expect.shape, "int32", target=tgt)
    np.testing.assert_array_equal(got, expect, err_msg=str(inputs))


def test_qconv2d_width_groups_refuse_what_they_cannot_read():
    """Width groups need contiguous columns (no dilation along w) and exactly the columns
    ``quantize.width_extent`` gives (the output width is read off them)."""
    with pytest.raises(ValueError, match="width groups"):
        S.make_qconv2d((1, 3, 29, 28), (16, 3, 7, 7), stride=2, dilation=(1, 2), width_group=4, schedule="cpu")
    with pytest.raises(ValueError, match="width groups"):
        S.make_qconv2d((1, 3, 29, 29), (16, 3, 7, 7), stride=2, width_group=4, schedule="cpu")
    with pytest.raises(ValueError, match="in-channels"):
        S.make_qconv2d((1, 4, 29, 28), (16, 3, 7, 7), stride=2, width_group=4, schedule="cpu")


@pytest.mark.parametrize("sched", ["cpu", "x86"])
def test_qconv2d_quads_exact_where_the_offset_sum_wraps(sched, host, run_primfunc):
    """Every product at +127 * +127 over a reduction of 68,600: the true sum (1.1e9) fits int32,
    the offset quads' (255 * 127 per product, 2.2e9) does not and wraps; subtracting the
    compensation (wrapping too) still gives the exact sum, modulo 2**32."""
    tgt = _target(4, sched, host)
    shape, kernel = (1, 1400, 7, 7), (7, 7)
    qw = Q.quantize_conv_weight(np.ones((16, 1400, *kernel), np.float32), "int8")
    pairs, _ = ref.quantize_pairs_ref(np.ones(shape, np.float32), qw.qa)
    expect = ref.qconv2d_ref(pairs, qw.ints)
    assert expect.max() < 2**31 <= (127 + Q.VNNI_OFFSET) * 127 * Q.reduction_length(qw.ints.shape)
    quads, _ = ref.quantize_pairs_ref(np.ones(shape, np.float32), qw.qa, group=4)
    pf = S.make_qconv2d(quads.shape, qw.ints.shape, accumulate_only=True, target=tgt, schedule=sched)
    got = run_primfunc(pf, [quads, *_args(4, qw.ints, S.fconv2d_block(tgt), 1)], expect.shape, "int32", target=tgt)
    np.testing.assert_array_equal(got, expect)


def test_qconv2d_worst_case_sum_fits_int32(host, run_primfunc):
    """Every product at +qa * +qw over the whole reduction: the int16 levels' bound is tight
    enough that the sum still fits (an int32 overflow would wrap negative)."""
    shape, kernel = (1, 64, 7, 7), (7, 7)
    qw = Q.quantize_conv_weight(np.ones((8, 64, *kernel), np.float32), "int16")
    pairs, _ = ref.quantize_pairs_ref(np.ones(shape, np.float32), qw.qa)
    expect = ref.qconv2d_ref(pairs, qw.ints)
    assert expect.max() == Q.reduction_length(qw.ints.shape) * qw.qa * qw.qw > 2**30
    pf = S.make_qconv2d(pairs.shape, qw.ints.shape, accumulate_only=True, target=host)
    got = run_primfunc(pf, [pairs, Q.pair_blocked(qw.ints, S.fconv2d_block(host)), qw.dequant,
                            np.ones(1, np.float32)], expect.shape, "int32")
    np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("along", ["c", "w"])
@pytest.mark.parametrize("layout", ["NCHW", "NCHWc"])
@pytest.mark.parametrize("with_bias,relu", [(False, False), (True, False), (True, True)])
def test_qconv2d_float_output(with_bias, relu, layout, along, group, sched, inputs, host, run_primfunc):
    """``float(acc) * (amax * dequant) + bias`` as numpy computes it from the exact sums (one ulp:
    LLVM may contract the multiply-add), and within the quantization error of the float conv."""
    tgt = _target(group, sched, host)
    ob = S.fconv2d_block(tgt)
    shape, k, p = (2, 16, 15, 14), 2 * ob, (3, 3, 3, 3)
    x, w = inputs.floats(shape), inputs.normal((k, shape[1], 7, 7))
    bias = inputs.normal(k) if with_bias else None
    qw = Q.quantize_conv_weight(w, "int8")
    pairs, amax = ref.quantize_pairs_ref(x, qw.qa, p)
    acc = ref.qconv2d_ref(pairs, qw.ints, stride=2)
    expect = acc.astype(np.float32) * (amax[:, None, None, None] * qw.dequant[None, :, None, None])
    if with_bias:
        expect = expect + bias[None, :, None, None]
    if relu:
        expect = np.maximum(expect, 0)
    if along == "w":  # (any C: the converter takes them where they pad fewer products)
        data, _ = _width_data(x, qw.qa, p, (7, 7), 2, group)
        blocked, width = Q.width_blocked(qw.ints, ob, group), {"width_group": group}
    else:
        data, _ = ref.quantize_pairs_ref(x, qw.qa, p, group=group)
        blocked, width = Q.group_blocked(qw.ints, ob, group), {}
    pf = S.make_qconv2d(data.shape, w.shape, stride=2, with_bias=with_bias, out_layout=layout,
                        relu=relu, target=tgt, schedule=sched, **width)
    comp = [Q.offset_compensation(qw.ints)] if group == 4 else []
    args = [data, blocked, qw.dequant, amax, *comp] + ([bias] if with_bias else [])
    n, _, oh, ow = expect.shape
    got = run_primfunc(pf, args, (n, k // ob, oh, ow, ob) if layout == "NCHWc" else expect.shape, "float32",
                       target=tgt)
    if layout == "NCHWc":
        got = got.transpose(0, 1, 4, 2, 3).reshape(expect.shape)
    np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-6 * np.abs(expect).max(), err_msg=str(inputs))
    exact = ref.fconv2d_ref(x, w, stride=2, padding=p, bias=bias)
    exact = np.maximum(exact, 0) if relu else exact
    assert np.abs(got - exact).max() <= 0.05 * np.abs(exact).max()  # int8: a few % at most


def test_quant_levels():
    assert Q.levels("int8", 10**5) == (127, 127)
    assert Q.levels("int16", 4) == (23170, 23170)  # 2 * 32767^2 would be the pair's limit
    qa, qw = Q.levels("int16", 64 * 49)
    assert qa == qw == 827 and 64 * 49 * qa * qw < 2**31 <= 64 * 49 * (qa + 1) * (qw + 1)
    with pytest.raises(ValueError, match="fp32"):
        Q.levels("fp32", 9)
    with pytest.raises(ValueError, match="int32 at int8"):
        Q.levels("int8", 2**31 // (127 * 127) + 1)


def test_quantize_conv_weight_levels():
    w = np.array([[[[0.5, -2.0]]], [[[0.0, 0.0]]]], np.float32)
    q = Q.quantize_conv_weight(w, "int8")
    assert q.ints.tolist() == [[[[32, -127]]], [[[0, 0]]]]
    np.testing.assert_array_equal(q.dequant, np.float32([2.0 / 127, 1.0]) / np.float32(127))


def test_qconv2d_refuses_cuda():
    with pytest.raises(ValueError, match="CPU kernel"):
        S.make_qconv2d((1, 2, 8, 8, 2), (8, 4, 3, 3), target={"kind": "cuda", "arch": "sm_80"})


def test_qconv2d_refuses_quads_without_vnni():
    """The x86 schedule tensorizes quads with ``vpdpbusd``: an AVX2 target is told to use pairs
    (the converter picks pairs there; a SIGILL at run time is what this prevents)."""
    haswell = {"kind": "llvm", "mcpu": "haswell", "mtriple": "x86_64-linux-gnu"}
    with pytest.raises(ValueError, match="no AVX-512 VNNI"):
        S.make_qconv2d((1, 1, 8, 8, 4), (8, 4, 3, 3), target=haswell)
    with pytest.raises(ValueError, match="groups of 3"):
        S.make_qconv2d((1, 1, 8, 8, 3), (8, 3, 3, 3), target=haswell)
    S.make_qconv2d((1, 1, 8, 8, 4), (8, 4, 3, 3), target=haswell, schedule="cpu")  # plain int32


@pytest.mark.parametrize("mcpu", ["znver4", "icelake-server", "sapphirerapids"])
def test_qconv2d_quads_compile_to_vpdpbusd(mcpu):
    """Compile-only (any machine): quads on a VNNI CPU are one zmm ``vpdpbusd`` per 64 MACs,
    no ``vpmaddwd`` left; what runs bit-exact above wherever this CPU has VNNI."""
    import re

    import tvm

    tgt = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "mtriple": "x86_64-linux-gnu"})
    pf = S.make_qconv2d((1, 8, 30, 30, 4), (64, 32, 3, 3), target=tgt)
    asm = tvm.compile(pf, target=tgt).mod.inspect_source("asm")
    dots = re.findall(r"\bvpdpbusd\s+[^\n]*zmm", asm)
    assert dots and not re.search(r"\bvpmaddwd\b", asm), len(dots)


@pytest.mark.input_kinds("random-seed0", "alternating")
def test_qconv2d_avx512_blocks_run_as_8_lane_halves(inputs, run_primfunc):
    """An AVX-512 target blocks output channels by 16 (the float kernels' width); the x86
    schedule splits each block into two tensorized 8-lane halves, the same AVX2 instruction, so
    the kernel built for that target's TIR runs (and is checked) on any AVX2 host."""
    from bnncompile import targets

    avx512 = targets.tvm_target(targets.resolve("x86-avx512"))
    assert S.fconv2d_block(avx512) == 16
    x = inputs.floats((1, 6, 11, 12))
    qw = Q.quantize_conv_weight(inputs.normal((40, 6, 3, 3)), "int16")
    pairs, _ = ref.quantize_pairs_ref(x, qw.qa, (1, 1, 1, 1))
    expect = ref.qconv2d_ref(pairs, qw.ints)
    pf = S.make_qconv2d(pairs.shape, qw.ints.shape, accumulate_only=True, target=avx512)
    assert str(pf.attrs["global_symbol"]).endswith("_x86")
    got = run_primfunc(pf, [pairs, Q.pair_blocked(qw.ints, 16), qw.dequant, np.ones(1, np.float32)],
                       expect.shape, "int32")
    np.testing.assert_array_equal(got, expect, err_msg=str(inputs))


@pytest.mark.parametrize("mcpu,vnni", [("znver4", True), ("icelake-server", True),
                                       ("cascadelake", True), ("znver3", False), ("haswell", False)])
def test_qconv2d_uses_vnni_where_the_cpu_has_it(mcpu, vnni):
    """Compile-only (no VNNI CPU here): for a CPU with AVX-512 VNNI, LLVM fuses the tensorized
    ``vpmaddwd`` + ``vpaddd`` into ``vpdpwssd`` (one instruction per 16 int16 MACs), so the
    int16 conv needs no VNNI intrinsic of its own; an AVX2 CPU keeps the pair.  Sapphire Rapids
    and Alder Lake's AVX-VNNI fuse only some (LLVM's per-CPU choice), which is why the host's
    own LLVM CPU name is the target."""
    import re

    import tvm

    tgt = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "mtriple": "x86_64-linux-gnu"})
    pf = S.make_qconv2d((1, 32, 30, 30, 2), (64, 64, 3, 3), target=tgt)
    asm = tvm.compile(pf, target=tgt).mod.inspect_source("asm")
    fused, pairs = (len(re.findall(rf"\b{op}\b", asm)) for op in ("vpdpwssd", "vpmaddwd"))
    assert (fused > 0 and pairs == 0) if vnni else (fused == 0 and pairs > 0), (fused, pairs)
