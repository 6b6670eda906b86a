"""Transposes, reshapes, max-pools and Larq's NHWC Pad moved across a DynamicSign
(frontend.canonicalize.sign_moves): the binary layer reads the sign directly, ONNX Runtime gives
bit-identical results before and after (integer data: ties with the thresholds, padded and
ceil-mode pools), and forms that do not commute stay."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from bnncompile.custom_ops.dynamic_sign import is_dynamic_sign
from onnx import helper
from testkit.onnx_graphs import build_and_run, ds, make_model, ort_run, pm1

from bnncompile.frontend import prepare
from bnncompile.frontend.binary_layers import layer_report


def _ops(model):
    return [n.op_type for n in model.graph.node]


def _same(model, canonical, x):
    np.testing.assert_array_equal(ort_run(canonical, {"x": x})[0], ort_run(model, {"x": x})[0])


@pytest.mark.parametrize(
    "t_shape",
    [None, (), (1, 1, 1, 6), (6,), (2, 1, 1, 6)],
    ids=["no_t", "scalar", "per_channel", "per_channel_rank1", "per_sample"],
)
def test_nhwc_sign_transposed_to_conv(t_shape, rng):
    """Larq/tf2onnx: sign in NHWC, Transpose(0,3,1,2), Conv; the threshold is transposed too."""
    inits = {"w": pm1(rng, (4, 6, 3, 3))}
    if t_shape is not None:
        inits["t"] = rng.integers(-1, 2, t_shape).astype(np.float32)
    nodes = [
        ds("x", "t" if t_shape is not None else None, "s", name="sign"),
        helper.make_node("Transpose", ["s"], ["st"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Conv", ["st", "w"], ["y"], pads=[1, 1, 1, 1], name="conv"),
    ]
    model = make_model(nodes, {"x": [2, 5, 5, 6]}, {"y": None}, inits)
    canonical = prepare(model)
    assert layer_report(canonical)["conv"].startswith("yes")
    (sign,) = [n for n in canonical.graph.node if is_dynamic_sign(n)]
    assert sign.name == "sign"
    x = rng.integers(-2, 3, (2, 5, 5, 6)).astype(np.float32)
    _same(model, canonical, x)


def test_transposes_cancel(rng):
    """NCHW → Transpose → sign → Transpose back (tf2onnx never cancels the pair): the sign reads
    the NCHW tensor."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Transpose", ["r"], ["rt"], perm=[0, 2, 3, 1], name="to_nhwc"),
        ds("rt", None, "s", name="sign"),
        helper.make_node("Transpose", ["s"], ["st"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Conv", ["st", "w"], ["y"], name="conv"),
    ]
    model = make_model(nodes, {"x": [1, 3, 4, 4]}, {"y": None}, {"w": pm1(rng, (2, 3, 1, 1))})
    canonical = prepare(model)
    assert _ops(canonical) == ["Relu", "DynamicSign", "Conv"]
    _same(model, canonical, rng.integers(-2, 3, (1, 3, 4, 4)).astype(np.float32))


@pytest.mark.parametrize("channels", [1, 3])
def test_nhwc_pad_one_before_transpose(channels, rng):
    """Larq pad_values=1: Pad(value=1) on the NHWC sign, then Transpose — or, for one channel,
    tf2onnx's Reshape(-1, 1, H, W) — then a Conv without pads: becomes Pad(value=1) on NCHW right
    before the Conv (one-padded binary conv)."""
    h = w = 5
    inits = {
        "pads": np.array([0, 1, 1, 0, 0, 1, 1, 0], np.int64),
        "one": np.float32(1.0),
        "w": pm1(rng, (4, channels, 3, 3)),
        "shape": np.array([-1, 1, h + 2, w + 2], np.int64),
    }
    nodes = [
        ds("x", None, "s", name="sign"),
        helper.make_node("Pad", ["s", "pads", "one"], ["sp"], name="pad"),
    ]
    if channels == 1:
        nodes.append(helper.make_node("Reshape", ["sp", "shape"], ["st"], name="to_nchw"))
    else:
        nodes.append(
            helper.make_node("Transpose", ["sp"], ["st"], perm=[0, 3, 1, 2], name="to_nchw")
        )
    nodes.append(helper.make_node("Conv", ["st", "w"], ["y"], name="conv"))
    model = make_model(nodes, {"x": [2, h, w, channels]}, {"y": None}, inits)
    canonical = prepare(model)
    assert _ops(canonical) == ["Transpose", "DynamicSign", "Pad", "Conv"]
    pad = canonical.graph.node[2]
    pads = onnx.numpy_helper.to_array(
        next(t for t in canonical.graph.initializer if t.name == pad.input[1])
    )
    assert pads.tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    assert layer_report(canonical)["conv"].startswith("yes")
    x = rng.integers(-2, 3, (2, h, w, channels)).astype(np.float32)
    _same(model, canonical, x)
    (y,), plan = build_and_run(model, {"x": x}, batch=2)
    assert plan.binary["conv"].pad_value == 1.0
    np.testing.assert_array_equal(y, ort_run(model, {"x": x})[0])


POOLS = [
    dict(kernel_shape=[2, 2], strides=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),  # padding never wins a max
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1], ceil_mode=1),
    dict(kernel_shape=[2, 3], strides=[1, 2], dilations=[2, 1], pads=[1, 0, 1, 2]),
]


@pytest.mark.parametrize("pool", range(len(POOLS)))
@pytest.mark.parametrize(
    "t_shape", [None, (1, 6, 1, 1), (2, 6, 1, 1)], ids=["zero", "per_channel", "per_sample"]
)
def test_maxpool_after_sign(pool, t_shape, rng):
    """FINN: BipolarQuant → MaxPool → Conv. max(sign(x - t)) == sign(max(x) - t) for a threshold
    constant over each window; the -inf pool padding ignores padded cells either way."""
    inits = {"w": pm1(rng, (4, 6, 3, 3))}
    if t_shape is not None:
        inits["t"] = rng.integers(-1, 2, t_shape).astype(np.float32)
    nodes = [
        ds("x", "t" if t_shape else None, "s", name="sign"),
        helper.make_node("MaxPool", ["s"], ["p"], name="pool", **POOLS[pool]),
        helper.make_node("Conv", ["p", "w"], ["y"], pads=[1, 1, 1, 1], name="conv"),
    ]
    model = make_model(nodes, {"x": [2, 6, 7, 9]}, {"y": None}, inits)
    canonical = prepare(model)
    assert _ops(canonical)[:2] == ["MaxPool", "DynamicSign"]
    assert layer_report(canonical)["conv"].startswith("yes")
    for _ in range(3):
        _same(model, canonical, rng.integers(-2, 3, (2, 6, 7, 9)).astype(np.float32))
    x = np.full((2, 6, 7, 9), -3.0, np.float32)  # all below every threshold: padding must not win
    _same(model, canonical, x)


def test_maxpool_with_spatial_threshold_stays(rng):
    nodes = [
        ds("x", "t", "s", name="sign"),
        helper.make_node("MaxPool", ["s"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Conv", ["p", "w"], ["y"], name="conv"),
    ]
    model = make_model(
        nodes,
        {"x": [1, 2, 4, 4]},
        {"y": None},
        {"t": rng.integers(-1, 2, (1, 2, 4, 4)).astype(np.float32), "w": pm1(rng, (3, 2, 1, 1))},
    )
    canonical = prepare(model)
    assert _ops(canonical) == ["DynamicSign", "MaxPool", "Conv"]


@pytest.mark.parametrize("flatten", [False, True])
def test_reshape_after_sign(flatten, rng):
    """FINN: BipolarQuant → Reshape(4, -1) / Flatten → Gemm: the sign of the flattened tensor."""
    inits = {
        "t": np.zeros((1, 1, 1, 1), np.float32),
        "w": pm1(rng, (8, 48)),
        "shape": np.array([2, -1], np.int64),
    }
    if flatten:
        nodes = [helper.make_node("Flatten", ["s"], ["f"], axis=1, name="flat")]
    else:
        nodes = [helper.make_node("Reshape", ["s", "shape"], ["f"], name="flat")]
    nodes = [
        ds("x", "t", "s", name="sign"),
        *nodes,
        helper.make_node("Gemm", ["f", "w"], ["y"], transB=1, name="fc"),
    ]
    model = make_model(nodes, {"x": [2, 3, 4, 4]}, {"y": None}, inits)
    canonical = prepare(model)
    assert _ops(canonical) == [("Flatten" if flatten else "Reshape"), "DynamicSign", "Gemm"]
    assert layer_report(canonical)["fc"].startswith("yes")
    _same(model, canonical, rng.integers(-1, 2, (2, 3, 4, 4)).astype(np.float32))


def test_reshape_with_per_channel_threshold_stays(rng):
    nodes = [
        ds("x", "t", "s", name="sign"),
        helper.make_node("Flatten", ["s"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w"], ["y"], transB=1, name="fc"),
    ]
    model = make_model(
        nodes,
        {"x": [2, 3, 2, 2]},
        {"y": None},
        {"t": np.ones((1, 3, 1, 1), np.float32), "w": pm1(rng, (4, 12))},
    )
    assert _ops(prepare(model)) == ["DynamicSign", "Flatten", "Gemm"]


def test_attention_transpose_stays(rng):
    """Transpose(sign(k)) swapping the last two axes is the binary batch-matmul's own form."""
    nodes = [
        ds("q", None, "qs", name="sq"),
        ds("k", None, "ks", name="sk"),
        helper.make_node("Transpose", ["ks"], ["kt"], perm=[0, 2, 1], name="kt"),
        helper.make_node("MatMul", ["qs", "kt"], ["y"], name="qk"),
    ]
    model = make_model(nodes, {"q": [1, 4, 8], "k": [1, 4, 8]}, {"y": None})
    canonical = prepare(model)
    assert _ops(canonical) == _ops(model)


def test_move_not_leading_to_a_layer_stays(rng):
    nodes = [
        ds("x", None, "s", name="sign"),
        helper.make_node("Transpose", ["s"], ["y"], perm=[0, 3, 1, 2], name="out"),
    ]
    model = make_model(nodes, {"x": [1, 2, 2, 3]}, {"y": None})
    assert _ops(prepare(model)) == ["DynamicSign", "Transpose"]
