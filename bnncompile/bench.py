"""``benchmark``: the compiled model vs ONNX Runtime FP32 vs PyTorch eager FP32, in one run.

Method (shared 2-core VMs show 2-3x run-to-run spread): every engine is warmed up, then the
engines are *interleaved* round by round, each round timing ``number`` back-to-back calls after a
short settle pause and one untimed call (so one engine's spinning thread pool never steals the
second core from the next); we report the median and the p10–p90 spread of all calls, and ratios
of medians taken from the same run. Thread counts are set per engine (TVM thread pool, ORT
intra-op threads, torch threads).
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .artifacts import ZOO_METADATA_KEY, load_onnx
from .errors import UsageError

#: pause between engines inside a round (see benchmark()); spinning pools park within ~100 ms
SETTLE_S = 0.2


@dataclass
class EngineTiming:
    engine: str
    threads: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    samples: int


@dataclass
class BenchReport:
    model: str
    library: str
    batch: int
    rounds: int
    timings: list[EngineTiming] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def median(self, engine: str, threads: int) -> float | None:
        return next((t.median_ms for t in self.timings if t.engine == engine and t.threads == threads), None)

    def speedups(self) -> dict[str, dict[int, float]]:
        """``{other engine: {threads: other median / bnncompile median}}``."""
        out: dict[str, dict[int, float]] = {}
        for t in self.timings:
            if t.engine == "bnncompile":
                continue
            ours = self.median("bnncompile", t.threads)
            if ours:
                out.setdefault(t.engine, {})[t.threads] = t.median_ms / ours
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["speedup_vs"] = {k: {str(n): v for n, v in r.items()} for k, r in self.speedups().items()}
        return d

    def format(self) -> str:
        lines = [f"benchmark: {self.model} (batch {self.batch}, {self.rounds} interleaved rounds)",
                 f"{'engine':<22}{'threads':>8}{'median ms':>12}{'p10-p90 ms':>18}{'vs bnncompile':>15}"]
        for t in self.timings:
            ours = self.median("bnncompile", t.threads)
            ratio = "" if t.engine == "bnncompile" or not ours else f"{t.median_ms / ours:.2f}x"
            lines.append(f"{t.engine:<22}{t.threads:>8}{t.median_ms:>12.3f}"
                         f"{f'{t.p10_ms:.3f}-{t.p90_ms:.3f}':>18}{ratio:>15}")
        lines.append("ratios > 1 mean bnncompile is faster (other engine's median / ours)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _set_tvm_threads(n: int) -> None:
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(1, n)


def _zoo_model(onnx_model):
    """Rebuild the PyTorch model from the zoo metadata written at export (None if not a zoo model)."""
    import json

    meta = {p.key: p.value for p in onnx_model.metadata_props}
    if ZOO_METADATA_KEY not in meta:
        return None
    info = json.loads(meta[ZOO_METADATA_KEY])
    if info.get("checkpoint"):
        return None  # weights came from a file we do not reload silently
    from . import zoo

    return zoo.build(info["name"], input_size=info["input_size"], num_classes=info["num_classes"],
                     seed=info["seed"], **info.get("overrides", {}))


def benchmark(onnx_path, *, lib, threads=(1, 2), rounds: int = 5, number: int = 10,
              warmup: int = 3, torch_model=None, progress=None) -> BenchReport:
    """Time ``lib`` (compiled from ``onnx_path``) against ONNX Runtime and PyTorch on one input.

    Args:
        threads: thread counts to measure (each engine is limited to the same count).
        rounds: interleaved rounds; each times ``number`` calls per engine.
        torch_model: the PyTorch module; by default rebuilt from the zoo metadata of the file.
    """
    import onnxruntime as ort
    import torch

    from .runtime import load

    if rounds < 1 or number < 1:
        raise UsageError(f"Expected rounds and number >= 1, got {rounds} and {number}")
    say = progress or (lambda msg: None)
    model = load_onnx(onnx_path)
    runner = load(lib)
    shape = runner.inputs[0]["shape"]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    report = BenchReport(str(onnx_path), str(lib), shape[0], rounds)
    if torch_model is None:
        torch_model = _zoo_model(model)
        if torch_model is None:
            report.notes.append("PyTorch eager skipped: not a zoo export (pass torch_model= from Python)")
    xt = torch.from_numpy(x)
    tvm_in = runner.set_inputs(x)
    for n in threads:
        _set_tvm_threads(n)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = n, 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        torch.set_num_threads(n)
        engines = {"bnncompile": lambda: runner._vm["main"](*tvm_in),
                   "onnxruntime-fp32": lambda: sess.run(None, feed)}
        if torch_model is not None:
            def run_torch():
                with torch.inference_mode():
                    torch_model(xt)
            engines["pytorch-eager-fp32"] = run_torch
        samples: dict[str, list[float]] = {k: [] for k in engines}
        for fn in engines.values():
            for _ in range(warmup):
                fn()
        for r in range(rounds):
            say(f"{n} thread(s), round {r + 1}/{rounds}")
            for name, fn in engines.items():
                # The previous engine's idle workers spin for a while (TVM's pool and ORT's
                # intra-op pool both do); let them park, then rewarm, so no engine is timed while
                # another one burns the second core.
                time.sleep(SETTLE_S)
                fn()
                for _ in range(number):
                    t0 = time.perf_counter()
                    fn()
                    samples[name].append((time.perf_counter() - t0) * 1e3)
        for name, vals in samples.items():
            q = np.percentile(vals, [10, 90])
            report.timings.append(EngineTiming(name, n, statistics.median(vals), float(q[0]), float(q[1]), len(vals)))
    return report


def plot(report: BenchReport, path) -> None:
    """Grouped bar chart of median latency per engine and thread count (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = list(dict.fromkeys(t.engine for t in report.timings))
    threads = sorted({t.threads for t in report.timings})
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(engines)
    for i, e in enumerate(engines):
        rows = {t.threads: t for t in report.timings if t.engine == e}
        vals = [rows[n].median_ms if n in rows else 0.0 for n in threads]
        errs = [[rows[n].median_ms - rows[n].p10_ms if n in rows else 0.0 for n in threads],
                [rows[n].p90_ms - rows[n].median_ms if n in rows else 0.0 for n in threads]]
        ax.bar([j + i * width for j in range(len(threads))], vals, width, yerr=errs, label=e, capsize=3)
    ax.set_xticks([j + width * (len(engines) - 1) / 2 for j in range(len(threads))])
    ax.set_xticklabels([f"{n} thread{'s' if n > 1 else ''}" for n in threads])
    ax.set_ylabel("median latency (ms), p10-p90 bars")
    ax.set_title(Path(report.model).name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclass
class LayerTiming:
    kernel: str
    kind: str
    layers: list[str]
    calls: int
    ms: float  # per inference, all calls of this kernel
    share: float  # fraction of the instrumented total
    gbmacs: float | None  # achieved G binary-MAC/s (binary kernels)
    gflops_mac: float | None  # achieved G float-MAC/s (float conv kernel)


def binary_ceiling_gbmacs() -> tuple[float, str]:
    """Per-thread binary-MAC/s ceiling of this CPU, with where the number comes from."""
    from .targets import cpu_flags

    if "avx512_vpopcntdq" in cpu_flags():
        ghz, how = cpu_ghz()
        # vpxor + vpopcntq + vpaddq per 512 bits on two vector ports: ~1.5 cycles -> 341 bMAC/cycle
        return 341 * ghz, f"model: 512 bits / 1.5 cycles (AVX-512 VPOPCNTDQ) at {ghz:.2f} GHz {how}"
    return 280.0, "measured AVX2 vpshufb popcount on Zen 3 (ARCHITECTURE.md)"


@functools.lru_cache(maxsize=1)
def cpu_ghz() -> tuple[float, str]:
    """The clock one busy core actually runs at, and how it was found.

    Measured: a chain of dependent 64-bit multiplies (3 cycles each on every x86 core since
    Nehalem and on Zen), compiled with TVM and timed.  /proc/cpuinfo's "cpu MHz" is a guess on VMs
    (the development VM says 2300 while its cores turbo to ~3.8 GHz), so it is only the fallback."""
    try:
        import tvm
        from tvm.script import tirx as T

        @T.prim_func
        def chain(a: T.Buffer((2,), "int64"), n: T.int32):
            T.func_attr({"global_symbol": "chain", "tirx.noalias": True})
            x = T.alloc_buffer((1,), "int64", scope="local")
            x[0] = a[0]
            for i in range(n):
                x[0] = x[0] * x[0]
            a[1] = x[0]

        f = tvm.compile(chain, target={"kind": "llvm"}).jit()["chain"]
        buf = tvm.runtime.tensor(np.array([3, 0], np.int64))
        n = 10_000_000  # ~3 ms a sample
        f(buf, n)  # warm-up: page in, let the clock ramp up
        # the fastest of several short samples: a shared VM's host may preempt any one of them
        best = min(_timed(f, buf, n) for _ in range(9))
        return 3 * n / best / 1e9, "(measured: dependent imul chain)"
    except Exception:  # no compiler at hand: the OS's figure
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":")[1]) / 1e3, "(/proc/cpuinfo)"
    except (OSError, ValueError):
        pass
    return 2.0, "(assumed)"


def _timed(f, *args) -> float:
    t0 = time.perf_counter()
    f(*args)
    return time.perf_counter() - t0


def profile_layers(runner, x: np.ndarray | None = None, *, repeats: int = 5) -> list[LayerTiming]:
    """Time every VM call (one per kernel launch) with the VM's instrument hook."""
    import collections

    kernels = runner.meta.get("kernels", {})
    x = np.random.default_rng(0).standard_normal(runner.inputs[0]["shape"]).astype(np.float32) if x is None else x
    args = runner.set_inputs(x)
    vm = runner._vm
    vm["main"](*args)
    acc: collections.Counter = collections.Counter()
    start: dict[str, float] = {}

    def instrument(func, symbol, before_run, ret_value, *rest):
        if before_run:
            start[symbol] = time.perf_counter()
        else:
            acc[symbol] += time.perf_counter() - start.pop(symbol, time.perf_counter())
        return 0

    vm.set_instrument(instrument)
    try:
        for _ in range(repeats):
            vm["main"](*args)
    finally:
        vm.set_instrument(lambda *a: 0)
    total = sum(acc.values()) or 1.0
    rows = []
    for symbol, secs in acc.most_common():
        info = kernels.get(symbol, {})
        per = secs / repeats
        calls = int(info.get("calls", 0)) or 1
        bm, fm = info.get("binary_macs", 0) * calls, info.get("float_macs", 0) * calls
        rows.append(LayerTiming(symbol, info.get("kind", "tvm"), list(info.get("layers", [])),
                                int(info.get("calls", 0)), per * 1e3, secs / total,
                                bm / per / 1e9 if bm else None, fm / per / 1e9 if fm else None))
    return rows


def format_layers(rows: list[LayerTiming], top: int = 25) -> str:
    ceiling, source = binary_ceiling_gbmacs()
    lines = [f"per-kernel time (1 inference; binary ceiling ~{ceiling:.0f} G bMAC/s per thread, {source})",
             f"{'ms':>8} {'share':>6} {'G bMAC/s':>9} {'% ceil':>7}  kernel (layers)"]
    for r in rows[:top]:
        g = f"{r.gbmacs:9.1f}" if r.gbmacs else (f"{r.gflops_mac:6.1f} GF" if r.gflops_mac else " " * 9)
        pct = f"{100 * r.gbmacs / ceiling:6.0f}%" if r.gbmacs else " " * 7
        where = f" ({r.layers[0]}{' +' + str(len(r.layers) - 1) if len(r.layers) > 1 else ''})" if r.layers else ""
        lines.append(f"{r.ms:8.3f} {100 * r.share:5.1f}% {g} {pct}  {r.kernel}{where}")
    if len(rows) > top:
        lines.append(f"... {len(rows) - top} more kernels, {sum(r.ms for r in rows[top:]):.3f} ms")
    return "\n".join(lines)
