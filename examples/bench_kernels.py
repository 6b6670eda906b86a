"""Micro-benchmark of the binary kernels on the ReActNet-A / ReActNet-18 conv shapes and the
CCT-14 transformer shapes (binary dense and attention batch-matmul).

One thread for both TVM and torch.  For every shape: the PrimFunc exactly as the frontend builds it
(convs: zero padding with its border table, fused float scale + bias, NCHW float32 output; dense:
per-output scale; attention scores: ``acc * 1/sqrt(d)``), checked once against the numpy reference,
then timed in interleaved rounds together with the fp32 torch op of the same layer
(``conv2d`` / ``linear`` / ``matmul``).  Prints the median of the rounds, G binary-MAC/s (bMAC =
one 1-bit multiply-accumulate, = the MACs of the float op), its share of the measured popcount
ceiling (``bench``'s) and the torch/bnncompile ratio.

    TVM_NUM_THREADS=1 .venv/bin/python examples/bench_kernels.py [--target JSON] [--rounds 7]
        [--only a|r18|cct|substring] [--no-torch] [--no-check] [--csv out.csv]

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
from bnncompile.schedules import stack_scratch

from bnncompile import bench
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
# CCT-14/7x2 at 224 (196 tokens, width 384, 6 heads of 64): (name, tokens, in, out) for dense,
# (name, heads, tokens, head width) for the attention scores Q.K^T
CCT_DENSE = [
    ("CCT dense 384->1152 (qkv, fc1)", 196, 384, 1152),
    ("CCT dense 1152->384 (fc2)", 196, 1152, 384),
    ("CCT dense 384->384 (proj)", 196, 384, 384),
]
CCT_BMM = [("CCT attention Q.K^T 6x196x196 k64", 6, 196, 64)]


def load_avg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def host_target() -> dict:
    from bnncompile import targets

    return dict(targets.host_spec().target)


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
        self.lib = tvm.compile(pf, target=tvm.target.Target(target), tir_pipeline=stack_scratch.register()).jit()
        args = [pk.pack_bits(self.x, axis=1), pk.pack_conv_weight(self.w, block=S.weight_block_of(pf))]
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

    def time_torch(self) -> float:
        import torch

        tx, tw = torch.from_numpy(self.x), torch.from_numpy(self.w)
        return _time_torch(lambda: torch.nn.functional.conv2d(tx, tw, stride=self.stride, padding=self.pad))


class DenseCase(Case):
    """Binary dense ``[1, L, K] @ W[N, K]^T * scale`` as the frontend builds it."""

    def __init__(self, spec, target, check, rng):
        self.name, L, K, N = spec
        self.x = rng.choice([-1.0, 1.0], (1, L, K)).astype("float32")
        self.w = rng.choice([-1.0, 1.0], (N, K)).astype("float32")
        scale = (rng.random(N) + 0.5).astype("float32")
        pf = S.make_bdense(self.x.shape, self.w.shape, with_scale=True, target=target)
        w = pk.pack_dense_weight(self.w, S.dense_weight_bits_of(pf))
        self._finish(pf, target, [ref.bitpack_last_ref(self.x, 0.0), w, scale],
                     (1, L, N), L * K * N, check, lambda: ref.bdense_ref(self.x, self.w, scale=scale))

    def time_torch(self) -> float:
        import torch

        tx, tw = torch.from_numpy(self.x), torch.from_numpy(self.w)
        return _time_torch(lambda: torch.nn.functional.linear(tx, tw))

    def _finish(self, pf, target, args, out_shape, macs, check, expect):
        self.sym = str(pf.attrs["global_symbol"])
        self.lib = tvm.compile(pf, target=tvm.target.Target(target), tir_pipeline=stack_scratch.register()).jit()
        self.args = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args]
        self.out = tvm.runtime.empty(out_shape, "float32")
        self.macs = macs
        if check:
            self.lib[self.sym](*self.args, self.out)
            np.testing.assert_allclose(self.out.numpy(), expect(), rtol=1e-6, atol=1e-4)
        self.timer = self.lib.time_evaluator(self.sym, tvm.cpu(), number=1, repeat=1, min_repeat_ms=30)


class BmmCase(DenseCase):
    """Binary attention scores ``Q[h, L, d] @ K[h, L, d]^T / sqrt(d)`` (both operands packed)."""

    def __init__(self, spec, target, check, rng):
        self.name, H, L, D = spec
        self.x = rng.choice([-1.0, 1.0], (H, L, D)).astype("float32")
        self.w = rng.choice([-1.0, 1.0], (H, L, D)).astype("float32")
        alpha = 1.0 / float(np.sqrt(D))
        pf = S.make_bbatch_matmul(self.x.shape, self.w.shape, alpha=alpha, target=target)
        self._finish(pf, target, [ref.bitpack_last_ref(self.x, 0.0), ref.bitpack_last_ref(self.w, 0.0)],
                     (H, L, L), H * L * L * D, check,
                     lambda: ref.bbatch_matmul_ref(self.x, self.w, alpha=alpha))

    def time_torch(self) -> float:
        import torch

        tx, tw = torch.from_numpy(self.x), torch.from_numpy(self.w)
        return _time_torch(lambda: torch.matmul(tx, tw.transpose(-1, -2)))


def _time_torch(f) -> float:
    import torch

    with torch.no_grad():
        f()
        n = 1
        while True:  # at least ~30 ms per sample, like min_repeat_ms above
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            dt = time.perf_counter() - t0
            if dt > 0.03 or n >= 1024:
                return dt / n
            n *= 2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default=None, help="TVM target JSON (default: this host)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--only", default=None, help="'a', 'r18', or a substring of the shape names")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--csv", default=None)
    a = ap.parse_args(argv)

    bench.set_tvm_threads(1)  # TVM 1 thread; the CPU mask stays (torch's pool is made next)
    use_torch = not a.no_torch
    if use_torch:
        import torch

        torch.set_num_threads(1)
    target = json.loads(a.target) if a.target else host_target()
    kinds = [(s, Case) for s in REACTNET_A + REACTNET_18] + [(s, DenseCase) for s in CCT_DENSE] + \
        [(s, BmmCase) for s in CCT_BMM]
    groups = {"a": REACTNET_A, "r18": REACTNET_18, "cct": CCT_DENSE + CCT_BMM}
    if a.only in groups:
        kinds = [(s, k) for s, k in kinds if s in groups[a.only]]
    elif a.only:
        kinds = [(s, k) for s, k in kinds if a.only in s[0]]
    ceiling, source = bench.binary_ceiling_gbmacs()
    print(f"target {json.dumps(target)}; 1 thread; rounds {a.rounds}; load average {load_avg()}", flush=True)
    if ceiling:
        print(f"popcount ceiling {ceiling:.0f} G bMAC/s per thread ({source})")
    rng = np.random.default_rng(0)
    t0 = time.time()
    cases = [kind(s, target, not a.no_check, rng) for s, kind in kinds]
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
    hdr = f"{'shape':34s} {'bnn ms':>9s} {'G bMAC/s':>9s} {'% ceil':>7s} {'spread':>13s}"
    hdr += f" {'torch ms':>9s} {'GMAC/s':>7s} {'ratio':>6s}" if use_torch else ""
    print(hdr)
    for c in cases:
        b = float(np.median(bnn[c.name]))
        pct = f"{100 * c.macs / b / 1e9 / ceiling:6.0f}%" if ceiling else " " * 7
        line = (f"{c.name:34s} {b * 1e3:9.3f} {c.macs / b / 1e9:9.1f} {pct} "
                f"{min(bnn[c.name]) * 1e3:6.3f}-{max(bnn[c.name]) * 1e3:6.3f}")
        row = [c.name, c.macs, b * 1e3, c.macs / b / 1e9]
        if use_torch:
            f = float(np.median(fp[c.name]))
            line += f" {f * 1e3:9.3f} {c.macs / f / 1e9:7.1f} {f / b:6.1f}"
            row += [f * 1e3, f / b]
        rows.append(row)
        print(line)
    tot_b = sum(float(np.median(bnn[c.name])) for c in cases)
    msg = f"sum of medians: bnncompile {tot_b * 1e3:.2f} ms"
    if use_torch:
        tot_f = sum(float(np.median(fp[c.name])) for c in cases)
        msg += f", torch fp32 {tot_f * 1e3:.2f} ms, ratio {tot_f / tot_b:.1f}"
    print(msg)
    print(f"load average after: {load_avg()}")
    if a.csv:
        with open(a.csv, "w") as f:
            f.write("shape,macs,bnn_ms,gbmacs" + (",torch_ms,ratio" if use_torch else "") + "\n")
            for r in rows:
                f.write(",".join(str(v) for v in r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
