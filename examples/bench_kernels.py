"""Micro-benchmark of the binary conv kernels (bconv2d) on the ReActNet-A / ReActNet-18 layer shapes.

One thread for both TVM and torch.  For every shape: the bconv2d PrimFunc exactly as the frontend
builds it (zero padding with its border table, fused float scale + bias, NCHW float32 output), checked
once against the numpy reference, then timed in interleaved rounds together with fp32
``torch.nn.functional.conv2d`` of the same layer.  Prints the median of the rounds, G binary-MAC/s
(bMAC = one 1-bit multiply-accumulate, = the MACs of the float conv) and the torch/bconv ratio.

    TVM_NUM_THREADS=1 .venv/bin/python examples/bench_kernels.py [--target JSON] [--rounds 7]
        [--only a|r18|substring] [--no-torch] [--no-check] [--csv out.csv]

The machine may be shared: the load average is printed before and after; compare medians only
between runs taken under similar load, and prefer interleaved A/B runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TVM_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


import numpy as np
import tvm
from bnncompile.schedules import packing as pk
from bnncompile.schedules import reference as ref

from bnncompile import schedules as S

# (name, Cin, H(=W) of the input, Cout, kernel, stride); padding = kernel // 2 (zero padding).
REACTNET_A = [
    ("A 3x3 32@112", 32, 112, 32, 3, 1),
    ("A 3x3 64@112/s2", 64, 112, 64, 3, 2),
    ("A 3x3 128@56", 128, 56, 128, 3, 1),
    ("A 3x3 128@56/s2", 128, 56, 128, 3, 2),
    ("A 3x3 256@28", 256, 28, 256, 3, 1),
    ("A 3x3 256@28/s2", 256, 28, 256, 3, 2),
    ("A 3x3 512@14", 512, 14, 512, 3, 1),
    ("A 3x3 512@14/s2", 512, 14, 512, 3, 2),
    ("A 3x3 1024@7", 1024, 7, 1024, 3, 1),
    ("A 1x1 32@112", 32, 112, 32, 1, 1),
    ("A 1x1 64@56", 64, 56, 64, 1, 1),
    ("A 1x1 128@56", 128, 56, 128, 1, 1),
    ("A 1x1 128@28", 128, 28, 128, 1, 1),
    ("A 1x1 256@28", 256, 28, 256, 1, 1),
    ("A 1x1 256@14", 256, 14, 256, 1, 1),
    ("A 1x1 512@14", 512, 14, 512, 1, 1),
    ("A 1x1 512@7", 512, 7, 512, 1, 1),
    ("A 1x1 1024@7", 1024, 7, 1024, 1, 1),
]
REACTNET_18 = [
    ("R18 3x3 64@56", 64, 56, 64, 3, 1),
    ("R18 3x3 64->128@56/s2", 64, 56, 128, 3, 2),
    ("R18 3x3 128@28", 128, 28, 128, 3, 1),
    ("R18 3x3 128->256@28/s2", 128, 28, 256, 3, 2),
    ("R18 3x3 256@14", 256, 14, 256, 3, 1),
    ("R18 3x3 256->512@14/s2", 256, 14, 512, 3, 2),
    ("R18 3x3 512@7", 512, 7, 512, 3, 1),
]


def load_avg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def host_target() -> dict:
    try:
        from bnncompile import targets

        return dict(targets.host_spec().target)
    except Exception:  # the package is optional here
        return {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}


class Case:
    def __init__(self, spec, target, check, rng):
        self.name, C, H, K, k, s = spec
        self.stride, self.pad = s, k // 2
        self.x = rng.choice([-1.0, 1.0], (1, C, H, H)).astype("float32")
        self.w = rng.choice([-1.0, 1.0], (K, C, k, k)).astype("float32")
        scale = (rng.random(K) + 0.5).astype("float32")
        bias = rng.standard_normal(K).astype("float32")
        pads = (self.pad,) * 4
        pf = S.make_bconv2d(self.x.shape, self.w.shape, stride=s, padding=pads, with_scale=True,
                            with_bias=True, target=target)
        self.sym = str(pf.attrs["global_symbol"])
        self.lib = tvm.compile(pf, target=tvm.target.Target(target)).jit()
        args = [pk.pack_bits(self.x, axis=1), pk.pack_conv_weight(self.w)]
        if pk.needs_border_table(pads, "zero"):
            args.append(pk.conv_border_table(self.w, (H, H), stride=s, padding=pads))
        args += [scale, bias]
        OH = (H + 2 * self.pad - k) // s + 1
        self.out_shape = (1, K, OH, OH)
        self.args = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args]
        self.out = tvm.runtime.empty(self.out_shape, "float32")
        self.macs = OH * OH * K * C * k * k
        if check:
            self.lib[self.sym](*self.args, self.out)
            expect = ref.bconv2d_ref(self.x, self.w, stride=s, padding=pads, scale=scale, bias=bias)
            np.testing.assert_allclose(self.out.numpy(), expect, rtol=1e-6, atol=1e-4)
        self.timer = self.lib.time_evaluator(self.sym, tvm.cpu(), number=1, repeat=1, min_repeat_ms=30)

    def time_bnn(self) -> float:
        return float(self.timer(*self.args, self.out).median)

    def time_torch(self, reps: int = 3) -> float:
        import torch

        if not hasattr(self, "_tx"):
            self._tx, self._tw = torch.from_numpy(self.x), torch.from_numpy(self.w)
        f = torch.nn.functional.conv2d
        with torch.no_grad():
            f(self._tx, self._tw, stride=self.stride, padding=self.pad)
            ts = []
            n = 1
            while True:  # at least ~30 ms per sample, like min_repeat_ms above
                t0 = time.perf_counter()
                for _ in range(n):
                    f(self._tx, self._tw, stride=self.stride, padding=self.pad)
                dt = time.perf_counter() - t0
                if dt > 0.03 or n >= 1024:
                    break
                n *= 2
            ts.append(dt / n)
        return float(np.median(ts))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default=None, help="TVM target JSON (default: this host)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--only", default=None, help="'a', 'r18', or a substring of the shape names")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--csv", default=None)
    a = ap.parse_args(argv)

    tvm.get_global_func("runtime.config_threadpool")(1, 1)
    use_torch = not a.no_torch
    if use_torch:
        import torch

        torch.set_num_threads(1)
    target = json.loads(a.target) if a.target else host_target()
    specs = REACTNET_A + REACTNET_18
    if a.only == "a":
        specs = REACTNET_A
    elif a.only == "r18":
        specs = REACTNET_18
    elif a.only:
        specs = [s for s in specs if a.only in s[0]]
    print(f"target {json.dumps(target)}; 1 thread; rounds {a.rounds}; load average {load_avg()}", flush=True)
    rng = np.random.default_rng(0)
    t0 = time.time()
    cases = [Case(s, target, not a.no_check, rng) for s in specs]
    print(f"built{' and checked' if not a.no_check else ''} {len(cases)} kernels in {time.time() - t0:.0f} s",
          flush=True)
    bnn = {c.name: [] for c in cases}
    fp = {c.name: [] for c in cases}
    for _ in range(a.rounds):  # interleaved: every round times every shape, bconv then torch
        for c in cases:
            bnn[c.name].append(c.time_bnn())
            if use_torch:
                fp[c.name].append(c.time_torch())
    rows = []
    hdr = f"{'shape':26s} {'bconv ms':>9s} {'G bMAC/s':>9s} {'spread':>13s}"
    hdr += f" {'torch ms':>9s} {'GMAC/s':>7s} {'ratio':>6s}" if use_torch else ""
    print(hdr)
    for c in cases:
        b = float(np.median(bnn[c.name]))
        line = (f"{c.name:26s} {b * 1e3:9.3f} {c.macs / b / 1e9:9.1f} "
                f"{min(bnn[c.name]) * 1e3:6.3f}-{max(bnn[c.name]) * 1e3:6.3f}")
        row = [c.name, c.macs, b * 1e3, c.macs / b / 1e9]
        if use_torch:
            f = float(np.median(fp[c.name]))
            line += f" {f * 1e3:9.3f} {c.macs / f / 1e9:7.1f} {f / b:6.1f}"
            row += [f * 1e3, f / b]
        rows.append(row)
        print(line)
    tot_b = sum(float(np.median(bnn[c.name])) for c in cases)
    msg = f"sum of medians: bconv {tot_b * 1e3:.2f} ms"
    if use_torch:
        tot_f = sum(float(np.median(fp[c.name])) for c in cases)
        msg += f", torch fp32 {tot_f * 1e3:.2f} ms, ratio {tot_f / tot_b:.1f}"
    print(msg)
    print(f"load average after: {load_avg()}")
    if a.csv:
        with open(a.csv, "w") as f:
            f.write("shape,macs,bconv_ms,gbmacs" + (",torch_ms,ratio" if use_torch else "") + "\n")
            for r in rows:
                f.write(",".join(str(v) for v in r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
