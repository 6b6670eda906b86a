"""bnncompile.summary: published BOPs/FLOPs/OPs of the ReActNet family, per-layer counts, overhead."""

from __future__ import annotations

import json

import pytest
import torch

from bnncompile import zoo
from bnncompile.errors import InputFileError
from bnncompile.summary import render_overhead, summarize


def _export(name, tmp, size, classes=None, **kw):
    from bnncompile.exporter import export

    model = zoo.build(name, input_size=size, num_classes=classes, **kw)
    x = zoo.example_input(model, batch_size=2)
    return export(model, x, tmp / f"{name}_{size}.onnx", write_golden=False).model_path


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """ReActNet-A and ReActNet-18 exported once at 224 (about 20 s each)."""
    tmp = tmp_path_factory.mktemp("published")
    return {name: summarize(_export(name, tmp, 224)) for name in ("reactnet_a", "reactnet_18")}


def test_reactnet_a_published_counts(published):
    s = published["reactnet_a"]
    assert s.bops == pytest.approx(4.82e9, rel=0.01)
    assert s.flops == pytest.approx(0.12e8, rel=0.05)  # stem 0.108e8 + FC 0.010e8
    assert s.ops == pytest.approx(0.87e8, rel=0.02)
    # 13 binary 3x3 + 8 single 1x1 + 5 blocks with two 1x1 halves (Cout = 2 Cin)
    assert s.num_dynamic_sign == 26 and s.num_binary_layers == 13 + 8 + 2 * 5


def test_reactnet_18_published_counts(published):
    s = published["reactnet_18"]
    assert s.bops == pytest.approx(1.68e9, rel=0.01)
    # convention: all float Conv/Gemm MACs = stem 1.180e8 + 3 downsample 0.193e8 + FC 0.005e8
    assert s.flops == pytest.approx(1.39e8, rel=0.01)
    assert s.num_dynamic_sign == 16 and s.num_binary_layers == 16
    assert s.dynamic.sites == 0 and s.dynamic.total_ops == 0


def test_params_and_sizes(published):
    s = published["reactnet_18"]
    assert s.params == s.binary_params + s.float_params
    assert s.binary_params > 0.9 * s.params  # binary 3x3 convs dominate ResNet-18
    assert s.packed_bytes == (s.binary_params + 7) // 8 + 4 * s.float_params
    assert s.fp32_bytes == 4 * s.params
    bin_rows = [la for la in s.layers if la.binary]
    assert all(la.param_bits == 1 and la.binary_macs > 0 and la.float_macs == 0 for la in bin_rows)


def test_small_model_counts_by_hand(exported_small):
    s = summarize(exported_small.model_path, batch=2)
    rows = {la.name: la for la in s.layers}
    # stem: 3->16, 3x3, 16x16 output, batch 2
    stem = next(la for la in s.layers if la.op_type == "Conv" and not la.binary)
    assert stem.float_macs == 2 * 16 * 16 * 16 * 3 * 9
    assert rows["b_sign/Conv"].binary_macs == 2 * 16 * 16 * 16 * 16 * 9
    assert rows["b_rsign/Conv"].binary_macs == 2 * 16 * 8 * 8 * 16 * 9
    assert rows["b_rsign/Conv"].output_shapes == [[2, 16, 8, 8]]
    fc = rows["fc/Gemm"]
    assert fc.float_macs == 2 * 16 * 10
    assert s.ops == pytest.approx(s.bops / 64 + s.flops)
    # dynamic overhead: DPReLU, InstaPReLU, DySign x2, InstaTh, InstaThPlus (2: E[x^3], E[x])
    assert rows["b_plus.binarizer.mlp.fc1/Gemm"].dynamic  # fed by two reductions (cat)
    assert s.dynamic.sites == 7 and s.dynamic.mlp_macs > 0 and s.dynamic.reduction_adds > 0
    assert not any(la.dynamic for la in s.layers if la.binary or la.op_type == "DynamicSign")
    d = s.to_dict()
    json.dumps(d)
    assert d["totals"]["bops"] == s.bops and len(d["layers"]) == len(s.layers)
    text = s.render()
    assert "BOPs" in text and "b_sign/Conv" in text


def test_batch_scales_linearly(exported_small):
    s1, s3 = summarize(exported_small.model_path), summarize(exported_small.model_path, batch=3)
    assert s3.bops == 3 * s1.bops and s3.flops == 3 * s1.flops and s3.params == s1.params


def test_overhead_vs_static_twin(tmp_path):
    dyn = summarize(_export("dybnn_reactnet_18", tmp_path, 32, 10))
    static = summarize(_export("reactnet_18", tmp_path, 32, 10))
    o = dyn.overhead_vs(static)
    assert o["extra_bops"] == 0
    assert o["extra_params"] > 0 and o["extra_flops"] == dyn.dynamic.mlp_macs > 0
    assert o["extra_ops_percent"] > 0
    assert dyn.dynamic.sites == 32  # 16 DySign + 16 DPReLU
    # the DySign MLPs: 16 sites of C -> C/16 -> C (+ biases), DPReLU: C -> C/16 -> 2C
    assert "vs reactnet_18" in render_overhead(o)


def test_summary_matches_torch_param_count(tmp_path):
    model = zoo.build("insta_bnn_18_plus", input_size=32, num_classes=10)
    s = summarize(_export("insta_bnn_18_plus", tmp_path, 32, 10))
    torch_params = sum(p.numel() for p in model.parameters())
    bn = sum(m.weight.numel() + m.bias.numel() for m in model.modules()
             if isinstance(m, torch.nn.BatchNorm2d))
    # BatchNorm is folded into the stem/downsample convs or exported as per-channel scale/shift:
    # the graph count is within the BN parameters of the torch count
    assert abs(s.params - torch_params) <= bn


def test_bad_files(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not an onnx file at all")
    with pytest.raises(InputFileError):
        summarize(bad)
    with pytest.raises(InputFileError):
        summarize(tmp_path / "missing.onnx")
