"""Export of a model using every binarizer: DynamicSign nodes, ±1 weights, dynamic batch, errors."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from bnncompile.custom_ops import dynamic_sign as ds
from onnx import numpy_helper

from bnncompile.artifacts import load_golden, load_onnx
from bnncompile.errors import ExportError, InputFileError
from bnncompile.exporter import export
from bnncompile.frontend.binary_layers import find_binary_layers
from bnncompile.frontend.graph import GraphIndex


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_dynamic_sign_nodes_and_function_body(exported_small):
    model = onnx.load(str(exported_small.model_path))
    signs = [n for n in model.graph.node if ds.is_dynamic_sign(n)]
    assert len(signs) == exported_small.num_dynamic_sign == 6  # 5 convs + 1 token linear
    for n in signs:
        ds.verify_node(n)
        assert len(n.input) == 2
    assert [f.name for f in model.functions if f.domain == ds.DOMAIN] == [ds.OP_TYPE]
    assert any(o.domain == ds.DOMAIN for o in model.opset_import)


def test_binary_layers_have_pm1_weights_and_scale_mul(exported_small):
    model = onnx.load(str(exported_small.model_path))
    index = GraphIndex(model)
    layers = find_binary_layers(model, index)
    kinds = sorted(layer.kind for layer in layers.values())
    assert kinds == ["conv"] * 5 + ["dense"]
    for out, layer in layers.items():
        w = index.constant(layer.node.input[1])
        assert set(np.unique(w)) == {-1.0, 1.0}
        (mul,) = [c for c in index.consumers[out] if c.op_type == "Mul"]
        scale = next(index.constant(i) for i in mul.input if index.constant(i) is not None)
        n_out = w.shape[0] if layer.kind == "conv" else w.shape[-1]
        assert scale.size == n_out and np.all(scale > 0)
    pads = [layer for layer in layers.values() if layer.pad_node is not None]
    assert len(pads) == 1 and pads[0].pad_value == 1.0  # the pad_value="one" layer
    # float layers (stem, classifier) are not binary
    conv_gemm = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert len(conv_gemm) - len(layers) >= 2


@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_batch_matches_pytorch(exported_small, small_model, small_input, batch):
    x = small_input[:batch]
    (y,) = _session(exported_small.model_path).run(None, {"input": x.numpy()})
    with torch.no_grad():
        ref = small_model(x).numpy()
    assert y.shape == (batch, 10)
    # float epilogues in a different order: a few ulps of the logits' scale; no sign flips here
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_golden_file(exported_small, small_input):
    golden = load_golden(exported_small.golden_path)
    with np.load(exported_small.golden_path, allow_pickle=False) as data:
        assert set(data.files) >= {"inputs", "outputs"}
    np.testing.assert_array_equal(golden["inputs"], small_input.numpy())
    assert golden["outputs"].shape == (3, 10) and golden["outputs"].dtype == np.float32


def test_weights_are_exact_initializers(exported_small):
    model = load_onnx(exported_small.model_path)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    pm1 = [k for k, v in inits.items() if v.size > 1 and np.all(np.abs(v) == 1)]
    assert len(pm1) >= 6


class _Unexportable(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Conv2d(3, 4, 3)
        self.weird = _FFTLayer()

    def forward(self, x):
        return self.weird(self.body(x))


class _FFTLayer(torch.nn.Module):
    """Calls an op (cummax) that the ONNX translator does not have."""

    def forward(self, x):
        return torch.cummax(x, dim=1)[0]


def test_unexportable_layer_is_named_and_no_file_left(tmp_path):
    path = tmp_path / "bad.onnx"
    with pytest.raises(ExportError) as info:
        export(_Unexportable(), torch.randn(2, 3, 8, 8), path)
    assert "'weird'" in str(info.value) and "cummax" in str(info.value)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_unwritable_path_leaves_no_file(tmp_path, small_model, small_input):
    with pytest.raises(InputFileError):
        export(small_model, small_input[:2], tmp_path / "missing_dir" / "m.onnx")
    with pytest.raises(InputFileError):
        export(small_model, small_input[:2], tmp_path)  # a directory
    assert list(tmp_path.iterdir()) == []
