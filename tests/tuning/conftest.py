"""Fixtures for the tuning tests: a tiny two-kernel model, tuned once per session."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from bnncompile import nn as bnn

logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


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
