"""BNNs exported by the tools users train in (fixtures/README.md: Larq → tf2onnx, Brevitas → QONNX
raw / cleaned, PyTorch dynamo / TorchScript): every binary layer of the original model is proven
binary after canonicalization, and the model compiled for the host matches the tool's reference.

Only the committed fixtures are read (no TensorFlow, Brevitas or qonnx needed).  Tolerance: the
tools compute each binary layer as a float sum of ±1·s products and every float layer (stems,
BatchNorm, residual adds, heads) in their own summation order; the compiled model counts the ±1
products exactly and rounds once for the scale and once for the bias.  The two agree to the float32
rounding of the largest sums: ``atol = 4e-6 * max(1, max|ref|)`` (the worst seen is 7.6e-6 on
QuickNet, |y| up to 64 — the same as Keras vs ONNX Runtime on that file).

``Sign`` models (PyTorch ``torch.sign``, incl. ReActNet's detach STE): ONNX ``Sign`` maps 0 to 0
and the compiled DynamicSign maps it to +1, so they are checked on the fixture's inputs with the
exact zeros replaced (against ONNX Runtime on the original file — the reference those fixtures
use), and their sign(0) sites must be reported (or refused with ``sign_zero="refuse"``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from testkit.onnx_graphs import build_and_run, ort_run

from bnncompile.errors import UnsupportedModelError
from bnncompile.frontend import prepare
from bnncompile.frontend.binary_layers import layer_report
from bnncompile.frontend.canonicalize import canonicalize, sign_zero_sites

FIXTURES = Path(__file__).parent / "fixtures"

# fixture: (binary layers, the Conv/Gemm/MatMul that are float by design, sign(0) sites)
EXPECTED = {
    # Larq: every QuantConv2D / QuantDense with ste_sign inputs (docs_cnn: the raw input too)
    "larq_docs_cnn": (5, [], 0),
    # QuickNet: 4 binary 3x3 convs (Pad(value=1) in NHWC); stem, blur-pool depthwise, transition
    # 1x1 convs and the head are float
    "larq_quicknet": (
        4,
        [
            "quicknet/quant_conv2d_3/QuantConv2D",
            "quicknet/quant_depthwise_conv2d/depthwise",
            "quicknet/quant_conv2d_4/QuantConv2D",
            "quicknet/depthwise_conv2d/depthwise",
            "quicknet/quant_conv2d_7/QuantConv2D",
            "quicknet/quant_dense_2/MatMul",
        ],
        0,
    ),
    # Bi-Real Net: 16 binary 3x3 convs (BN-fused scaled ±1); stem, 3 shortcut 1x1 convs, head float
    "larq_birealnet": (
        16,
        [
            "birealnet18/conv2d/Conv2D",
            "birealnet18/conv2d_1/Conv2D",
            "birealnet18/conv2d_2/Conv2D",
            "birealnet18/conv2d_3/Conv2D",
            "birealnet18/dense/MatMul",
        ],
        0,
    ),
    # FINN CNV-w1a1: 5 binary convs after the first + 3 binary Gemm/MatMul; the first conv reads
    # the 8-bit input Quant (an 8-bit x 1-bit layer)
    "brevitas_cnv_w1a1_raw": (8, ["node_Conv_224"], 0),
    "brevitas_cnv_w1a1_ts_raw": (8, ["/conv_features.1/Conv"], 0),
    "brevitas_cnv_w1a1_clean": (8, ["Conv_0"], 0),
    "brevitas_cnv_w1a1_clean_folded": (8, ["Conv_0"], 0),
    # TFC-w1a1: 4 binary Gemm / MatMul
    "brevitas_tfc_w1a1_raw": (4, [], 0),
    "brevitas_tfc_w1a1_ts_raw": (4, [], 0),
    "brevitas_tfc_w1a1_clean": (4, [], 0),
    "brevitas_tfc_w1a1_clean_folded": (4, [], 0),
    # scaled quantizers (0.1, per-channel mean|W|, activation scale 0.5): 2 convs + the Gemm
    "brevitas_scaled_w1a1_raw": (3, [], 0),
    "brevitas_scaled_w1a1_ts_raw": (3, [], 0),
    "brevitas_scaled_w1a1_clean": (3, [], 0),
    "brevitas_scaled_w1a1_clean_folded": (3, [], 0),
    # PyTorch: 3 binary convs (sign / where activations), the float Linear head
    "torch_where_conv_dynamo": (3, ["node_linear"], 0),
    "torch_where_conv_ts": (3, ["/fc/Gemm"], 0),
    "torch_sign_conv_dynamo": (3, ["node_linear"], 3),
    "torch_sign_conv_ts": (3, ["/fc/Gemm"], 3),
    "torch_sign_linear_dynamo": (2, ["node_linear_2"], 2),
    "torch_sign_linear_ts": (2, ["/fc/Gemm"], 2),
    "torch_reactnet_ste_dynamo": (3, ["node_linear"], 3),
    "torch_reactnet_ste_ts": (3, ["/fc/Gemm"], 3),
}


def _load(name):
    return onnx.load(str(FIXTURES / f"{name}.onnx")), np.load(FIXTURES / f"{name}.npz")


def _input_name(model):
    inits = {t.name for t in model.graph.initializer}
    (name,) = [i.name for i in model.graph.input if i.name not in inits]
    return name


def test_every_fixture_is_tested():
    assert sorted(p.stem for p in FIXTURES.glob("*.onnx")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_binary_layers_proven(name):
    n_binary, floats, n_sites = EXPECTED[name]
    model, _ = _load(name)
    canonical = prepare(model)
    report = layer_report(canonical)
    layer_ops = ("Conv", "Gemm", "MatMul")
    original = [n.name for n in model.graph.node if n.op_type in layer_ops]
    assert sorted(report) == sorted(original)  # every layer kept its name
    binary = [k for k, v in report.items() if v.startswith("yes")]
    assert sorted(set(report) - set(binary)) == sorted(floats), report
    assert len(binary) == n_binary
    assert len(sign_zero_sites(canonical)) == n_sites
    assert not any(n.domain and n.domain != "com.bnncompile" for n in canonical.graph.node)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_compiled_matches_reference(name):
    n_binary, _, n_sites = EXPECTED[name]
    model, data = _load(name)
    x = data["inputs"]
    if n_sites:  # ONNX Sign: compare where no input is exactly 0
        x = np.where(x == 0, np.float32(0.25), x).astype(np.float32)
        ref = ort_run(model, {_input_name(model): x})[0]
    else:
        ref = data["outputs"]
    (y,), plan = build_and_run(model, {_input_name(model): x}, batch=x.shape[0])
    assert len(plan.binary) == n_binary
    np.testing.assert_allclose(y, ref, rtol=0, atol=4e-6 * max(1.0, float(np.abs(ref).max())))


def test_sign_zero_refused_by_name():
    model, _ = _load("torch_sign_conv_ts")
    with pytest.raises(UnsupportedModelError, match=r"'/Sign' \(ai.onnx::Sign\)"):
        canonicalize(model, sign_zero="refuse")


@pytest.mark.parametrize("name,precision,quantized", [
    ("brevitas_cnv_w1a1_clean", "fp32", 0), ("brevitas_cnv_w1a1_clean", "int16", 1),
    ("larq_quicknet", "int8", 3)])
def test_compile_self_check_and_conv_precision(name, precision, quantized, tmp_path):
    """``compile`` with its default self-check on another tool's file: Brevitas fixes the batch
    at 4 in the graph (the check once fed ONNX Runtime 2 samples and the library batch-1
    chunks); ``--conv-precision`` quantizes the float convs bnncompile's kernel takes (QuickNet's
    depthwise ones stay fp32) and still verifies."""
    import json

    from bnncompile.compiler import compile_model

    res = compile_model(FIXTURES / f"{name}.onnx", output=tmp_path / "m.so", conv_precision=precision)
    meta = json.loads(res.sidecar.read_text())
    assert meta["verify"]["ok"] is True and len(meta["quantized_convs"]) == quantized
