"""A DySign threshold pooled over tokens as one kernel (converters.token_threshold): ReduceMean
over the tokens, FC, Relu, FC, constants added, in the forms exporters write (Gemm with transB,
MatMul + Add), read through the views DyBinaryCCT pools (a slice of qkv, the merged heads); the
thresholds are ONNX Runtime's to float rounding, the signs they decide ONNX Runtime's away from
ties, and any other pattern stays as written."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from testkit.onnx_graphs import build_and_run, ds, make_model, ort_run

B, L, D, R = 2, 9, 32, 4


def _fc(name, x, w, b, out, form):
    """Nodes and initializers of ``x @ w.T + b`` (``w`` [out, in], PyTorch's Linear)."""
    if form == "gemm":
        inputs = [x, f"{name}_w"] + ([f"{name}_b"] if b is not None else [])
        inits = {f"{name}_w": w, **({f"{name}_b": b} if b is not None else {})}
        return [helper.make_node("Gemm", inputs, [out], name=name, transB=1)], inits
    nodes = [helper.make_node("MatMul", [x, f"{name}_wt"], [out if b is None else f"{name}_mm"], name=name)]
    inits = {f"{name}_wt": np.ascontiguousarray(w.T)}
    if b is not None:
        nodes.append(helper.make_node("Add", [f"{name}_mm", f"{name}_b"], [out], name=f"{name}_add"))
        inits[f"{name}_b"] = b
    return nodes, inits


def _graph(rng, *, form="gemm", source="plain", keepdims=0, axis=1, act="Relu", alpha=1.0,
           extra_outputs=()):
    """x -> [view | GELU] -> mean over tokens -> FC -> act -> FC -> + alpha0 -> DynamicSign(x, thr)."""
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    inits = {"axes": i64(axis), "alpha0": f32(D) * 0.1, "shape3": i64(B, 1, D)}
    nodes, feeds = [], {}
    if source == "plain":
        inputs, feeds["x"] = {"x": [B, L, D]}, f32(B, L, D)
    elif source == "slice":  # K of a qkv tensor
        inputs, feeds["qkv"] = {"qkv": [B, L, 3 * D]}, f32(B, L, 3 * D)
        inits.update(b=i64(D), e=i64(2 * D), sa=i64(2))
        nodes.append(helper.make_node("Slice", ["qkv", "b", "e", "sa"], ["x"], name="k_slice"))
    elif source == "gelu":  # PyTorch's export of GELU, operands in its order
        inputs, feeds["pre"] = {"pre": [B, L, D]}, f32(B, L, D) * 2
        inits.update(sqrt2=np.float32(np.sqrt(2.0)), one=np.float32(1.0), half=np.float32(0.5))
        nodes += [helper.make_node("Div", ["pre", "sqrt2"], ["z"], name="gelu_div"),
                  helper.make_node("Erf", ["z"], ["e"], name="gelu_erf"),
                  helper.make_node("Add", ["e", "one"], ["e1"], name="gelu_add"),
                  helper.make_node("Mul", ["half", "e1"], ["h2"], name="gelu_half"),
                  helper.make_node("Mul", ["pre", "h2"], ["x"], name="gelu")]
    else:  # attention's heads merged: [B, H, L, d] -> [B, L, H * d]
        inputs, feeds["heads"] = {"heads": [B, 4, L, D // 4]}, f32(B, 4, L, D // 4)
        inits["merged"] = i64(B, L, D)
        nodes += [helper.make_node("Transpose", ["heads"], ["ht"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", ["ht", "merged"], ["x"])]
    nodes.append(helper.make_node("ReduceMean", ["x", "axes"], ["mean"], name="pool", keepdims=keepdims))
    fc1, i1 = _fc("fc1", "mean", f32(R, D) * 0.3, f32(R), "h", form)
    if alpha != 1.0:
        fc1[0].attribute.append(helper.make_attribute("alpha", alpha))
    fc2, i2 = _fc("fc2", "hr", f32(D, R) * 0.3, f32(D) if form == "matmul" else None, "g", form)
    nodes += [*fc1, helper.make_node(act, ["h"], ["hr"], name="act"), *fc2,
              helper.make_node("Add", ["g", "alpha0"], ["thr"], name="plus_alpha0"),
              helper.make_node("Reshape", ["thr", "shape3"], ["thr3"]), ds("x", "thr3", "y", name="sign")]
    outputs = {"y": [B, L, D], "thr": None, **{t: None for t in extra_outputs}}
    x = (feeds["x"] if source == "plain" else feeds["qkv"][:, :, D:2 * D] if source == "slice"
         else ort_run(make_model(nodes[:5], inputs, {"x": [B, L, D]}, inits), feeds)[0] if source == "gelu"
         else feeds["heads"].transpose(0, 2, 1, 3).reshape(B, L, D))
    return make_model(nodes, inputs, outputs, {**inits, **i1, **i2}), feeds, x


def _check(model, feeds, x, plan, outs, claimed: bool):
    expect = ort_run(model, feeds)
    assert ("plus_alpha0" in plan.token_thresholds) == claimed
    assert any(k.startswith("bnn_token_threshold_") for k in plan.kernels) == claimed
    y, thr = outs[0], outs[1]
    np.testing.assert_allclose(thr, expect[1], rtol=1e-5, atol=1e-5)
    for got, want in zip(outs[2:], expect[2:]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    clear = np.abs(x - expect[1].reshape(B, 1, D)) > 1e-4  # away from ties: float rounding
    np.testing.assert_array_equal(y[clear], expect[0][clear])


@pytest.mark.parametrize("form", ["gemm", "matmul"])
@pytest.mark.parametrize("source", ["plain", "slice", "heads"])
def test_threshold_mlp_is_one_kernel(form, source, rng):
    model, feeds, x = _graph(rng, form=form, source=source)
    outs, plan = build_and_run(model, feeds, batch=B)
    _check(model, feeds, x, plan, outs, claimed=True)
    spec = plan.token_thresholds["plus_alpha0"]
    assert spec.nodes[0] == "pool" and spec.nodes[-1] == "plus_alpha0"
    assert spec.w1t.shape == (D, R) and spec.w2t.shape == (R, D)


@pytest.mark.parametrize("fast_math", [True, False])
def test_a_pooled_gelu_is_computed_by_the_kernel(fast_math, rng):
    """DyBinaryCCT's fc2 site: the threshold pools a GELU; with fast math the kernel writes the
    GELU (the sign's input, also a graph output here) and its threshold in one pass."""
    model, feeds, x = _graph(rng, source="gelu", extra_outputs=("x",))
    outs, plan = build_and_run(model, feeds, batch=B, fast_math=fast_math)
    _check(model, feeds, x, plan, outs, claimed=True)
    assert (plan.token_gelus == {"gelu": "plus_alpha0"}) == fast_math
    assert any("_gelu" in k for k in plan.kernels) == fast_math


def test_a_read_intermediate_is_still_computed(rng):
    """The hidden layer is also a graph output: TVM computes it as written, the kernel the rest."""
    model, feeds, x = _graph(rng, extra_outputs=("hr",))
    outs, plan = build_and_run(model, feeds, batch=B)
    _check(model, feeds, x, plan, outs, claimed=True)


@pytest.mark.parametrize("change", [dict(keepdims=1, form="matmul"), dict(act="Sigmoid"), dict(alpha=0.5)],
                         ids=["keepdims", "not_relu", "gemm_alpha"])
def test_other_patterns_stay_as_written(change, rng):
    model, feeds, x = _graph(rng, **change)
    outs, plan = build_and_run(model, feeds, batch=B)
    _check(model, feeds, x, plan, outs, claimed=False)
