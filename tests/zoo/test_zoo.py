"""Model zoo: registry, builds and forwards, site counts and types, seeding, sign balance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnncompile import zoo
from bnncompile.errors import UsageError
from bnncompile.nn import DPReLU, DySign, InstaPReLU, InstaTh, InstaThPlus, RPReLU, RSign, Sign
from bnncompile.nn.layers import BinaryConv2d, BinaryLinear

ALL = [
    "reactnet_a", "dybnn_reactnet_a", "insta_bnn_a", "insta_bnn_a_plus",
    "reactnet_18", "bireal_18", "dybnn_reactnet_18", "insta_bnn_18", "insta_bnn_18_plus",
    "binary_cct_7_3x1", "binary_cct_14_7x2", "dybinary_cct_7_3x1", "dybinary_cct_14_7x2",
]
FAST = dict(calib_batch_size=4)  # keep the suite fast; defaults are exercised by test_defaults


def small_size(name: str) -> int:
    return 32 if name.endswith("7_3x1") else 64


_CACHE: dict[str, nn.Module] = {}


def built(name: str) -> nn.Module:
    if name not in _CACHE:
        _CACHE[name] = zoo.build(name, input_size=small_size(name), **FAST)
    return _CACHE[name]


# expected (binarizer type, activation type or None) per model
TYPES = {
    "reactnet_a": (RSign, RPReLU), "dybnn_reactnet_a": (DySign, DPReLU),
    "insta_bnn_a": (InstaTh, InstaPReLU), "insta_bnn_a_plus": (InstaThPlus, InstaPReLU),
    "reactnet_18": (RSign, RPReLU), "bireal_18": (Sign, None),
    "dybnn_reactnet_18": (DySign, DPReLU), "insta_bnn_18": (InstaTh, InstaPReLU),
    "insta_bnn_18_plus": (InstaThPlus, InstaPReLU),
    "binary_cct_7_3x1": (RSign, None), "binary_cct_14_7x2": (RSign, None),
    "dybinary_cct_7_3x1": (DySign, None), "dybinary_cct_14_7x2": (DySign, None),
}
SITES = {"a": 26, "18": 16, "cct_7": 7 * 6, "cct_14": 14 * 6}  # CCT: 4 linears + Q + K per layer


def expected_sites(name: str) -> int:
    if "cct_7" in name:
        return SITES["cct_7"]
    if "cct_14" in name:
        return SITES["cct_14"]
    return SITES["18"] if "18" in name else SITES["a"]


def test_registry_names_and_specs():
    assert zoo.list_models() == sorted(ALL)
    for name in ALL:
        spec = zoo.get_spec(name)
        assert isinstance(spec, zoo.ModelSpec) and spec.name == name
        assert spec.in_channels == 3 and spec.description
        if spec.static_twin is not None:
            twin = zoo.get_spec(spec.static_twin)
            assert twin.static_twin is None and twin.backbone == spec.backbone
    assert zoo.get_spec("binary_cct_7_3x1").input_size == 32
    assert zoo.get_spec("binary_cct_7_3x1").num_classes == 10
    assert zoo.get_spec("dybinary_cct_14_7x2").input_size == 224
    assert zoo.get_spec("dybinary_cct_14_7x2").num_classes == 1000
    assert zoo.get_spec("insta_bnn_a_plus").static_twin == "reactnet_a"
    assert zoo.get_spec("bireal_18").static_twin is None


@pytest.mark.parametrize("name", ALL)
def test_build_forward_sites(name):
    model = built(name)
    spec = zoo.get_spec(name)
    assert not model.training
    assert all(not m.training for m in model.modules())
    x = zoo.example_input(model, batch_size=2, seed=3)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, spec.num_classes)
    assert torch.isfinite(y).all()
    assert not torch.equal(y[0], y[1])

    sites = zoo.sign_sites(model)
    assert len(sites) == expected_sites(name)
    btype, atype = TYPES[name]
    assert {type(m) for _, m in sites} == {btype}
    acts = [m for m in model.modules() if isinstance(m, (RPReLU, DPReLU, InstaPReLU))]
    if atype is None:
        assert acts == []
    else:
        assert {type(m) for m in acts} == {atype}
        assert len(acts) == expected_sites(name)  # one activation per sign site in both backbones

    # every binary conv/linear is fed by a sign site (inside it or a shared sign2 for 1x1s)
    for mod_name, m in model.named_modules():
        if isinstance(m, (BinaryConv2d, BinaryLinear)) and m.binarizer is None:
            assert "binary_pw" in mod_name

    # non-degenerate signs at every site: roughly balanced around the thresholds
    balance = zoo.sign_balance(model, x)
    assert len(balance) == expected_sites(name)
    lo, hi = (0.03, 0.97) if name == "bireal_18" else (0.3, 0.7)  # Sign has no threshold to centre
    bad = {k: round(v, 3) for k, v in balance.items() if not lo < v < hi}
    assert not bad, bad


def test_reactnet_a_block_layout():
    model = built("reactnet_a")
    blocks = list(model.feature)[1:]
    assert len(blocks) == 13
    chans = [(b.inplanes, b.planes, b.stride) for b in blocks]
    assert chans == [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1),
                     (256, 512, 2)] + [(512, 512, 1)] * 5 + [(512, 1024, 2), (1024, 1024, 1)]
    down = blocks[1]
    assert isinstance(down.pooling, nn.AvgPool2d)
    assert down.binary_pw_down1.weight.shape == (64, 64, 1, 1)
    assert down.binary_pw_down2.weight.shape == (64, 64, 1, 1)
    assert down.binary_3x3.weight.shape == (64, 64, 3, 3) and down.binary_3x3.stride == (2, 2)
    assert isinstance(down.sign2, RSign) and down.sign2.channels == 64
    assert down.act1.channels == 64 and down.act2.channels == 128
    assert model.feature[0].conv1.stride == (2, 2) and model.fc.in_features == 1024


def test_reactnet_18_layout():
    model = built("reactnet_18")
    blocks = [b for i in range(1, 5) for b in getattr(model, f"layer{i}")]
    assert len(blocks) == 16
    assert sum(b.downsample is not None for b in blocks) == 3
    ds = model.layer2[0].downsample
    assert isinstance(ds[0], nn.AvgPool2d) and isinstance(ds[1], nn.Conv2d)
    assert isinstance(ds[2], nn.BatchNorm2d)
    assert model.conv1.kernel_size == (7, 7) and isinstance(model.maxpool, nn.MaxPool2d)
    bireal = built("bireal_18")
    assert all(isinstance(b.act, nn.Identity)
               for i in range(1, 5) for b in getattr(bireal, f"layer{i}"))


def test_deterministic_by_seed_and_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = zoo.build("insta_bnn_18_plus", input_size=32, seed=7, **FAST)
    after = torch.rand(3)
    assert torch.equal(before, after), "build must not consume the caller's global RNG"
    b = zoo.build("insta_bnn_18_plus", input_size=32, seed=7, **FAST)
    c = zoo.build("insta_bnn_18_plus", input_size=32, seed=8, **FAST)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    x = zoo.example_input(a, 2)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        assert not torch.equal(a(x), c(x))


def test_dynamic_thresholds_depend_on_input():
    model = built("dybnn_reactnet_18")
    site = model.layer2[1].binary_conv.binarizer
    x = zoo.example_input(model, 2)
    feats = {}
    h = site.register_forward_pre_hook(lambda m, inp: feats.setdefault("x", inp[0]))
    with torch.no_grad():
        model(x)
        t = site.threshold(feats["x"])
    h.remove()
    assert t.shape[0] == 2 and not torch.allclose(t[0], t[1])


def test_overrides_and_sizes():
    m = zoo.build("dybinary_cct_7_3x1", num_classes=7, input_size=16, in_channels=1, reduction=8,
                  binary_qk=False, **FAST)
    assert len(zoo.sign_sites(m)) == 7 * 4
    assert m.blocks[0].linear1.binarizer.mlp.fc1.out_features == 256 // 8
    assert m.zoo_config["input_shape"] == (1, 16, 16)
    assert m(torch.randn(2, 1, 16, 16)).shape == (2, 7)
    m = zoo.build("reactnet_18", input_size=(32, 64), binarizer="dysign", activation="dprelu",
                  reduction=4, num_classes=5, **FAST)
    assert isinstance(m.layer1[0].binary_conv.binarizer, DySign)
    assert m.layer1[0].binary_conv.binarizer.mlp.fc1.out_features == 16
    assert m(torch.randn(1, 3, 32, 64)).shape == (1, 5)
    m = zoo.build("insta_bnn_18", input_size=32, cube_root=True, dynamic_slope=True,
                  calibrate=False)
    assert m.layer1[0].binary_conv.binarizer.cube_root and m.layer1[0].act.dynamic_slope
    m = zoo.build("binary_cct_14_7x2", input_size=32, num_layers=1, **FAST)
    assert m.sequence_length == 4 and len(m.blocks) == 1


@pytest.mark.parametrize("name,size", [("reactnet_a", 48), ("reactnet_a", 16), ("bireal_18", 100),
                                       ("binary_cct_14_7x2", 16), ("binary_cct_7_3x1", 2)])
def test_invalid_input_size(name, size):
    with pytest.raises(UsageError, match="input"):
        zoo.build(name, input_size=size, calibrate=False)


def test_reactnet_size_message_mentions_multiple_of_32():
    with pytest.raises(UsageError, match="multiple of 32"):
        zoo.build("reactnet_a", input_size=100)


def test_unknown_names_and_options():
    with pytest.raises(UsageError) as e:
        zoo.build("reactnet_b")
    assert "reactnet_a" in str(e.value) and "dybinary_cct_14_7x2" in str(e.value)
    with pytest.raises(UsageError, match="reduction"):
        zoo.build("reactnet_18", input_size=32, reductoin=8)
    with pytest.raises(UsageError, match="binarizer"):
        zoo.build("reactnet_18", input_size=32, binarizer="foo")
    with pytest.raises(UsageError):
        zoo.build("reactnet_18", input_size=32, num_classes=0)


def test_binary_qk_matmul_operands_are_dynamic_signs():
    from bnncompile.zoo.cct import BinaryAttention
    from bnncompile.zoo.sites import SiteConfig

    attn = BinaryAttention(32, 2, SiteConfig(binarizer="dysign", reduction=4), True, "mean_abs")
    ep = torch.export.export(attn.eval(), (torch.randn(2, 16, 32),))
    qk = [n for n in ep.graph.nodes if n.op == "call_function" and "matmul" in str(n.target)
          and all("dynamic_sign" in str(getattr(a, "target", "")) for a in n.args)]
    assert len(qk) == 1
    # the other consumers: softmax . V stays float
    av = [n for n in ep.graph.nodes if n.op == "call_function" and "matmul" in str(n.target)
          and "softmax" in str(n.args[0].target)]
    assert len(av) == 1


def _binary_and_fp(model):
    binary = sum(m.weight.numel() for m in model.modules()
                 if isinstance(m, (BinaryConv2d, BinaryLinear)))
    total = sum(p.numel() for p in model.parameters())
    return binary, total


def test_parameter_counts_default_size():
    # ReActNet-A at 224 / 1000 classes: 29.3M fp32 parameters, of which 28.2M are binary weights;
    # at 1 bit per binary weight that is ~7.4 MB, ReActNet's reported model size (spec §5.7).
    m = zoo.build("reactnet_a", calibrate=False, dynamic_init="zero")
    binary, total = _binary_and_fp(m)
    assert 28.5e6 < total < 30.0e6
    size_mb = (binary / 8 + 4 * (total - binary)) / 2**20
    assert 7.0 < size_mb < 7.8, size_mb
    m = zoo.build("reactnet_18", calibrate=False)
    assert 11.0e6 < sum(p.numel() for p in m.parameters()) < 12.0e6
