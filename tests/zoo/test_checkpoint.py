"""Checkpoint loading: round trips, containers, official ReActNet names, error paths."""

from __future__ import annotations

import pytest
import torch

from bnncompile import zoo
from bnncompile.errors import CheckpointError, InputFileError
from bnncompile.nn import RPReLU, RSign, freeze
from bnncompile.zoo.checkpoint import SITE_RENAMES

FAST = dict(calib_batches=1, calib_batch_size=2)


class Evil:  # not allowed by torch.load(weights_only=True)
    pass


def _out(model, seed=0):
    with torch.no_grad():
        return model(zoo.example_input(model, 2, seed=seed))


@pytest.mark.parametrize("name,size", [("reactnet_18", 32), ("insta_bnn_18_plus", 32),
                                       ("dybinary_cct_7_3x1", 16)])
def test_round_trip_file(tmp_path, name, size):
    src = zoo.build(name, input_size=size, seed=0, **FAST)
    path = tmp_path / "ckpt.pth"
    torch.save(src.state_dict(), path)
    dst = zoo.build(name, input_size=size, seed=1, **FAST)
    assert not torch.equal(_out(src), _out(dst))
    missing, unexpected = zoo.load_checkpoint(dst, path)
    assert missing == [] and unexpected == []
    assert torch.equal(_out(src), _out(dst))


def test_container_and_module_prefix(tmp_path):
    src = zoo.build("bireal_18", input_size=32, seed=0, **FAST)
    wrapped = {"epoch": 3, "best_top1_acc": 0.5,
               "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}
    path = tmp_path / "wrapped.pth.tar"
    torch.save(wrapped, path)
    dst = zoo.build("bireal_18", input_size=32, seed=1, **FAST)
    zoo.load_checkpoint(dst, str(path))
    assert torch.equal(_out(src), _out(dst))
    dst2 = zoo.build("bireal_18", input_size=32, seed=2, **FAST)
    zoo.load_checkpoint(dst2, {"model": src.state_dict()})
    assert torch.equal(_out(src), _out(dst2))


def _to_official(model, weights_layout: bool) -> dict:
    """Rename a zoo ReActNet state_dict to the official ReActNet names (the inverse mapping)."""
    inverse = {(path, role): official for official, (path, role) in SITE_RENAMES.items()}
    role_of = {"bias": "threshold", "shift_in": "in", "shift_out": "out", "slope": "slope"}
    out = {}
    for k, v in model.state_dict().items():
        prefix, _, leaf = k.rpartition(".")
        block, _, mod = prefix.rpartition(".")
        if leaf in role_of:
            path = mod
            if mod == "binarizer":
                block, _, conv = block.rpartition(".")
                path = f"{conv}.binarizer"
            off = inverse.get((path, role_of[leaf]))
            if off is not None:
                shape = (v.numel(),) if off.startswith("prelu") else (1, v.numel(), 1, 1)
                pname = 'weight' if leaf == 'slope' else 'bias'
                out[f"module.{block}.{off}.{pname}"] = v.reshape(shape)
                continue
        if weights_layout and leaf == "weight" and ".binary_" in k:
            out[f"module.{prefix}.weights"] = v.reshape(-1, 1)
            continue
        out[f"module.{k}"] = v
    return out


@pytest.mark.parametrize("name", ["reactnet_a", "reactnet_18"])
def test_official_reactnet_names(name):
    """Step-2 MobileNet layout (`weights` (N,1)) and step-1 / ResNet layout (`weight`) both load."""
    src = zoo.build(name, input_size=32, seed=0, **FAST)
    dst = zoo.build(name, input_size=32, seed=1, **FAST)
    for weights_layout in ((True, False) if name == "reactnet_a" else (False,)):
        official = _to_official(src, weights_layout)
        assert any(".move11.bias" in k or ".move0.bias" in k for k in official)
        assert any(k.endswith("binary_3x3.weights") for k in official) == weights_layout
        zoo.load_checkpoint(dst, {"state_dict": official})
        assert torch.equal(_out(src), _out(dst))
        dst = zoo.build(name, input_size=32, seed=1, calibrate=False)


def test_official_checkpoint_initialises_dynamic_twin():
    """ReActNet thresholds/shifts map into DySign alpha0 and DPReLU gamma0/zeta0 (sign-converted):
    with zero-initialised hyper functions the DyBNN model then equals its static twin."""
    static = zoo.build("reactnet_18", input_size=32, seed=0, **FAST)
    with torch.no_grad():  # non-trivial static thresholds and shifts
        for m in static.modules():
            params = {RSign: ("bias",), RPReLU: ("shift_in", "shift_out", "slope")}.get(type(m), ())
            for p in params:
                getattr(m, p).add_(0.1 * torch.randn_like(getattr(m, p)))
    official = _to_official(static, weights_layout=False)
    dyn = zoo.build("dybnn_reactnet_18", input_size=32, seed=1, dynamic_init="zero",
                    calibrate=False)
    missing, unexpected = zoo.load_checkpoint(dyn, official, strict=False)
    assert unexpected == [] and missing and all(".mlp." in k for k in missing)
    assert torch.allclose(_out(static), _out(dyn), atol=1e-5)
    with pytest.raises(CheckpointError, match="missing"):
        zoo.load_checkpoint(dyn, official)


def test_shape_mismatch_names_key():
    src = zoo.build("binary_cct_7_3x1", input_size=16, num_classes=10, calibrate=False)
    dst = zoo.build("binary_cct_7_3x1", input_size=16, num_classes=5, calibrate=False)
    with pytest.raises(CheckpointError) as e:
        zoo.load_checkpoint(dst, src.state_dict())
    msg = str(e.value)
    assert "fc.weight" in msg and "(5, 256)" in msg and "(10, 256)" in msg
    with pytest.raises(CheckpointError):  # shape mismatches raise even when not strict
        zoo.load_checkpoint(dst, src.state_dict(), strict=False)


def test_missing_and_unexpected_keys():
    model = zoo.build("reactnet_18", input_size=32, calibrate=False)
    sd = dict(model.state_dict())
    sd.pop("fc.bias")
    sd["foo.bar"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as e:
        zoo.load_checkpoint(model, sd)
    assert "fc.bias" in str(e.value) and "foo.bar" in str(e.value)
    missing, unexpected = zoo.load_checkpoint(model, sd, strict=False)
    assert missing == ["fc.bias"] and unexpected == ["foo.bar"]


def test_many_missing_keys_are_truncated():
    model = zoo.build("reactnet_18", input_size=32, calibrate=False)
    with pytest.raises(CheckpointError, match=r"more\)"):
        zoo.load_checkpoint(model, {"fc.bias": model.fc.bias.detach()})


def test_not_a_checkpoint(tmp_path):
    model = zoo.build("binary_cct_7_3x1", input_size=16, calibrate=False)
    bad = tmp_path / "notes.txt"
    bad.write_text("hello, I am not a checkpoint")
    with pytest.raises(CheckpointError, match=r"notes\.txt"):
        zoo.load_checkpoint(model, bad)

    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil()}, evil)
    with pytest.raises(CheckpointError, match=r"evil\.pt"):
        zoo.load_checkpoint(model, evil)
    nontensor = tmp_path / "nontensor.pt"
    torch.save({"a": 1, "b": "x"}, nontensor)
    with pytest.raises(CheckpointError, match=r"nontensor\.pt"):
        zoo.load_checkpoint(model, nontensor)
    with pytest.raises(InputFileError, match=r"missing\.pt"):
        zoo.load_checkpoint(model, tmp_path / "missing.pt")


def test_frozen_models(tmp_path):
    src = zoo.build("binary_cct_7_3x1", input_size=16, seed=0, calibrate=False)
    dst = freeze(zoo.build("binary_cct_7_3x1", input_size=16, seed=1, calibrate=False))
    zoo.load_checkpoint(dst, src.state_dict())  # unfrozen checkpoint -> frozen buffers recomputed
    assert torch.equal(_out(src), _out(dst))
    frozen_src = freeze(zoo.build("binary_cct_7_3x1", input_size=16, seed=2, calibrate=False))
    zoo.load_checkpoint(dst, frozen_src.state_dict())
    assert torch.equal(_out(frozen_src), _out(dst))
