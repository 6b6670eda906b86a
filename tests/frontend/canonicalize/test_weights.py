"""Binary layers' weights (frontend.canonicalize.weight_fold / weight_scale): weights computed
from constants are folded; a ``±s_c`` weight (BN folded in by tf2onnx / dynamo, mean|W|, QONNX
scales) splits into ±1 and a per-channel Mul only when every channel's magnitude is provably one
constant; float layers are left alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from testkit.onnx_graphs import build_and_run, ds, make_model, ort_run, pm1

from bnncompile.frontend import prepare
from bnncompile.frontend.binary_layers import layer_report
from bnncompile.frontend.canonicalize.weight_scale import channel_scales


def _ops(model):
    return [n.op_type for n in model.graph.node]


def _scaled(rng, shape, axis):
    s = (rng.random(shape[axis]) + 0.25).astype(np.float32) * np.where(
        rng.random(shape[axis]) < 0.3, -1, 1
    )
    bshape = [1] * len(shape)
    bshape[axis] = shape[axis]
    return (pm1(rng, shape) * s.reshape(bshape)).astype(np.float32)


def _check(model, canonical, x, **kw):
    """Compiled vs ONNX Runtime on the original: exact integer counts times s vs float sums of
    ±s products — equal up to the original's rounding (a few ulps of the largest sum)."""
    (y,), plan = build_and_run(model, {"x": x}, batch=x.shape[0], **kw)
    ref = ort_run(model, {"x": x})[0]
    np.testing.assert_allclose(y, ref, rtol=0, atol=4e-6 * max(1.0, float(np.abs(ref).max())))
    np.testing.assert_allclose(
        ort_run(canonical, {"x": x})[0], ref, rtol=0, atol=4e-6 * max(1.0, float(np.abs(ref).max()))
    )
    return plan


@pytest.mark.parametrize("bias", [False, True])
def test_conv_scaled_weight_splits(bias, rng):
    w = _scaled(rng, (8, 4, 3, 3), 0)
    inits = {"w": w}
    ins = ["s", "w"]
    if bias:
        inits["b"] = rng.standard_normal(8).astype(np.float32)
        ins.append("b")
    nodes = [
        ds("x", None, "s", name="sign"),
        helper.make_node("Conv", ins, ["y"], pads=[1, 1, 1, 1], name="conv"),
    ]
    model = make_model(nodes, {"x": [2, 4, 6, 6]}, {"y": None}, inits)
    canonical = prepare(model)
    assert _ops(canonical) == ["DynamicSign", "Conv", "Mul"] + (["Add"] if bias else [])
    assert layer_report(canonical)["conv"].startswith("yes")
    plan = _check(model, canonical, rng.standard_normal((2, 4, 6, 6)).astype(np.float32))
    assert plan.binary["conv"].kind == "conv"


@pytest.mark.parametrize("op,trans_b", [("Gemm", 1), ("Gemm", 0), ("MatMul", 0)])
def test_dense_scaled_weight_splits(op, trans_b, rng):
    shape = (16, 24) if trans_b else (24, 16)
    w = _scaled(rng, shape, 0 if trans_b else 1)
    inits = {"w": w, "c": rng.standard_normal(16).astype(np.float32)}
    if op == "Gemm":
        node = helper.make_node("Gemm", ["s", "w", "c"], ["y"], transB=trans_b, name="fc")
    else:
        node = helper.make_node("MatMul", ["s", "w"], ["y"], name="fc")
        del inits["c"]
    model = make_model([ds("x", None, "s", name="sign"), node], {"x": [3, 24]}, {"y": None}, inits)
    canonical = prepare(model)
    assert _ops(canonical) == ["DynamicSign", op, "Mul"] + (["Add"] if op == "Gemm" else [])
    plan = _check(model, canonical, rng.standard_normal((3, 24)).astype(np.float32))
    assert plan.binary["fc"].kind == "dense"


def test_activation_scale_moves_after_the_layer(rng):
    """QONNX BipolarQuant(x, 0.5): Mul(sign, 0.5) before a ±1 conv → Mul(conv, 0.5) after it."""
    nodes = [
        ds("x", None, "s", name="sign"),
        helper.make_node("Mul", ["s", "a"], ["sa"], name="scale"),
        helper.make_node("Conv", ["sa", "w"], ["y"], pads=[1, 1, 1, 1], name="conv"),
    ]
    model = make_model(
        nodes,
        {"x": [1, 3, 5, 5]},
        {"y": None},
        {"a": np.array([0.5], np.float32), "w": _scaled(rng, (4, 3, 3, 3), 0)},
    )
    canonical = prepare(model)
    assert _ops(canonical) == ["DynamicSign", "Conv", "Mul"]
    _check(model, canonical, rng.standard_normal((1, 3, 5, 5)).astype(np.float32))


@pytest.mark.parametrize("defect", ["mixed_channel", "zero_channel", "inf", "not_a_sign"])
def test_unprovable_weights_stay(defect, rng):
    w = _scaled(rng, (4, 3, 3, 3), 0)
    src = "s"
    if defect == "mixed_channel":
        w[1, 0, 0, 0] *= np.float32(1.0000001)  # one element off by an ulp: not one magnitude
    elif defect == "zero_channel":
        w[2] = 0.0
    elif defect == "inf":
        w[0] = np.inf
    else:
        src = "x"
    nodes = [
        ds("x", None, "s", name="sign"),
        helper.make_node("Conv", [src, "w"], ["y"], name="conv"),
    ]
    model = make_model(nodes, {"x": [1, 3, 4, 4]}, {"y": None}, {"w": w})
    canonical = prepare(model)
    conv = next(n for n in canonical.graph.node if n.op_type == "Conv")
    assert conv.input[1] == "w"
    assert layer_report(canonical)["conv"].startswith("no")


def test_channel_scales_is_exact():
    w = np.array([[0.5, -0.5, 0.5], [2.0, 2.0, -2.0]], np.float32)
    np.testing.assert_array_equal(channel_scales(w, 0), [0.5, 2.0])
    assert channel_scales(w, 1) is None
    assert channel_scales(w.astype(np.float64), 0) is None
    w[0, 1] = np.nextafter(np.float32(-0.5), np.float32(0))
    assert channel_scales(w, 0) is None


def test_torchscript_linear_sign_weight_folds(rng):
    """TorchScript F.linear(sign(x), sign(W)): MatMul(x, Transpose(Sign(W)))."""
    nodes = [
        helper.make_node("Sign", ["x"], ["s"], name="act"),
        helper.make_node("Sign", ["w"], ["ws"], name="wsign"),
        helper.make_node("Transpose", ["ws"], ["wt"], perm=[1, 0], name="wt"),
        helper.make_node("MatMul", ["s", "wt"], ["y"], name="fc"),
    ]
    model = make_model(
        nodes, {"x": [2, 12]}, {"y": None}, {"w": rng.standard_normal((5, 12)).astype(np.float32)}
    )
    canonical = prepare(model)
    assert _ops(canonical) == ["DynamicSign", "MatMul"]
    x = rng.standard_normal((2, 12)).astype(np.float32)
    np.testing.assert_array_equal(ort_run(canonical, {"x": x})[0], ort_run(model, {"x": x})[0])


def test_reactnet_scaled_sign_weight_folds_and_splits(rng):
    """TorchScript ReActNet HardBinaryConv: Mul(ReduceMean³(Abs(W)), Sign(W))."""
    axes = {f"ax{i}": np.array([i], np.int64) for i in (1, 2, 3)}
    nodes = [
        ds("x", None, "s", name="sign"),
        helper.make_node("Abs", ["w"], ["aw"]),
        helper.make_node("ReduceMean", ["aw", "ax3"], ["m3"], keepdims=1),
        helper.make_node("ReduceMean", ["m3", "ax2"], ["m2"], keepdims=1),
        helper.make_node("ReduceMean", ["m2", "ax1"], ["m1"], keepdims=1),
        helper.make_node("Sign", ["w"], ["ws"]),
        helper.make_node("Mul", ["m1", "ws"], ["wq"]),
        helper.make_node("Conv", ["s", "wq"], ["y"], pads=[1, 1, 1, 1], name="conv"),
    ]
    model = make_model(
        nodes,
        {"x": [2, 4, 5, 5]},
        {"y": None},
        {"w": rng.standard_normal((6, 4, 3, 3)).astype(np.float32), **axes},
    )
    canonical = prepare(model)
    assert _ops(canonical) == ["DynamicSign", "Conv", "Mul"]
    _check(model, canonical, rng.standard_normal((2, 4, 5, 5)).astype(np.float32))


def test_float_layer_weight_cone_is_left(rng):
    """A float conv (input not a sign) keeps its computed weight."""
    nodes = [
        helper.make_node("Sign", ["w"], ["ws"]),
        helper.make_node("Transpose", ["ws"], ["wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "wt"], ["y"], name="fc"),
    ]
    model = make_model(
        nodes, {"x": [2, 6]}, {"y": None}, {"w": rng.standard_normal((3, 6)).astype(np.float32)}
    )
    canonical = prepare(model)
    assert _ops(canonical) == ["Transpose", "MatMul"]  # Sign(W) folds (exact); the rest stays
    assert onnx.numpy_helper.to_array(canonical.graph.initializer[0]).shape == (3, 6)
