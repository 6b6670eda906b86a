"""Target registry: a name -> TVM target dict table (data only, like TVM's tag registry).

``host`` is detected from the running CPU. Anything not in the table can be given as raw TVM
target JSON (``'{"kind": "llvm", "mcpu": "znver3"}'``).  What a target *is* (the machine it runs
on, its schedule key, its tuning tag) comes from one place,
:mod:`bnncompile.schedules.target_identity`; this module imports no TVM at import time, so the
runtime can use it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from functools import cache, lru_cache

from .errors import CompileError, UsageError
from .schedules.target_identity import arch_of


@dataclass(frozen=True)
class TargetSpec:
    name: str
    target: dict  # TVM target JSON
    description: str
    host: dict | None = None  # host target for device targets (CUDA)
    #: CPU features the machine must have to *run* code built for this target
    requires: tuple[str, ...] = ()
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.target["kind"]

    @property
    def arch(self) -> str:
        """The machine a library for this target runs on (``x86_64``, ``aarch64``, ``cuda``)."""
        return arch_of(self.target)

    def identity(self):
        """:class:`~bnncompile.schedules.target_identity.TargetIdentity` (imports TVM)."""
        from .schedules.target_identity import identify

        return identify(tvm_target(self))

    def to_json(self) -> str:
        return json.dumps({"target": self.target, "host": self.host}, sort_keys=True)


_X86_HOST = {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}
#: what TVM would otherwise warn it has to assume (48 KB static shared memory, as on every
#: NVIDIA GPU since Volta; 1024 threads per block; 32-thread warps)
_CUDA_LIMITS = {"max_shared_memory_per_block": 49152, "max_threads_per_block": 1024,
                "thread_warp_size": 32}

TARGETS: dict[str, TargetSpec] = {
    spec.name: spec
    for spec in [
        TargetSpec("x86-avx2", {**_X86_HOST, "mcpu": "haswell"},
                   "x86-64 with AVX2 + FMA + POPCNT (Haswell, Zen 1-3); vpshufb popcount",
                   requires=("avx2", "popcnt")),
        TargetSpec("x86-avx512", {**_X86_HOST, "mcpu": "icelake-server"},
                   "x86-64 with AVX-512 VPOPCNTDQ (Ice Lake server, Zen 4+); vpopcntq",
                   requires=("avx512f", "avx512_vpopcntdq")),
        TargetSpec("aarch64-neon", {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]},
                   "64-bit ARM with NEON (Cortex-A53+, Graviton, Apple M via Linux); cnt.16b"),
        TargetSpec("cuda-sm80", {"kind": "cuda", "arch": "sm_80", **_CUDA_LIMITS}, "NVIDIA Ampere (A100), __popcll",
                   host={**_X86_HOST, "mcpu": "x86-64"}),
        TargetSpec("cuda-sm90", {"kind": "cuda", "arch": "sm_90", **_CUDA_LIMITS},
                   "NVIDIA Hopper (H100/H200), __popcll",
                   host={**_X86_HOST, "mcpu": "x86-64"}),
    ]
}


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@lru_cache(maxsize=1)
def host_spec() -> TargetSpec:
    """The running machine: LLVM's name for this CPU, so every feature it has is used."""
    import platform

    import tvm

    cpu = tvm.target.codegen.llvm_get_system_cpu() if hasattr(tvm.target, "codegen") else "generic"
    machine = platform.machine()
    triple = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(machine, "")
    target = {"kind": "llvm", "mcpu": cpu}
    if triple:
        target["mtriple"] = triple
    extra = _missing_amx(target)
    if extra:
        target["mattr"] = extra
    note = f" + {', '.join(extra)}" if extra else ""
    # a library with AMX kernels refuses to load where the CPU has none (instead of SIGILL)
    requires = tuple(f[1:].replace("-", "_") for f in extra)
    return TargetSpec("host", target, f"this machine ({machine}, LLVM cpu '{cpu}'{note})",
                      requires=requires)


def _missing_amx(target: dict) -> list[str]:
    """AMX features this CPU has, Linux lets this process use, and LLVM's name for the CPU
    lacks (under KVM an Emerald Rapids reports the model LLVM calls ``rocketlake``, a CPU
    without AMX): ``["+amx-tile", "+amx-int8", "+amx-bf16"]`` or a part of it, else ``[]``."""
    import tvm
    from tvm.target.codegen import llvm_cpu_has_features

    flags = cpu_flags()
    wanted = [f for f in ("amx_tile", "amx_int8", "amx_bf16") if f in flags]
    if "amx_tile" not in wanted or not amx_permitted():
        return []
    t = tvm.target.Target(target)
    return [f"+{f.replace('_', '-')}" for f in wanted
            if not llvm_cpu_has_features([f.replace("_", "-")], t)]


@lru_cache(maxsize=1)
def amx_permitted() -> bool:
    """Does Linux grant this process the AMX tile state (``arch_prctl(ARCH_REQ_XCOMP_PERM,
    XFEATURE_XTILEDATA)``, Linux >= 5.16)?  Without it the first tile instruction is SIGILL."""
    import ctypes
    import platform

    if platform.machine() != "x86_64":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(158, 0x1023, 18) == 0  # SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XTILEDATA
    except (OSError, AttributeError):
        return False


def names() -> list[str]:
    return ["host", *TARGETS]


def resolve(name_or_json: str) -> TargetSpec:
    """A registered name, ``host``, or raw TVM target JSON; UsageError lists the names otherwise."""
    if name_or_json == "host":
        return host_spec()
    if name_or_json in TARGETS:
        return TARGETS[name_or_json]
    text = name_or_json.strip()
    if text.startswith("{"):
        try:
            target = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--target: invalid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(target, dict) or "kind" not in target:
            raise UsageError('--target JSON must be an object with a "kind", e.g. {"kind": "llvm"}')
        host = target.pop("host", None)
        if target["kind"] == "cuda" and host is None:
            host = {**_X86_HOST, "mcpu": "x86-64"}
        spec = TargetSpec("custom", target, "raw TVM target JSON", host=host)
        _check_raw(spec)
        return spec
    raise UsageError(f"unknown target {name_or_json!r}; known: {', '.join(names())}, "
                     "or raw TVM target JSON")


def _check_raw(spec: TargetSpec) -> None:
    """Raw JSON must make a TVM target whose LLVM cpu exists: LLVM would otherwise print ~100
    lines and silently build for a generic CPU."""
    import difflib

    mcpu = spec.target.get("mcpu")
    # without the cpu first: LLVM logs an error line for an unknown one
    bare = TargetSpec(spec.name, {k: v for k, v in spec.target.items() if k != "mcpu"}, "", host=spec.host)
    try:
        tgt = tvm_target(bare)
    except Exception as exc:  # tvm raises ValueError / TVMError with a multi-line message
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"--target: {first}; known kinds include llvm and cuda") from exc
    if spec.kind != "llvm" or not mcpu:
        return
    from tvm.target import codegen

    valid = [str(c) for c in codegen.llvm_get_cpu_archlist(tgt)]
    if valid and mcpu not in valid:
        near = difflib.get_close_matches(str(mcpu), valid, n=4)
        raise UsageError(f"--target: LLVM knows no cpu {mcpu!r} for "
                         f"{spec.target.get('mtriple') or 'this triple'}"
                         + (f"; did you mean {', '.join(near)}?" if near else "")
                         + " (`bnncompile targets` shows this machine's)")


def tvm_target(spec: TargetSpec, *, num_cores: int | None = None):
    import tvm

    target = dict(spec.target)
    if num_cores and target["kind"] == "llvm":
        target["num-cores"] = num_cores
    if spec.host is not None:
        return tvm.target.Target(target, host=spec.host)
    return tvm.target.Target(target)


def runnable_here(spec: TargetSpec) -> tuple[bool, str]:
    """Can a library for ``spec`` run on this machine? (ok, reason if not)."""
    import platform

    if spec.arch == "cuda":
        import tvm

        return (bool(tvm.cuda(0).exist), "no CUDA GPU on this machine")
    if spec.arch != ("aarch64" if platform.machine() == "aarch64" else "x86_64"):
        return False, f"library is for {spec.arch}, this machine is {platform.machine()}"
    missing = [f for f in spec.requires if f not in cpu_flags()]
    if missing:
        return False, f"this CPU lacks {', '.join(missing)}"
    return True, ""


#: Debian packages that let this x86 machine link shared objects for another architecture
CROSS_PACKAGES = {"aarch64": ("gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross")}
_CROSS_CC = {"aarch64": "aarch64-linux-gnu-gcc"}


@cache
def _can_link(cc: str) -> str:
    """"" if ``cc`` links a shared object here, else the linker's complaint."""
    import subprocess
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "probe.c"
        src.write_text("int bnncompile_probe(void) { return 1; }\n")
        try:
            res = subprocess.run([cc, "-shared", "-fPIC", "-o", str(Path(d) / "probe.so"), str(src)],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        return "" if res.returncode == 0 else (res.stderr.strip().splitlines() or ["failed"])[-1]


def cross_compiler(spec: TargetSpec) -> str | None:
    """A C compiler that links shared objects for ``spec`` on this machine (checked by a trial
    link), or None."""
    import platform

    if spec.arch != "aarch64":
        return None
    if platform.machine() == "aarch64":
        return "gcc"
    cc = shutil.which(_CROSS_CC["aarch64"])
    return cc if cc is not None and not _can_link(cc) else None


def cross_linker(spec: TargetSpec):
    """The ``fcompile`` for ``export_library`` of an ``spec`` library; CompileError naming every
    missing package when this machine cannot link one."""
    from tvm.support import cc as tvm_cc

    compiler = cross_compiler(spec)
    if compiler is not None:
        return tvm_cc.cross_compiler(compiler)
    found = shutil.which(_CROSS_CC[spec.arch])
    pkgs = " ".join(CROSS_PACKAGES[spec.arch])
    why = ("no cross compiler on PATH" if found is None
           else f"{_CROSS_CC[spec.arch]} cannot link a shared object ({_can_link(found)})")
    raise CompileError(f"cannot link a library for {spec.name} here: {why}; install "
                       f"`apt-get install {pkgs}`, or write an object archive to link on the "
                       "device with `-o model.tar`")
