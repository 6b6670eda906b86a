"""``--conv-precision int16|int8`` on graphs the compiler did not write: a stem-like conv, a
conv whose input is float glue (an ulp apart between TVM and ONNX Runtime), 1x1 shortcuts with
bias, batch 2.  The build matches ``frontend.quantized_reference`` (ONNX Runtime running the
file's graph with the same quantization: exact int sums via ConvInteger) and stays within the
quantization error of the fp32 model; the rewrite refuses levels the library did not use."""
import numpy as np
import pytest
from onnx import helper
from testkit.onnx_graphs import build_and_run, make_model, ort_run

from bnncompile.errors import UnsupportedModelError
from bnncompile.frontend import prepare
from bnncompile.frontend.quantized_reference import quantized_reference


def _graph(rng, *, c=3, k=16, kernel=7, stride=2, pad=3, hw=(19, 18), bias=True, glue=False):
    nodes, inits = [], {"w": (rng.standard_normal((k, c, kernel, kernel)) * 0.2).astype(np.float32)}
    src = "x"
    if glue:  # the conv reads float glue: TVM and ORT may differ by an ulp there
        inits["a"] = rng.standard_normal((1, c, 1, 1)).astype(np.float32)
        nodes.append(helper.make_node("Mul", ["x", "a"], ["xa"]))
        nodes.append(helper.make_node("Tanh", ["xa"], ["xt"]))
        src = "xt"
    ins = [src, "w"]
    if bias:
        inits["b"] = rng.standard_normal(k).astype(np.float32)
        ins.append("b")
    nodes.append(helper.make_node("Conv", ins, ["y"], name="conv", kernel_shape=[kernel, kernel],
                                  strides=[stride, stride], pads=[pad] * 4))
    return make_model(nodes, {"x": [2, c, *hw]}, {"y": None}, inits)


CASES = {"stem": {}, "tokenizer": dict(c=16, k=24, glue=True), "shortcut": dict(c=24, k=40, kernel=1, stride=1,
                                                                               pad=0, hw=(7, 7))}


@pytest.mark.parametrize("precision", ["int16", "int8"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_quantized_conv_matches_its_reference(case, precision, rng):
    model = _graph(rng, **CASES[case])
    x = (rng.standard_normal((2, *[d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:]))
         * 2).astype(np.float32)
    (y,), plan = build_and_run(model, {"x": x}, batch=2, conv_precision=precision)
    assert set(plan.quantized_convs) == {"conv"}
    (y_q,) = ort_run(quantized_reference(prepare(model), plan.quantized_convs, precision), {"x": x})
    (y_fp32,) = ort_run(model, {"x": x})
    scale = float(np.abs(y_fp32).max())
    # the same numbers (float glue an ulp apart may move one input by a quantization step)
    atol = 1e-6 if case != "tokenizer" else 4 / plan.quantized_convs["conv"]["qa"]
    np.testing.assert_allclose(y, y_q, rtol=1e-6, atol=atol * scale)
    err = float(np.abs(y - y_fp32).max()) / scale
    assert err < (2e-3 if precision == "int16" else 3e-2), err
    assert err > 1e-7  # it did quantize (an fp32 build is ~1e-7)


def test_reference_refuses_other_levels(rng):
    model = prepare(_graph(rng))
    with pytest.raises(UnsupportedModelError, match="the library used 100/100"):
        quantized_reference(model, {"conv": {"qa": 100, "qw": 100}}, "int8")
    with pytest.raises(UnsupportedModelError, match="not in the model"):
        quantized_reference(model, {"nope": {"qa": 127, "qw": 127}}, "int8")


def test_reference_needs_round(rng):
    """Opset < 11 has no Round: the quantized graph cannot be written, so it is refused."""
    model = prepare(_graph(rng))
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 10
    with pytest.raises(UnsupportedModelError, match="opset 10 has no Round"):
        quantized_reference(model, {"conv": {"qa": 127, "qw": 127}}, "int8")


def test_fp32_builds_quantize_nothing(rng):
    model = _graph(rng)
    x = rng.standard_normal((2, 3, 19, 18)).astype(np.float32)
    (y,), plan = build_and_run(model, {"x": x}, batch=2)
    assert plan.quantized_convs == {} and plan.conv_precision == "fp32"
    np.testing.assert_allclose(y, ort_run(model, {"x": x})[0], rtol=1e-4, atol=1e-4)


SAPPHIRE_RAPIDS = '{"kind": "llvm", "mcpu": "sapphirerapids", "mtriple": "x86_64-linux-gnu"}'


def _pooled_stem(rng, relu=False):
    """A ResNet stem: the conv's only reader is a max pool (through a Relu, CCT's tokenizer),
    so it writes 16-channel blocks."""
    w = (rng.standard_normal((32, 3, 7, 7)) * 0.2).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[7, 7], strides=[2, 2],
                              pads=[3] * 4)]
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["r"], name="relu"))
    nodes.append(helper.make_node("MaxPool", ["r" if relu else "c"], ["y"], name="pool", kernel_shape=[3, 3],
                                  strides=[2, 2], pads=[1] * 4))
    return make_model(nodes, {"x": [2, 3, 30, 29]}, {"y": None}, {"w": w})


def test_int8_runs_on_amx_where_the_target_has_it(rng):
    """Compile only (any machine): an int8 build for an AMX CPU uses the AMX kernel (blocked for
    the pool), int16 keeps ``vpmaddwd``.  Run on an AMX host: the numbers of
    test_quantized_conv_matches_its_reference above and tests/schedules/test_amx.py."""
    from bnncompile import targets
    from bnncompile.compiler import build_relax

    spr = targets.resolve(SAPPHIRE_RAPIDS)
    _, plan = build_relax(_pooled_stem(rng), spec=spr, batch=2, conv_precision="int8")
    assert any(k.startswith("bnn_qconv2d_amx_") and k.endswith("_c") for k in plan.kernels), list(plan.kernels)
    _, plan = build_relax(_pooled_stem(rng), spec=spr, batch=2, conv_precision="int16")
    assert not any("amx" in k for k in plan.kernels)


@pytest.mark.parametrize("mcpu,quads", [("znver4", True), ("icelake-server", True), ("znver3", False)])
def test_int8_runs_on_vnni_where_the_target_has_it(mcpu, quads, rng):
    """Compile only (any machine): an int8 build for an AVX-512 VNNI CPU quantizes into offset
    uint8 quads for ``vpdpbusd`` (its ``compensation`` among the kernel's params), an AVX2 CPU
    into int16 pairs; int16 keeps pairs everywhere.  The 3-channel 7x7 stem groups along the
    kernel's width (3 x 8 products per kernel row instead of 4 x 7), 16 channels along the
    channels.  Run on a VNNI host: the numbers of test_quantized_conv_matches_its_reference
    above and tests/schedules/test_quantized_conv.py."""
    from bnncompile import targets
    from bnncompile.compiler import build_relax

    spec = targets.resolve(f'{{"kind": "llvm", "mcpu": "{mcpu}", "mtriple": "x86_64-linux-gnu"}}')
    _, plan = build_relax(_pooled_stem(rng), spec=spec, batch=2, conv_precision="int8")
    kinds = {info["kind"] for info in plan.kernels.values()}
    assert ("qconv2d_vnni" in kinds) == quads and ("qconv2d" in kinds) != quads, kinds
    group = 4 if quads else 2
    assert [k for k in plan.kernels if k.startswith("bnn_quantize_")] == [
        next(k for k in plan.kernels if k.startswith(f"bnn_quantize_width{group}_"))], list(plan.kernels)
    _, plan = build_relax(_graph(rng, **CASES["tokenizer"]), spec=spec, batch=2, conv_precision="int8")
    assert any(k.startswith("bnn_quantize_quads_" if quads else "bnn_quantize_pairs_")
               for k in plan.kernels), list(plan.kernels)
    _, plan = build_relax(_pooled_stem(rng), spec=spec, batch=2, conv_precision="int16")
    assert {info["kind"] for info in plan.kernels.values()} >= {"qconv2d"}
    assert not any(info["kind"] == "qconv2d_vnni" for info in plan.kernels.values())


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("precision", ["fp32", "int16", "int8"])
def test_pooled_stem_matches_its_reference(precision, relu, rng):
    """On this host (AMX or not): the pooled stem, with a Relu between conv and pool or not, at
    each precision equals its reference (ONNX Runtime on the file, or on the quantized graph);
    the Relu is the conv kernel's, and the conv writes channel blocks for the pool either way."""
    model = _pooled_stem(rng, relu)
    x = (rng.standard_normal((2, 3, 30, 29)) * 2).astype(np.float32)
    (y,), plan = build_and_run(model, {"x": x}, batch=2, conv_precision=precision)
    assert plan.pooled_float_convs == {"conv"}
    assert plan.relu_float_convs == ({"conv": "relu"} if relu else {})
    conv_kernels = [k for k in plan.kernels if "conv2d" in k]
    assert len(conv_kernels) == 1 and ("_r_" in conv_kernels[0]) == relu, conv_kernels
    ref = model if precision == "fp32" else quantized_reference(prepare(model), plan.quantized_convs, precision)
    (y_ref,) = ort_run(ref, {"x": x})
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5 * float(np.abs(y_ref).max()))


@pytest.mark.parametrize("target", ["x86-avx512", "aarch64-neon"])
def test_quantized_conv_builds_for_other_cpus(target, rng):
    """AVX-512 (16-lane channel blocks, split into tensorized 8-lane halves) and aarch64 (the
    generic schedule) build; their kernels run bit-exact in tests/schedules (the x86 split on
    this host) and tests/aarch64 (under qemu)."""
    from bnncompile import targets
    from bnncompile.compiler import build_relax

    _, plan = build_relax(_graph(rng, **CASES["tokenizer"]), spec=targets.resolve(target), batch=2,
                          conv_precision="int16")
    assert set(plan.quantized_convs) == {"conv"}
    assert any(k.startswith("bnn_qconv2d_") for k in plan.kernels)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_library_requires_amx_only_with_amx_kernels(precision, rng, tmp_path):
    """A host build names AMX among the CPU flags it needs only when it holds an AMX kernel: an
    fp32 build from an AMX machine still loads on an AVX-512 CPU without AMX.  A build with a
    ``vpdpbusd`` kernel names AVX-512 VNNI."""
    import json

    import onnx

    from bnncompile import targets
    from bnncompile.compiler import compile_model

    onnx.save(_pooled_stem(rng), str(tmp_path / "m.onnx"))
    compile_model(tmp_path / "m.onnx", output=tmp_path / "m.so", conv_precision=precision)
    side = json.loads((tmp_path / "m.json").read_text())
    amx_kernels = [k for k in side["kernels"] if "amx" in k]
    requires = set(side["requires"])
    assert bool(amx_kernels) == ("amx_int8" in requires) == (precision == "int8" and "amx_int8" in
                                                             targets.host_spec().requires)
    vnni_kernels = [k for k, info in side["kernels"].items() if info["kind"] == "qconv2d_vnni"]
    assert bool(vnni_kernels) == ("avx512_vnni" in requires)
    assert requires <= set(targets.host_spec().requires) | {"avx512_vnni"}


def test_compile_names_the_float_convs_that_stay_fp32(rng, tmp_path):
    """A grouped float conv is not bnncompile's kernel's: compile says it stays fp32."""
    import onnx

    from bnncompile.compiler import compile_model

    w1 = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((4, 2, 1, 1)) * 0.3).astype(np.float32)
    model = make_model([helper.make_node("Conv", ["x", "w1"], ["a"], name="stem", kernel_shape=[3, 3]),
                        helper.make_node("Conv", ["a", "w2"], ["y"], name="grouped", kernel_shape=[1, 1],
                                         group=2)],
                       {"x": [1, 3, 8, 8]}, {"y": None}, {"w1": w1, "w2": w2})
    onnx.save(model, str(tmp_path / "m.onnx"))
    res = compile_model(tmp_path / "m.onnx", output=tmp_path / "m.so", conv_precision="int8")
    note = next(n for n in res.notes if "quantized to int8" in n)
    assert note.startswith("1 float conv(s) quantized") and "1 stay fp32" in note and "weights: grouped)" in note
