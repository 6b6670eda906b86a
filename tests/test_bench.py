"""``bnncompile bench``: library/model pairing checked before timing, outputs checked before the
run and written atomically, the JSON report's machine record, the round-spread warning, the
Relax VM builtin count, ``--against openvino`` and the batch-B throughput section.

Never asserts on speed: the engines run 1 round of 1 call on a tiny model.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from bnncompile import bench
from bnncompile.cli.main import main
from bnncompile.compiler import compile_model

OPENVINO_SKIP = "OpenVINO is not installed: pip install 'bnncompile[openvino]'"
FAST = ["--rounds", "1", "--number", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def libs(tiny_onnx, tmp_path_factory):
    """tiny.so (batch 1) and tiny_b2.so (batch 2) compiled from the session's tiny model."""
    d = tmp_path_factory.mktemp("bench")
    one = compile_model(tiny_onnx, output=d / "tiny.so", target="host").library
    two = compile_model(tiny_onnx, output=d / "tiny_b2.so", target="host", batch=2).library
    return tiny_onnx, one, two


@pytest.fixture(autouse=True)
def _no_settle(monkeypatch):
    monkeypatch.setattr(bench, "SETTLE_S", 0.0)


def _one_line_error(capsys, code, expected_code, *fragments):
    out, err = capsys.readouterr()
    assert code == expected_code, (code, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    return lines[0]


def _forbid_timing(monkeypatch):
    """Make any engine timing fail loudly: the error must come before it."""
    def boom(*a, **k):
        raise AssertionError("an engine was timed")

    monkeypatch.setattr(bench, "_interleave", boom)


# -- pairing and outputs, checked before any timing ----------------------------------------------

def test_mismatched_lib_and_model_is_refused_before_timing(libs, exported_small, capsys, monkeypatch):
    _, lib, _ = libs
    _forbid_timing(monkeypatch)
    code = main(["bench", str(exported_small.model_path), "--lib", str(lib), *FAST])
    _one_line_error(capsys, code, 2, "--lib", str(lib), "different ONNX file", "recompile")


def test_mismatched_throughput_lib_is_refused(libs, exported_small, tmp_path, capsys, monkeypatch):
    model, lib, _ = libs
    other = compile_model(exported_small.model_path, output=tmp_path / "other.so", target="host").library
    _forbid_timing(monkeypatch)
    code = main(["bench", str(model), "--lib", str(lib), "--throughput-lib", str(other), *FAST])
    _one_line_error(capsys, code, 2, "--throughput-lib", "different ONNX file")


@pytest.mark.parametrize("flag", ["--plot", "--json-out"])
def test_unwritable_output_fails_before_the_benchmark(libs, tmp_path, capsys, monkeypatch, flag):
    model, lib, _ = libs

    def no_benchmark(*a, **k):
        raise AssertionError("the benchmark ran before the output path was checked")

    monkeypatch.setattr(bench, "benchmark", no_benchmark)
    code = main(["bench", str(model), "--lib", str(lib), *FAST, flag, str(tmp_path / "nodir" / "out")])
    _one_line_error(capsys, code, 3, flag, "nodir", "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_unknown_against_engine(libs, capsys, monkeypatch):
    model, lib, _ = libs
    _forbid_timing(monkeypatch)
    code = main(["bench", str(model), "--lib", str(lib), *FAST, "--against", "tensorrt"])
    _one_line_error(capsys, code, 2, "--against", "openvino", "tensorrt")


def test_against_openvino_without_openvino_names_the_extra(libs, capsys, monkeypatch):
    model, lib, _ = libs
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    _forbid_timing(monkeypatch)
    code = main(["bench", str(model), "--lib", str(lib), *FAST, "--against", "openvino"])
    _one_line_error(capsys, code, 2, "openvino", "pip install 'bnncompile[openvino]'")


# -- the report ----------------------------------------------------------------------------------

def test_json_report_records_machine_target_versions(libs, tmp_path, capsys):
    model, lib, _ = libs
    out = tmp_path / "report.json"
    png = tmp_path / "bench.png"
    assert main(["bench", str(model), "--lib", str(lib), *FAST, "--json", "--json-out", str(out),
                 "--plot", str(png)]) == 0
    stdout = capsys.readouterr().out
    report = json.loads(stdout)
    assert json.loads(out.read_text()) == report  # the file holds the same report
    env = report["environment"]
    cpu = env["cpu"]
    assert cpu["model_name"] and cpu["logical_cpus"] >= 1
    assert {"avx2", "avx512f", "avx512_vpopcntdq", "avx512_bf16"} <= set(cpu["flags"])
    assert isinstance(cpu["amx"], bool)
    assert env["target"]["name"] == "host" and env["target"]["identity"]["tag"]
    assert len(env["load_average"]["start"]) == 3 and len(env["load_average"]["end"]) == 3
    assert {"bnncompile", "tvm", "onnxruntime", "torch", "openvino"} <= set(env["versions"])
    assert env["versions"]["tvm"] and env["versions"]["onnxruntime"]
    assert env["threads"]["counts"] == [1]
    assert report["threads"] == [1] and report["number"] == 1
    engines = {t["engine"] for t in report["timings"]}
    assert {"bnncompile", "onnxruntime-fp32"} <= engines
    for t in report["timings"]:
        assert len(t["round_medians_ms"]) == 1 and t["round_spread"] is None  # one round
        assert t["precision"] == "f32" and t["batch"] == 1
    assert isinstance(report["warnings"], list)
    vm = report["vm_builtins"]
    assert vm["calls"] > 0 and vm["ms"] >= 0 and vm["kernel_calls"] > 0
    assert all(k.startswith("vm.builtin") for k in vm["by_name"])
    assert sum(v["calls"] for v in vm["by_name"].values()) == vm["calls"]
    assert report["layers"] and any(r["kernel"].startswith("bnn_") for r in report["layers"])
    ovh = report["vm_overhead"]
    assert ovh["ms"] > 0 and ovh["min_ms"] <= ovh["ms"] and ovh["kernels_emptied"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


def test_text_report_prints_cpu_target_and_vm_builtins(libs, capsys):
    model, lib, _ = libs
    assert main(["bench", str(model), "--lib", str(lib), *FAST]) == 0
    out = capsys.readouterr().out
    assert "\nCPU: " in out and "logical CPUs" in out
    assert "target: host (tag " in out and "load average" in out
    assert "Relax VM builtins per inference:" in out
    assert "Relax VM overhead per inference:" in out and "ms measured" in out
    assert "per-kernel time" in out  # the per-kernel breakdown keeps working


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs 2+ CPUs")
def test_tvm_thread_setting_leaves_the_cpu_mask_alone():
    """TVM pins the thread that configures its pool; threads created afterwards (ONNX Runtime's,
    torch's, OpenVINO's) would inherit one core. The benchmark's setter restores the mask."""
    import threading

    from bnncompile.bench.engines import set_tvm_threads

    before = os.sched_getaffinity(0)
    for n in (1, 2, 1):
        set_tvm_threads(n)
        assert os.sched_getaffinity(0) == before, n
    seen = {}
    t = threading.Thread(target=lambda: seen.setdefault("mask", os.sched_getaffinity(0)))
    t.start()
    t.join()
    assert seen["mask"] == before


def test_round_spread_warning():
    steady = bench.EngineTiming("bnncompile", 1, 1.0, 0.9, 1.1, 20, round_medians_ms=[1.0, 1.2])
    noisy = bench.EngineTiming("onnxruntime-fp32", 2, 5.0, 3.0, 9.0, 20, round_medians_ms=[3.0, 6.0])
    assert steady.round_spread == pytest.approx(1.2) and noisy.round_spread == pytest.approx(2.0)
    warnings = bench.round_spread_warnings([steady, noisy])
    assert len(warnings) == 1 and "onnxruntime-fp32 (2 threads" in warnings[0] and "2.00x" in warnings[0]
    report = bench.BenchReport("m.onnx", "m.so", 1, 2, timings=[steady, noisy], warnings=warnings)
    text = report.format()
    assert "warning: rounds disagree: onnxruntime-fp32" in text
    assert report.to_dict()["timings"][1]["round_spread"] == pytest.approx(2.0)


def test_plot_has_log_axis_and_labels(tmp_path, monkeypatch):
    """Every bar carries its value; the y axis is logarithmic; written through a temporary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen = {}
    real_close = plt.close

    def keep(fig=None):
        seen["fig"] = fig
        real_close(fig)

    monkeypatch.setattr(plt, "close", keep)
    rows = [bench.EngineTiming(e, n, ms, ms * 0.9, ms * 1.1, 10) for n in (1, 2)
            for e, ms in (("bnncompile", 5.0 / n), ("onnxruntime-fp32", 40.0 / n))]
    tp = [bench.EngineTiming(e, 1, ms, ms, ms, 10, batch=8, images_per_call=8)
          for e, ms in (("bnncompile", 30.0), ("openvino-default", 120.0))]
    report = bench.BenchReport("m.onnx", "m.so", 1, 1, timings=rows, throughput=tp)
    bench.plot(report, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]
    lat, thr = seen["fig"].axes
    assert lat.get_yscale() == "log" and thr.get_yscale() == "log"
    labels = [t.get_text() for t in lat.texts]
    assert sorted(labels) == sorted(["5", "2.5", "40", "20"])
    assert [t.get_text() for t in lat.get_xticklabels()] == ["1 thread", "2 threads"]
    assert len(thr.texts) == 2


def test_profile_counts_vm_builtins(libs):
    from bnncompile.runtime import load

    _, lib, _ = libs
    prof = bench.profile(load(lib), repeats=2)
    names = {r.kernel for r in prof.layers}
    assert set(prof.builtins["by_name"]) == {n for n in names if n.startswith("vm.builtin")}
    assert prof.builtins["calls"] >= len(prof.builtins["by_name"]) > 0
    assert bench.profile_layers(load(lib), repeats=1)  # the old entry point still works


def test_vm_overhead_times_the_library_program_with_empty_kernels(libs):
    """The measured program is the library's own (same VM bytecode: same builtins, same kernel
    calls), and every kernel it calls was emptied, so what is timed is the VM alone."""
    from bnncompile import targets
    from bnncompile.artifacts import load_onnx
    from bnncompile.bench import vm_overhead
    from bnncompile.compiler import build_relax
    from bnncompile.runtime import load

    model, lib, _ = libs
    runner = load(lib)
    onnx_model = load_onnx(model)
    real, _ = build_relax(onnx_model, spec=targets.resolve("host"), batch=1)
    empty, emptied = vm_overhead.emptied_build(onnx_model, runner.meta)
    assert empty.as_text() == real.as_text()
    called = {r.kernel for r in bench.profile(runner, repeats=1).layers if not r.kernel.startswith("vm.")}
    assert called and called <= set(emptied)
    x = np.zeros(runner.inputs[0]["shape"], np.float32)
    o = vm_overhead.measure(onnx_model, runner.meta, x, number=2, repeat=2)
    assert o.ms > 0 and o.kernels_emptied == len(emptied)


def test_empty_kernel_bodies_keeps_signatures_and_drops_the_work():
    import tvm
    from tvm import te

    from bnncompile.bench import vm_overhead

    a = te.placeholder((4, 8), name="a")
    b = te.compute((4, 8), lambda i, j: a[i, j] * 2.0, name="b")
    mod = tvm.IRModule({"double": te.create_prim_func([a, b])})
    names: list = []
    out = vm_overhead.empty_kernel_bodies(names)(mod)
    f = out["double"]
    assert names == ["double"] and isinstance(f.body, tvm.tirx.Evaluate)
    assert [str(v) for v in f.params] == [str(v) for v in mod["double"].params]
    assert f.script().count("T.Buffer((4, 8)") == 2  # the argument checks stay


def test_profile_leaves_no_hook_on_the_vm(libs):
    """After a profile the runner must run as before: no Python callback left on the VM's
    calls (one used to stay, costing a few µs per call in every later timing)."""
    import sys

    from bnncompile.runtime import load

    _, lib, _ = libs
    runner = load(lib)
    x = np.zeros(runner.inputs[0]["shape"], np.float32)
    bench.profile(runner, x, repeats=1)
    seen = []

    def tracer(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.endswith("profile.py"):
            seen.append(frame.f_code.co_name)

    sys.setprofile(tracer)
    try:
        runner(x)
    finally:
        sys.setprofile(None)
    assert seen == [], f"Python callbacks on the VM after profile(): {seen[:5]}"


# -- OpenVINO --------------------------------------------------------------------------------------

def test_against_openvino_latency_and_throughput(libs, capsys):
    pytest.importorskip("openvino", reason=OPENVINO_SKIP)
    model, lib, lib2 = libs
    assert main(["bench", str(model), "--lib", str(lib), *FAST, "--against", "openvino",
                 "--throughput-lib", str(lib2), "--json", "--no-layers"]) == 0
    report = json.loads(capsys.readouterr().out)
    engines = {t["engine"]: t for t in report["timings"]}
    assert {"bnncompile", "onnxruntime-fp32", "openvino-fp32", "openvino-default"} <= set(engines)
    assert engines["openvino-fp32"]["precision"] == "f32"
    ov = report["openvino"]
    assert ov["version"] and ov["default_precision"] in {"f32", "bf16", "f16"}
    assert engines["openvino-default"]["precision"] == ov["default_precision"]
    assert {"openvino-fp32", "openvino-default"} <= set(report["speedup_vs"])
    latency = [c for c in ov["compiled"] if c["hint"] == "LATENCY"]
    assert latency and all(c["INFERENCE_NUM_THREADS"] == 1 and c["batch"] == 1 for c in latency)
    tp = {t["engine"]: t for t in report["throughput"]}
    assert {"bnncompile", "onnxruntime-fp32", "openvino-fp32", "openvino-default"} <= set(tp)
    assert all(t["batch"] == 2 and t["images_per_s"] > 0 for t in tp.values())
    assert tp["openvino-default"]["images_per_call"] % 2 == 0
    assert any(c["hint"] == "THROUGHPUT" and c["batch"] == 2 for c in ov["compiled"])
    assert "openvino-default" in report["throughput_speedup_vs"]
    assert report["throughput_library"].endswith("tiny_b2.so")
    assert report["vm_builtins"] is None and report["layers"] == []  # --no-layers
    assert report["vm_overhead"] is None


def test_against_openvino_text_report(libs, capsys):
    pytest.importorskip("openvino", reason=OPENVINO_SKIP)
    model, lib, _ = libs
    assert main(["bench", str(model), "--lib", str(lib), *FAST, "--against", "openvino",
                 "--no-layers"]) == 0
    out = capsys.readouterr().out
    assert "openvino-fp32" in out and "openvino-default" in out
    assert "default precision on this CPU =" in out


def test_benchmark_api_outputs_match_between_engines(libs):
    """The engines time the same computation: our library and OpenVINO agree with ORT on x."""
    ov = pytest.importorskip("openvino", reason=OPENVINO_SKIP)
    import onnx
    from testkit.onnx_graphs import ort_run

    from bnncompile.exporter import make_portable
    from bnncompile.runtime import load

    model, lib, _ = libs
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    (ref,) = ort_run(onnx.load(model), {"input": x})
    ours = load(lib)(x)
    core = ov.Core()
    got = core.compile_model(core.read_model(make_portable(onnx.load(model)).SerializeToString()),
                             "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
