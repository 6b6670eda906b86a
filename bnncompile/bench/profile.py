"""One instrumented run of a library: time per kernel (against its binary-MAC roofline) and the
Relax VM builtin calls per inference."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .machine import (
    amx_ceiling_gmacs,
    binary_ceiling_gbmacs,
    float_ceiling_gmacs,
    int16_ceiling_gmacs,
    vnni_ceiling_gmacs,
)


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



@dataclass
class VMProfile:
    layers: list[LayerTiming]
    builtins: dict  # {"calls", "ms", "by_name": {name: {"calls", "ms"}}}, per inference


def profile(runner, x: np.ndarray | None = None, *, repeats: int = 5) -> VMProfile:
    """Time every VM call (one per kernel launch or builtin) with the VM's instrument hook.

    TVM 0.27's Relax VM has no ``profile=True`` constructor nor ``vm.profile()`` (its module has
    no ``vm_profiler_load_executable``), but its instrument hook sees every call instruction,
    the ``vm.builtin.*`` ones (``alloc_tensor``, ``reshape``, ``null_value``, ...) included: their
    count per inference is exact, their time includes the hook's own overhead (a few µs a call).
    """
    import collections

    kernels = runner.meta.get("kernels", {})
    x = np.random.default_rng(0).standard_normal(runner.inputs[0]["shape"]).astype(np.float32) if x is None else x
    args = runner.set_inputs(x)
    vm = runner._vm
    vm["main"](*args)
    acc: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    start: dict[str, float] = {}

    def instrument(func, symbol, before_run, ret_value, *rest):
        if before_run:
            count[symbol] += 1
            start[symbol] = time.perf_counter()
        else:
            acc[symbol] += time.perf_counter() - start.pop(symbol, time.perf_counter())
        return 0

    vm.set_instrument(instrument)
    try:
        for _ in range(repeats):
            vm["main"](*args)
    finally:
        # None removes the hook; a no-op Python callback would still run on every VM call
        # (Zen 3: +3 ms on dybnn_reactnet_18's 585 builtins + kernels, timed after a profile)
        vm.set_instrument(None)
    total = sum(acc.values()) or 1.0
    rows = []
    for symbol, secs in acc.most_common():
        info = kernels.get(symbol, {})
        per = secs / repeats
        calls = int(info.get("calls", 0)) or 1
        bm, fm = info.get("binary_macs", 0) * calls, info.get("float_macs", 0) * calls
        rows.append(LayerTiming(symbol, info.get("kind", "tvm"), list(info.get("layers", [])),
                                int(info.get("calls", 0)), per * 1e3, secs / total,
                                bm / per / 1e9 if bm and per else None, fm / per / 1e9 if fm and per else None))
    names = sorted((s for s in count if s.startswith("vm.builtin")), key=lambda s: (-count[s], s))
    by_name = {s: {"calls": count[s] // repeats, "ms": acc[s] / repeats * 1e3} for s in names}
    builtins = {"calls": sum(v["calls"] for v in by_name.values()),
                "ms": sum(v["ms"] for v in by_name.values()),
                "kernel_calls": sum(c for s, c in count.items() if not s.startswith("vm.builtin")) // repeats,
                "by_name": by_name, "how": "Relax VM instrument hook (time includes the hook)"}
    return VMProfile(rows, builtins)


def profile_layers(runner, x: np.ndarray | None = None, *, repeats: int = 5) -> list[LayerTiming]:
    """Per-kernel rows of :func:`profile` (builtins included, as rows of kind ``tvm``)."""
    return profile(runner, x, repeats=repeats).layers


#: kernel kind -> (its ceiling, what the table's header line calls it)
_OWN_CEILINGS = {
    "qconv2d": (int16_ceiling_gmacs, "quantized convs (qconv2d, --conv-precision) against the int16 ceiling"),
    "qconv2d_vnni": (vnni_ceiling_gmacs,
                     "VNNI int8 convs (qconv2d_vnni, --conv-precision int8) against the vpdpbusd ceiling"),
    "qconv2d_amx": (amx_ceiling_gmacs,
                    "AMX int8 convs (qconv2d_amx, --conv-precision int8) against the AMX ceiling"),
    "qbmm_vnni": (vnni_ceiling_gmacs, "VNNI int8 attention products (qbmm_vnni, --attention-precision "
                                      "int8) against the vpdpbusd ceiling"),
}


def format_layers(rows: list[LayerTiming], top: int = 25) -> str:
    """The per-kernel table: each binary kernel against the popcount ceiling, each float conv
    against the FP32 multiply-add ceiling (its own roofline), both per thread."""
    ceiling, source = binary_ceiling_gbmacs()
    fceiling, fsource = float_ceiling_gmacs() if any(r.gflops_mac for r in rows[:top]) else (0.0, "")
    lines = [f"per-kernel time (1 inference; binary ceiling ~{ceiling:.0f} G bMAC/s per thread, {source})"]
    if fceiling > 0:
        lines.append(f"float convs (GF = G MAC/s) against the FP32 ceiling ~{fceiling:.0f} G MAC/s per "
                     f"thread, {fsource}")
    ceilings = {}  # kinds rated against their own ceiling instead of the FP32 one
    for kind, (measure, what) in _OWN_CEILINGS.items():
        if any(r.kind == kind for r in rows[:top]):
            rate, how = measure()
            if rate > 0:
                ceilings[kind] = rate
                lines.append(f"{what} ~{rate:.0f} G MAC/s per thread, {how}")
    lines.append(f"{'ms':>8} {'share':>6} {'G bMAC/s':>9} {'% ceil':>7}  kernel (layers)")
    for r in rows[:top]:
        g = f"{r.gbmacs:9.1f}" if r.gbmacs else (f"{r.gflops_mac:6.1f} GF" if r.gflops_mac else " " * 9)
        fc = ceilings.get(r.kind, fceiling)
        pct = (f"{100 * r.gbmacs / ceiling:6.0f}%" if r.gbmacs and ceiling > 0 else
               f"{100 * r.gflops_mac / fc:6.0f}%" if r.gflops_mac and fc > 0 else " " * 7)
        where = f" ({r.layers[0]}{' +' + str(len(r.layers) - 1) if len(r.layers) > 1 else ''})" if r.layers else ""
        lines.append(f"{r.ms:8.3f} {100 * r.share:5.1f}% {g} {pct}  {r.kernel}{where}")
    if len(rows) > top:
        lines.append(f"... {len(rows) - top} more kernels, {sum(r.ms for r in rows[top:]):.3f} ms")
    return "\n".join(lines)
