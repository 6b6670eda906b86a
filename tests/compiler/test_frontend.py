"""Frontend: which layers the graph proves binary, what the Relax module contains, and that
everything (binary or not) computes what ONNX Runtime computes.

Graphs are hand-built with onnx.helper (fast, exact control over the patterns). Binary accumulators
of ±1 data are exact integers, so with a per-channel float scale the outputs agree with ONNX
Runtime to float rounding of one multiply: rtol 1e-6 / atol 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from bnncompile.errors import UnsupportedModelError
from bnncompile.frontend import FrontendOptions, from_onnx

from .helpers import (
    build_and_run,
    ds,
    host_target,
    int_inputs,
    make_model,
    ort_run,
    pm1,
    relax_func_names,
)

RTOL, ATOL = 1e-6, 1e-5
#: PrimFuncs of the bit-packed path (other ``bnn_*`` functions may be fused float glue)
BINARY_KERNELS = ("bnn_bconv2d_", "bnn_bitpack_", "bnn_bdense_", "bnn_bbmm_")
#: a standard float op TVM 0.27's ONNX frontend has no converter for
UNCONVERTIBLE = "Celu"


def _has_binary_kernel(names) -> bool:
    return any(n.startswith(BINARY_KERNELS) for n in names)


def _import(model, batch=1, binary_kernels=True):
    return from_onnx(model, target=host_target(),
                     options=FrontendOptions(batch=batch, binary_kernels=binary_kernels))


def _conv_model(rng, *, c=5, k=7, hw=(6, 7), pads=(1, 1, 1, 1), strides=(1, 1), pre=None,
                weight=None, with_scale=True, threshold=True, pad_value=None):
    """x → [pre] → DynamicSign(x, t) → [Pad] → Conv(±1) → [Mul scale]."""
    nodes, inits = [], {}
    src = "x"
    if pre == "relu":
        nodes.append(helper.make_node("Relu", ["x"], ["xr"], name="relu"))
        src = "xr"
    if pre != "no_sign":
        if threshold:
            inits["t"] = rng.integers(-1, 2, size=(1, c, 1, 1)).astype(np.float32)
        nodes.append(ds(src, "t" if threshold else None, "s", name="sign"))
        src = "s"
    conv_pads = list(pads)
    if pad_value is not None:
        inits["pads"] = np.array([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], np.int64)
        inits["pv"] = np.array(pad_value, np.float32)
        nodes.append(helper.make_node("Pad", [src, "pads", "pv"], ["sp"], name="pad", mode="constant"))
        src, conv_pads = "sp", [0, 0, 0, 0]
    inits["w"] = pm1(rng, (k, c, 3, 3)) if weight is None else weight
    nodes.append(helper.make_node("Conv", [src, "w"], ["y"], name="conv", pads=conv_pads,
                                  strides=list(strides), kernel_shape=[3, 3]))
    out = "y"
    if with_scale:
        inits["a"] = (rng.random((1, k, 1, 1)) * 2 - 1).astype(np.float32)  # incl. negative scales
        nodes.append(helper.make_node("Mul", ["y", "a"], ["z"], name="scale"))
        out = "z"
    return make_model(nodes, {"x": [2, c, *hw]}, {out: None}, inits)


def _check_against_ort(model, x, batch=2, **kw):
    (y,), plan = build_and_run(model, {"x": x}, batch=batch, **kw)
    (ref,) = ort_run(model, {"x": x})
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)
    return plan


def test_sign_conv_is_binary_and_lowered_to_kernels(rng):
    model = _conv_model(rng)
    mod, plan = _import(model, batch=2)
    assert [layer.kind for layer in plan.binary.values()] == ["conv"]
    assert "conv" in plan.binary and "conv" in plan.folded_scale  # per-channel Mul folded
    names = relax_func_names(mod)
    assert any(n.startswith("bnn_bconv2d_") for n in names), names
    assert any(n.startswith("bnn_bitpack_") for n in names), names
    # the folded scale is applied by the kernel: bconv2d takes scale, no separate multiply on y
    x = int_inputs(rng, (2, 5, 6, 7))  # integers vs integer thresholds: exact ties x == t
    _check_against_ort(model, x)


@pytest.mark.parametrize("pad_value", [0.0, 1.0])
def test_binary_through_pad(rng, pad_value):
    model = _conv_model(rng, pads=(1, 2, 2, 1), pad_value=pad_value)
    mod, plan = _import(model, batch=2)
    layer = plan.binary["conv"]
    assert layer.kind == "conv" and layer.pad_node is not None
    assert layer.pad_value == pad_value and layer.pads == (1, 2, 2, 1)
    assert any(n.startswith("bnn_bconv2d_") for n in relax_func_names(mod))
    _check_against_ort(model, int_inputs(rng, (2, 5, 6, 7)))


def test_pm1_weights_without_sign_input_are_float(rng):
    model = _conv_model(rng, pre="no_sign")
    mod, plan = _import(model, batch=2)
    assert plan.binary == {}
    assert not _has_binary_kernel(relax_func_names(mod))
    # zero padding of a non-±1 input: a binary lowering would be wrong here
    _check_against_ort(model, rng.standard_normal((2, 5, 6, 7)).astype(np.float32))


def test_sign_of_relu_is_still_a_sign(rng):
    model = _conv_model(rng, pre="relu")
    _, plan = _import(model, batch=2)
    assert list(plan.binary) == ["conv"]
    _check_against_ort(model, rng.standard_normal((2, 5, 6, 7)).astype(np.float32))


def test_weights_not_all_pm1_compile_as_float(rng):
    w = pm1(rng, (7, 5, 3, 3))
    w[3, 2, 1, 1] = 0.5
    model = _conv_model(rng, weight=w)
    mod, plan = _import(model, batch=2)
    assert plan.binary == {}
    assert not any(n.startswith("bnn_bconv2d_") for n in relax_func_names(mod))
    _check_against_ort(model, int_inputs(rng, (2, 5, 6, 7)))


def test_binary_kernels_off_is_float_and_equal(rng):
    model = _conv_model(rng)
    mod, plan = _import(model, batch=2, binary_kernels=False)
    assert plan.binary == {} and not any(n.startswith("bnn_bconv2d_") for n in relax_func_names(mod))
    x = int_inputs(rng, (2, 5, 6, 7))
    (y_bin,), _ = build_and_run(model, {"x": x}, batch=2)
    (y_flt,), _ = build_and_run(model, {"x": x}, batch=2, binary_kernels=False)
    np.testing.assert_allclose(y_bin, y_flt, rtol=RTOL, atol=ATOL)


def test_sign_with_float_consumer_is_float_pm1(rng):
    # DynamicSign → Add (float): the float ±1 tensor must exist and be exact (ties → +1)
    nodes = [ds("x", "t", "s"), helper.make_node("Add", ["s", "b"], ["y"], name="add")]
    t = np.array([[[0.0, 1.0, -1.0, 2.0]]], np.float32)
    model = make_model(nodes, {"x": [2, 3, 4]}, {"y": None}, {"t": t, "b": np.float32(0.5)})
    mod, plan = _import(model, batch=2)
    assert plan.binary == {}
    assert not _has_binary_kernel(relax_func_names(mod))
    x = int_inputs(rng, (2, 3, 4))
    (y,), _ = build_and_run(model, {"x": x}, batch=2)
    np.testing.assert_array_equal(y, np.where(x >= t, 1.0, -1.0) + 0.5)
    np.testing.assert_array_equal(y, ort_run(model, {"x": x})[0])


def test_sign_with_binary_and_float_consumers(rng):
    # the same DynamicSign feeds a binary conv and a float ReduceSum
    c = 4
    nodes = [ds("x", "zero", "s"),
             helper.make_node("Conv", ["s", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("ReduceSum", ["s"], ["r"], name="rsum", keepdims=0)]
    model = make_model(nodes, {"x": [1, c, 5, 5]}, {"y": None, "r": None},
                       {"w": pm1(rng, (3, c, 3, 3)), "zero": np.float32(0)})
    _, plan = _import(model)
    assert list(plan.binary) == ["conv"] and plan.folded_scale == {}
    x = int_inputs(rng, (1, c, 5, 5))
    outs, _ = build_and_run(model, {"x": x})
    for a, b in zip(outs, ort_run(model, {"x": x})):
        np.testing.assert_array_equal(a, b)  # no scale: exact integers


@pytest.mark.parametrize("op,d,n", [("gemm", 70, 9), ("gemm_transB", 70, 9), ("matmul", 70, 9),
                                    ("gemm_transB", 65, 65), ("gemm_nobias_transB", 66, 66)])
def test_dense_is_binary(rng, op, d, n):
    """K not a multiple of 64; square transB weights would hide a wrong transpose by shape."""
    w = pm1(rng, (n, d))
    inits = {"t": rng.integers(-1, 2, size=(1, d)).astype(np.float32)}
    if op == "gemm":
        inits["w"], inits["c"] = w.T.copy(), rng.standard_normal(n).astype(np.float32)
        mm = helper.make_node("Gemm", ["s", "w", "c"], ["y"], name="lin")
    elif op == "gemm_nobias_transB":
        inits["w"] = w
        mm = helper.make_node("Gemm", ["s", "w"], ["y"], name="lin", transB=1)
    elif op == "gemm_transB":
        inits["w"], inits["c"] = w, rng.standard_normal(n).astype(np.float32)
        mm = helper.make_node("Gemm", ["s", "w", "c"], ["y"], name="lin", transB=1)
    else:
        inits["w"] = w.T.copy()
        mm = helper.make_node("MatMul", ["s", "w"], ["y"], name="lin")
    inits["a"] = (rng.random(n) - 0.5).astype(np.float32)
    nodes = [ds("x", "t", "s"), mm, helper.make_node("Mul", ["y", "a"], ["z"], name="scale")]
    model = make_model(nodes, {"x": [3, d]}, {"z": None}, inits)
    mod, plan = _import(model, batch=3)
    assert plan.binary["lin"].kind == "dense" and "lin" in plan.folded_scale
    names = relax_func_names(mod)
    assert any(x.startswith("bnn_bdense_") for x in names) and any(x.startswith("bnn_bitpack_last_") for x in names)
    x = int_inputs(rng, (3, d))
    (y,), _ = build_and_run(model, {"x": x}, batch=3)
    np.testing.assert_allclose(y, ort_run(model, {"x": x})[0], rtol=RTOL, atol=ATOL)


def test_token_matmul_is_binary(rng):
    b, length, d, n = 2, 5, 65, 6
    inits = {"t": rng.standard_normal((b, 1, d)).astype(np.float32), "w": pm1(rng, (d, n))}
    nodes = [ds("x", "t", "s"), helper.make_node("MatMul", ["s", "w"], ["y"], name="lin")]
    model = make_model(nodes, {"x": [b, length, d]}, {"y": None}, inits)
    _, plan = _import(model, batch=b)
    assert plan.binary["lin"].kind == "dense"
    x = rng.standard_normal((b, length, d)).astype(np.float32)
    (y,), _ = build_and_run(model, {"x": x}, batch=b)
    np.testing.assert_array_equal(y, ort_run(model, {"x": x})[0])


@pytest.mark.parametrize("transposed", [False, True])
def test_matmul_of_two_signs_is_batch_matmul(rng, transposed):
    b, h, length, dh = 2, 2, 5, 67
    if transposed:  # Q @ Transpose(sign(K)): K stored (B,h,L,dh)
        nodes = [ds("q", "tq", "sq"), ds("k", "tk", "sk"),
                 helper.make_node("Transpose", ["sk"], ["skt"], name="tr", perm=[0, 1, 3, 2]),
                 helper.make_node("MatMul", ["sq", "skt"], ["y"], name="qk")]
        kshape, tk = [b, h, length, dh], rng.standard_normal((b, 1, 1, dh)).astype(np.float32)
    else:  # Kᵀ already (B,h,dh,L)
        nodes = [ds("q", "tq", "sq"), ds("k", "tk", "sk"),
                 helper.make_node("MatMul", ["sq", "sk"], ["y"], name="qk")]
        kshape, tk = [b, h, dh, length], rng.standard_normal((b, 1, dh, 1)).astype(np.float32)
    nodes.append(helper.make_node("Mul", ["y", "alpha"], ["z"], name="scale"))
    inits = {"tq": rng.standard_normal((b, 1, 1, dh)).astype(np.float32), "tk": tk,
             "alpha": np.float32(dh ** -0.5)}
    model = make_model(nodes, {"q": [b, h, length, dh], "k": kshape}, {"z": None}, inits)
    mod, plan = _import(model, batch=b)
    layer = plan.binary["qk"]
    assert layer.kind == "batch_matmul" and layer.b_transposed == transposed
    assert "qk" in plan.folded_scale
    assert any(n.startswith("bnn_bbmm_") for n in relax_func_names(mod))
    feeds = {"q": rng.standard_normal((b, h, length, dh)).astype(np.float32),
             "k": rng.standard_normal(kshape).astype(np.float32)}
    (y,), _ = build_and_run(model, feeds, batch=b)
    np.testing.assert_allclose(y, ort_run(model, feeds)[0], rtol=RTOL, atol=ATOL)


def test_matmul_sign_times_float_is_not_binary(rng):
    nodes = [ds("q", "zero", "sq"), helper.make_node("MatMul", ["sq", "k"], ["y"], name="qk")]
    model = make_model(nodes, {"q": [1, 4, 8], "k": [1, 8, 4]}, {"y": None}, {"zero": np.float32(0)})
    _, plan = _import(model)
    assert plan.binary == {}


def test_nonchannel_mul_is_not_folded(rng):
    # regression: FuseTIR once fused the kernel with this Mul ("Inconsistent buffers")
    # a Mul by a spatial map after a binary conv is not a per-channel scale: keep it float
    model = _conv_model(rng, with_scale=False)
    model.graph.node.append(helper.make_node("Mul", ["y", "m"], ["z"], name="spatial"))
    from onnx import numpy_helper
    model.graph.initializer.append(numpy_helper.from_array(
        rng.standard_normal((1, 1, 6, 7)).astype(np.float32), "m"))
    model.graph.output[0].name = "z"
    _, plan = _import(model, batch=2)
    assert "conv" in plan.binary and plan.folded_scale == {}
    _check_against_ort(model, int_inputs(rng, (2, 5, 6, 7)))


@pytest.mark.parametrize("c,k,hw,pads,strides,dil", [
    (3, 4, (5, 5), (0, 0, 0, 0), (1, 1), (1, 1)),
    (65, 3, (7, 6), (1, 1, 1, 1), (2, 2), (1, 1)),
    (130, 5, (9, 9), (2, 2, 2, 2), (1, 1), (2, 2)),
    (64, 66, (8, 5), (2, 1, 0, 1), (2, 1), (1, 1)),
    (7, 2, (3, 3), (2, 2, 2, 2), (2, 2), (1, 1)),  # output made only of border taps
])
def test_conv_geometry_sweep(rng, c, k, hw, pads, strides, dil):
    """Every border position for strides/pads/dilations; exact integers (no scale)."""
    nodes = [ds("x", "t", "s"),
             helper.make_node("Conv", ["s", "w"], ["y"], name="conv", pads=list(pads),
                              strides=list(strides), dilations=list(dil))]
    inits = {"t": rng.integers(-1, 2, size=(1, c, 1, 1)).astype(np.float32), "w": pm1(rng, (k, c, 3, 3))}
    model = make_model(nodes, {"x": [2, c, *hw]}, {"y": None}, inits)
    x = int_inputs(rng, (2, c, *hw))
    (y,), plan = build_and_run(model, {"x": x}, batch=2)
    assert list(plan.binary) == ["conv"]
    # independent reference: float conv of the same ±1 tensors (exact below 2^24)
    np.testing.assert_array_equal(y, ort_run(model, {"x": x})[0])


def test_unknown_custom_op_names_node():
    node = helper.make_node("Mystery", ["x"], ["y"], domain="com.example", name="odd_node")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [1, 2])],
                              [helper.make_tensor_value_info("y", 1, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("com.example", 1)])
    with pytest.raises(UnsupportedModelError, match=r"odd_node.*com\.example::Mystery"):
        _import(model)


def test_unconvertible_standard_op_names_node():
    node = helper.make_node(UNCONVERTIBLE, ["x"], ["y"], name="odd_std_op")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", 1, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(UnsupportedModelError, match=rf"odd_std_op.*{UNCONVERTIBLE}"):
        _import(model)


@pytest.mark.parametrize("attrs", [dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
                                   dict(kernel_shape=[2, 3], strides=[1, 2], pads=[0, 1, 1, 0])])
def test_max_pool_uses_the_separable_kernel(rng, attrs):
    node = helper.make_node("MaxPool", ["x"], ["y"], name="pool", **attrs)
    model = make_model([node], {"x": [2, 3, 9, 10]}, {"y": None})
    x = rng.standard_normal((2, 3, 9, 10)).astype(np.float32)
    (y,), plan = build_and_run(model, {"x": x}, batch=2)
    np.testing.assert_array_equal(y, ort_run(model, {"x": x})[0])
    assert plan.max_pools == {"pool"}
    assert [v["kind"] for v in plan.kernels.values()] == ["maxpool2d"]


def test_max_pool_with_ceil_mode_stays_with_tvm(rng):
    node = helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2],
                            ceil_mode=1)
    model = make_model([node], {"x": [1, 2, 8, 8]}, {"y": None})
    x = rng.standard_normal((1, 2, 8, 8)).astype(np.float32)
    (y,), plan = build_and_run(model, {"x": x})
    np.testing.assert_array_equal(y, ort_run(model, {"x": x})[0])
    assert not plan.max_pools


@pytest.mark.parametrize("form", ["cube", "cube_swapped", "square", "square_used_twice"])
def test_power_mean_is_one_reduction(rng, form):
    """INSTA's E[x³] / E[x²] over H, W: one pass over x, not x³ written out and read back."""
    axes = np.array([2, 3], np.int64)
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"], name="sq")]
    if form == "cube":
        nodes.append(helper.make_node("Mul", ["sq", "x"], ["p"], name="cube"))
    elif form == "cube_swapped":
        nodes.append(helper.make_node("Mul", ["x", "sq"], ["p"], name="cube"))
    nodes.append(helper.make_node("ReduceMean", ["sq" if form.startswith("square") else "p", "axes"],
                                  ["m"], name="mean", keepdims=1))
    outputs = {"m": None}
    if form == "square_used_twice":  # x*x is also an output: it must stay, no rewrite
        outputs["sq"] = None
    model = make_model(nodes, {"x": [2, 5, 6, 7]}, outputs, {"axes": axes})
    x = rng.standard_normal((2, 5, 6, 7)).astype(np.float32)
    outs, plan = build_and_run(model, {"x": x}, batch=2)
    for got, ref in zip(outs, ort_run(model, {"x": x})):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # x*x kept as an output: a plain mean of it (power 1), no rewrite of the Mul
    expect = ("sq", 1, True) if form == "square_used_twice" else ("x", 2 if form == "square" else 3, True)
    assert plan.power_means == {"mean": expect}


@pytest.mark.parametrize("hw,keepdims", [((8, 8), 1), ((8, 8), 0), ((7, 7), 1), ((4, 16), 1)],
                         ids=["flat_keep", "flat_squeeze", "rows_7x7", "rows_w16"])
def test_hw_mean_is_one_reduction(rng, hw, keepdims):
    """A plain ReduceMean over H, W (the thresholds' pools) runs as one reduction kernel, over the
    flattened H*W row where W is no multiple of 16 but H*W is."""
    node = helper.make_node("ReduceMean", ["x", "axes"], ["m"], name="pool", keepdims=keepdims)
    model = make_model([node], {"x": [2, 5, *hw]}, {"m": None}, {"axes": np.array([2, 3], np.int64)})
    x = rng.standard_normal((2, 5, *hw)).astype(np.float32)
    (got,), plan = build_and_run(model, {"x": x}, batch=2)
    np.testing.assert_allclose(got, ort_run(model, {"x": x})[0], rtol=1e-5, atol=1e-6)
    assert plan.power_means == {"pool": ("x", 1, bool(keepdims))}


def _dynamic_prelu(shift_shape, *, extra_use: bool = False, cube: bool = False):
    """y = Where(d >= 0, d, slope * d) + s_out, d = x - s_in (DyBNN's DPReLU as exported), its
    H, W mean (and INSTA's E[y^3] with ``cube``), and y itself as outputs."""
    nodes = [helper.make_node("Sub", ["x", "s_in"], ["d"], name="sub"),
             helper.make_node("GreaterOrEqual", ["d", "zero"], ["ge"], name="ge"),
             helper.make_node("Mul", ["slope", "d"], ["m"], name="mul"),
             helper.make_node("Where", ["ge", "d", "m"], ["w"], name="where"),
             helper.make_node("Add", ["w", "s_out"], ["y"], name="prelu_out"),
             helper.make_node("ReduceMean", ["y", "axes"], ["mean"], name="pool", keepdims=1)]
    outputs = {"y": None, "mean": None}
    if cube:
        nodes += [helper.make_node("Mul", ["y", "y"], ["y2"], name="sq"),
                  helper.make_node("Mul", ["y2", "y"], ["y3"], name="cube"),
                  helper.make_node("ReduceMean", ["y3", "axes"], ["m3"], name="pool3", keepdims=0)]
        outputs["m3"] = None
    if extra_use:  # d is also read elsewhere: it must stay, no fusion
        nodes.append(helper.make_node("Neg", ["d"], ["nd"], name="neg"))
        outputs["nd"] = None
    inits = {"zero": np.array(0.0, np.float32), "axes": np.array([2, 3], np.int64),
             "slope": np.array([0.25, -0.5, 1.0, 0.1], np.float32).reshape(1, 4, 1, 1)}
    return make_model(nodes, {"x": [2, 4, 7, 8], "s_in": shift_shape, "s_out": shift_shape}, outputs, inits)


@pytest.mark.parametrize("shift_shape,cube,fused", [
    ([2, 4, 1, 1], False, True),   # per sample and channel (DyBNN)
    ([1, 4, 1, 1], True, True),    # per channel, E[y] and E[y^3] from one kernel (INSTA)
    ([2, 4, 7, 1], False, False),  # varies over H: imported as it is
], ids=["dybnn", "insta_cube", "h_varying_shift"])
def test_dynamic_prelu_computes_its_pools(rng, shift_shape, cube, fused):
    model = _dynamic_prelu(shift_shape, cube=cube)
    x = rng.standard_normal((2, 4, 7, 8)).astype(np.float32)
    feeds = {"x": x, "s_in": rng.standard_normal(shift_shape).astype(np.float32),
             "s_out": rng.standard_normal(shift_shape).astype(np.float32)}
    x[0, 0, 0, :3] = feeds["s_in"].reshape(-1)[0]  # d == 0 exactly: the tie of the >= test
    outs, plan = build_and_run(model, feeds, batch=2)
    ref = ort_run(model, feeds)
    np.testing.assert_array_equal(outs[0], ref[0])  # y bit-identical
    for got, want in zip(outs[1:], ref[1:]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert list(plan.prelu_stats) == ["prelu_out"]  # planned structurally, shapes checked at import
    kernels = [v for v in plan.kernels.values() if v["kind"] == "prelu_stats"]
    assert len(kernels) == (1 if fused else 0)
    if fused:  # the sidecar says what the kernel replaced: the PReLU's nodes and the pools
        assert kernels[0]["layers"] == ["prelu_out"]
        assert set(kernels[0]["fused"]) == {"sub", "ge", "mul", "where", "pool"} | ({"pool3"} if cube else set())


def test_dynamic_prelu_with_shared_intermediate_is_not_fused(rng):
    model = _dynamic_prelu([2, 4, 1, 1], extra_use=True)
    feeds = {"x": rng.standard_normal((2, 4, 7, 8)).astype(np.float32),
             "s_in": rng.standard_normal((2, 4, 1, 1)).astype(np.float32),
             "s_out": rng.standard_normal((2, 4, 1, 1)).astype(np.float32)}
    outs, plan = build_and_run(model, feeds, batch=2)
    for got, want in zip(outs, ort_run(model, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert plan.prelu_stats == {}


def test_dynamic_prelu_fusion_follows_the_epilogue_switch(rng):
    model = _dynamic_prelu([2, 4, 1, 1])
    feeds = {"x": rng.standard_normal((2, 4, 7, 8)).astype(np.float32),
             "s_in": rng.standard_normal((2, 4, 1, 1)).astype(np.float32),
             "s_out": rng.standard_normal((2, 4, 1, 1)).astype(np.float32)}
    _, plan = build_and_run(model, feeds, batch=2, fuse_epilogues=False)
    assert plan.prelu_stats == {}



@pytest.mark.parametrize("conv_out_is_output", [False, True], ids=["stem", "conv_output_kept"])
def test_stem_conv_feeds_its_pool_channel_blocks(rng, conv_out_is_output):
    """Conv → MaxPool (a ResNet stem): the conv writes NCHWc and the pool reads it, unless the
    conv's output is needed as it is."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="stem", kernel_shape=[7, 7],
                              strides=[2, 2], pads=[3, 3, 3, 3]),
             helper.make_node("MaxPool", ["c"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1])]
    outputs = {"y": None, **({"c": None} if conv_out_is_output else {})}
    model = make_model(nodes, {"x": [1, 3, 30, 28]}, outputs,
                       {"w": rng.standard_normal((32, 3, 7, 7)).astype(np.float32),
                        "b": rng.standard_normal(32).astype(np.float32)})
    x = rng.standard_normal((1, 3, 30, 28)).astype(np.float32)
    outs, plan = build_and_run(model, {"x": x})
    for got, want in zip(outs, ort_run(model, {"x": x})):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert plan.pooled_float_convs == (set() if conv_out_is_output else {"stem"})
    blocked = [k for k in plan.kernels if k.startswith("bnn_fconv2d") and "_c_" in k]
    assert len(blocked) == (0 if conv_out_is_output else 1)



@pytest.mark.parametrize("attrs,ours", [
    (dict(kernel_shape=[2, 2], strides=[2, 2]), True),             # the downsampling shortcut
    (dict(kernel_shape=[3, 2], strides=[3, 2]), True),
    (dict(kernel_shape=[2, 2], strides=[1, 1]), False),            # overlapping windows: TVM's
    (dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1]), False),
], ids=["2x2", "3x2", "overlap", "padded"])
def test_avg_pool_with_tiling_windows_uses_the_kernel(rng, attrs, ours):
    node = helper.make_node("AveragePool", ["x"], ["y"], name="pool", **attrs)
    model = make_model([node], {"x": [2, 3, 12, 10]}, {"y": None})
    x = rng.standard_normal((2, 3, 12, 10)).astype(np.float32)
    (y,), plan = build_and_run(model, {"x": x}, batch=2)
    np.testing.assert_allclose(y, ort_run(model, {"x": x})[0], rtol=1e-6, atol=1e-6)
    assert (plan.avg_pools == {"pool"}) == ours
    assert [v["kind"] for v in plan.kernels.values()] == (["avgpool2d"] if ours else [])
