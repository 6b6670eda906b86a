"""What a benchmark reports: per-engine timings, ratios to bnncompile from the same run,
warnings when rounds disagree, and the bar charts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .machine import format_environment

#: warn when an engine's slowest per-round median exceeds its fastest by this factor
ROUND_SPREAD_WARN = 1.5


@dataclass
class EngineTiming:
    engine: str
    threads: int
    median_ms: float  # per call
    p10_ms: float
    p90_ms: float
    samples: int
    batch: int = 1  # images per request
    images_per_call: int = 1  # batch x requests in flight (OpenVINO's THROUGHPUT hint)
    precision: str = "f32"
    round_medians_ms: list[float] = field(default_factory=list)

    @property
    def round_spread(self) -> float | None:
        """Slowest / fastest per-round median (None with a single round)."""
        r = self.round_medians_ms
        return max(r) / min(r) if len(r) > 1 and min(r) > 0 else None

    @property
    def images_per_s(self) -> float:
        return self.images_per_call / (self.median_ms / 1e3) if self.median_ms > 0 else float("inf")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["round_spread"] = self.round_spread
        d["images_per_s"] = self.images_per_s
        return d


@dataclass
class BenchReport:
    model: str
    library: str
    batch: int
    rounds: int
    timings: list[EngineTiming] = field(default_factory=list)  # latency, batch of the library
    notes: list[str] = field(default_factory=list)
    throughput: list[EngineTiming] = field(default_factory=list)
    throughput_library: str | None = None
    warnings: list[str] = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    openvino: dict | None = None  # version, default precision used, properties read back
    vm_builtins: dict | None = None  # see profile()
    vm_overhead: dict | None = None  # see vm_overhead.measure(): the VM's own ms per inference
    layers: list = field(default_factory=list)  # LayerTiming rows (1 thread)
    number: int = 0
    threads: list[int] = field(default_factory=list)

    def median(self, engine: str, threads: int) -> float | None:
        return next((t.median_ms for t in self.timings if t.engine == engine and t.threads == threads), None)

    def speedups(self) -> dict[str, dict[int, float]]:
        """``{other engine: {threads: other median / bnncompile median}}`` (latency)."""
        out: dict[str, dict[int, float]] = {}
        for t in self.timings:
            if t.engine == "bnncompile":
                continue
            ours = self.median("bnncompile", t.threads)
            if ours:
                out.setdefault(t.engine, {})[t.threads] = t.median_ms / ours
        return out

    def throughput_ratios(self) -> dict[str, dict[int, float]]:
        """``{other engine: {threads: our images/s / other images/s}}``."""
        ours = {t.threads: t.images_per_s for t in self.throughput if t.engine == "bnncompile"}
        out: dict[str, dict[int, float]] = {}
        for t in self.throughput:
            if t.engine != "bnncompile" and t.threads in ours and t.images_per_s > 0:
                out.setdefault(t.engine, {})[t.threads] = ours[t.threads] / t.images_per_s
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["timings"] = [t.to_dict() for t in self.timings]
        d["throughput"] = [t.to_dict() for t in self.throughput]
        d["speedup_vs"] = {k: {str(n): v for n, v in r.items()} for k, r in self.speedups().items()}
        d["throughput_speedup_vs"] = {k: {str(n): v for n, v in r.items()}
                                      for k, r in self.throughput_ratios().items()}
        return d

    def format(self) -> str:
        lines = [f"benchmark: {self.model} (batch {self.batch}, {self.rounds} interleaved rounds "
                 f"of {self.number} calls)"]
        lines += format_environment(self.environment)
        lines.append(f"{'engine':<22}{'threads':>8}{'precision':>20}{'median ms':>12}"
                     f"{'p10-p90 ms':>18}{'vs bnncompile':>15}")
        for t in self.timings:
            ours = self.median("bnncompile", t.threads)
            ratio = "" if t.engine == "bnncompile" or not ours else f"{t.median_ms / ours:.2f}x"
            lines.append(f"{t.engine:<22}{t.threads:>8}{t.precision:>20}{t.median_ms:>12.3f}"
                         f"{f'{t.p10_ms:.3f}-{t.p90_ms:.3f}':>18}{ratio:>15}")
        lines.append("ratios > 1 mean bnncompile is faster (other engine's median / ours)")
        if self.throughput:
            b = self.throughput[0].batch
            lines.append(f"throughput, batch {b} ({self.throughput_library}; OpenVINO under its "
                         "THROUGHPUT hint, its requests in flight at once):")
            lines.append(f"{'engine':<22}{'threads':>8}{'precision':>20}{'images/s':>12}"
                         f"{'ms/call':>10}{'imgs/call':>10}{'bnncompile vs':>15}")
            ratios = self.throughput_ratios()
            for t in self.throughput:
                r = ratios.get(t.engine, {}).get(t.threads)
                lines.append(f"{t.engine:<22}{t.threads:>8}{t.precision:>20}{t.images_per_s:>12.1f}"
                             f"{t.median_ms:>10.3f}{t.images_per_call:>10}"
                             f"{'' if r is None else f'{r:.2f}x':>15}")
            lines.append("throughput ratios > 1 mean bnncompile does more images/s")
        if self.openvino:
            ov = self.openvino
            lines.append(f"OpenVINO {ov.get('version')}: default precision on this CPU = "
                         f"{ov.get('default_precision')} (read back from the compiled model)")
        if self.vm_builtins:
            v = self.vm_builtins
            top = ", ".join(f"{k.removeprefix('vm.builtin.')} {c['calls']}"
                            for k, c in list(v["by_name"].items())[:4])
            lines.append(f"Relax VM builtins per inference: {v['calls']} calls, {v['ms']:.3f} ms "
                         f"instrumented ({top})")
        if self.vm_overhead:
            o = self.vm_overhead
            lines.append(f"Relax VM overhead per inference: {o['ms']:.3f} ms measured (min {o['min_ms']:.3f}; "
                         f"the same VM program, its {o['kernels_emptied']} kernels emptied: every builtin "
                         "and kernel call, outside the kernels' own work)")
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def round_spread_warnings(timings: list[EngineTiming], limit: float = ROUND_SPREAD_WARN) -> list[str]:
    out = []
    for t in timings:
        s = t.round_spread
        if s is not None and s > limit:
            out.append(f"rounds disagree: {t.engine} ({t.threads} thread{'s' if t.threads > 1 else ''}"
                       f", batch {t.batch}) per-round medians {min(t.round_medians_ms):.3f}-"
                       f"{max(t.round_medians_ms):.3f} ms ({s:.2f}x > {limit}x): the machine was "
                       "busy; rerun with more --rounds or on an idle machine")
    return out


def _bar_text(v: float) -> str:
    return f"{v:,.0f}" if v >= 1000 else f"{v:.3g}"


def plot(report: BenchReport, path) -> None:
    """Bar charts (matplotlib), written atomically: median latency per engine grouped by thread
    count, and images/s when the report has a throughput section; log axis and a value label on
    every bar (ours are much shorter than the others')."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..artifacts import atomic_write_bytes

    panels = [("latency", report.timings)] + ([("throughput", report.throughput)] if report.throughput else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 4.5), squeeze=False)
    for ax, (kind, rows_all) in zip(axes[0], panels):
        engines = list(dict.fromkeys(t.engine for t in rows_all))
        threads = sorted({t.threads for t in rows_all})
        width = 0.8 / max(len(engines), 1)
        for i, e in enumerate(engines):
            rows = {t.threads: t for t in rows_all if t.engine == e}
            xs = [j + i * width for j, n in enumerate(threads) if n in rows]
            ts = [rows[n] for n in threads if n in rows]
            label = f"{e} ({ts[0].precision})" if e == "openvino-default" else e
            if kind == "latency":
                vals = [t.median_ms for t in ts]
                errs = [[t.median_ms - t.p10_ms for t in ts], [t.p90_ms - t.median_ms for t in ts]]
                bars = ax.bar(xs, vals, width, yerr=errs, label=label, capsize=3)
            else:
                vals = [t.images_per_s for t in ts]
                bars = ax.bar(xs, vals, width, label=label)
            ax.bar_label(bars, labels=[_bar_text(v) for v in vals], fontsize=7, padding=2)
        ax.set_yscale("log")
        ax.set_xticks([j + width * (len(engines) - 1) / 2 for j in range(len(threads))])
        ax.set_xticklabels([f"{n} thread{'s' if n > 1 else ''}" for n in threads])
        if kind == "latency":
            ax.set_ylabel("median latency, ms (log; p10-p90 bars)")
            ax.set_title(f"{Path(report.model).name}: batch {report.batch}, lower is better")
        else:
            ax.set_ylabel("images/s (log)")
            ax.set_title(f"batch {rows_all[0].batch} throughput, higher is better")
        ax.margins(y=0.15)
        ax.legend(fontsize=7)
    cpu = report.environment.get("cpu", {})
    if cpu:
        load = report.environment.get("load_average", {}).get("start", [None])[0]
        fig.suptitle(f"{cpu.get('model_name')} ({cpu.get('llvm_cpu')}), load {load:.1f} at start"
                     if load is not None else str(cpu.get("model_name")), fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
