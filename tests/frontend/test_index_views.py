"""Kernels that read through slices, reshapes and transposes (Importer.read_through): a binary
attention block written as the exporter writes it, ``qkv -> Slice -> Reshape -> Transpose`` per
head and the heads merged again before the projection.  The packs of Q, K and the merged heads
(and with int8 attention the values' quantizer) read the tensors in place; the outputs are those
of ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest
from bnncompile.custom_ops import dynamic_sign
from onnx import helper
from testkit.onnx_graphs import build_and_run, ds, make_model, ort_run, pm1

B, L, H, DH = 1, 12, 2, 16
D = H * DH


def _attention(rng):
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    inits = {"t0": np.zeros((1, 1, D), np.float32), "wqkv": pm1(rng, (D, 3 * D)), "w2": pm1(rng, (D, 8)),
             "heads": i64(B, L, H, DH), "merged": i64(B, L, D), "axis": i64(2), "one": i64(1),
             "tq": (rng.standard_normal((1, H, 1, DH)) * 0.1).astype(np.float32),
             "tk": (rng.standard_normal((1, H, DH, 1)) * 0.1).astype(np.float32),
             "alpha": np.float32(0.25), "tm": np.zeros((1, 1, D), np.float32)}
    nodes = [ds("x", "t0", "s0"), helper.make_node("MatMul", ["s0", "wqkv"], ["qkv"], name="qkv")]
    for j, part in enumerate("qkv"):
        inits[f"b{part}"], inits[f"e{part}"] = i64(j * D), i64((j + 1) * D)
        nodes += [helper.make_node("Slice", ["qkv", f"b{part}", f"e{part}", "axis", "one"], [f"{part}_s"]),
                  helper.make_node("Reshape", [f"{part}_s", "heads"], [f"{part}_r"])]
    nodes += [helper.make_node("Transpose", ["q_r"], ["q_t"], perm=[0, 2, 1, 3]),
              helper.make_node("Transpose", ["k_r"], ["k_t"], perm=[0, 2, 3, 1]),  # K^T at once
              helper.make_node("Transpose", ["v_r"], ["v_t"], perm=[0, 2, 1, 3]),
              ds("q_t", "tq", "sq"), ds("k_t", "tk", "sk"),
              helper.make_node("MatMul", ["sq", "sk"], ["scores"], name="qk"),
              helper.make_node("Mul", ["scores", "alpha"], ["scaled"]),
              helper.make_node("Softmax", ["scaled"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "v_t"], ["o"], name="pv"),
              helper.make_node("Transpose", ["o"], ["o_t"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["o_t", "merged"], ["o_m"]),
              ds("o_m", "tm", "sm"), helper.make_node("MatMul", ["sm", "w2"], ["y"], name="proj")]
    model = make_model(nodes, {"x": [B, L, D]}, {"y": None}, inits)
    return model, {"x": rng.standard_normal((B, L, D)).astype(np.float32)}


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_packs_read_the_heads_in_place(precision, rng):
    model, feeds = _attention(rng)
    (y,), plan = build_and_run(model, feeds, batch=B, attention_precision=precision)
    views = [k for k in plan.kernels if "_v" in k.split("_x86")[0].split("_t")[0]]
    packs = [k for k in views if k.startswith("bnn_bitpack_last_")]
    assert len(packs) == 3, sorted(plan.kernels)  # Q, K^T taken back, the merged heads
    assert any(k.startswith("bnn_quantize_cols_") for k in views) == (precision == "int8")
    # the projection's sums of +-1: a sign packed from the wrong element moves them by 2.  int8:
    # against the graph computing the same quantization (frontend.quantized_reference)
    reference = model if precision == "fp32" else plan.canonical
    dynamic_sign.attach_function(reference)
    np.testing.assert_array_equal(y, ort_run(reference, feeds)[0])
