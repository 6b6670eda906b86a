"""The mean of a slice as a slice of the mean (converters.sliced_mean): DyBinaryCCT's Q / K
threshold pools ``ReduceMean(Slice(qkv, last axis), tokens)``, one mean of ``qkv`` shared by
both; the results are ONNX Runtime's to float rounding of the sums."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from testkit.onnx_graphs import build_and_run, make_model, ort_run

B, L, D = 2, 9, 8


def _graph(rng, *, mean_axes=(1,), slice_axis=2, keepdims=1, steps=1):
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    inits = {"axes": i64(*mean_axes), "sa": i64(slice_axis), "st": i64(steps)}
    nodes = []
    for j, part in enumerate("qk"):
        inits[f"b{part}"], inits[f"e{part}"] = i64(j * D), i64((j + 1) * D)
        nodes += [helper.make_node("Slice", ["x", f"b{part}", f"e{part}", "sa", "st"], [f"{part}_s"]),
                  helper.make_node("ReduceMean", [f"{part}_s", "axes"], [f"{part}_m"], name=f"mean_{part}",
                                   keepdims=keepdims)]
    model = make_model(nodes, {"x": [B, L, 3 * D]}, {"q_m": None, "k_m": None}, inits)
    return model, {"x": rng.standard_normal((B, L, 3 * D)).astype(np.float32)}


@pytest.mark.parametrize("keepdims", [1, 0])
@pytest.mark.parametrize("steps", [1, 2])
def test_means_of_slices_are_slices_of_one_mean(keepdims, steps, rng):
    model, feeds = _graph(rng, keepdims=keepdims, steps=steps)
    outs, plan = build_and_run(model, feeds, batch=B)
    assert set(plan.sliced_means) == {"mean_q", "mean_k"}
    for got, expect in zip(outs, ort_run(model, feeds)):
        np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-6)


def test_a_slice_of_the_reduced_axis_stays_as_written(rng):
    model, feeds = _graph(rng, mean_axes=(2,), slice_axis=2)
    outs, plan = build_and_run(model, feeds, batch=B)
    assert plan.sliced_means == {}
    for got, expect in zip(outs, ort_run(model, feeds)):
        np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-6)
