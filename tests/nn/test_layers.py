"""bnncompile.nn: binarizers and activations on both layouts, zero-init twins, binary layers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bnncompile import nn as bnn

C = 8
LAYOUTS = {"nchw": (2, C, 5, 6), "tokens": (2, 7, C)}


def _binarizers():
    return {
        "sign": lambda: bnn.Sign(), "rsign": lambda: bnn.RSign(C),
        "dysign": lambda: bnn.DySign(C, reduction=2),
        "dysign_tanh": lambda: bnn.DySign(C, reduction=2, squash="tanh"),
        "insta_th": lambda: bnn.InstaTh(C), "insta_th_cbrt": lambda: bnn.InstaTh(C, cube_root=True),
        "insta_th_plus": lambda: bnn.InstaThPlus(C, reduction=2, include_mean=True),
    }


def _randomize(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return m


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", list(_binarizers()))
def test_binarizer_outputs_pm1_with_threshold_rule(kind, layout):
    b = _randomize(_binarizers()[kind]())
    x = torch.randn(LAYOUTS[layout], generator=torch.Generator().manual_seed(1))
    y = b(x)
    assert y.shape == x.shape
    t = b.threshold(x)
    t = torch.zeros(()) if t is None else t
    assert t.dim() == 0 or t.shape == ((2, C, 1, 1) if layout == "nchw" else (2, 1, C)) \
        or t.shape == ((1, C, 1, 1) if layout == "nchw" else (1, 1, C))
    torch.testing.assert_close(y, torch.where(x >= t, 1.0, -1.0), rtol=0, atol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", ["dysign", "insta_th", "insta_th_plus"])
def test_dynamic_binarizer_at_init_equals_static_twin(kind, layout):
    dyn = _binarizers()[kind]()
    x = torch.randn(LAYOUTS[layout], generator=torch.Generator().manual_seed(2))
    static = bnn.RSign(C)  # zero-init threshold; the dynamic part starts at 0
    torch.testing.assert_close(dyn(x), static(x), rtol=0, atol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_dynamic_activations_at_init_equal_rprelu(layout):
    x = torch.randn(LAYOUTS[layout], generator=torch.Generator().manual_seed(3))
    ref = bnn.RPReLU(C)(x)
    torch.testing.assert_close(bnn.DPReLU(C, reduction=2)(x), ref, rtol=0, atol=0)
    torch.testing.assert_close(bnn.InstaPReLU(C, reduction=2, dynamic_slope=True)(x), ref, rtol=0, atol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("act", ["rprelu", "dprelu", "insta_prelu"])
def test_activations_channel_axis(act, layout):
    make = {"rprelu": lambda: bnn.RPReLU(C), "dprelu": lambda: bnn.DPReLU(C, reduction=2),
            "insta_prelu": lambda: bnn.InstaPReLU(C, reduction=2)}[act]
    m = make()
    with torch.no_grad():
        m.slope.copy_(torch.linspace(0.1, 0.8, C))
    x = torch.randn(LAYOUTS[layout], generator=torch.Generator().manual_seed(4))
    y = m(x)
    slope = m.slope.reshape(1, C, 1, 1) if layout == "nchw" else m.slope.reshape(1, 1, C)
    torch.testing.assert_close(y, torch.where(x >= 0, x, slope * x), rtol=0, atol=0)


def _pm1(shape, seed):
    return torch.where(torch.randn(shape, generator=torch.Generator().manual_seed(seed)) >= 0, 1.0, -1.0)


@pytest.mark.parametrize("stride,padding,cin", [(1, 1, 5), (2, 1, 33), (1, 0, 8), (2, 2, 3)])
def test_binary_conv_equals_float_conv_of_pm1(stride, padding, cin):
    layer = bnn.BinaryConv2d(cin, 6, 3, stride=stride, padding=padding, binarizer="sign")
    x = torch.randn(2, cin, 7, 9, generator=torch.Generator().manual_seed(5))
    xb = torch.where(x >= 0, 1.0, -1.0)
    wb = torch.where(layer.weight >= 0, 1.0, -1.0)
    raw = F.conv2d(xb, wb, stride=stride, padding=padding)  # exact integers (< 2^24)
    unscaled = bnn.BinaryConv2d(cin, 6, 3, stride=stride, padding=padding, binarizer="sign", scale=None)
    unscaled.load_state_dict(layer.state_dict())
    torch.testing.assert_close(unscaled(x), raw, rtol=0, atol=0)
    a = layer.weight.detach().abs().mean(dim=(1, 2, 3)).reshape(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), raw * a, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(3, 20), (2, 5, 20)])
def test_binary_linear_equals_float_linear_of_pm1(shape):
    layer = bnn.BinaryLinear(20, 7, bias=True, binarizer="sign")
    with torch.no_grad():
        layer.bias.copy_(torch.randn(7))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(6))
    xb = torch.where(x >= 0, 1.0, -1.0)
    wb = torch.where(layer.weight >= 0, 1.0, -1.0)
    raw = F.linear(xb, wb)
    a = layer.weight.detach().abs().mean(dim=1)
    torch.testing.assert_close(layer(x), raw * a + layer.bias, rtol=0, atol=0)


def test_pad_value_one_equals_explicit_one_padding():
    layer = bnn.BinaryConv2d(4, 3, 3, padding=1, binarizer="sign", scale=None, pad_value="one")
    x = torch.randn(1, 4, 5, 5, generator=torch.Generator().manual_seed(7))
    xb = F.pad(torch.where(x >= 0, 1.0, -1.0), (1, 1, 1, 1), value=1.0)
    wb = torch.where(layer.weight >= 0, 1.0, -1.0)
    torch.testing.assert_close(layer(x), F.conv2d(xb, wb), rtol=0, atol=0)
    zero = bnn.BinaryConv2d(4, 3, 3, padding=1, binarizer="sign", scale=None)
    zero.load_state_dict(layer.state_dict())
    assert not torch.equal(zero(x), layer(x))  # borders differ, so the option matters


def test_freeze_keeps_outputs_identical():
    layer = bnn.BinaryConv2d(6, 4, 3, padding=1, binarizer=_randomize(bnn.DySign(6, reduction=2)))
    lin = bnn.BinaryLinear(6, 4, binarizer="rsign")
    x = torch.randn(2, 6, 5, 5)
    t = torch.randn(2, 3, 6)
    before = layer(x), lin(t)
    frozen = bnn.freeze(copy.deepcopy(torch.nn.ModuleList([layer, lin])))
    assert all(m.frozen for m in frozen)
    assert set(frozen[0].weight_pm1.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(frozen[0](x), before[0], rtol=0, atol=0)
    torch.testing.assert_close(frozen[1](t), before[1], rtol=0, atol=0)


def test_ste_gradients_reach_latent_weights_with_clamp_mask():
    layer = bnn.BinaryConv2d(3, 2, 3, padding=1, binarizer="rsign", scale=None)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(-2, 2, layer.weight.numel()).reshape(layer.weight.shape))
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    (layer(x) * torch.randn(2, 2, 4, 4)).sum().backward()
    mask = layer.weight.detach().abs() <= 1
    assert layer.weight.grad is not None
    assert torch.all(layer.weight.grad[~mask] == 0)
    assert torch.any(layer.weight.grad[mask] != 0)
    assert x.grad is not None and torch.any(x.grad != 0)
    assert layer.binarizer.bias.grad is not None and torch.any(layer.binarizer.bias.grad != 0)


def test_dysign_threshold_gradient_reaches_mlp():
    b = bnn.DySign(C, reduction=2)
    x = torch.randn(2, C, 4, 4, requires_grad=True)
    b(x).pow(2).mul(torch.randn(2, C, 4, 4)).sum().backward()
    assert b.mlp.fc2.weight.grad is not None and torch.any(b.mlp.fc2.weight.grad != 0)


@pytest.mark.parametrize("make", [
    lambda: bnn.DySign(8, reduction=2, detach_stats=True),
    lambda: bnn.InstaTh(8, detach_stats=True),
    lambda: bnn.InstaThPlus(8, reduction=2, detach_stats=True),
])
def test_detach_stats_stops_gradient_through_statistics_only(make):
    """Spec §7.8 ablation: with detach_stats the input gets only the STE gradient, not the
    gradient through the pooled statistics; forward is unchanged."""
    torch.manual_seed(0)
    b = make()
    for p in b.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    b(x).sum().backward()
    g_detached = x.grad.clone()
    b.detach_stats = False
    x.grad = None
    y = b(x)
    y.sum().backward()
    assert not torch.allclose(g_detached, x.grad)
    b.detach_stats = True
    assert torch.equal(b(x), y)


def test_insta_th_centering_uses_running_mean_at_eval():
    """Spec §7.9: m3 - E_batch[m3] in training, m3 - running mean at eval; exports as a constant."""
    torch.manual_seed(0)
    b = bnn.InstaTh(4, centering=True, momentum=0.5)
    torch.nn.init.normal_(b.lam)
    x = torch.randn(3, 4, 5, 5) + 1.0
    m3 = (x ** 3).mean(dim=(2, 3))
    b.train()
    t_train = b.threshold(x)
    torch.testing.assert_close(t_train.reshape(3, 4), b.alpha + b.lam * (m3 - m3.mean(0)))
    torch.testing.assert_close(b.running_m3, 0.5 * m3.mean(0))
    b.eval()
    t_eval = b.threshold(x)
    torch.testing.assert_close(t_eval.reshape(3, 4), b.alpha + b.lam * (m3 - b.running_m3))
    # per-instance at eval: one sample's threshold does not depend on the others
    torch.testing.assert_close(b.threshold(x[:1]), t_eval[:1])
