"""The engines a benchmark interleaves with the compiled library: ONNX Runtime FP32, PyTorch
eager (the zoo model rebuilt from the export's metadata) and OpenVINO (FP32 and its default
precision, on the portable form of the file), each at a given thread count."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import numpy as np

from ..artifacts import ZOO_METADATA_KEY
from ..errors import UsageError
from .report import EngineTiming

#: pause between engines inside a round (see benchmark()); spinning pools park within ~100 ms
SETTLE_S = 0.2


#: engines ``against=`` accepts
AGAINST_CHOICES = ("openvino",)


OPENVINO_EXTRA = "pip install 'bnncompile[openvino]'"


def set_tvm_threads(n: int) -> None:
    """TVM's thread pool at ``n`` threads, the calling thread's CPU mask left as it was.

    ``config_threadpool(1, n)`` (TVM's "big cores" mode) pins the calling thread and TVM's
    workers to one core here, and every thread created afterwards inherits the mask: ONNX
    Runtime's and torch's intra-op pools and OpenVINO's streams then all ran on that one core
    (Zen 3, DyBNN-ReActNet-18, 2 threads: ORT 88.5 ms instead of 30.2, OpenVINO 41.7 instead of
    22.7, ours 13.0 instead of 7.9; docs/benchmarks.md Z8). Mode -3 lets the ``n`` threads share
    every allowed core; the caller's mask is put back as well."""
    import tvm

    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if cpus is None:
        tvm.get_global_func("runtime.config_threadpool")(1, n)
        return
    # mode -3 (kSpecifyThreadShareAllCore): n threads free to run on every allowed core
    tvm.get_global_func("runtime.config_threadpool")(-3, n, [str(c) for c in sorted(cpus)])
    os.sched_setaffinity(0, cpus)


def _zoo_model(onnx_model):
    """Rebuild the PyTorch model from the zoo metadata written at export (None if not a zoo model)."""
    import json

    meta = {p.key: p.value for p in onnx_model.metadata_props}
    if ZOO_METADATA_KEY not in meta:
        return None
    info = json.loads(meta[ZOO_METADATA_KEY])
    if info.get("checkpoint"):
        return None  # weights came from a file we do not reload silently
    from .. import zoo

    return zoo.build(info["name"], input_size=info["input_size"], num_classes=info["num_classes"],
                     seed=info["seed"], **info.get("overrides", {}))


def require_openvino():
    """``openvino`` or a :class:`UsageError` naming the extra to install."""
    try:
        import openvino
    except ImportError as exc:
        raise UsageError(f"--against openvino needs OpenVINO, which is not installed: "
                         f"{OPENVINO_EXTRA}") from exc
    return openvino


def _ov_precision(compiled) -> str:
    p = compiled.get_property("INFERENCE_PRECISION_HINT")
    name = getattr(p, "get_type_name", None)
    return name() if name else str(p)


class _OpenVINO:
    """The portable model read once; compiled per thread count, hint and precision."""

    def __init__(self, onnx_model, shape):
        from ..exporter import make_portable

        ov = require_openvino()
        self.ov = ov
        self.core = ov.Core()
        self.model = self.core.read_model(make_portable(onnx_model).SerializeToString())
        self.version = ov.__version__.split("-")[0]
        self.compiled: list[dict] = []  # what each compiled model reports
        self.reshape(shape)

    def reshape(self, shape) -> None:
        self.model.reshape({self.model.input(0): self.ov.PartialShape(list(shape))})
        self.shape = list(shape)

    def compile(self, threads: int, *, hint: str, fp32: bool):
        config = {"PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": threads}
        if fp32:
            config["INFERENCE_PRECISION_HINT"] = "f32"
        cm = self.core.compile_model(self.model, "CPU", config)
        props = {"engine": "openvino-fp32" if fp32 else "openvino-default", "hint": hint,
                 "batch": self.shape[0], "precision": _ov_precision(cm)}
        for key in ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "OPTIMAL_NUMBER_OF_INFER_REQUESTS"):
            try:
                props[key] = int(cm.get_property(key))
            except Exception:  # a property this plugin version does not report
                props[key] = None
        self.compiled.append(props)
        return cm, props

    def latency_engine(self, x, threads: int, *, fp32: bool):
        cm, props = self.compile(threads, hint="LATENCY", fp32=fp32)
        req = cm.create_infer_request()
        req.set_input_tensor(self.ov.Tensor(x))
        return req.infer, props

    def throughput_engine(self, x, threads: int, *, fp32: bool):
        """One call = the plugin's optimal number of requests, each of batch ``len(x)``, in flight."""
        cm, props = self.compile(threads, hint="THROUGHPUT", fp32=fp32)
        nreq = max(1, props.get("OPTIMAL_NUMBER_OF_INFER_REQUESTS") or 1)
        queue = self.ov.AsyncInferQueue(cm, nreq)
        for i in range(nreq):
            queue[i].set_input_tensor(self.ov.Tensor(x))

        def run():
            for _ in range(nreq):
                queue.start_async()
            queue.wait_all()

        return run, props, nreq

    def info(self) -> dict:
        default = next((c["precision"] for c in self.compiled if c["engine"] == "openvino-default"), None)
        return {"version": self.version, "default_precision": default, "compiled": self.compiled}


def _ort_session(model_bytes: bytes, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


@dataclass
class _Engine:
    name: str
    fn: object
    batch: int
    images_per_call: int
    precision: str = "f32"


def _interleave(engines: list[_Engine], threads: int, *, rounds: int, number: int, warmup: int,
                say, label: str) -> list[EngineTiming]:
    """Warm every engine up, then time them round by round (see the module docstring)."""
    samples: dict[str, list[list[float]]] = {e.name: [] for e in engines}
    for e in engines:
        for _ in range(warmup):
            e.fn()
    for r in range(rounds):
        say(f"{label}{threads} thread(s), round {r + 1}/{rounds}")
        for e in engines:
            # The previous engine's idle workers spin for a while (TVM's pool, ORT's intra-op
            # pool and OpenVINO's streams all do); let them park, then rewarm, so no engine is
            # timed while another one burns the second core.
            time.sleep(SETTLE_S)
            e.fn()
            this_round = []
            for _ in range(number):
                t0 = time.perf_counter()
                e.fn()
                this_round.append((time.perf_counter() - t0) * 1e3)
            samples[e.name].append(this_round)
    out = []
    for e in engines:
        vals = [v for rnd in samples[e.name] for v in rnd]
        q = np.percentile(vals, [10, 90])
        out.append(EngineTiming(e.name, threads, statistics.median(vals), float(q[0]), float(q[1]),
                                len(vals), e.batch, e.images_per_call, e.precision,
                                [statistics.median(rnd) for rnd in samples[e.name]]))
    return out
