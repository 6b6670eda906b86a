"""Interleaved A/B timing of libraries compiled from the same model with different options.

    bnncompile compile m.onnx -o fused.so
    bnncompile compile m.onnx -o unfused.so --no-fuse-epilogues
    .venv/bin/python examples/compare_libs.py fused.so unfused.so [--rounds 9] [--number 10]

Every round runs each library ``--number`` times in turn (1 thread unless TVM_NUM_THREADS says
otherwise), so slow drifts of a shared machine hit all of them alike; prints the machine (CPU,
load average), the median and the range of the per-round means, each library's time relative to
the first one, its Relax VM builtin calls per inference, and a warning when a library's rounds
disagree by more than ``bnncompile.bench.ROUND_SPREAD_WARN``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np

from bnncompile import bench
from bnncompile.errors import BnncompileError
from bnncompile.runtime import load


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("libs", nargs="+", help="compiled libraries (.so with their .json sidecars)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--number", type=int, default=10)
    args = ap.parse_args()
    try:
        runners = [load(p) for p in args.libs]
    except BnncompileError as exc:  # missing / truncated library or sidecar: say which
        print(f"error: {exc}", file=sys.stderr)
        return 2
    shapes = {tuple(r.inputs[0]["shape"]) for r in runners}
    if len(shapes) != 1:
        print(f"the libraries take different inputs: {sorted(shapes)}", file=sys.stderr)
        return 2
    x = np.random.default_rng(0).standard_normal(shapes.pop()).astype(np.float32)
    env = bench.environment(runners[0].meta)
    for line in bench.format_environment(env):
        print(line)
    builtins = [bench.profile(r, x, repeats=1).builtins["calls"] for r in runners]
    for r in runners:
        r(x)  # warm-up
    times = [[] for _ in runners]
    for _ in range(args.rounds):
        for r, ts in zip(runners, times):
            t0 = time.perf_counter()
            for _ in range(args.number):
                r(x)
            ts.append((time.perf_counter() - t0) / args.number * 1e3)
    base = float(np.median(times[0]))
    for path, ts, calls in zip(args.libs, times, builtins):
        med = float(np.median(ts))
        print(f"{path:40s} median {med:8.3f} ms  ({min(ts):.3f}-{max(ts):.3f})  {med / base:5.2f}x first"
              f"  {calls} VM builtin calls")
    timings = [bench.EngineTiming(path, 1, float(np.median(ts)), min(ts), max(ts), len(ts),
                                  round_medians_ms=list(ts)) for path, ts in zip(args.libs, times)]
    for w in bench.round_spread_warnings(timings):
        print(f"warning: {w}")
    print(f"load average at the end: {'/'.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
