"""Target registry: a name -> TVM target dict table (data only, like TVM's tag registry).

``host`` is detected from the running CPU. Anything not in the table can be given as raw TVM
target JSON (``'{"kind": "llvm", "mcpu": "znver3"}'``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from functools import lru_cache

from .errors import UsageError


@dataclass(frozen=True)
class TargetSpec:
    name: str
    target: dict  # TVM target JSON
    description: str
    host: dict | None = None  # host target for device targets (CUDA)
    #: CPU features the machine must have to *run* code built for this target
    requires: tuple[str, ...] = ()
    arch: str = "x86_64"  # machine the library runs on
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.target["kind"]

    def to_json(self) -> str:
        return json.dumps({"target": self.target, "host": self.host}, sort_keys=True)


_X86_HOST = {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}

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
                   "64-bit ARM with NEON (Cortex-A53+, Graviton, Apple M via Linux); cnt.16b",
                   arch="aarch64"),
        TargetSpec("cuda-sm80", {"kind": "cuda", "arch": "sm_80"}, "NVIDIA Ampere (A100), __popcll",
                   host={**_X86_HOST, "mcpu": "x86-64"}, arch="cuda"),
        TargetSpec("cuda-sm90", {"kind": "cuda", "arch": "sm_90"}, "NVIDIA Hopper (H100/H200), __popcll",
                   host={**_X86_HOST, "mcpu": "x86-64"}, arch="cuda"),
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
    return TargetSpec("host", target, f"this machine ({machine}, LLVM cpu '{cpu}')",
                      arch="aarch64" if machine == "aarch64" else "x86_64")


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
        arch = "cuda" if target["kind"] == "cuda" else (
            "aarch64" if str(target.get("mtriple", "")).startswith("aarch64") else "x86_64")
        return TargetSpec("custom", target, "raw TVM target JSON", host=host, arch=arch)
    raise UsageError(f"unknown target {name_or_json!r}; known: {', '.join(names())}, "
                     "or raw TVM target JSON")


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


def cross_compiler(spec: TargetSpec) -> str | None:
    """A C compiler able to link shared objects for ``spec`` on this machine, if installed."""
    if spec.arch == "aarch64":
        import platform

        if platform.machine() == "aarch64":
            return "gcc"
        return shutil.which("aarch64-linux-gnu-gcc")
    return None
