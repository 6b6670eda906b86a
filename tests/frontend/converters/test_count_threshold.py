"""Signs decided on a binary dense's sums (converters.count_threshold) on hand-written MLPs:
``DS(x) @ W1 * a + b -> chain -> DS(., t) @ W2``.  The second dense's output is a sum of the
chain's signs, so one sign decided differently from ONNX Runtime changes it by 2: the outputs
must equal ONNX Runtime's exactly.  Chains whose +1 sets are intervals of sums or their
complements take the margin; the others, computed thresholds and chain values read elsewhere
keep the float chain."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from testkit.onnx_graphs import build_and_run, ds, import_model, make_model, ort_run, pm1

from bnncompile.frontend.converters.count_threshold import CountCut, cut_of, sums

B, L, D, N, M = 2, 9, 64, 24, 10  # a [B, L, D] token tensor, D -> N -> M


def _gelu(x, y):
    """ONNX's GELU as the exporter writes it: x * 0.5 * (1 + erf(x / sqrt 2))."""
    return [helper.make_node("Div", [x, "sqrt2"], [f"{y}_d"]), helper.make_node("Erf", [f"{y}_d"], [f"{y}_e"]),
            helper.make_node("Add", [f"{y}_e", "one"], [f"{y}_a"]),
            helper.make_node("Mul", [f"{y}_a", "half"], [f"{y}_h"]),
            helper.make_node("Mul", [x, f"{y}_h"], [y])]


#: name -> (nodes from "h" to "g", threshold range): what each chain's +1 sets look like
CHAINS = {
    "gelu": (lambda: _gelu("h", "g"), (-0.16, 0.4)),  # suffixes, and both ends where t < 0
    "square": (lambda: [helper.make_node("Mul", ["h", "h"], ["g"])], (0.5, 4.0)),  # both ends
    "minus_square": (lambda: [helper.make_node("Mul", ["h", "h"], ["h2"]),
                              helper.make_node("Neg", ["h2"], ["g"])], (-4.0, -0.5)),  # intervals
    "neg_tanh": (lambda: [helper.make_node("Tanh", ["h"], ["h2"]),
                          helper.make_node("Neg", ["h2"], ["g"])], (-0.5, 0.5)),  # prefixes
    "relu_zero": (lambda: [helper.make_node("Relu", ["h"], ["g"])], (0.0, 0.0)),  # all +1
    "clip_high": (lambda: [helper.make_node("Clip", ["h", "lo", "hi"], ["g"])], (5.0, 5.0)),  # none
    "direct": (lambda: [helper.make_node("Identity", ["h"], ["g"])], (-1.0, 1.0)),
}


def _mlp(rng, chain, *, t_range=None, scale=0.25, extra_outputs=(), computed_t=False, token_bias=False,
         hidden=N, float_reader=False):
    nodes_fn, default_range = CHAINS[chain]
    lo_t, hi_t = t_range or default_range
    inits = {"t0": (rng.standard_normal((1, 1, D)) * 0.1).astype(np.float32),
             "w1": pm1(rng, (D, hidden)), "w2": pm1(rng, (hidden, M)),
             "a": (scale * (0.5 + rng.random(hidden))).astype(np.float32),
             "b": (rng.standard_normal((L, 1) if token_bias else hidden) * 0.5).astype(np.float32),
             "t1": rng.uniform(lo_t, hi_t, hidden).astype(np.float32),
             "sqrt2": np.float32(np.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5),
             "lo": np.float32(-1), "hi": np.float32(1)}
    nodes = [ds("x", "t0", "s0", name="sign0"), helper.make_node("MatMul", ["s0", "w1"], ["y1"], name="lin1"),
             helper.make_node("Mul", ["y1", "a"], ["ya"], name="scale1"),
             helper.make_node("Add", ["ya", "b"], ["h"], name="bias1"), *nodes_fn()]
    if computed_t:  # a DyBinaryCCT-like threshold from the chain's own mean over tokens
        nodes.append(helper.make_node("ReduceMean", ["g", "axes"], ["t1c"], keepdims=1))
        inits["axes"] = np.array([1], np.int64)
    nodes += [ds("g", "t1c" if computed_t else "t1", "s1", name="sign1"),
              helper.make_node("MatMul", ["s1", "w2"], ["y"], name="lin2")]
    if float_reader:  # the signs also read as floats
        nodes.append(helper.make_node("Mul", ["s1", "half"], ["s1_half"], name="float_reader"))
        extra_outputs = (*extra_outputs, "s1_half")
    outputs = {"y": None, **{name: None for name in extra_outputs}}
    model = make_model(nodes, {"x": [B, L, D]}, outputs, inits)
    return model, {"x": rng.standard_normal((B, L, D)).astype(np.float32)}


@pytest.mark.parametrize("chain", list(CHAINS))
def test_signs_on_sums_match_onnxruntime_exactly(chain, rng):
    model, feeds = _mlp(rng, chain)
    outs, plan = build_and_run(model, feeds, batch=B)
    assert set(plan.count_thresholds) == {"lin1"}, chain
    assert plan.cut_signs == {"s1": "lin1"}
    assert any("_cut_" in k for k in plan.kernels) and not any("erf" in k for k in plan.kernels)
    np.testing.assert_array_equal(outs[0], ort_run(model, feeds)[0])


def test_gelu_takes_both_ends_where_its_threshold_is_negative(rng):
    """GELU dips to -0.17 at -0.75: it is below -0.1 between about -1.5 and -0.25, which the
    steps of 2a <= 0.75 cannot jump over, and the sums reach far below: both ends are +1."""
    model, feeds = _mlp(rng, "gelu", t_range=(-0.1, -0.1), scale=0.25)
    outs, plan = build_and_run(model, feeds, batch=B)
    cut = plan.count_thresholds["lin1"]
    assert np.all(cut.sigma == -1)
    np.testing.assert_array_equal(outs[0], ort_run(model, feeds)[0])


@pytest.mark.parametrize("hidden,kwargs,packed", [
    (128, {}, True),  # only the next binary dense reads the signs: the kernel writes their bits
    (64, dict(extra_outputs=("s1",)), True),  # a graph output too: unpacked from those bits
    (128, dict(float_reader=True), False),  # a float node reads them: the margin and a pack
    (N, {}, False),  # 24 outputs: no whole 64-bit word
])
def test_signs_as_bits_straight_from_the_dense(hidden, kwargs, packed, rng):
    model, feeds = _mlp(rng, "gelu", hidden=hidden, **kwargs)
    outs, plan = build_and_run(model, feeds, batch=B)
    assert plan.cut_signs == {"s1": "lin1"}
    assert any(k.endswith(("_cut_pk_x86", "_cut_pk_w32_x86", "_cut_pk_cpu")) for k in plan.kernels) == packed
    # the first sign's pack (x: D = 64 features) and the second's unless the dense wrote it
    packs = [k for k in plan.kernels if k.startswith("bnn_bitpack_last")]
    assert len(packs) == (1 if packed else 2), packs
    for got, expect in zip(outs, ort_run(model, feeds)):
        np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("why,kwargs", [
    ("a threshold computed from the chain (DyBinaryCCT)", dict(computed_t=True)),
    ("a chain value is also an output", dict(extra_outputs=("h",))),
    ("a bias that varies over tokens, not channels", dict(token_bias=True)),
])
def test_what_keeps_the_float_chain(why, kwargs, rng):
    model, feeds = _mlp(rng, "gelu", **kwargs)
    outs, plan = build_and_run(model, feeds, batch=B)
    assert plan.count_thresholds == {} and plan.cut_signs == {}, why
    assert not any("_cut_" in k for k in plan.kernels), why
    for got, expect in zip(outs, ort_run(model, feeds)):
        np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-4)


def test_three_runs_keep_the_float_chain(rng):
    """``(h - 1) h (h + 1) >= 0`` is +1 on two separate runs of sums: no interval, no complement."""
    _, plan = import_model(_cubic(rng), batch=B)
    assert plan.count_thresholds == {}


def _cubic(rng):
    inits = {"t0": np.zeros((1, 1, D), np.float32), "w1": pm1(rng, (D, N)), "w2": pm1(rng, (N, M)),
             "a": np.full(N, 0.25, np.float32), "one": np.float32(1), "zero": np.zeros(N, np.float32)}
    nodes = [ds("x", "t0", "s0"), helper.make_node("MatMul", ["s0", "w1"], ["y1"], name="lin1"),
             helper.make_node("Mul", ["y1", "a"], ["h"]),
             helper.make_node("Sub", ["h", "one"], ["hm"]), helper.make_node("Add", ["h", "one"], ["hp"]),
             helper.make_node("Mul", ["hm", "h"], ["p1"]), helper.make_node("Mul", ["p1", "hp"], ["g"]),
             ds("g", "zero", "s1"), helper.make_node("MatMul", ["s1", "w2"], ["y"], name="lin2")]
    return make_model(nodes, {"x": [B, L, D]}, {"y": None}, inits)


# -- the classification and its margin, without TVM ---------------------------------------------

K = 8


def _patterns():
    """Every +1 set of K + 1 sums that is an interval or the complement of one, and some that
    are neither."""
    n = K + 1
    ok, bad = [], []
    for mask in range(1 << n):
        col = np.array([(mask >> i) & 1 for i in range(n)], bool)
        runs_of_ones = np.count_nonzero(np.diff(np.concatenate([[0], col.astype(int), [0]])) == 1)
        runs_of_zeros = np.count_nonzero(np.diff(np.concatenate([[0], (~col).astype(int), [0]])) == 1)
        (ok if runs_of_ones <= 1 or runs_of_zeros <= 1 else bad).append(col)
    return np.array(ok).T, np.array(bad).T


def test_every_interval_and_complement_is_cut_exactly():
    ok, _ = _patterns()
    lo, hi, sigma = cut_of(ok, K)
    cut = CountCut("s", K, lo, hi, sigma, ())
    s = sums(K)[:, None]
    np.testing.assert_array_equal(cut.margin(s) >= 0, ok)


def test_other_patterns_are_refused():
    _, bad = _patterns()
    assert bad.shape[1] > 0
    for col in bad.T:
        assert cut_of(col[:, None], K) is None, col.astype(int)


def test_no_fuse_epilogues_keeps_the_float_chain(rng):
    model, feeds = _mlp(rng, "gelu")
    outs, plan = build_and_run(model, feeds, batch=B, fuse_epilogues=False)
    assert plan.count_thresholds == {}
    np.testing.assert_array_equal(outs[0], ort_run(model, feeds)[0])
