"""Shared fixtures: a small model that uses every binarizer, exported once per session; a tiny
two-kernel model tuned once per session; a per-test seeded ``rng``.

Helpers shared by test files live in ``tests/testkit`` (importable as ``testkit``: this folder
is on ``sys.path`` because this conftest is not in a package).  Tests import the product only
by its installed names (``bnncompile.*``).
"""

from __future__ import annotations

import logging
import zlib

import numpy as np
import pytest
import torch
from torch import nn

from bnncompile import nn as bnn

logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


class AllBinarizers(nn.Module):
    """Stem conv → five binary convs (one per binarizer kind, incl. a stride-2 and a one-padded
    one) with RPReLU / DPReLU / InstaPReLU glue → GAP → binary linear on tokens → float FC."""

    def __init__(self, c: int = 16, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.b_sign = bnn.BinaryConv2d(c, c, 3, padding=1, binarizer=bnn.Sign())
        self.act1 = bnn.RPReLU(c)
        self.b_rsign = bnn.BinaryConv2d(c, c, 3, stride=2, padding=1, binarizer=bnn.RSign(c))
        self.act2 = bnn.DPReLU(c, reduction=4)
        self.b_dysign = bnn.BinaryConv2d(c, c, 1, binarizer=bnn.DySign(c, reduction=4))
        self.act3 = bnn.InstaPReLU(c, reduction=4, dynamic_slope=True)
        self.b_insta = bnn.BinaryConv2d(c, c, 3, padding=1, binarizer=bnn.InstaTh(c), pad_value="one")
        self.b_plus = bnn.BinaryConv2d(c, c, 3, padding=1,
                                       binarizer=bnn.InstaThPlus(c, reduction=4, include_mean=True))
        self.tok = bnn.BinaryLinear(c, c, binarizer=bnn.DySign(c, reduction=4))
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = self.bn(self.stem(x))
        x = self.act1(self.b_sign(x)) + x
        x = self.act2(self.b_rsign(x))
        x = self.act3(self.b_dysign(x)) + x
        x = self.b_insta(x) + x
        x = self.b_plus(x) + x
        tokens = x.flatten(2).transpose(1, 2)  # (B, L, C)
        tokens = self.tok(tokens) + tokens
        return self.fc(tokens.mean(1))


def randomize(model: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    """Give the zero-initialised dynamic parts and thresholds non-trivial values (seeded)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("mlp.fc2", "alpha", "lam", "bias", "gamma", "zeta", "shift")):
                p.copy_(torch.randn(p.shape, generator=g) * scale)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def make_all_binarizers(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize(AllBinarizers(), seed)


@pytest.fixture(scope="session")
def small_model():
    return make_all_binarizers(0)


@pytest.fixture(scope="session")
def small_input():
    from bnncompile.data import real_images

    return torch.from_numpy(real_images(3, 16, seed=1))


@pytest.fixture(scope="session")
def exported_small(small_model, small_input, tmp_path_factory):
    """(ExportResult, model) of :class:`AllBinarizers` exported once per session."""
    from bnncompile.exporter import export

    path = tmp_path_factory.mktemp("small") / "small.onnx"
    return export(small_model, small_input[:2], path, golden_inputs=small_input)


@pytest.fixture
def rng(request):
    """Seeded from the test id: every parametrisation is reproducible on its own."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


class Tiny(nn.Module):
    """stem → one binary 3x3 conv (folded scale) → GAP tokens → one binary linear."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bconv = bnn.BinaryConv2d(c, c, 3, padding=1, binarizer=bnn.Sign())
        self.tok = bnn.BinaryLinear(c, c, binarizer=bnn.Sign())

    def forward(self, x):
        x = self.stem(x)
        x = self.bconv(x) + x
        t = x.flatten(2).transpose(1, 2)
        return self.tok(t).mean(1)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    from bnncompile.exporter import export

    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.randn(2, 3, 8, 8)
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    export(model, x[:1], path, golden_inputs=x)
    return path


@pytest.fixture(scope="session")
def tuned(tiny_onnx, tmp_path_factory):
    """(db_dir, TuneResult): 2 trials per kernel (hand baseline + 1 searched candidate)."""
    from bnncompile.tune import tune_model

    db = tmp_path_factory.mktemp("tunedb") / "db"
    seen = []
    res = tune_model(tiny_onnx, trials=2, db_dir=db, progress=lambda d, t, m: seen.append((d, t)),
                     build_timeout_s=60)
    return db, res, seen
