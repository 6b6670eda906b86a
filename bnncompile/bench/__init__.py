"""``benchmark``: the compiled model vs ONNX Runtime FP32, PyTorch eager FP32 and (optionally)
OpenVINO, in one run.

Method (shared 2-core VMs show 2-3x run-to-run spread): every engine is warmed up, then the
engines are *interleaved* round by round, each round timing ``number`` back-to-back calls after a
short settle pause and one untimed call (so one engine's spinning thread pool never steals the
second core from the next); we report the median and the p10–p90 spread of all calls, and ratios
of medians taken from the same run. Thread counts are set per engine (TVM thread pool, ORT
intra-op threads, torch threads, OpenVINO ``INFERENCE_NUM_THREADS``). When the per-round medians of
one engine differ by more than :data:`ROUND_SPREAD_WARN` the report carries a warning: the machine
was busy and the ratios are less trustworthy.

``against=("openvino",)`` adds OpenVINO's CPU plugin on the same ONNX file (through
:func:`bnncompile.exporter.make_portable`: OpenVINO does not read the ``com.bnncompile`` domain),
reshaped to the library's static input shape, ``PERFORMANCE_HINT=LATENCY``: once with
``INFERENCE_PRECISION_HINT=f32`` (``openvino-fp32``) and once with the plugin's default precision
(``openvino-default``: bf16 on AMX / AVX512_BF16 CPUs, f32 elsewhere; the precision it used is
read back from the compiled model).

``throughput_lib`` (a library compiled from the same model with ``--batch B``) adds a throughput
section: images/s at batch B for ours, ONNX Runtime and PyTorch (one call at a time) and for
OpenVINO under its ``THROUGHPUT`` hint (its optimal number of parallel infer requests, each of
batch B, in flight at once).

The report also records the machine (:func:`environment`: CPU model and the flags that matter
here, load average, versions, the library's target and identity) and, from one instrumented run,
the per-kernel breakdown and the Relax VM builtin calls per inference (:func:`profile`), and the
VM's own time per inference, measured on the same program with its kernels emptied
(:mod:`.vm_overhead`)."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..artifacts import load_onnx
from ..errors import UsageError
from .engines import (
    AGAINST_CHOICES,
    OPENVINO_EXTRA,
    SETTLE_S,
    _Engine,
    _interleave,
    _OpenVINO,
    _ort_session,
    _zoo_model,
    require_openvino,
    set_tvm_threads,
)
from .machine import (
    CPU_FLAGS,
    amx_ceiling_gmacs,
    binary_ceiling_gbmacs,
    cpu_ghz,
    cpu_info,
    environment,
    float_ceiling_gmacs,
    format_environment,
    int16_ceiling_gmacs,
    versions,
    vnni_ceiling_gmacs,
)
from .profile import LayerTiming, VMProfile, format_layers, profile, profile_layers
from .report import ROUND_SPREAD_WARN, BenchReport, EngineTiming, plot, round_spread_warnings
from .vm_overhead import VMOverhead
from .vm_overhead import measure as measure_vm_overhead

__all__ = [
    "AGAINST_CHOICES",
    "CPU_FLAGS",
    "OPENVINO_EXTRA",
    "ROUND_SPREAD_WARN",
    "SETTLE_S",
    "BenchReport",
    "EngineTiming",
    "LayerTiming",
    "VMOverhead",
    "VMProfile",
    "amx_ceiling_gmacs",
    "benchmark",
    "benchmark_remote",
    "binary_ceiling_gbmacs",
    "check_pairing",
    "cpu_ghz",
    "cpu_info",
    "environment",
    "float_ceiling_gmacs",
    "format_environment",
    "format_layers",
    "int16_ceiling_gmacs",
    "plot",
    "profile",
    "profile_layers",
    "require_openvino",
    "round_spread_warnings",
    "set_tvm_threads",
    "versions",
    "vnni_ceiling_gmacs",
]


def check_pairing(onnx_path, lib, throughput_lib=None) -> None:
    """Raise before any work unless ``lib`` (and ``throughput_lib``) were compiled from
    ``onnx_path`` (the sidecar's ``onnx_sha256``)."""
    from ..artifacts import check_library_matches_model
    from ..errors import InputFileError
    from ..runtime import read_sidecar

    if not Path(onnx_path).is_file():
        raise InputFileError(f"{onnx_path}: no such file")
    for what, path in (("--lib", lib), ("--throughput-lib", throughput_lib)):
        if path is None:
            continue
        if not Path(path).is_file():
            raise InputFileError(f"{what} {path}: no such library")
        meta = read_sidecar(path)
        try:
            check_library_matches_model(meta, path, onnx_path)
        except UsageError as exc:
            raise UsageError(f"{what}: {exc}") from exc


def _checked_library(lib, onnx_path, what: str):
    """The runner of ``lib``, checked to have been compiled from ``onnx_path`` (before any
    timing) and to take one input."""
    from ..runtime import load

    if what == "--lib":
        check_pairing(onnx_path, lib)
    else:
        check_pairing(onnx_path, None, lib)
    runner = load(lib)
    if len(runner.inputs) != 1:
        raise UsageError(f"{what} {lib}: bench times single-input models; this one takes "
                         f"{[i['name'] for i in runner.inputs]}")
    return runner


def benchmark_remote(onnx_path, *, lib, remote, rounds: int = 5, number: int = 10,
                     progress=None) -> BenchReport:
    """Time ``lib`` on a board (``remote``: :class:`bnncompile.remote.Endpoint`) with TVM's
    timer on the device; the other engines are not run (they would run here, not on the board)."""
    from ..runtime import load

    check_pairing(onnx_path, lib)
    say = progress or (lambda msg: None)
    with load(lib, remote=remote) as runner:
        shape = runner.inputs[0]["shape"]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        staged = runner.set_inputs(x)
        timer = runner.time_evaluator(number=number, repeat=1)
        runner.vm["main"](*staged)  # warm-up: the first call uploads constants
        medians = []
        for i in range(rounds):
            say(f"round {i + 1}/{rounds} on {remote}")
            medians.append(float(timer(*staged).mean) * 1e3)
    env = environment(runner.meta)  # this machine's record, with the board named beside it
    env["board"] = str(remote)
    report = BenchReport(str(onnx_path), str(lib), shape[0], rounds, number=number, threads=[0],
                         environment=env)
    s = sorted(medians)
    report.timings.append(EngineTiming(f"bnncompile@{remote}", 0, float(np.median(s)), s[0], s[-1],
                                       rounds * number, shape[0], shape[0], "f32", medians))
    report.notes.append("timed on the board with TVM's time_evaluator (threads: the board's "
                        "TVM_NUM_THREADS); ONNX Runtime and PyTorch run here, so they are not compared")
    report.warnings += round_spread_warnings(report.timings)
    return report


def benchmark(onnx_path, *, lib, threads=(1, 2), rounds: int = 5, number: int = 10,
              warmup: int = 3, torch_model=None, progress=None, against=(),
              throughput_lib=None, profile_vm: bool = True) -> BenchReport:
    """Time ``lib`` (compiled from ``onnx_path``) against ONNX Runtime and PyTorch on one input.

    Args:
        threads: thread counts to measure (each engine is limited to the same count).
        rounds: interleaved rounds; each times ``number`` calls per engine.
        torch_model: the PyTorch module; by default rebuilt from the zoo metadata of the file.
        against: extra engines, from :data:`AGAINST_CHOICES` (``"openvino"``: OpenVINO FP32 and
            OpenVINO's default precision; needs ``bnncompile[openvino]``).
        throughput_lib: a library compiled from the same model with ``--batch B``: adds images/s
            at batch B for every engine (OpenVINO under its THROUGHPUT hint).
        profile_vm: after timing, one instrumented pass (1 thread): per-kernel breakdown
            (``report.layers``) and Relax VM builtin calls per inference (``report.vm_builtins``);
            then the VM's own time per inference (``report.vm_overhead``, 1 thread): the model
            rebuilt with the library's options and its kernels emptied (a compile).

    Raises :class:`UsageError` before any timing when a library was not compiled from
    ``onnx_path`` or OpenVINO is asked for but not installed.
    """
    if rounds < 1 or number < 1 or warmup < 0:
        raise UsageError(f"Expected rounds and number >= 1 and warmup >= 0, got {rounds}, {number}, {warmup}")
    against = tuple(dict.fromkeys(against))
    unknown = [a for a in against if a not in AGAINST_CHOICES]
    if unknown:
        raise UsageError(f"--against: unknown engine(s) {unknown}; choose from {list(AGAINST_CHOICES)}")
    if "openvino" in against:
        require_openvino()
    say = progress or (lambda msg: None)
    model = load_onnx(onnx_path)
    runner = _checked_library(lib, onnx_path, "--lib")
    runner8 = _checked_library(throughput_lib, onnx_path, "--throughput-lib") if throughput_lib else None

    import onnxruntime as ort  # noqa: F401  (fail here, not mid-run)
    import torch

    shape = runner.inputs[0]["shape"]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    report = BenchReport(str(onnx_path), str(lib), shape[0], rounds, number=number, threads=list(threads),
                         environment=environment(runner.meta))
    if torch_model is None:
        torch_model = _zoo_model(model)
        if torch_model is None:
            report.notes.append("PyTorch eager skipped: not a zoo export (pass torch_model= from Python)")
    model_bytes = model.SerializeToString()
    ov = _OpenVINO(model, shape) if "openvino" in against else None

    def torch_fn(xt):
        def run():
            with torch.inference_mode():
                torch_model(xt)
        return run

    def engines_for(r, xb, n, *, throughput: bool) -> list[_Engine]:
        b = xb.shape[0]
        tvm_in = r.set_inputs(xb)
        sess = _ort_session(model_bytes, n)
        feed = {sess.get_inputs()[0].name: xb}
        # binary layers + f32 glue; "conv:int16" when the float convs were quantized, "attn:int8"
        # when attention's products were
        opts = r.meta.get("options") or {}
        quantized = [f"{what}:{opts[key]}" for what, key in (("conv", "conv_precision"),
                                                             ("attn", "attention_precision"))
                     if opts.get(key, "fp32") != "fp32"]
        ours = "+".join(quantized) or "f32"
        out = [_Engine("bnncompile", lambda: r._vm["main"](*tvm_in), b, b, ours),
               _Engine("onnxruntime-fp32", lambda: sess.run(None, feed), b, b)]
        if torch_model is not None:
            out.append(_Engine("pytorch-eager-fp32", torch_fn(torch.from_numpy(xb)), b, b))
        if ov is not None:
            for fp32 in (True, False):
                if throughput:
                    fn, props, nreq = ov.throughput_engine(xb, n, fp32=fp32)
                else:
                    (fn, props), nreq = ov.latency_engine(xb, n, fp32=fp32), 1
                out.append(_Engine(props["engine"], fn, b, b * nreq, props["precision"]))
        return out

    for n in threads:
        set_tvm_threads(n)
        torch.set_num_threads(n)
        report.timings += _interleave(engines_for(runner, x, n, throughput=False), n, rounds=rounds,
                                      number=number, warmup=warmup, say=say, label="")
    if runner8 is not None:
        shape8 = runner8.inputs[0]["shape"]
        x8 = np.random.default_rng(0).standard_normal(shape8).astype(np.float32)
        report.throughput_library = str(throughput_lib)
        if ov is not None:
            ov.reshape(shape8)
        for n in threads:
            set_tvm_threads(n)
            torch.set_num_threads(n)
            report.throughput += _interleave(engines_for(runner8, x8, n, throughput=True), n,
                                             rounds=rounds, number=number, warmup=warmup, say=say,
                                             label=f"batch {shape8[0]}, ")
    if ov is not None:
        report.openvino = ov.info()
    report.warnings += round_spread_warnings(report.timings + report.throughput)
    if profile_vm:
        set_tvm_threads(1)
        prof = profile(runner, x)
        report.layers, report.vm_builtins = prof.layers, prof.builtins
        say("measuring the VM's own overhead (rebuilding the model with its kernels emptied)")
        report.vm_overhead = asdict(measure_vm_overhead(model, runner.meta, x))
    report.environment["load_average"]["end"] = list(os.getloadavg())
    report.environment["threads"] = {
        "counts": list(threads), "tvm": "runtime.config_threadpool(-3, n, every allowed core); caller's CPU mask kept",
        "onnxruntime": "intra_op_num_threads=n, inter_op_num_threads=1", "torch": "set_num_threads(n)",
        **({"openvino": "INFERENCE_NUM_THREADS=n"} if ov is not None else {})}
    return report
