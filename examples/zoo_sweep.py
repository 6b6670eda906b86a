"""Full zoo sweep: export → compile (host) → validate (golden + photos) → latency vs ONNX Runtime.

    python examples/zoo_sweep.py                       # every zoo model at its default input size
    python examples/zoo_sweep.py --small               # every model at 32 px (quick check)
    python examples/zoo_sweep.py --size-override 64 --models reactnet_18,dybnn_reactnet_18
    python examples/zoo_sweep.py --small --json sweep.json

One table row per model: parameters, binary layers found by the compiler, compile seconds, max
|logit error| vs PyTorch, top-1 agreement (worst input set), DynamicSign sign flips (all sets), and
batch-1 median latency at 1 and 2 threads for bnncompile and ONNX Runtime FP32 on the same ONNX
file, with the ratio ORT / bnncompile (> 1: bnncompile is faster). Timings on shared VMs are noisy:
they are interleaved and reported as medians (see bnncompile.bench).
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

COLS = [("model", 20, "s"), ("size", 5, "d"), ("params", 10, ",d"), ("bin", 4, "d"),
        ("compile_s", 10, ".1f"), ("max_abs", 9, ".2e"), ("top1", 6, ".0%"), ("flips", 7, "d"),
        ("bnn_1t_ms", 10, ".2f"), ("bnn_2t_ms", 10, ".2f"), ("ort_1t_ms", 10, ".2f"),
        ("ort_2t_ms", 10, ".2f"), ("x_1t", 6, ".2f"), ("x_2t", 6, ".2f")]


def fmt_row(row: dict) -> str:
    out = []
    for name, width, spec in COLS:
        v = row.get(name)
        out.append(f"{'-' if v is None else format(v, spec):>{width}}" if name != "model"
                   else f"{v:<{width}}")
    text = " ".join(out)
    return text + (f"  ERROR: {row['error']}" if row.get("error") else "")


def sweep_one(name: str, size: int | None, workdir: Path, rounds: int, number: int) -> dict:
    spec = zoo.get_spec(name)
    size = size or spec.input_size
    row: dict = {"model": name, "size": size}
    model = zoo.build(name, input_size=size)
    row["params"] = sum(p.numel() for p in model.parameters())
    x = torch.from_numpy(real_images(2, size, channels=spec.in_channels, seed=0))
    onnx_path = workdir / f"{name}_{size}.onnx"
    bnncompile.export(model, x[:1], onnx_path, golden_inputs=x)
    res = bnncompile.compile_model(onnx_path, output=workdir / f"{name}_{size}.so", target="host", batch=1)
    row["bin"], row["compile_s"] = res.num_binary_layers, res.seconds
    report = bnncompile.validate_parity(onnx_path, lib=res.library, real_images=2)
    row["max_abs"] = max(s.max_abs_vs_torch for s in report.sets if s.max_abs_vs_torch is not None)
    row["top1"] = min(min(v for v in (s.top1_vs_torch, s.top1_vs_ort) if v is not None) for s in report.sets)
    row["flips"] = sum(s.flips for s in report.sets)
    row["parity_ok"] = report.ok
    bench = bnncompile.benchmark(onnx_path, lib=res.library, threads=(1, 2), rounds=rounds,
                                 number=number, warmup=2, torch_model=model)
    for n in (1, 2):
        ours, ort = bench.median("bnncompile", n), bench.median("onnxruntime-fp32", n)
        row[f"bnn_{n}t_ms"], row[f"ort_{n}t_ms"] = ours, ort
        row[f"x_{n}t"] = ort / ours if ours and ort else None
        row[f"torch_{n}t_ms"] = bench.median("pytorch-eager-fp32", n)
    return row


def machine_line() -> str:
    import os
    import platform

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    return (f"{cpu}, {os.cpu_count()} vCPU, load average {os.getloadavg()[0]:.1f} at the end; "
            f"TVM host target {targets.host_spec().target}")


def to_markdown(rows: list[dict], argv: list[str]) -> str:
    head = ("| model | input | params | binary layers | max abs logit err vs PyTorch | top-1 | sign flips "
            "| bnncompile 1T ms | ORT 1T ms | speed-up 1T | bnncompile 2T ms | ORT 2T ms | speed-up 2T "
            "| PyTorch 1T ms |")
    lines = [f"Command: `python examples/zoo_sweep.py {' '.join(argv)}`", "",
             f"Machine: {machine_line()}", "", head, "|" + "---|" * 14]
    f = lambda v, spec: "-" if v is None else format(v, spec)
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['model']} | {r.get('size')} | error: {r['error']} |" + " |" * 11)
            continue
        lines.append(
            f"| {r['model']} | {r['size']} | {f(r.get('params'), ',d')} | {r.get('bin')} | "
            f"{f(r.get('max_abs'), '.1e')} | {f(r.get('top1'), '.0%')} | {r.get('flips')} | "
            f"{f(r.get('bnn_1t_ms'), '.2f')} | {f(r.get('ort_1t_ms'), '.2f')} | {f(r.get('x_1t'), '.2f')}x | "
            f"{f(r.get('bnn_2t_ms'), '.2f')} | {f(r.get('ort_2t_ms'), '.2f')} | {f(r.get('x_2t'), '.2f')}x | "
            f"{f(r.get('torch_1t_ms'), '.1f')} |")
    return "\n".join(lines) + "\n"


def plot_speedups(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not r.get("error")]
    fig, ax = plt.subplots(figsize=(9, 4))
    xs = range(len(ok))
    ax.bar([i - 0.2 for i in xs], [r.get("x_1t") or 0 for r in ok], 0.4, label="1 thread")
    ax.bar([i + 0.2 for i in xs], [r.get("x_2t") or 0 for r in ok], 0.4, label="2 threads")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r["model"] for r in ok], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("speed-up vs ONNX Runtime FP32 (x)")
    ax.set_title("median latency ratio, batch 1")
    ax.legend()
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
    header = " ".join(f"{n:<{w}}" if n == "model" else f"{n:>{w}}" for n, w, _ in COLS)
    print(header)
    print("-" * len(header))
    rows = []
    with tempfile.TemporaryDirectory(prefix="zoo_sweep_") as tmp:
        for name in tqdm(names, desc="zoo sweep", unit="model", file=sys.stderr):
            t0 = time.perf_counter()
            try:
                row = sweep_one(name, size, Path(tmp), rounds, number)
            except Exception as exc:  # keep sweeping; report the failure in the row
                row = {"model": name, "size": size or zoo.get_spec(name).input_size,
                       "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
                traceback.print_exc(file=sys.stderr)
            row["wall_s"] = time.perf_counter() - t0
            rows.append(row)
            tqdm.write(fmt_row(row))
            sys.stdout.flush()
            if args.json:
                args.json.write_text(json.dumps(rows, indent=2))
    if args.markdown:
        args.markdown.write_text(to_markdown(rows, argv if argv is not None else sys.argv[1:]))
    if args.plot:
        plot_speedups(rows, args.plot)
    print("top1: worst agreement over input sets (golden, photos) vs PyTorch and ONNX Runtime; "
          "x_nt: ORT FP32 median / bnncompile median at n threads (batch 1)")
    bad = [r["model"] for r in rows if r.get("error") or not r.get("parity_ok", False)]
    if bad:
        print(f"parity failed or errored: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
