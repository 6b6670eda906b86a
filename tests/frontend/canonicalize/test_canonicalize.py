"""The canonicalize driver: files that need no rewrite skip the onnx_ir round trip, files that
need one only for a hand-written DynamicSign still get it, and the modes are checked."""

from __future__ import annotations

import numpy as np
import onnx_ir
import pytest
from onnx import helper
from testkit.onnx_graphs import ds, make_model, pm1

from bnncompile.frontend.canonicalize import SPELLINGS, canonicalize


def _no_round_trip(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("onnx_ir round trip on a file that needs no rewrite")

    monkeypatch.setattr(onnx_ir, "from_proto", boom)


def test_canonical_file_skips_the_round_trip(monkeypatch, rng):
    nodes = [
        ds("x", "t", "s", name="sign"),
        helper.make_node("Conv", ["s", "w"], ["y"], name="conv"),
        helper.make_node("Mul", ["y", "a"], ["z"], name="scale"),
    ]
    model = make_model(
        nodes,
        {"x": [1, 3, 4, 4]},
        {"z": None},
        {
            "t": np.zeros((1, 3, 1, 1), np.float32),
            "w": pm1(rng, (2, 3, 3, 3)),
            "a": np.full((1, 2, 1, 1), 0.3, np.float32),
        },
    )
    _no_round_trip(monkeypatch)
    result = canonicalize(model)
    assert result == 0 and result.sign_zero_sites == ()


@pytest.mark.parametrize("case", ["transpose", "scaled_weight"])
def test_hand_written_sign_still_canonicalized(case, rng):
    """No foreign spelling, but a DynamicSign that needs a move or a weight split."""
    if case == "transpose":
        nodes = [
            ds("x", None, "s", name="sign"),
            helper.make_node("Transpose", ["s"], ["st"], perm=[0, 3, 1, 2]),
            helper.make_node("Conv", ["st", "w"], ["y"], name="conv"),
        ]
        w = pm1(rng, (2, 3, 1, 1))
        shape = [1, 4, 4, 3]
    else:
        nodes = [
            ds("x", None, "s", name="sign"),
            helper.make_node("Conv", ["s", "w"], ["y"], name="conv"),
        ]
        w = pm1(rng, (2, 3, 1, 1)) * np.float32(0.5)
        shape = [1, 3, 4, 4]
    model = make_model(nodes, {"x": shape}, {"y": None}, {"w": w})
    assert canonicalize(model) >= 1


def test_every_spelling_declares_its_roots():
    for module in SPELLINGS:
        assert isinstance(module.ROOT_OPS, frozenset)
        assert (
            module.ROOT_OPS
            or getattr(module, "wanted", None)
            or module.__name__.endswith(("weight_fold", "detach_ste"))
        ), module.__name__
