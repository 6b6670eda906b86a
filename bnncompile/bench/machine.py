"""The machine a benchmark ran on: CPU model and the flags our kernels and the other engines
use, versions, load, and the popcount roofline (clock and binary-MAC ceiling) per-layer rates
are held against."""

from __future__ import annotations

import functools
import os
import time

import numpy as np

#: CPU flags recorded by :func:`environment` (what the kernels and the other engines can use)
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vpopcntdq", "avx512_vnni", "avx512_bf16",
             "amx_tile", "amx_bf16", "amx_int8", "asimd", "asimddp")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if out:
                        break
                    continue
                k, _, v = line.partition(":")
                out.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return out


def _lscpu_model() -> str | None:
    import shutil
    import subprocess

    if not shutil.which("lscpu"):
        return None
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((ln.split(":", 1)[1].strip() for ln in text.splitlines()
                 if ln.startswith("Model name:")), None)


def cpu_info() -> dict:
    """CPU model, vendor/family/model numbers, LLVM's name for it and the flags that matter here."""
    import platform

    from ..targets import cpu_flags

    info = _cpuinfo()
    flags = cpu_flags() or frozenset(info.get("Features", "").split())
    model = info.get("model name") or _lscpu_model() or platform.processor() or platform.machine()
    out = {"model_name": model, "vendor": info.get("vendor_id"), "family": info.get("cpu family"),
           "model": info.get("model"), "logical_cpus": os.cpu_count(), "machine": platform.machine(),
           "flags": {f: f in flags for f in CPU_FLAGS}}
    out["amx"] = any(out["flags"][f] for f in ("amx_tile", "amx_bf16", "amx_int8"))
    try:
        from ..targets import host_spec

        out["llvm_cpu"] = host_spec().target.get("mcpu")
    except Exception:  # no TVM codegen at hand: the model name is enough
        out["llvm_cpu"] = None
    return out


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    return {"bnncompile": _version("bnncompile"), "tvm": _version("apache-tvm"),
            "onnxruntime": _version("onnxruntime"), "torch": _version("torch"),
            "openvino": _version("openvino"), "onnx": _version("onnx"), "numpy": np.__version__}


def environment(meta: dict | None = None) -> dict:
    """What a benchmark figure depends on: CPU, load, versions, the library's target."""
    env = {"cpu": cpu_info(), "load_average": {"start": list(os.getloadavg())},
           "versions": versions()}
    if meta is not None:
        env["target"] = {"name": meta.get("target_name"), "target": meta.get("target"),
                         "identity": meta.get("identity"),
                         "tuned_kernels": len((meta.get("tuning") or {}).get("tuned_kernels", []))}
    return env


def format_environment(env: dict) -> list[str]:
    if not env:
        return []
    cpu = env.get("cpu", {})
    have = [f for f, v in cpu.get("flags", {}).items() if v and not f.startswith("amx")]
    have += ["amx"] if cpu.get("amx") else []
    lack = [f for f in ("avx512f", "avx512_vpopcntdq", "avx512_bf16") if not cpu.get("flags", {}).get(f)]
    lack += [] if cpu.get("amx") else ["amx"]
    lines = [f"CPU: {cpu.get('model_name')} (LLVM {cpu.get('llvm_cpu')}, family {cpu.get('family')} "
             f"model {cpu.get('model')}), {cpu.get('logical_cpus')} logical CPUs; has "
             f"{' '.join(have) or '-'}; lacks {' '.join(lack) or '-'}"]
    load = env.get("load_average", {})
    la = " -> ".join("/".join(f"{v:.2f}" for v in load[k]) for k in ("start", "end") if k in load)
    tgt = env.get("target") or {}
    ident = tgt.get("identity") or {}
    lines.append(f"target: {tgt.get('name')} (tag {ident.get('tag')}); load average (1/5/15 min) {la}")
    return lines


@functools.lru_cache(maxsize=1)
def binary_ceiling_gbmacs() -> tuple[float, str]:
    """Per-thread binary-MAC/s ceiling of this CPU, with where the number comes from: a model
    on AVX-512 VPOPCNTDQ (docs/benchmarks.md checks it against a measured FMA peak), measured
    everywhere else (:func:`popcount_loop_gbmacs`); 0 when neither is available."""
    from ..targets import cpu_flags

    if "avx512_vpopcntdq" in cpu_flags():
        ghz, how = cpu_ghz()
        # vpxor + vpopcntq + vpaddq per 512 bits on two vector ports: ~1.5 cycles -> 341 bMAC/cycle
        return 341 * ghz, f"model: 512 bits / 1.5 cycles (AVX-512 VPOPCNTDQ) at {ghz:.2f} GHz {how}"
    rate = popcount_loop_gbmacs()
    if rate <= 0:
        return 0.0, "not measured (no compiler at hand)"
    return rate, "measured: TVM's xor-popcount loop on L1-resident words, this CPU"


def popcount_loop_gbmacs() -> float:
    """G binary-MAC/s of the xor-popcount-accumulate inner loop the kernels are made of, with
    L1-resident operands and 8 independent vector accumulators, compiled for this CPU (AVX2:
    LLVM's ``vpshufb`` nibble-table popcount; NEON: ``cnt``): what a binary layer could reach
    with no memory traffic, packing or epilogue.  Zen 3, 1 thread: ~320 (100 bits per cycle
    at 3.2 GHz).  0.0 when TVM cannot build it."""
    try:
        import tvm
        from tvm import s_tir, te, tirx

        from ..targets import host_spec, tvm_target

        m, j, words, reps = 2, 16, 128, 64
        a = te.placeholder((m, words), "uint64", name="a")
        b = te.placeholder((words, j), "uint64", name="b")
        rep, r = te.reduce_axis((0, reps), "rep"), te.reduce_axis((0, words), "r")
        # (r + rep) % words: each repetition reads other words, so LLVM cannot hoist the sum
        acc = te.compute((m, j), lambda i, k: te.sum(
            tirx.popcount(a[i, (r + rep) % words] ^ b[r, k]).astype("int64"), axis=[rep, r]), name="acc")
        sch = s_tir.Schedule(te.create_prim_func([a, b, acc]))
        blk = sch.get_sblock("acc")
        li, lk, lrep, lr = sch.get_loops(blk)
        sch.reorder(lrep, lr, li, lk)
        sch.unroll(li)
        sch.vectorize(lk)
        sch.decompose_reduction(blk, lrep)
        f = tvm.compile(sch.mod, target=tvm_target(host_spec())).jit()
        rng = np.random.default_rng(0)
        args = [tvm.runtime.tensor(rng.integers(0, 2**63, (m, words), dtype=np.uint64)),
                tvm.runtime.tensor(rng.integers(0, 2**63, (words, j), dtype=np.uint64)),
                tvm.runtime.empty((m, j), "int64")]
        # ~50 ms of warm-up (the clock ramps up; a shared host may be busy for a moment), then
        # the best of 15 samples of ~2.5 ms: one unlucky sample once made the ceiling 231 G, not 321
        f.time_evaluator("main", tvm.cpu(), number=1000, repeat=1)(*args)
        t = min(f.time_evaluator("main", tvm.cpu(), number=50, repeat=15)(*args).results)
        return m * j * words * reps * 64 / t / 1e9
    except Exception:
        return 0.0


@functools.lru_cache(maxsize=1)
def float_ceiling_gmacs() -> tuple[float, str]:
    """Per-thread FP32 multiply-add ceiling of this CPU (G MAC/s) and where it comes from: the
    float convs' roofline in ``bench``'s per-kernel table (:func:`fma_loop_gmacs`)."""
    rate = fma_loop_gmacs()
    if rate <= 0:
        return 0.0, "not measured (no compiler at hand)"
    return rate, "measured: independent FMA chains in vector registers, this CPU"


def fma_loop_gmacs() -> float:
    """G FP32 MAC/s of independent multiply-add chains held in vector registers, compiled for
    this CPU: 8 chains of 8 lanes on AVX2 (FMA latency 4 x 2 pipes; 16 chains spill the 16 ymm:
    Zen 3 43 G, 32 chains 21 G), 32 of 16 lanes on AVX-512 (its 32 zmm).  Zen 3, 1 thread:
    ~52 (16 per cycle at 3.2 GHz).  0.0 when TVM cannot build it."""
    try:
        import tvm
        from tvm.script import tirx as T

        from ..targets import cpu_flags, host_spec, tvm_target

        avx512 = "avx512f" in cpu_flags()
        width = (32 * 16) if avx512 else (8 * 8)

        @T.prim_func
        def fma(a: T.Buffer((width,), "float32"), n: T.int32):
            T.func_attr({"global_symbol": "fma", "tirx.noalias": True})
            acc = T.alloc_buffer((width,), "float32", scope="local")
            for j in T.vectorized(width):
                acc[j] = a[j]
            for i in range(n):
                for j in T.vectorized(width):
                    acc[j] = acc[j] * T.float32(0.999) + T.float32(0.001)
            for j in T.vectorized(width):
                a[j] = acc[j]

        f = tvm.compile(fma, target=tvm_target(host_spec())).jit()["fma"]
        buf = tvm.runtime.tensor(np.ones(width, np.float32))
        n = 200_000  # ~0.25 ms at 50 G
        for _ in range(200):  # ~50 ms of warm-up: let the clock ramp up
            f(buf, n)
        best = min(_timed(f, buf, n) for _ in range(15))
        return width * n / best / 1e9
    except Exception:
        return 0.0


@functools.lru_cache(maxsize=1)
def int16_ceiling_gmacs() -> tuple[float, str]:
    """Per-thread int16 multiply-add ceiling (G MAC/s) of the quantized convs' instruction pair,
    ``vpmaddwd`` + ``vpaddd`` (``--conv-precision``), and where it comes from."""
    rate = pmaddwd_loop_gmacs()
    if rate <= 0:
        return 0.0, "not measured (no compiler at hand, or no AVX2)"
    return rate, "measured: independent vpmaddwd + vpaddd chains in vector registers, this CPU"


@functools.lru_cache(maxsize=1)
def amx_ceiling_gmacs() -> tuple[float, str]:
    """Per-thread int8 multiply-add ceiling of AMX (``TDPBSSD``: 16 x 16 x 64 MACs per 16 cycles,
    1024 a cycle), the AMX convs' roofline; 0 without AMX."""
    from ..targets import cpu_flags

    if "amx_int8" not in cpu_flags():
        return 0.0, "no AMX-INT8"
    ghz, how = cpu_ghz()
    return 1024 * ghz, f"model: 1024 int8 MACs / cycle (TDPBSSD) at {ghz:.2f} GHz {how}"


def pmaddwd_loop_gmacs() -> float:
    """G int16 MAC/s of 12 independent chains ``acc += vpmaddwd(x, w)`` (16 MACs each: the
    quantized conv kernel's inner pair, ``schedules/x86_intrinsics.py``), compiled for this CPU;
    ``x`` is the accumulator's own bits so nothing is loop-invariant.  Zen 3, 1 thread: 46 / 73 /
    83 / 83 G with 4 / 8 / 12 / 14 chains (1.6 vpmaddwd per cycle: the vpaddd share its pipes),
    1.6x the FP32 FMA peak, not 2x.  0.0 without AVX2."""
    from ..targets import cpu_flags

    return _dot_loop_gmacs(vnni=False) if "avx2" in cpu_flags() else 0.0


@functools.lru_cache(maxsize=1)
def vnni_ceiling_gmacs() -> tuple[float, str]:
    """Per-thread int8 multiply-add ceiling (G MAC/s) of the VNNI quantized convs' instruction,
    ``vpdpbusd`` on zmm (``--conv-precision int8`` on AVX-512 VNNI CPUs), and where it comes from."""
    from ..targets import cpu_flags

    rate = _dot_loop_gmacs(vnni=True) if "avx512_vnni" in cpu_flags() else 0.0
    if rate <= 0:
        return 0.0, "not measured (no compiler at hand, or no AVX-512 VNNI)"
    return rate, "measured: independent vpdpbusd chains in zmm registers, this CPU"


def _dot_loop_gmacs(*, vnni: bool) -> float:
    """G MAC/s of 12 independent integer dot-product chains compiled for this CPU: ``acc +=
    vpmaddwd(acc, 3)`` on ymm (16 int16 MACs) or ``acc = vpdpbusd(acc, acc, 3)`` on zmm (64 int8
    MACs); the operand is the accumulator's own bits so nothing is loop-invariant.  0.0 when TVM
    cannot build it."""
    try:
        import tvm
        from tvm.script import tirx as T

        from ..targets import host_spec, tvm_target

        chains, lanes = 12, (16 if vnni else 8)
        width = chains * lanes

        @T.prim_func
        def dot(a: T.Buffer((width,), "int32"), n: T.int32):
            T.func_attr({"global_symbol": "dot", "tirx.noalias": True})
            acc = T.alloc_buffer((width,), "int32", scope="local")
            for j in T.vectorized(width):
                acc[j] = a[j]
            for i in range(n):
                for c in T.unroll(chains):
                    if vnni:
                        acc[T.ramp(c * 16, 1, 16)] = T.call_llvm_pure_intrin(
                            "int32x16", "llvm.x86.avx512.vpdpbusd.512", acc[T.ramp(c * 16, 1, 16)],
                            T.reinterpret("int8x64", acc[T.ramp(c * 16, 1, 16)]), T.broadcast(T.int8(3), 64))
                    else:
                        acc[T.ramp(c * 8, 1, 8)] = acc[T.ramp(c * 8, 1, 8)] + T.call_llvm_pure_intrin(
                            "int32x8", "llvm.x86.avx2.pmadd.wd",
                            T.reinterpret("int16x16", acc[T.ramp(c * 8, 1, 8)]), T.broadcast(T.int16(3), 16))
            for j in T.vectorized(width):
                a[j] = acc[j]

        f = tvm.compile(dot, target=tvm_target(host_spec())).jit()["dot"]
        buf = tvm.runtime.tensor(np.ones(width, np.int32))
        n = 100_000
        for _ in range(200):  # warm-up: let the clock ramp up
            f(buf, n)
        best = min(_timed(f, buf, n) for _ in range(15))
        return width * (4 if vnni else 2) * n / best / 1e9
    except Exception:
        return 0.0


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
