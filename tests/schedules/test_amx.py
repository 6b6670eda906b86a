"""The AMX int8 conv (``schedules/x86_amx.py``, ``compile --conv-precision int8`` on AMX CPUs).

* Everywhere: the operand layouts (``block_weight``'s B tiles, the NHWC windows) reproduce the
  conv: ``amx_reference`` on them equals ``reference.qconv2d_ref`` (int64), so a layout bug cannot
  hide behind a kernel that shares it; the int8 NHWC quantizer is bit-exact against numpy; the
  kernel compiles to ``TDPBSSD`` for an AMX CPU (compile only).
* On a CPU with AMX that Linux lets use it: the kernel's int32 sums bit-exact against
  ``qconv2d_ref`` over stems, 1x1 shortcuts, dilation, odd tile counts and batch 2, and its float
  outputs (NCHW and the pool's NCHWc) as numpy computes them from those sums.
"""
import numpy as np
import pytest
from bnncompile.schedules import quantize as Q
from bnncompile.schedules import reference as ref
from bnncompile.schedules import x86_amx

from bnncompile import schedules as S
from bnncompile import targets

AMX_TARGET = {"kind": "llvm", "mcpu": "sapphirerapids", "mtriple": "x86_64-linux-gnu"}
HERE = {**targets.host_spec().target}
HAS_AMX = x86_amx.available(targets.tvm_target(targets.host_spec()))
needs_amx = pytest.mark.skipif(not HAS_AMX, reason="this CPU has no AMX-INT8 (or Linux refuses it)")

# (data NCHW, K, kernel, stride, padding, dilation)
CASES = [((1, 3, 37, 35), 64, (7, 7), 2, (3, 3, 3, 3), 1),    # ResNet stem: C = 3, one window per row
         ((1, 64, 14, 15), 48, (7, 7), 2, (3, 3, 3, 3), 1),   # CCT tokenizer: 7 windows per row, 3 tiles
         ((2, 96, 7, 9), 40, (1, 1), 1, (0, 0, 0, 0), 1),     # 1x1 shortcut, batch 2, K padded
         ((1, 5, 8, 19), 3, (3, 2), 1, (0, 1, 2, 0), 1),      # K < one tile, asymmetric pads
         ((1, 6, 11, 10), 17, (3, 3), 1, (2, 2, 2, 2), 2),    # dilation: zero weights between taps
         ((1, 256, 7, 7), 512, (1, 1), 1, (0, 0, 0, 0), 1)]   # ReActNet-18's last shortcut


def _tag(c):
    return f"{'x'.join(map(str, c[0]))}-k{c[1]}-{c[2][0]}x{c[2][1]}-s{c[3]}-d{c[5]}"


def _geometry(shape, k, kernel, s, p, d):
    return x86_amx.AmxGeometry(*shape, k, *kernel, (s, s), tuple(p), (d, d))


def _operands(inputs, shape, k, kernel, p):
    """int8 weights and data at int8's levels, the data as ``quantize_hwc`` lays it out."""
    x = inputs.floats(shape)
    qw = Q.quantize_conv_weight(inputs.normal((k, shape[1], *kernel)), "int8")
    pairs, amax = ref.quantize_pairs_ref(x, qw.qa, p)
    return x, qw, pairs, amax


def _hwc(pairs, g):
    """``[N, C2, HP, WP, 2]`` pairs -> the kernel's ``[N, HQ, WP, C]`` int8 (extra rows zero)."""
    n, c2, hp, wp, _ = pairs.shape
    nchw = pairs.transpose(0, 1, 4, 2, 3).reshape(n, c2 * 2, hp, wp)[:, :g.c]
    q = np.zeros((n, g.hq, wp, g.c), np.int8)
    q[:, :hp] = nchw.transpose(0, 2, 3, 1)
    return q


@pytest.mark.input_kinds("random-seed0", "all-1", "alternating")
@pytest.mark.parametrize("shape,k,kernel,s,p,d", CASES, ids=[_tag(c) for c in CASES])
def test_layouts_reproduce_the_conv(shape, k, kernel, s, p, d, inputs):
    g = _geometry(shape, k, kernel, s, p, d)
    _, qw, pairs, _ = _operands(inputs, shape, k, kernel, p)
    expect = ref.qconv2d_ref(pairs, qw.ints, stride=s, dilation=d)
    got = x86_amx.amx_reference(_hwc(pairs, g), x86_amx.block_weight(qw.ints, g), g)
    np.testing.assert_array_equal(got, expect, err_msg=str(inputs))


def test_block_weight_refuses_wider_than_int8():
    g = _geometry((1, 4, 8, 8), 16, (3, 3), 1, (1, 1, 1, 1), 1)
    with pytest.raises(ValueError, match="int8"):
        x86_amx.block_weight(np.full((16, 4, 3, 3), 300, np.int16), g)


@pytest.mark.parametrize("rows_extra", [0, 3])
@pytest.mark.parametrize("shape,pad", [((2, 5, 9, 16), (1, 2, 0, 3)), ((1, 64, 7, 7), (0, 0, 0, 0))],
                         ids=["odd_c-batch2", "1x1"])
def test_quantize_hwc_exact(shape, pad, rows_extra, inputs, host, run_primfunc_outs):
    x = inputs.floats(shape, scale=3.0)
    pairs, expect_amax = ref.quantize_pairs_ref(x, 127, pad)
    hp = shape[2] + pad[0] + pad[2]
    g = x86_amx.AmxGeometry(*shape, 16, 1, 1, (1, 1), pad, (1, 1))
    expect = _hwc(pairs, g)[:, :hp]
    expect = np.concatenate([expect, np.zeros((shape[0], rows_extra, *expect.shape[2:]), np.int8)], 1)
    pf = S.make_quantize_hwc(shape, qa=127, padding=pad, rows=hp + rows_extra, target=host)
    q, amax = run_primfunc_outs(pf, [x], [(expect.shape, "int8"), (expect_amax.shape, "float32")])
    np.testing.assert_array_equal(amax, expect_amax, err_msg=str(inputs))
    np.testing.assert_array_equal(q, expect, err_msg=str(inputs))


def test_amx_kernel_compiles_to_tdpbssd():
    """Compile only (any x86 machine): tile config, loads, ``TDPBSSD``, and the permission call."""
    import tvm

    g = _geometry((1, 64, 14, 14), 128, (1, 1), 1, (0, 0, 0, 0), 1)
    pf = S.make_qconv2d_amx(g, target=AMX_TARGET)
    asm = tvm.compile(tvm.IRModule({"main": pf}), target=tvm.target.Target(AMX_TARGET)).mod.inspect_source("asm")
    for op in ("ldtilecfg", "tileloadd", "tdpbssd", "tilestored", "tilerelease", "arch_prctl"):
        assert op in asm, op


def test_amx_kernel_refused_without_amx():
    g = _geometry((1, 64, 14, 14), 128, (1, 1), 1, (0, 0, 0, 0), 1)
    with pytest.raises(ValueError, match="no AMX-INT8"):
        S.make_qconv2d_amx(g, target={"kind": "llvm", "mcpu": "znver4", "mtriple": "x86_64-linux-gnu"})


# NCHWc (a pool's channel blocks) only where K fills whole 16-channel blocks
LAYOUT_CASES = [(c, lay) for c in CASES for lay in ("NCHW", "NCHWc") if lay == "NCHW" or c[1] % 16 == 0]


@needs_amx
@pytest.mark.input_kinds("random-seed0", "random-seed1", "all+1", "alternating")
@pytest.mark.parametrize("case,layout", LAYOUT_CASES, ids=[f"{_tag(c)}-{lay}" for c, lay in LAYOUT_CASES])
def test_amx_sums_exact(case, layout, inputs, run_primfunc):
    shape, k, kernel, s, p, d = case
    g = _geometry(shape, k, kernel, s, p, d)
    _, qw, pairs, _ = _operands(inputs, shape, k, kernel, p)
    expect = ref.qconv2d_ref(pairs, qw.ints, stride=s, dilation=d)
    pf = S.make_qconv2d_amx(g, out_layout=layout, accumulate_only=True, target=HERE)
    n = shape[0]
    out_shape = (n, g.nt, g.oh, g.ow, 16) if layout == "NCHWc" else expect.shape
    got = run_primfunc(pf, [_hwc(pairs, g), x86_amx.block_weight(qw.ints, g), qw.dequant,
                            np.ones(n, np.float32), np.zeros(k, np.float32)], out_shape, "int32", target=HERE)
    if layout == "NCHWc":
        got = got.transpose(0, 1, 4, 2, 3).reshape(expect.shape)
    np.testing.assert_array_equal(got, expect, err_msg=str(inputs))


@needs_amx
@pytest.mark.input_kinds("random-seed0", "alternating")
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("layout", ["NCHW", "NCHWc"])
def test_amx_float_output(layout, relu, inputs, run_primfunc, run_primfunc_outs):
    """``float(acc) * (amax * dequant) + bias`` (then a fused Relu's ``max(y, 0)``) as numpy
    computes it from the exact sums, and the whole path (quantize_hwc, then the kernel) within
    int8's error of the float conv."""
    shape, k, p = (2, 16, 15, 14), 32, (3, 3, 3, 3)
    g = _geometry(shape, k, (7, 7), 2, p, 1)
    x, w, bias = inputs.floats(shape), inputs.normal((k, shape[1], 7, 7)), inputs.normal(k)
    qw = Q.quantize_conv_weight(w, "int8")
    pairs, amax = ref.quantize_pairs_ref(x, qw.qa, p)
    acc = ref.qconv2d_ref(pairs, qw.ints, stride=2)
    expect = (acc.astype(np.float32) * (amax[:, None, None, None] * qw.dequant[None, :, None, None])
              + bias[None, :, None, None])
    if relu:
        expect = np.maximum(expect, 0)
    quant = S.make_quantize_hwc(shape, qa=qw.qa, padding=p, rows=g.hq, target=HERE)
    q, amax_k = run_primfunc_outs(quant, [x], [((2, g.hq, g.wp, g.c), "int8"), ((2,), "float32")],
                                  target=HERE)
    pf = S.make_qconv2d_amx(g, out_layout=layout, relu=relu, target=HERE)
    out_shape = (2, g.nt, g.oh, g.ow, 16) if layout == "NCHWc" else expect.shape
    got = run_primfunc(pf, [q, x86_amx.block_weight(qw.ints, g), qw.dequant, amax_k, bias], out_shape,
                       "float32", target=HERE)
    if layout == "NCHWc":
        got = got.transpose(0, 1, 4, 2, 3).reshape(expect.shape)
    np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-6 * np.abs(expect).max(), err_msg=str(inputs))
    exact = ref.fconv2d_ref(x, w, stride=2, padding=p, bias=bias)
    exact = np.maximum(exact, 0) if relu else exact
    assert np.abs(got - exact).max() <= 0.05 * np.abs(exact).max()

