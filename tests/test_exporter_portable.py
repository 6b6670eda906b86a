"""``export(..., portable=True)`` / ``export --portable``: DynamicSign inlined into standard
``GreaterOrEqual`` + ``Where`` ops, runnable in ONNX Runtime and OpenVINO, compiled by bnncompile
to the same binary layers as the normal export; the function body in the model's own opset."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from bnncompile.custom_ops import dynamic_sign
from testkit.onnx_graphs import build_and_run, ds, make_model, ort_run
from torch import nn

from bnncompile import nn as bnn
from bnncompile.exporter import export, make_portable

OPENVINO_SKIP = "OpenVINO is not installed: pip install 'bnncompile[openvino]'"


@pytest.fixture(scope="module")
def portable_small(small_model, small_input, tmp_path_factory):
    path = tmp_path_factory.mktemp("portable") / "small_portable.onnx"
    return export(small_model, small_input[:2], path, golden_inputs=small_input, portable=True)


def _golden(result):
    g = np.load(result.golden_path)
    return g["inputs"], g["outputs"]


def test_portable_file_has_only_standard_ops(portable_small, exported_small):
    model = onnx.load(portable_small.model_path)
    onnx.checker.check_model(model, full_check=True)
    assert portable_small.portable and portable_small.num_dynamic_sign == exported_small.num_dynamic_sign
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    assert not model.functions
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    normal = onnx.load(exported_small.model_path)
    ops, normal_ops = [n.op_type for n in model.graph.node], [n.op_type for n in normal.graph.node]
    n_sign = exported_small.num_dynamic_sign
    for op in ("Where", "GreaterOrEqual"):  # the PReLUs bring their own
        assert ops.count(op) == normal_ops.count(op) + n_sign, op
    assert "CastLike" not in ops  # folded: the spelling the canonicalize stage recognises
    names = [n.name for n in model.graph.node if n.name.endswith("/DynamicSign/Where")]
    assert len(names) == n_sign, names  # named after the sign they replace
    assert list(model.metadata_props) == list(normal.metadata_props)


def test_portable_golden_file_is_identical(portable_small, exported_small):
    a, b = np.load(exported_small.golden_path), np.load(portable_small.golden_path)
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])


def test_portable_runs_in_onnxruntime(portable_small):
    x, y = _golden(portable_small)
    (out,) = ort_run(onnx.load(portable_small.model_path), {"input": x})
    np.testing.assert_allclose(out, y, rtol=1e-4, atol=1e-4)


def test_portable_runs_in_openvino(portable_small):
    ov = pytest.importorskip("openvino", reason=OPENVINO_SKIP)
    x, y = _golden(portable_small)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(portable_small.model_path)), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled(x)[0]
    np.testing.assert_allclose(out, y, rtol=1e-4, atol=1e-4)


def test_normal_export_is_refused_by_openvino_but_portable_is_not(exported_small):
    """Why --portable exists: OpenVINO has no conversion rule for com.bnncompile.DynamicSign."""
    ov = pytest.importorskip("openvino", reason=OPENVINO_SKIP)
    core = ov.Core()
    with pytest.raises(Exception, match="DynamicSign"):
        core.read_model(str(exported_small.model_path))
    core.read_model(make_portable(onnx.load(exported_small.model_path)).SerializeToString())


def test_portable_compiles_to_same_binary_layers_and_outputs(portable_small, exported_small):
    x, _ = _golden(exported_small)
    feeds = {"input": x[:1]}
    (y_normal,), plan_normal = build_and_run(onnx.load(exported_small.model_path), feeds)
    (y_portable,), plan_portable = build_and_run(onnx.load(portable_small.model_path), feeds)
    assert sorted(plan_portable.binary) == sorted(plan_normal.binary)
    assert len(plan_normal.binary) == exported_small.num_dynamic_sign
    np.testing.assert_allclose(y_portable, y_normal, rtol=0, atol=1e-5)


class _Small(nn.Module):
    def __init__(self, c: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.b = bnn.BinaryConv2d(c, c, 3, padding=1, binarizer=bnn.DySign(c, reduction=2))
        self.fc = nn.Linear(c, 4)

    def forward(self, x):
        x = self.stem(x)
        return self.fc((self.b(x) + x).mean((2, 3)))


@pytest.mark.parametrize("portable", [False, True])
def test_opset20_export_passes_full_check_and_runs(tmp_path, portable):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    res = export(_Small().eval(), x, tmp_path / "m.onnx", opset=20, portable=portable)
    model = onnx.load(res.model_path)
    onnx.checker.check_model(model, full_check=True)
    assert next(o.version for o in model.opset_import if o.domain == "") == 20
    if not portable:  # the function body is written in the model's opset
        assert [o.version for f in model.functions for o in f.opset_import if o.domain == ""] == [20]
    g = np.load(res.golden_path)
    (out,) = ort_run(model, {"input": g["inputs"]})
    np.testing.assert_allclose(out, g["outputs"], rtol=1e-4, atol=1e-4)


def test_make_portable_with_absent_threshold():
    """A DynamicSign that omits T (threshold 0) inlines to a valid graph that ORT runs."""
    model = make_model([ds("x", None, "y")], {"x": [2, 3, 4]}, {"y": [2, 3, 4]})
    portable = make_portable(model)
    onnx.checker.check_model(portable, full_check=True)
    assert not any(dynamic_sign.is_dynamic_sign(n) for n in portable.graph.node)
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    x[0, 0, :2] = 0.0  # ties map to +1
    (y,) = ort_run(portable, {"x": x})
    np.testing.assert_array_equal(y, dynamic_sign.reference(x))


def test_make_portable_without_dynamic_sign_is_a_copy():
    model = make_model([onnx.helper.make_node("Relu", ["x"], ["y"])], {"x": [1, 4]}, {"y": [1, 4]})
    out = make_portable(model)
    assert out is not model and out.graph == model.graph


def test_cli_export_portable(tmp_path, monkeypatch, capsys):
    """``bnncompile export --portable`` through the CLI (a tiny stand-in for the zoo build, so
    the test does not trace a 12M-parameter network)."""
    from bnncompile import zoo
    from bnncompile.cli.main import main

    def tiny_build(name, **kw):
        torch.manual_seed(0)
        m = _Small().eval()
        m.zoo_config = {"input_shape": (3, 8, 8), "num_classes": 4}
        return m

    monkeypatch.setattr(zoo, "build", tiny_build)
    out = tmp_path / "m.onnx"
    assert main(["export", "reactnet_18", "-o", str(out), "--portable"]) == 0
    assert "portable: 1 DynamicSign sites inlined" in capsys.readouterr().out
    model = onnx.load(out)
    assert {n.op_type for n in model.graph.node} >= {"GreaterOrEqual", "Where"}
    assert not any(dynamic_sign.is_dynamic_sign(n) for n in model.graph.node)
    g = np.load(tmp_path / "m.golden.npz")
    (y,) = ort_run(model, {"input": g["inputs"]})
    np.testing.assert_allclose(y, g["outputs"], rtol=1e-4, atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.golden.npz", "m.onnx"]
