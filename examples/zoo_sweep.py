"""Full zoo sweep: export → compile (host) → validate (golden + photos) → latency vs ONNX Runtime.

    python examples/zoo_sweep.py                       # every zoo model at its default input size
    python examples/zoo_sweep.py --small               # every model at 32 px (quick check)
    python examples/zoo_sweep.py --size-override 64 --models reactnet_18,dybnn_reactnet_18
    python examples/zoo_sweep.py --small --json sweep.json
    python examples/zoo_sweep.py --conv-precision int16 --against openvino   # quantized float convs
    python examples/zoo_sweep.py --conv-precision int8 --attention-precision int8 --against openvino
    python examples/zoo_sweep.py --against openvino --json docs/bench/CPU-DATE/zoo_sweep.json \
        --markdown sweep.md --plot docs/bench/CPU-DATE/zoo_speedup.png  # docs/benchmarks.md

One table row per model: parameters, binary layers found by the compiler, compile seconds, max
|logit error| vs PyTorch, top-1 agreement (worst input set), DynamicSign sign flips (all sets), and
batch-1 median latency (1 thread unless --threads says more) of bnncompile, ONNX Runtime FP32 on
the same ONNX file, PyTorch eager and, with --against openvino, OpenVINO FP32 and OpenVINO's
default precision (bf16 on AMX / AVX512_BF16 CPUs), each with its ratio engine / bnncompile
(> 1: bnncompile is faster). With --conv-precision int16|int8 the float convs are quantized (with
--attention-precision int8 attention's Softmax x values products too); the
parity columns then compare with the quantized graph (frontend.quantized_reference), and three
more give the quantization's effect against the fp32 model: sign flips, worst top-1 agreement and
max |logit change|. Timings on shared VMs are noisy: the engines are interleaved and
reported as medians (see bnncompile.bench).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from tqdm import tqdm

import bnncompile
from bnncompile import targets, zoo
from bnncompile.data import real_images

BASE_COLS = [("model", 20, "s"), ("size", 5, "d"), ("params", 10, ",d"), ("bin", 4, "d"),
             ("compile_s", 10, ".1f"), ("max_abs", 9, ".2e"), ("top1", 6, ".0%"), ("flips", 7, "d")]
# engines besides bnncompile: (row key prefix, bench engine name, --against choice needed)
ENGINES = [("ort", "onnxruntime-fp32", None), ("ovfp32", "openvino-fp32", "openvino"),
           ("ov", "openvino-default", "openvino"), ("torch", "pytorch-eager-fp32", None)]


def engines_for(against) -> list[tuple[str, str]]:
    return [(key, name) for key, name, need in ENGINES if need is None or need in against]


def columns(threads, against) -> list[tuple[str, int, str]]:
    """Per thread count: bnncompile ms, each engine's ms and its ratio to bnncompile."""
    cols = list(BASE_COLS)
    for n in threads:
        cols.append((f"bnn_{n}t_ms", 10, ".2f"))
        for key, _ in engines_for(against):
            cols += [(f"{key}_{n}t_ms", 11, ".2f"), (f"x{key}_{n}t", 8, ".2f")]
    return cols


def fmt_row(row: dict, cols) -> str:
    out = []
    for name, width, spec in cols:
        v = row.get(name)
        out.append(f"{'-' if v is None else format(v, spec):>{width}}" if name != "model"
                   else f"{v:<{width}}")
    text = " ".join(out)
    if _busy(row):
        text += f"  (rounds disagree {row['round_spread']:.2f}x: the machine was busy)"
    return text + (f"  ERROR: {row['error']}" if row.get("error") else "")


def _busy(row: dict) -> bool:
    return any(w.startswith("rounds disagree") for w in row.get("warnings") or ())


def sweep_one(name: str, size: int | None, workdir: Path, rounds: int, number: int,
              threads=(1,), against=(), conv_precision: str = "fp32",
              attention_precision: str = "fp32") -> dict:
    spec = zoo.get_spec(name)
    size = size or spec.input_size
    row: dict = {"model": name, "size": size}
    model = zoo.build(name, input_size=size)
    row["params"] = sum(p.numel() for p in model.parameters())
    x = torch.from_numpy(real_images(2, size, channels=spec.in_channels, seed=0))
    onnx_path = workdir / f"{name}_{size}.onnx"
    bnncompile.export(model, x[:1], onnx_path, golden_inputs=x)
    res = bnncompile.compile_model(onnx_path, output=workdir / f"{name}_{size}.so", target="host", batch=1,
                                   conv_precision=conv_precision, attention_precision=attention_precision)
    row["bin"], row["compile_s"] = res.num_binary_layers, res.seconds
    report = bnncompile.validate_parity(onnx_path, lib=res.library, real_images=2)
    # vs PyTorch; a quantized build vs the quantized graph (ONNX Runtime), PyTorch being fp32
    row["max_abs"] = max(s.max_abs_vs_torch if s.max_abs_vs_torch is not None else s.max_abs_vs_ort
                         for s in report.sets)
    effects = [s.precision_effect for s in report.sets if s.precision_effect]
    if effects:
        row["q_flips"] = sum(e["flips"] for e in effects)
        row["q_top1"] = min(min(v for v in (e["top1_vs_torch"], e["top1_vs_fp32_ort"]) if v is not None)
                            for e in effects)
        row["q_logit"] = max(e["max_abs_vs_fp32_ort"] for e in effects)
    row["top1"] = min(min(v for v in (s.top1_vs_torch, s.top1_vs_ort) if v is not None) for s in report.sets)
    row["flips"] = sum(s.flips for s in report.sets)
    row["parity_ok"] = report.ok
    bench = bnncompile.benchmark(onnx_path, lib=res.library, threads=threads, rounds=rounds,
                                 number=number, warmup=2, torch_model=model, against=against,
                                 profile_vm=False)
    # rounds that disagree (``bench``'s warning): a busy spell of the shared machine moved this
    # model's medians; the markdown flags the row so that it is rerun, not quoted
    row["round_spread"] = max((t.round_spread or 1.0 for t in bench.timings), default=None)
    row["warnings"] = list(bench.warnings)
    for n in threads:
        ours = row[f"bnn_{n}t_ms"] = bench.median("bnncompile", n)
        for key, engine in engines_for(against):
            theirs = row[f"{key}_{n}t_ms"] = bench.median(engine, n)
            row[f"x{key}_{n}t"] = theirs / ours if ours and theirs else None
    if "openvino" in against:
        row["openvino_default_precision"] = (bench.openvino or {}).get("default_precision")
    return row


def machine_line() -> str:
    import os
    import platform

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    return (f"{cpu}, {os.cpu_count()} vCPU, load average {os.getloadavg()[0]:.1f} at the end; "
            f"TVM host target {targets.host_spec().target}")


ENGINE_LABELS = {"ort": "ORT FP32", "ovfp32": "OpenVINO FP32", "ov": "OpenVINO default",
                 "torch": "PyTorch"}


def to_markdown(rows: list[dict], argv: list[str], threads, against) -> str:
    quantized = any("q_flips" in r for r in rows)
    head = ["model", "input", "params", "binary layers",
            "max abs logit err vs the quantized graph" if quantized else "max abs logit err vs PyTorch",
            "top-1", "sign flips"]
    if quantized:
        head += ["flips vs fp32", "top-1 vs fp32", "max logit change vs fp32"]
    for n in threads:
        head.append(f"bnncompile {n}T ms")
        for key, _ in engines_for(against):
            head += [f"{ENGINE_LABELS[key]} {n}T ms", f"vs {ENGINE_LABELS[key]}"]
    lines = [f"Command: `python examples/zoo_sweep.py {' '.join(argv)}`", "",
             f"Machine: {machine_line()}", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    def f(v, spec):
        return "-" if v is None else format(v, spec)

    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['model']} | {r.get('size')} | error: {r['error']} |" + " |" * (len(head) - 3))
            continue
        cells = [r["model"] + (" ‡" if _busy(r) else ""), str(r["size"]), f(r.get("params"), ",d"), str(r.get("bin")),
                 f(r.get("max_abs"), ".1e"), f(r.get("top1"), ".0%"), str(r.get("flips"))]
        if quantized:
            cells += [str(r.get("q_flips")), f(r.get("q_top1"), ".0%"), f(r.get("q_logit"), ".2g")]
        for n in threads:
            cells.append(f(r.get(f"bnn_{n}t_ms"), ".2f"))
            for key, _ in engines_for(against):
                cells += [f(r.get(f"{key}_{n}t_ms"), ".2f"), f(r.get(f"x{key}_{n}t"), ".2f") + "x"]
        lines.append("| " + " | ".join(cells) + " |")
    busy = [r for r in rows if _busy(r)]
    if busy:
        lines += ["", "‡ rounds disagree (slowest / fastest per-round median of some engine: " +
                  ", ".join(f"{r['model']} {r['round_spread']:.2f}x" for r in busy) +
                  "): the machine was busy during these rows; rerun them (`--models`) before "
                  "quoting them."]
    return "\n".join(lines) + "\n"


def plot_speedups(rows: list[dict], path: Path, threads, against) -> None:
    """One bar per engine (ratio at the first thread count) per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not r.get("error")]
    others = [k for k, _ in engines_for(against) if k != "torch"]
    n = threads[0]
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(len(others), 1)
    for j, key in enumerate(others):
        ax.bar([i - 0.4 + width * (j + 0.5) for i in range(len(ok))],
               [r.get(f"x{key}_{n}t") or 0 for r in ok], width, label=ENGINE_LABELS[key])
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks(list(range(len(ok))))
    ax.set_xticklabels([r["model"] for r in ok], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("engine latency / bnncompile latency (x)")
    ax.set_title(f"speed-up of bnncompile, batch 1, {n} thread(s): {machine_line().split(',')[0]}",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(zoo.list_models()),
                    help="comma-separated zoo names (default: all)")
    ap.add_argument("--small", action="store_true", help="every model at 32 px (quick run)")
    ap.add_argument("--size-override", type=int, help="input size for every model")
    ap.add_argument("--rounds", type=int, default=None, help="benchmark rounds (default 5; 2 with --small)")
    ap.add_argument("--number", type=int, default=None, help="calls per round (default 5; 2 with --small)")
    ap.add_argument("--threads", default="1",
                    help="comma-separated thread counts (default 1: the 2 vCPUs do not scale)")
    ap.add_argument("--against", action="append", default=[], choices=["openvino"],
                    help="also time OpenVINO (FP32 and its default precision) in the same run")
    ap.add_argument("--conv-precision", default="fp32", choices=["fp32", "int16", "int8"],
                    help="compile the float convs quantized (compile --conv-precision)")
    ap.add_argument("--attention-precision", default="fp32", choices=["fp32", "int8"],
                    help="attention's Softmax x values products on int8 (compile --attention-precision)")
    ap.add_argument("--json", type=Path, help="write all rows as JSON")
    ap.add_argument("--markdown", type=Path, help="write a markdown table (docs/benchmarks.md style)")
    ap.add_argument("--plot", type=Path, help="write a PNG: speed-up vs ONNX Runtime per model")
    args = ap.parse_args(argv)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    for n in names:
        zoo.get_spec(n)  # fail early on a typo
    size = args.size_override or (32 if args.small else None)
    rounds = args.rounds or (2 if args.small else 5)
    number = args.number or (2 if args.small else 5)
    threads = tuple(int(t) for t in args.threads.split(",") if t.strip())
    against = tuple(args.against)
    cols = columns(threads, against)
    header = " ".join(f"{n:<{w}}" if n == "model" else f"{n:>{w}}" for n, w, _ in cols)
    print(header)
    print("-" * len(header))
    rows = []
    with tempfile.TemporaryDirectory(prefix="zoo_sweep_") as tmp:
        for name in tqdm(names, desc="zoo sweep", unit="model", file=sys.stderr):
            t0 = time.perf_counter()
            try:
                row = sweep_one(name, size, Path(tmp), rounds, number, threads, against,
                                args.conv_precision, args.attention_precision)
            except Exception as exc:  # keep sweeping; report the failure in the row
                row = {"model": name, "size": size or zoo.get_spec(name).input_size,
                       "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
                traceback.print_exc(file=sys.stderr)
            row["wall_s"] = time.perf_counter() - t0
            rows.append(row)
            tqdm.write(fmt_row(row, cols))
            sys.stdout.flush()
            if args.json:
                args.json.write_text(json.dumps(rows, indent=2))
    if args.markdown:
        args.markdown.write_text(to_markdown(rows, argv if argv is not None else sys.argv[1:], threads, against))
    if args.plot:
        plot_speedups(rows, args.plot, threads, against)
    print("top1: worst agreement over input sets (golden, photos) vs PyTorch and ONNX Runtime; "
          "x<engine>_<n>t: that engine's median / bnncompile's median at n threads (batch 1)")
    bad = [r["model"] for r in rows if r.get("error") or not r.get("parity_ok", False)]
    if bad:
        print(f"parity failed or errored: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
