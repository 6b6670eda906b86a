"""Float chains after a binary conv run in its epilogue (bnncompile.epilogue): which chains are
matched, where they stop, and that the fused kernel computes what ONNX Runtime computes."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from testkit.onnx_graphs import build_and_run, ds, int_inputs, make_model, ort_run, pm1

RTOL, ATOL = 1e-5, 1e-5
C, HW = 8, (6, 7)


def _block(rng, tail: str, *, bn_output: bool = False, residual_shape=None):
    """x → sign → Conv(±1) → Mul(scale) → BatchNormalization → ``tail`` (see the cases)."""
    inits = {"t": rng.integers(-1, 2, size=(1, C, 1, 1)).astype(np.float32),
             "w": pm1(rng, (C, C, 3, 3)),
             "a": (rng.random((1, C, 1, 1)) + 0.1).astype(np.float32),
             "g": rng.standard_normal(C).astype(np.float32), "b": rng.standard_normal(C).astype(np.float32),
             "m": rng.standard_normal(C).astype(np.float32), "v": (rng.random(C) + 0.5).astype(np.float32),
             "sh1": rng.standard_normal((1, C, 1, 1)).astype(np.float32),
             "sh2": rng.standard_normal((1, C, 1, 1)).astype(np.float32),
             "sl": (rng.random((1, C, 1, 1)) * 0.5).astype(np.float32),
             "zero": np.array(0.0, np.float32)}
    nodes = [ds("x", "t", "s", name="sign"),
             helper.make_node("Conv", ["s", "w"], ["y"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Mul", ["y", "a"], ["ys"], name="scale"),
             helper.make_node("BatchNormalization", ["ys", "g", "b", "m", "v"], ["bn"], name="bn")]
    outputs = {}
    res_in = "x"
    inputs = {"x": [2, C, *HW]}
    if residual_shape is not None:
        inputs["r"] = residual_shape
        res_in = "r"
    if tail == "reactnet":  # residual + RPReLU exported as dynamo writes it
        nodes += [helper.make_node("Add", ["bn", res_in], ["r1"], name="res"),
                  helper.make_node("Add", ["r1", "sh1"], ["p0"], name="shift1"),
                  helper.make_node("GreaterOrEqual", ["p0", "zero"], ["ge"], name="ge"),
                  helper.make_node("Mul", ["sl", "p0"], ["neg"], name="slope"),
                  helper.make_node("Where", ["ge", "p0", "neg"], ["pr"], name="where"),
                  helper.make_node("Add", ["pr", "sh2"], ["out"], name="shift2")]
    elif tail == "ops":  # ONNX PRelu / Relu; the Sub by a constant folds into scale/bias too
        nodes += [helper.make_node("Sub", ["bn", "sh1"], ["p0"], name="sub"),
                  helper.make_node("PRelu", ["p0", "sl"], ["pr"], name="prelu"),
                  helper.make_node("Add", ["pr", res_in], ["r1"], name="res"),
                  helper.make_node("Relu", ["r1"], ["out"], name="relu")]
    outputs["out"] = None
    if bn_output:
        outputs["bn"] = None
    return make_model(nodes, inputs, outputs, inits)


def _run(model, x, **kw):
    feeds = {"x": x}
    if len(model.graph.input) > 1:
        shape = [d.dim_value for d in model.graph.input[1].type.tensor_type.shape.dim]
        feeds["r"] = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    outs, plan = build_and_run(model, feeds, batch=x.shape[0], **kw)
    refs = ort_run(model, feeds)
    for got, ref in zip(outs, refs):
        np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)
    return plan


@pytest.mark.parametrize("tail,kinds", [("reactnet", ("residual", "shift", "prelu", "shift")),
                                         ("ops", ("prelu", "residual", "relu"))])
def test_block_tail_fuses_into_the_conv(rng, tail, kinds):
    model = _block(rng, tail)
    plan = _run(model, int_inputs(rng, (2, C, *HW)))
    (epi,) = plan.epilogues.values()
    assert epi.conv == "conv" and epi.output == "out"
    assert epi.post_kinds == kinds  # scale Mul + BN folded into the kernel's own scale/bias
    assert "bn" in epi.nodes and plan.fused_convs == {"conv": epi.tail}
    (sym,) = [k for k, v in plan.kernels.items() if v["kind"] == "bconv2d"]
    assert "_e" in sym and plan.kernels[sym]["fused"] == epi.nodes


def test_fusion_off_gives_the_same_result(rng):
    model = _block(rng, "reactnet")
    plan = _run(model, int_inputs(rng, (2, C, *HW)), fuse_epilogues=False)
    assert not plan.epilogues
    assert all("_e" not in k for k in plan.kernels)


def test_chain_stops_at_a_tensor_that_must_stay(rng):
    # BN's output is also a graph output: only BN (an affine of acc) folds, it stays materialised
    model = _block(rng, "reactnet", bn_output=True)
    plan = _run(model, int_inputs(rng, (2, C, *HW)))
    (epi,) = plan.epilogues.values()
    assert epi.output == "bn" and epi.post == []


def test_broadcast_add_is_not_a_residual(rng):
    # a [2, C, 1, 1] tensor added to the conv output broadcasts: not an element-wise residual
    model = _block(rng, "reactnet", residual_shape=[2, C, 1, 1])
    plan = _run(model, int_inputs(rng, (2, C, *HW)))
    (epi,) = plan.epilogues.values()
    assert "residual" not in epi.post_kinds and epi.output == "bn"


def _two_convs(rng, threshold: str):
    """sign → conv1 → BN → Add(x) → sign(t2) → conv2: conv1 can also write the bits conv2 reads.
    ``threshold``: "const" (ReActNet), "pooled" (DyBNN-like: from the output's own mean)."""
    inits = {"t": rng.integers(-1, 2, size=(1, C, 1, 1)).astype(np.float32),
             "w1": pm1(rng, (C, C, 3, 3)), "w2": pm1(rng, (C, C, 3, 3)),
             "g": rng.standard_normal(C).astype(np.float32), "b": rng.standard_normal(C).astype(np.float32),
             "m": rng.standard_normal(C).astype(np.float32), "v": (rng.random(C) + 0.5).astype(np.float32),
             "t2": rng.standard_normal((1, C, 1, 1)).astype(np.float32),
             "axes": np.array([2, 3], np.int64)}
    nodes = [ds("x", "t", "s", name="sign"),
             helper.make_node("Conv", ["s", "w1"], ["y"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("BatchNormalization", ["y", "g", "b", "m", "v"], ["bn"], name="bn"),
             helper.make_node("Add", ["bn", "x"], ["h"], name="res")]
    t2 = "t2"
    if threshold == "pooled":
        nodes.append(helper.make_node("ReduceMean", ["h", "axes"], ["t2p"], name="pool", keepdims=1))
        t2 = "t2p"
    nodes += [ds("h", t2, "s2", name="sign2"),
              helper.make_node("Conv", ["s2", "w2"], ["out"], name="conv2", pads=[1, 1, 1, 1],
                               kernel_shape=[3, 3])]
    return make_model(nodes, {"x": [2, C, *HW]}, {"out": None}, inits)


@pytest.mark.parametrize("threshold", ["const", "pooled"])
def test_conv_writes_the_bits_of_the_next_sign(rng, threshold):
    model = _two_convs(rng, threshold)
    plan = _run(model, int_inputs(rng, (2, C, *HW)))
    (epi,) = plan.epilogues.values()
    packs = [k for k, v in plan.kernels.items() if v["kind"] == "bitpack"]
    if threshold == "const":
        assert epi.pack is not None and epi.pack[0] == "s2"
        assert len(packs) == 1  # only the input's sign; conv2 reads conv1's packed output
        assert any(k.endswith("_pk_x86") or "_pk" in k for k in plan.kernels)
    else:  # the threshold needs the whole output first: packed in a pass of its own
        assert epi.pack is None and len(packs) == 2


def _downsample(rng, *, same_geometry: bool = True, extra_use: bool = False):
    """ReActNet-A's downsampling tail: ``cat[BN1(conv_a(s)) + x, BN2(conv_b(s)) + x] → RPReLU →
    sign``; each conv has C outputs, the Concat 2C."""
    inits = {"t": rng.integers(-1, 2, size=(1, C, 1, 1)).astype(np.float32),
             "wa": pm1(rng, (C, C, 1, 1)), "wb": pm1(rng, (C, C, 1, 1)),
             "sh1": rng.standard_normal((1, 2 * C, 1, 1)).astype(np.float32),
             "sl": (rng.random((1, 2 * C, 1, 1)) * 0.5).astype(np.float32),
             "t2": rng.standard_normal((1, 2 * C, 1, 1)).astype(np.float32),
             "w2": pm1(rng, (C, 2 * C, 3, 3))}
    for p in ("a", "b"):
        inits.update({f"g{p}": rng.standard_normal(C).astype(np.float32),
                      f"b{p}": rng.standard_normal(C).astype(np.float32),
                      f"m{p}": rng.standard_normal(C).astype(np.float32),
                      f"v{p}": (rng.random(C) + 0.5).astype(np.float32)})
    kb = {"kernel_shape": [1, 1]} if same_geometry else {"kernel_shape": [1, 1], "strides": [1, 1],
                                                          "dilations": [1, 1], "pads": [0, 0, 0, 0]}
    nodes = [ds("x", "t", "s", name="sign"),
             helper.make_node("Conv", ["s", "wa"], ["ya"], name="conv_a", kernel_shape=[1, 1]),
             helper.make_node("Conv", ["s", "wb"], ["yb"], name="conv_b", **kb)]
    for p in ("a", "b"):
        nodes += [helper.make_node("BatchNormalization", [f"y{p}", f"g{p}", f"b{p}", f"m{p}", f"v{p}"],
                                   [f"bn{p}"], name=f"bn_{p}"),
                  helper.make_node("Add", [f"bn{p}", "x"], [f"r{p}"], name=f"res_{p}")]
    nodes += [helper.make_node("Concat", ["ra", "rb"], ["cat"], name="cat", axis=1),
              helper.make_node("Add", ["cat", "sh1"], ["p0"], name="shift1"),
              helper.make_node("PRelu", ["p0", "sl"], ["h"], name="prelu"),
              ds("h", "t2", "s2", name="sign2"),
              helper.make_node("Conv", ["s2", "w2"], ["out"], name="conv2", pads=[1, 1, 1, 1],
                               kernel_shape=[3, 3])]
    outputs = {"out": None}
    if extra_use:
        outputs["ra"] = None
    return make_model(nodes, {"x": [2, C, *HW]}, outputs, inits)


def test_sibling_convs_under_a_concat_run_as_one(rng):
    plan = _run(_downsample(rng), int_inputs(rng, (2, C, *HW)))
    epi = plan.epilogues["prelu"]
    assert (epi.conv, epi.siblings, epi.residual_channels) == ("conv_a", ("conv_b",), C)
    assert epi.weight.shape == (2 * C, C, 1, 1) and epi.post_kinds == ("residual", "shift", "prelu")
    assert epi.pack is not None and epi.pack[0] == "s2"  # and it writes the next conv's bits
    assert plan.fused_convs == {"conv_a": "prelu", "conv_b": "prelu"}  # conv2's output is the graph's
    (sym,) = [k for k in plan.kernels if "_k16x1x1_" in k]
    assert "_erhpx2_" in sym and plan.kernels[sym]["layers"] == ["conv_a", "conv_b"]
    assert not any(k.startswith("concatenate") for k in plan.kernels)


def test_concat_parts_that_differ_are_not_merged(rng):
    # conv_b's attributes are spelled out: the convs compute the same but their nodes differ,
    # and merging only ever compares what the graph says
    plan = _run(_downsample(rng, same_geometry=False), int_inputs(rng, (2, C, *HW)))
    assert {"res_a", "res_b"} <= set(plan.epilogues) and "prelu" not in plan.epilogues
    # a part that is also a graph output must stay: its chain and the Concat stay separate
    plan = _run(_downsample(rng, extra_use=True), int_inputs(rng, (2, C, *HW)))
    assert "prelu" not in plan.epilogues
