"""Binary convs (converters.binary_conv): proven binary, lowered to the packed kernels, every
geometry equal to ONNX Runtime.

Graphs are hand-built with onnx.helper; binary accumulators of ±1 data are exact integers, so
with a per-channel float scale the outputs agree with ONNX Runtime to float rounding of one
multiply: rtol 1e-6 / atol 1e-5."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from testkit.onnx_graphs import (
    build_and_run,
    check_against_ort,
    conv_model,
    ds,
    import_model,
    int_inputs,
    make_model,
    ort_run,
    pm1,
    relax_func_names,
)


def test_sign_conv_is_binary_and_lowered_to_kernels(rng):
    model = conv_model(rng)
    mod, plan = import_model(model, batch=2)
    assert [layer.kind for layer in plan.binary.values()] == ["conv"]
    assert "conv" in plan.binary and "conv" in plan.folded_scale  # per-channel Mul folded
    names = relax_func_names(mod)
    assert any(n.startswith("bnn_bconv2d_") for n in names), names
    assert any(n.startswith("bnn_bitpack_") for n in names), names
    # the folded scale is applied by the kernel: bconv2d takes scale, no separate multiply on y
    x = int_inputs(rng, (2, 5, 6, 7))  # integers vs integer thresholds: exact ties x == t
    check_against_ort(model, x)


@pytest.mark.parametrize("pad_value", [0.0, 1.0])
def test_binary_through_pad(rng, pad_value):
    model = conv_model(rng, pads=(1, 2, 2, 1), pad_value=pad_value)
    mod, plan = import_model(model, batch=2)
    layer = plan.binary["conv"]
    assert layer.kind == "conv" and layer.pad_node is not None
    assert layer.pad_value == pad_value and layer.pads == (1, 2, 2, 1)
    assert any(n.startswith("bnn_bconv2d_") for n in relax_func_names(mod))
    check_against_ort(model, int_inputs(rng, (2, 5, 6, 7)))


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

