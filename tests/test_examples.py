"""The measurement scripts in examples/ that rewrite graphs: their rewrites do what they say."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bnncompile.exporter import export_zoo_model

_EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, _EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_dynamic_overhead_ablations(tmp_path):
    abl = _load("dynamic_overhead")
    export_zoo_model("dybnn_reactnet_18", tmp_path / "m.onnx", input_size=32)
    full = onnx.load(tmp_path / "m.onnx")
    ops = [n.op_type for n in full.graph.node]
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)

    pools = abl.no_pools(onnx.load(tmp_path / "m.onnx"))
    assert "ReduceMean" in ops and "ReduceMean" not in [n.op_type for n in pools.graph.node]
    onnx.checker.check_model(pools)
    assert np.isfinite(_run(pools, x)).all()

    bypass = abl.no_dprelu(onnx.load(tmp_path / "m.onnx"))
    subs = [n.name for n in bypass.graph.node if n.name.endswith("/Sub") and ".act" in n.name]
    assert subs == [] and len(bypass.graph.node) < len(full.graph.node)
    assert sum(n.op_type == "DynamicSign" for n in bypass.graph.node) == ops.count("DynamicSign")
    onnx.checker.check_model(bypass)
    assert np.isfinite(_run(bypass, x)).all()


def test_dynamic_overhead_gelu_ablation(tmp_path):
    """DyBinaryCCT's ablation bypasses each GELU (and only the GELUs); the CNN ablations do not
    apply to it."""
    abl = _load("dynamic_overhead")
    export_zoo_model("dybinary_cct_7_3x1", tmp_path / "m.onnx")
    full = onnx.load(tmp_path / "m.onnx")
    assert list(abl.ablations(full)) == ["no-gelu"]
    bypass = abl.no_gelu(onnx.load(tmp_path / "m.onnx"))
    ops, kept = [n.op_type for n in full.graph.node], [n.op_type for n in bypass.graph.node]
    gelus = ops.count("Erf")
    assert gelus == 7 and "Erf" not in kept
    assert len(ops) - len(kept) == 5 * gelus  # Div, Erf, Add, Mul, Mul each
    assert kept.count("DynamicSign") == ops.count("DynamicSign")
    onnx.checker.check_model(bypass)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    assert np.isfinite(_run(bypass, x)).all()


def test_tune_zoo_rejects_unknown_models(tmp_path, capsys):
    # a typo must not start a half-hour tuning run over the rest of the list
    assert _load("tune_zoo").main(["--db", str(tmp_path / "db"), "--models", "reactnet_a,nope"]) == 2
    assert "nope" in capsys.readouterr().err and not (tmp_path / "db").exists()


def test_bench_micro_rejects_unknown_sections(capsys):
    assert _load("bench_micro").main(["peak", "fconvs"]) == 2
    assert "fconvs" in capsys.readouterr().err


def test_bench_kernels_checks_and_times_the_transformer_kernels(capsys):
    """The CCT-14 dense and attention kernels are built as the frontend builds them, checked
    against the reference (an assertion inside the script) and timed: one line each."""
    assert _load("bench_kernels").main(["--only", "cct", "--rounds", "1", "--no-torch"]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("CCT ")]
    assert len(rows) == 4 and "built and checked 4 kernels" in out and "% ceil" in out


def test_gpu_check_target_per_compute_capability():
    gpu_check = _load("gpu_check")
    assert gpu_check.cuda_target("8.0") == "cuda-sm80"
    assert gpu_check.cuda_target("9.0") == "cuda-sm90"
    assert json.loads(gpu_check.cuda_target("8.9")) == {"kind": "cuda", "arch": "sm_89"}
    with pytest.raises(ValueError):
        gpu_check.cuda_target("ampere")


def test_gpu_check_without_a_gpu_says_so(tmp_path, capsys):
    """The parts of scripts/gpu_check.sh a GPU-less machine can run: exports, then exit 3 with
    the reason (the compile/validate/bench half needs the GPU: not run here)."""
    import subprocess

    assert subprocess.run(["bash", "-n", str(_EXAMPLES.parent / "scripts" / "gpu_check.sh")]).returncode == 0
    gpu_check = _load("gpu_check")
    import tvm

    if tvm.cuda(0).exist:
        pytest.skip("a GPU is present: the real run is scripts/gpu_check.sh")
    assert gpu_check.main(["--out", str(tmp_path), "--models", "binary_cct_7_3x1"]) == 3
    assert "no CUDA GPU" in capsys.readouterr().out
    assert (tmp_path / "binary_cct_7_3x1.onnx").is_file()


def test_zoo_sweep_flags_rows_measured_in_a_busy_spell():
    """A row whose benchmark rounds disagreed (``bench``'s warning) is marked in the markdown
    table and named under it with its spread; quiet rows are not."""
    sweep = _load("zoo_sweep")
    base = {"size": 32, "params": 10, "bin": 1, "max_abs": 1e-6, "top1": 1.0, "flips": 0,
            "bnn_1t_ms": 1.0, "ort_1t_ms": 4.0, "xort_1t": 4.0, "torch_1t_ms": 8.0, "xtorch_1t": 8.0}
    quiet = {**base, "model": "quiet", "round_spread": 1.1, "warnings": []}
    busy = {**base, "model": "busy", "round_spread": 1.69,
            "warnings": ["rounds disagree: bnncompile (1 thread, batch 1) per-round medians ..."]}
    text = sweep.to_markdown([quiet, busy], ["--small"], (1,), [])
    assert "| busy ‡ |" in text and "| quiet |" in text
    assert "busy 1.69x" in text and "quiet 1.10x" not in text
    assert "‡" not in sweep.to_markdown([quiet], ["--small"], (1,), [])
    cols = [("model", 8, ""), ("bnn_1t_ms", 8, ".2f")]
    assert "machine was busy" in sweep.fmt_row(busy, cols)
    assert "busy" not in sweep.fmt_row(quiet, cols)
