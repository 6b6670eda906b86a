"""End to end through ``compile_model`` + ``load``: small bnncompile.nn models vs PyTorch.

Inputs and thresholds are integer-valued where a hazard needs exact ties (x == t gives +1 on every
side). The binary accumulators are exact integers, so when no sign flips occur the logits agree
with PyTorch to float rounding of the float glue: ``|y - ref| <= 1e-4 * max|ref| + 1e-5``
(stated tolerance), and ``validate_parity`` must report 0 flips in every DynamicSign layer.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

import bnncompile
from bnncompile import nn as bnn

logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

RTOL, ATOL = 1e-4, 1e-5


def _integer_thresholds(module: nn.Module, seed: int) -> None:
    """RSign biases → integers in {-1, 0, 1} so integer inputs hit x == t exactly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, bnn.RSign):
                m.bias.copy_(torch.randint(-1, 2, m.bias.shape, generator=g).float())


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if any(k in name for k in ("mlp.fc2", "bias", "alpha", "gamma", "zeta")) and "binarizer.bias" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    _integer_thresholds(module, seed)
    return module.eval()


class FirstLayerBinary(nn.Module):
    """Integer input → BinaryConv2d (Sign or RSign, integer thresholds: ties) → BN → RPReLU → head."""

    def __init__(self, c_in, c_out, *, k=3, stride=1, padding=1, dilation=1, binarizer="sign",
                 pad_value="zero", classes=5):
        super().__init__()
        b = bnn.Sign() if binarizer == "sign" else bnn.RSign(c_in)
        self.conv = bnn.BinaryConv2d(c_in, c_out, k, stride=stride, padding=padding,
                                     dilation=dilation, binarizer=b, pad_value=pad_value)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = bnn.RPReLU(c_out)
        self.fc = nn.Linear(c_out, classes)

    def forward(self, x):
        y = self.act(self.bn(self.conv(x)))
        return self.fc(y.mean((2, 3)))


class RawConv(nn.Module):
    """Just the binary conv (+ mean|W| scale): outputs are the integer accumulators times a scale."""

    def __init__(self, c_in, c_out, **kw):
        super().__init__()
        self.conv = bnn.BinaryConv2d(c_in, c_out, 3, binarizer=bnn.RSign(c_in), **kw)

    def forward(self, x):
        return self.conv(x)


def _pipeline(tmp_path, model, x, *, batch):
    """export → compile_model(host) → load → run; returns (y, golden, ExportResult)."""
    res = bnncompile.export(model, x[:batch], tmp_path / "m.onnx", golden_inputs=x)
    lib = tmp_path / "m.so"
    out = bnncompile.compile_model(res.model_path, output=lib, target="host", batch=batch)
    assert out.runnable_here and out.exported_as == "so"
    runner = bnncompile.load(lib)
    with torch.no_grad():
        ref = model(x).numpy()
    ys = [runner(x[i:i + batch].numpy()) for i in range(0, x.shape[0], batch)]
    return np.concatenate(ys), ref, res, out


def _assert_close_and_no_flips(tmp_path, y, ref, res, expect_binary):
    np.testing.assert_allclose(y, ref, rtol=0, atol=ATOL + RTOL * float(np.abs(ref).max()))
    report = bnncompile.validate_parity(res.model_path, lib=tmp_path / "m.so", real_images=0)
    assert report.ok, report.format()
    assert all(s.flips == 0 for s in report.sets), report.format()
    assert report.sets[0].max_abs_vs_torch <= ATOL + RTOL * float(np.abs(ref).max())
    assert report.sets[0].top1_vs_torch == 1.0


@pytest.mark.parametrize("c_in,c_out,stride,padding,dilation,hw,binarizer", [
    (3, 8, 1, 1, 1, (7, 7), "sign"),          # C=3, odd size, ties at 0
    (65, 16, 2, 1, 1, (9, 8), "rsign"),       # C=65 (one bit past a word), stride 2
    (130, 12, 1, 2, 2, (9, 9), "rsign"),      # C=130, padding 2, dilation 2
    (64, 66, 2, 0, 1, (7, 5), "sign"),        # padding 0, K=66, odd/non-square
])
def test_binary_conv_raw_accumulators(tmp_path, c_in, c_out, stride, padding, dilation, hw, binarizer):
    """Scale × integer accumulator per output pixel: the tightest check of every border tap."""
    torch.manual_seed(c_in)
    model = _randomize(RawConv(c_in, c_out, stride=stride, padding=padding, dilation=dilation), c_in)
    if binarizer == "sign":
        model.conv.binarizer = bnn.Sign()
    x = torch.randint(-2, 3, (3, c_in, *hw)).float()   # integer: many x == t
    y, ref, _res, out = _pipeline(tmp_path, model, x, batch=1)
    assert out.num_binary_layers == 1
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)
    # integer part: divide the per-channel scale back out → exact integers
    a = np.abs(model.conv.weight.detach().numpy()).mean((1, 2, 3)).reshape(1, -1, 1, 1)
    np.testing.assert_array_equal(np.rint(y / a), np.rint(ref / a))


@pytest.mark.parametrize("case", ["ties_sign_c3_batch3", "rsign_c65_stride2", "pad2_dil2_c130",
                                  "one_padding"])
def test_conv_model_exact(tmp_path, case):
    cfg = {
        "ties_sign_c3_batch3": dict(c_in=3, c_out=8, binarizer="sign", hw=(7, 7), batch=3),
        "rsign_c65_stride2": dict(c_in=65, c_out=10, stride=2, binarizer="rsign", hw=(9, 9), batch=1),
        "pad2_dil2_c130": dict(c_in=130, c_out=6, padding=2, dilation=2, binarizer="rsign",
                               hw=(11, 11), batch=1),
        "one_padding": dict(c_in=5, c_out=7, pad_value="one", binarizer="rsign", hw=(6, 6), batch=2),
    }[case]
    batch, hw = cfg.pop("batch"), cfg.pop("hw")
    torch.manual_seed(len(case))
    model = _randomize(FirstLayerBinary(**cfg), len(case))
    x = torch.randint(-2, 3, (batch * 2, cfg["c_in"], *hw)).float()
    y, ref, res, out = _pipeline(tmp_path, model, x, batch=batch)
    assert out.num_binary_layers == 1
    _assert_close_and_no_flips(tmp_path, y, ref, res, 1)


class TwoStage(nn.Module):
    """Float stem → BN → binary conv (DySign) + RPReLU + residual → binary stride-2 conv (RSign)."""

    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(c)
        self.b1 = bnn.BinaryConv2d(c, c, 3, padding=1, binarizer=bnn.DySign(c, reduction=4))
        self.bn1 = nn.BatchNorm2d(c)
        self.a1 = bnn.RPReLU(c)
        self.b2 = bnn.BinaryConv2d(c, 2 * c, 3, stride=2, padding=1, binarizer=bnn.RSign(c))
        self.bn2 = nn.BatchNorm2d(2 * c)
        self.a2 = bnn.RPReLU(2 * c)
        self.fc = nn.Linear(2 * c, 10)

    def forward(self, x):
        x = self.bn0(self.stem(x))
        x = self.a1(self.bn1(self.b1(x))) + x
        x = self.a2(self.bn2(self.b2(x)))
        return self.fc(x.mean((2, 3)))


def test_two_stage_batch3_odd_size(tmp_path):
    torch.manual_seed(3)
    model = _randomize(TwoStage(), 3)
    from bnncompile.data import real_images

    x = torch.from_numpy(real_images(6, 15, seed=2))
    y, ref, res, out = _pipeline(tmp_path, model, x, batch=3)
    assert out.num_binary_layers == 2
    _assert_close_and_no_flips(tmp_path, y, ref, res, 2)


class Tokens(nn.Module):
    """(B, L, D) tokens: BinaryLinear with DySign (D=65) → LayerNorm → binary Q·Kᵀ attention scores."""

    def __init__(self, d=65, heads=1):
        super().__init__()
        self.lin = bnn.BinaryLinear(d, d, binarizer=bnn.DySign(d, reduction=5))
        self.norm = nn.LayerNorm(d)
        self.q, self.k = nn.Linear(d, d), nn.Linear(d, d)
        self.qs, self.ks = bnn.Sign(), bnn.Sign()
        self.out = nn.Linear(d, 4)

    def forward(self, x):
        x = self.norm(self.lin(x) + x)
        q, k = self.qs(self.q(x)), self.ks(self.k(x))
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * 0.125, dim=-1)
        return self.out(torch.matmul(attn, x).mean(1))


def test_tokens_binary_linear_and_qk(tmp_path):
    torch.manual_seed(5)
    model = _randomize(Tokens(), 5)
    x = torch.randn(4, 7, 65)
    y, ref, res, out = _pipeline(tmp_path, model, x, batch=2)
    assert out.num_binary_layers == 2  # BinaryLinear (dense) + Q·Kᵀ (batch matmul)
    _assert_close_and_no_flips(tmp_path, y, ref, res, 2)
