"""QONNX ``BipolarQuant`` (frontend.canonicalize.bipolar_quant) and ``Quant``
(frontend.canonicalize.qonnx_quant): signs, scales and weights as Brevitas exports them, each
rewritten graph equal to qonnx's semantics (``onnx.reference`` with qonnx's ops; ONNX Runtime
cannot run QONNX) on inputs with exact zeros and ties."""

from __future__ import annotations

import numpy as np
import pytest
from bnncompile.custom_ops.dynamic_sign import is_dynamic_sign
from onnx import helper
from qonnx_reference import QONNX, qonnx_model, run
from testkit.onnx_graphs import build_and_run, ort_run

from bnncompile.frontend import prepare
from bnncompile.frontend.binary_layers import layer_report
from bnncompile.frontend.canonicalize import sign_zero_sites, via
from bnncompile.frontend.canonicalize.qonnx_quant import bipolar_threshold


def _bq(x, s, y, name):
    return helper.make_node("BipolarQuant", [x, s], [y], domain=QONNX, name=name)


def _conv_model(rng, act_scale, w_scale):
    """BipolarQuant(x, a) → Conv(·, BipolarQuant(W, s)) (Brevitas's binary conv)."""
    inits = {
        "a": np.asarray(act_scale, np.float32),
        "s": np.asarray(w_scale, np.float32),
        "w": rng.standard_normal((6, 4, 3, 3)).astype(np.float32),
    }
    nodes = [
        _bq("x", "a", "xa", "act_quant"),
        _bq("w", "s", "wq", "weight_quant"),
        helper.make_node("Conv", ["xa", "wq"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    return qonnx_model(nodes, {"x": [2, 4, 5, 5]}, {"y": [2, 6, 5, 5]}, inits)


def _int_inputs(rng, shape):
    return rng.integers(-2, 3, shape).astype(
        np.float32
    )  # exact zeros: BipolarQuant maps them to +1


@pytest.mark.parametrize(
    "act_scale,w_scale",
    [
        ([1.0], [1.0]),  # FINN's CNV / TFC
        ([0.5], [0.1]),  # brevitas.quant.binary: per-tensor scales
        (1.0, np.linspace(0.5, 2.0, 6).reshape(6, 1, 1, 1)),  # per-output-channel weight scale
    ],
)
def test_binary_conv(act_scale, w_scale, rng):
    model = _conv_model(rng, act_scale, w_scale)
    canonical = prepare(model)
    (sign,) = [n for n in canonical.graph.node if is_dynamic_sign(n)]
    assert sign.name == "act_quant" and via(sign) == "BipolarQuant(x, scale)"
    assert not sign_zero_sites(canonical)
    assert layer_report(canonical)["conv"].startswith("yes")
    assert not any(n.domain == QONNX for n in canonical.graph.node)
    x = _int_inputs(rng, (2, 4, 5, 5))
    ref = run(model, {"x": x})[0]
    # float sums of ±s (the reference; ORT fuses Conv+Mul back) vs the exact count times s:
    # they differ by the sum's rounding, a few ulps of the largest partial sum
    atol = 1e-6 * float(np.abs(ref).max())
    np.testing.assert_allclose(ort_run(canonical, {"x": x})[0], ref, rtol=0, atol=atol)
    (y,), plan = build_and_run(model, {"x": x}, batch=2)
    assert plan.binary["conv"].kind == "conv"
    np.testing.assert_allclose(y, ref, rtol=0, atol=atol)


def test_per_tensor_activation_scale_stays_a_mul(rng):
    """Not followed by a layer: DynamicSign then Mul(scale), exactly qonnx's values."""
    nodes = [_bq("x", "a", "y", "q")]
    model = qonnx_model(
        nodes,
        {"x": [2, 3, 4]},
        {"y": [2, 3, 4]},
        {"a": np.array([0.5, 2.0, 3.0], np.float32).reshape(3, 1)},
    )
    canonical = prepare(model)
    assert [n.op_type for n in canonical.graph.node] == ["DynamicSign", "Mul"]
    x = _int_inputs(rng, (2, 3, 4))
    np.testing.assert_array_equal(ort_run(canonical, {"x": x})[0], run(model, {"x": x})[0])


def _quant(x, y, name, **attrs):
    return helper.make_node(
        "Quant", [x, "scale", "zeropt", "bits"], [y], domain=QONNX, name=name, **attrs
    )


@pytest.mark.parametrize("scale", [1.0, 0.25, 3.0, [0.5, 1.0, 7.0]])
def test_one_bit_signed_quant_is_a_sign(scale, rng):
    """qonnx computes where(x / scale >= 0, 1, -1) * scale: a sign at the float32 threshold below
    which x / scale is negative (below -0 only for scale > 1, in the subnormals)."""
    s = np.asarray(scale, np.float32).reshape(-1, 1) if np.ndim(scale) else np.float32(scale)
    model = qonnx_model(
        [_quant("x", "y", "q", signed=1, narrow=0)],
        {"x": [3, 6]},
        {"y": [3, 6]},
        {"scale": s, "zeropt": np.float32(0), "bits": np.float32(1)},
    )
    canonical = prepare(model)
    assert [n.op_type for n in canonical.graph.node][:1] == ["DynamicSign"]
    tiny = np.array(
        [
            -0.0,
            0.0,
            -1e-45,
            -3e-45,
            -4e-45,
            -7e-45,
            -1e-44,
            1e-45,
            -1.0,
            2.0,
            np.inf,
            -np.inf,
            np.nan,
            -1.2e-38,
            5.0,
            -5.0,
            -2.8e-45,
            -4.2e-45,
        ],
        np.float32,
    )
    x = np.resize(tiny, (3, 6)).astype(np.float32)
    np.testing.assert_array_equal(ort_run(canonical, {"x": x})[0], run(model, {"x": x})[0])


def test_bipolar_threshold_bisection():
    t = bipolar_threshold(np.array([0.5, 1.0, 2.0, 3.0, 1e30], np.float32), np.float32(0))
    assert t[0] == 0 and t[1] == 0
    for s, ti in zip(
        [2.0, 3.0, 1e30], t[2:]
    ):  # least float32 x with x / s >= 0 (i.e. rounds to -0)
        s = np.float32(s)
        assert (ti / s) >= 0 and (np.nextafter(ti, np.float32(-np.inf)) / s) < 0
    assert bipolar_threshold(np.float32(1.0), np.float32(0.5)) == np.float32(-0.5)


@pytest.mark.parametrize("mode", ["ROUND", "CEIL", "FLOOR", "DOWN", "UP", "HALF_UP", "HALF_DOWN"])
@pytest.mark.parametrize("signed,narrow,bits", [(1, 0, 8), (1, 1, 4), (0, 0, 2), (1, 0, 1)])
def test_other_quants_are_exact_float_ops(mode, signed, narrow, bits, rng):
    """FINN CNV's 8-bit input quantizer (and any other Quant): the same float32 ops as qonnx."""
    scale = np.float32(0.0078125 if bits == 8 else 0.3)
    zeropt = np.float32(0 if bits == 8 else 0.5)
    model = qonnx_model(
        [_quant("x", "y", "q", signed=signed, narrow=narrow, rounding_mode=mode)],
        {"x": [4, 64]},
        {"y": [4, 64]},
        {"scale": scale, "zeropt": zeropt, "bits": np.float32(bits)},
    )
    canonical = prepare(model)
    assert not any(n.domain == QONNX for n in canonical.graph.node)
    ties = (rng.integers(-300, 300, (4, 64)) + 0.5 - zeropt) * scale  # x / s + z lands on .5
    x = np.concatenate([ties[:2], rng.standard_normal((2, 64)) * 3]).astype(np.float32)
    np.testing.assert_array_equal(ort_run(canonical, {"x": x})[0], run(model, {"x": x})[0])


def test_weight_quant_is_folded_to_pm_scale(rng):
    """BipolarQuant of a constant: exactly ±scale (a per-channel scale then splits off)."""
    model = _conv_model(rng, [1.0], np.full((6, 1, 1, 1), 0.25, np.float32))
    canonical = prepare(model)
    assert [n.op_type for n in canonical.graph.node] == ["DynamicSign", "Conv", "Mul"]
