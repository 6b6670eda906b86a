"""The softmax of binary scores read as popcounts (converters.score_softmax) on hand-written
attention: ``Softmax(DS(q) @ Transpose(DS(k)) * alpha) @ v``.  Where it applies (AVX-512,
fast math, exact score steps) the probabilities are bit for bit those of the same graph whose
scores stay float (also returned, which keeps them), and so are the outputs of the int8
attention product; everything else keeps the float scores."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from testkit.onnx_graphs import build_and_run, ds, make_model, ort_run

from bnncompile import targets
from bnncompile.compiler import build_relax

LOOKUPS = "avx512f" in targets.cpu_flags()  # the host build takes the counts path


def _attention(rng, *, batch=2, heads=2, tokens=12, d=16, axis=-1, alpha=None, scores_out=False):
    alpha = d ** -0.5 if alpha is None else alpha
    shape = [batch, heads, tokens, d]
    nodes = [ds("q", "tq", "sq", name="sign_q"), ds("k", "tk", "sk", name="sign_k"),
             helper.make_node("Transpose", ["sk"], ["skt"], name="k_t", perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["sq", "skt"], ["s"], name="qk"),
             helper.make_node("Mul", ["s", "alpha"], ["ss"], name="scale"),
             helper.make_node("Softmax", ["ss"], ["p"], name="softmax", axis=axis),
             helper.make_node("MatMul", ["p", "v"], ["y"], name="pv")]
    inits = {"tq": rng.standard_normal((1, 1, 1, d)).astype(np.float32) * 0.1,
             "tk": rng.standard_normal((1, 1, 1, d)).astype(np.float32) * 0.1,
             "alpha": np.float32(alpha)}
    outputs = {"y": None, **({"ss": None} if scores_out else {})}
    model = make_model(nodes, {"q": shape, "k": shape, "v": shape}, outputs, inits)
    feeds = {n: rng.standard_normal(shape).astype(np.float32) for n in ("q", "k", "v")}
    return model, feeds


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("tokens,d", [(12, 16), (17, 64), (196, 64)], ids=["12x16", "17x64", "196x64"])
def test_counts_give_the_float_scores_softmax_bit_for_bit(tokens, d, precision, rng):
    """fp32: the probabilities (also returned) bit for bit; the products after them may round
    one ulp apart (a reshape around the kernel can change how TVM fuses the float matmul).
    int8: the probability bytes feed the integer product, so its outputs agree bit for bit."""
    model, feeds = _attention(rng, tokens=tokens, d=d)
    probs = ("p",) if precision == "fp32" else ()
    outs, plan = build_and_run(model, feeds, batch=2, attention_precision=precision, extra_outputs=probs)
    outs_float, plan_float = build_and_run(model, feeds, batch=2, attention_precision=precision,
                                           extra_outputs=(*probs, "ss"))
    assert plan.score_softmaxes == {"softmax": "qk"} if LOOKUPS else plan.score_softmaxes == {}
    assert set(plan.count_scores) == ({"qk"} if LOOKUPS else set())
    assert plan_float.count_scores == {}  # the scores are an output: they stay float
    kernels = " ".join(plan.kernels)
    assert ("bnn_softmax_counts" in kernels) == LOOKUPS and ("_counts_" in kernels) == LOOKUPS
    y, y_float = outs[0], outs_float[0]
    if precision == "fp32":
        np.testing.assert_array_equal(outs[1].view(np.uint32), outs_float[1].view(np.uint32))
        np.testing.assert_allclose(y, y_float, rtol=1e-6, atol=1e-7)
    else:
        np.testing.assert_array_equal(y.view(np.uint32), y_float.view(np.uint32))
    tol = 1e-5 if precision == "fp32" else 3e-2 * np.abs(feeds["v"]).max()
    np.testing.assert_allclose(y, ort_run(model, feeds)[0], rtol=1e-5, atol=tol)


@pytest.mark.parametrize("why,kwargs", [
    ("1/sqrt(48): scores that are no exact float32 steps", dict(d=48)),
    ("the scores are also an output", dict(scores_out=True)),
    ("softmax over another axis", dict(axis=2)),
    ("a negative scale: the best score would be the most mismatches", dict(alpha=-0.25)),
])
def test_what_keeps_the_float_scores(why, kwargs, rng):
    model, feeds = _attention(rng, **kwargs)
    outs, plan = build_and_run(model, feeds, batch=2)
    assert plan.count_scores == {}, why
    assert not any("softmax_counts" in k for k in plan.kernels), why
    for got, expect in zip(outs, ort_run(model, feeds)):
        np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-5)


def test_cpus_without_register_lookups_keep_the_float_scores(rng):
    model, _ = _attention(rng)
    for name in ("x86-avx2", "aarch64-neon"):
        _, plan = build_relax(model, spec=targets.resolve(name), batch=2)
        assert plan.count_scores == {} and plan.score_softmaxes == {}, name
