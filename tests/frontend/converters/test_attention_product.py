"""``--attention-precision int8`` on graphs the compiler did not write: ``MatMul(Softmax(S), V)``
with batch and head axes, a reduction that is not a multiple of 4, columns that are not a
multiple of 16.  The build matches ``frontend.quantized_reference`` (ONNX Runtime running the
graph with the same quantization: exact sums via MatMulInteger) up to a probability an ulp from
a rounding boundary (TVM's and ONNX Runtime's exponentials differ by ~1e-7), and stays within
the quantization error of the fp32 graph.  What does not fit stays float, as written."""
import numpy as np
import pytest
from onnx import helper
from testkit.onnx_graphs import build_and_run, make_model, ort_run

from bnncompile.errors import UnsupportedModelError
from bnncompile.frontend import prepare
from bnncompile.frontend.quantized_reference import quantized_reference


def _graph(s_shape, v_shape, *, axis=-1, v_const=None, scale=True):
    nodes, inits, inputs = [], {}, {"s": list(s_shape)}
    src = "s"
    if scale:  # float glue before the softmax, as attention's 1/sqrt(d)
        inits["alpha"] = np.float32(0.37)
        nodes.append(helper.make_node("Mul", ["s", "alpha"], ["ss"]))
        src = "ss"
    nodes.append(helper.make_node("Softmax", [src], ["p"], name="softmax", axis=axis))
    if v_const is None:
        inputs["v"] = list(v_shape)
    else:
        inits["v"] = v_const
    nodes.append(helper.make_node("MatMul", ["p", "v"], ["y"], name="mm"))
    return make_model(nodes, inputs, {"y": None}, inits)


CASES = {"heads": ((2, 3, 20, 32), (2, 3, 32, 64)), "odd_k": ((1, 2, 9, 10), (1, 2, 10, 16)),
         "narrow": ((2, 7, 12), (2, 12, 24)),
         # one query per matrix (a class token's attention): the fused softmax's row loop is a unit
         # loop (its schedule failed on it until the fuzzer found it)
         "one_query": ((1, 2, 1, 8), (1, 2, 8, 16))}


@pytest.mark.parametrize("case", sorted(CASES))
def test_attention_product_matches_its_reference(case, rng):
    s_shape, v_shape = CASES[case]
    model = _graph(s_shape, v_shape)
    feeds = {"s": (rng.standard_normal(s_shape) * 4).astype(np.float32),
             "v": (rng.standard_normal(v_shape) * 2).astype(np.float32)}
    (y,), plan = build_and_run(model, feeds, batch=s_shape[0], attention_precision="int8")
    assert set(plan.quantized_matmuls) == {"mm"}
    (y_q,) = ort_run(quantized_reference(prepare(model), {}, "fp32", plan.quantized_matmuls), feeds)
    (y_fp32,) = ort_run(model, feeds)
    vmax = np.abs(feeds["v"]).max()
    # the same numbers, but for a probability an ulp from a rounding boundary: one level of
    # pmax / 255 (<= 1/255) times one value (<= vmax), a few at most per output
    np.testing.assert_allclose(y, y_q, rtol=1e-6, atol=3 * vmax / 255)
    assert np.mean(np.abs(y - y_q) > 1e-5 * vmax) < 0.01
    err = float(np.abs(y - y_fp32).max()) / float(np.abs(y_fp32).max())
    assert 1e-6 < err < 3e-2, err


@pytest.mark.parametrize("why,kwargs,shapes", [
    ("softmax over another axis", dict(axis=2), ((1, 2, 6, 8), (1, 2, 8, 16))),
    ("values are a weight", dict(v_const="yes"), ((1, 2, 6, 8), (8, 16))),
    ("batch dims broadcast", {}, ((1, 2, 6, 8), (1, 1, 8, 16))),
])
def test_what_does_not_fit_stays_float(why, kwargs, shapes, rng):
    s_shape, v_shape = shapes
    if kwargs.get("v_const"):
        kwargs = dict(v_const=rng.standard_normal(v_shape).astype(np.float32))
    model = _graph(s_shape, v_shape, **kwargs)
    feeds = {"s": rng.standard_normal(s_shape).astype(np.float32)}
    if "v_const" not in kwargs:
        feeds["v"] = rng.standard_normal(v_shape).astype(np.float32)
    (y,), plan = build_and_run(model, feeds, attention_precision="int8")
    assert plan.quantized_matmuls == {}, why
    np.testing.assert_allclose(y, ort_run(model, feeds)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("why,kwargs,fused", [
    ("fast math: the product's kernel computes the softmax", {}, True),
    ("exact math: TVM's softmax, as written", dict(fast_math=False), False),
    ("the probabilities are also an output", dict(extra_outputs=("p",)), False),
    ("rows of 10 probabilities: not whole words", dict(case="odd_k"), False),
])
def test_softmax_fused_into_the_product_only_where_nothing_else_reads_it(why, kwargs, fused, rng):
    kwargs = dict(kwargs)
    s_shape, v_shape = CASES[kwargs.pop("case", "heads")]
    model = _graph(s_shape, v_shape)
    feeds = {"s": (rng.standard_normal(s_shape) * 4).astype(np.float32),
             "v": (rng.standard_normal(v_shape) * 2).astype(np.float32)}
    outs, plan = build_and_run(model, feeds, batch=s_shape[0], attention_precision="int8", **kwargs)
    assert set(plan.quantized_matmuls) == {"mm"}, why
    assert plan.fused_softmaxes == ({"mm": "softmax"} if fused else {}), why
    (y_q,) = ort_run(quantized_reference(prepare(model), {}, "fp32", plan.quantized_matmuls), feeds)
    np.testing.assert_allclose(outs[0], y_q, rtol=1e-6, atol=3 * np.abs(feeds["v"]).max() / 255)


def test_fp32_builds_quantize_no_attention(rng):
    s_shape, v_shape = CASES["heads"]
    model = _graph(s_shape, v_shape)
    feeds = {"s": rng.standard_normal(s_shape).astype(np.float32),
             "v": rng.standard_normal(v_shape).astype(np.float32)}
    (y,), plan = build_and_run(model, feeds, batch=2)
    assert plan.quantized_matmuls == {}
    np.testing.assert_allclose(y, ort_run(model, feeds)[0], rtol=1e-5, atol=1e-5)


def test_reference_refuses_what_is_not_there():
    model = prepare(_graph((1, 2, 6, 8), (1, 2, 8, 16)))
    levels = {"p_levels": 255, "v_levels": 127}
    with pytest.raises(UnsupportedModelError, match="not in the model"):
        quantized_reference(model, {}, "fp32", {"nope": levels})
    with pytest.raises(UnsupportedModelError, match="not a MatMul here"):
        quantized_reference(model, {}, "fp32", {"softmax": levels})
