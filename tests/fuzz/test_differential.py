"""Differential testing: random graphs (tests/testkit/fuzz_graphs.py) compiled by bnncompile and run by
ONNX Runtime must agree.

For every generated model:

* every DynamicSign's bits, as the binary kernels consume them (the library's ``debug_signs``
  entry), equal ONNX Runtime's signs exactly, except where ONNX Runtime's own ``x`` sits within
  ``TIE_RTOL`` of its threshold (float statistics summed in another order);
* integer accumulators (a binary layer's raw output) are bit-exact;
* float outputs agree within ``RTOL`` of their magnitude: folded BN / scales and fused
  multiply-adds round differently from ONNX Runtime's separate ops (measured <= 2e-6 relative);
* every Conv / Gemm / MatMul the case meant to stay float (groups, transA) is not lowered as
  binary, and every one it meant as binary is.
* with ``--attention-precision int8`` (``test_int8_attention_equals_its_reference``) every
  attention product that fits is on int8 and every other one stays float; the reference is then
  the graph quantized the same way, outputs within one probability level of it and signs reading
  them flipped only that close to their threshold.

Profiles (``HYPOTHESIS_PROFILE``): ``ci`` (default, in ``scripts/test.sh``: a few hundred
graphs, derandomized so CI is reproducible) and ``long`` (>= 5000 graphs, random seeds):
``HYPOTHESIS_PROFILE=long bash scripts/test.sh tests/fuzz -p no:randomly``.  A failing model is
saved as ONNX (with its inputs as ``.npz``) under ``$BNN_FUZZ_DIR`` (default ``.fuzz-failures/``)
and its path printed; hypothesis prints the reproducing example.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from bnncompile.custom_ops import dynamic_sign
from bnncompile.schedules.quantize import activation_levels, tie_rtol
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from testkit.fuzz_graphs import models
from testkit.onnx_graphs import ort_run

from bnncompile import targets
from bnncompile.compiler import build_relax

RTOL = 1e-5
TIE_RTOL = 1e-5

settings.register_profile("ci", max_examples=int(os.environ.get("BNN_FUZZ_EXAMPLES", 150)),
                          deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=int(os.environ.get("BNN_FUZZ_EXAMPLES", 5000)),
                          deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

FAILURES = Path(os.environ.get("BNN_FUZZ_DIR", ".fuzz-failures"))


def _model(cases) -> tuple[onnx.ModelProto, dict]:
    nodes = [n for c in cases for n in c.nodes]
    feeds = {k: v for c in cases for k, v in c.inputs.items()}
    inits = [numpy_helper.from_array(np.asarray(v), k) for c in cases for k, v in c.inits.items()]
    graph = helper.make_graph(
        nodes, "fuzz",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in feeds.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for c in cases for o in c.outputs],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    dynamic_sign.attach_function(model)
    return model, feeds


_saved: list[Path] = []


def _save(model, feeds, why: str) -> Path:
    """Save a failing model; only the latest is kept (hypothesis runs the final, shrunk
    example last)."""
    while _saved:
        old = _saved.pop()
        for suffix in (".onnx", ".npz", ".txt"):
            old.with_suffix(suffix).unlink(missing_ok=True)
    FAILURES.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(model.SerializeToString()).hexdigest()[:12]
    path = FAILURES / f"fuzz-{digest}.onnx"
    onnx.save(model, str(path))
    np.savez(path.with_suffix(".npz"), **feeds)
    path.with_suffix(".txt").write_text(why)
    _saved.append(path)
    return path


def _ort_with_intermediates(model, feeds, names):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    dynamic_sign.attach_function(m)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
            have.add(n)
    outs = ort_run(m, feeds)
    return dict(zip([o.name for o in m.graph.output], outs))


def check(cases, conv_precision: str = "fp32", attention_precision: str = "fp32") -> None:
    """``conv_precision`` int16 / int8: the float convs quantized, ``attention_precision`` int8:
    the attention products; the reference is then the plan's canonical graph, which computes the
    same quantization (frontend.quantized_reference)."""
    model, feeds = _model(cases)
    ref = _ort_with_intermediates(model, feeds, [])
    outputs = [o.name for o in model.graph.output]
    try:
        ex, plan = build_relax(model, spec=targets.resolve("host"), debug_signs=True,
                               conv_precision=conv_precision, attention_precision=attention_precision)
        if plan.quantized_convs or plan.quantized_matmuls:
            ref = _ort_with_intermediates(plan.canonical, feeds, [])
        # the signs as the compiler sees them: canonicalization may move a sign across a
        # Transpose / Reshape (new tensor names); the outputs are checked against the original
        signs = [n for n in plan.canonical.graph.node if dynamic_sign.is_dynamic_sign(n)]
        sign_io = {n.output[0]: (n.input[0], n.input[1] if len(n.input) > 1 and n.input[1] else None)
                   for n in signs}
        wanted = [*sign_io, *[v for xt in sign_io.values() for v in xt if v]]
        for k, v in _ort_with_intermediates(plan.canonical, feeds, wanted).items():
            ref.setdefault(k, v)  # the original model's outputs stay the reference
        import tvm
        from tvm import relax

        vm = relax.VirtualMachine(ex, tvm.cpu())
        args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[i.name])) for i in model.graph.input]
        got = vm["debug_signs"](*args)
        got = [got] if hasattr(got, "numpy") else list(got)
        got = dict(zip([*outputs, *plan.debug_signs], (g.numpy() for g in got)))
        main = vm["main"](*args)
        main = [main] if hasattr(main, "numpy") else list(main)
        for name, value in zip(outputs, main):
            np.testing.assert_array_equal(value.numpy(), got[name], err_msg=f"main vs debug_signs: {name}")
        tie = tie_rtol(activation_levels(plan.quantized_convs, plan.quantized_matmuls), TIE_RTOL)
        _compare(cases, plan, got, ref, sign_io, tie, quantized=attention_precision != "fp32")
    except BaseException as exc:
        path = _save(model, feeds, "\n".join(d for c in cases for d in c.describe) + f"\n\n{exc}")
        note(f"failing model saved to {path}")
        raise


def _compare(cases, plan, got, ref, sign_io, tie: float = TIE_RTOL, quantized: bool = False) -> None:
    """``quantized``: an int8 attention build, whose products may differ from the reference by
    their cases' ``quantized_atol`` (a probability an ulp from a rounding boundary), and a sign
    reading one by as much."""
    atol = {o: a for c in cases for o, a in c.quantized_atol.items()} if quantized else {}
    slack = max(atol.values(), default=0.0)
    tie_flips = False
    for out, (x, t) in sign_io.items():
        flipped = got[out] != ref[out]
        if not flipped.any():
            continue
        xs = ref[x]
        ts = np.broadcast_to(np.float32(0) if t is None else ref.get(t), xs.shape)
        margin = np.abs(xs - ts)[flipped]
        bound = np.maximum(tie * (np.abs(ts)[flipped] + np.abs(xs)[flipped]), slack)
        assert np.all(margin <= bound), (
            f"DynamicSign {out}: {int(flipped.sum())} flips, not near-ties "
            f"(max margin {float(margin.max()):.3g})")
        tie_flips = True
    for case in cases:
        for name, word in case.float_nodes.items():
            assert name not in plan.binary and word in plan.not_binary.get(name, ""), (
                f"{name} should stay float ({word}); plan says {plan.not_binary.get(name)}")
        if quantized:
            assert case.quantized <= set(plan.quantized_matmuls), (
                f"attention products {sorted(case.quantized - set(plan.quantized_matmuls))} not on int8")
            assert not case.not_quantized & set(plan.quantized_matmuls), (
                f"{sorted(case.not_quantized & set(plan.quantized_matmuls))} should stay float")
        for o in case.outputs:
            if tie_flips:
                continue  # a legitimate near-tie flip moves everything downstream
            if o in case.exact:
                np.testing.assert_array_equal(got[o], ref[o], err_msg=f"{o} (integer accumulators)")
            else:
                scale = float(np.max(np.abs(ref[o]))) if ref[o].size else 0.0
                np.testing.assert_allclose(got[o], ref[o], rtol=RTOL,
                                           atol=RTOL * scale + 1e-6 + atol.get(o, 0.0), err_msg=o)


@pytest.mark.fuzz
@given(models())
def test_compiled_equals_onnxruntime(cases):
    for c in cases:
        note(" | ".join(c.describe))
        event(c.kind if c.kind == "conv" else " ".join(c.describe[0].split()[:2]))  # kind + form
    check(cases)


@pytest.mark.fuzz
@settings(max_examples=int(os.environ.get("BNN_FUZZ_QUANT_EXAMPLES", 40)))
@given(models(kinds=("float_conv", "float_conv", "conv")), st.sampled_from(["int16", "int8"]))
def test_quantized_float_convs_equal_their_reference(cases, precision):
    """``--conv-precision``: every float conv quantized, the build against ONNX Runtime on the
    graph that computes the same quantization (exact int sums through ConvInteger)."""
    for c in cases:
        note(" | ".join(c.describe))
    note(precision)
    check(cases, conv_precision=precision)


@pytest.mark.fuzz
@settings(max_examples=int(os.environ.get("BNN_FUZZ_QUANT_EXAMPLES", 40)))
@given(models(kinds=("attention", "attention", "dense")))
def test_int8_attention_equals_its_reference(cases):
    """``--attention-precision int8``: every attention product that fits on int8 (and only
    those), the build against ONNX Runtime on the graph that computes the same quantization
    (exact sums through MatMulInteger)."""
    for c in cases:
        note(" | ".join(c.describe))
        event(" ".join(c.describe[0].split()[:6]))
    check(cases, attention_precision="int8")
