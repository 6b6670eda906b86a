"""One identity per compilation target, used by schedule dispatch, tuning records and sidecars.

A TVM target answers three questions here, and they are derived in this one place:

* ``arch``: the machine a library built for it runs on (``x86_64``, ``aarch64``, ``cuda``);
* ``schedule_key``: which hand schedules apply (``x86``, ``arm_cpu``, ``cuda``, or ``cpu`` for
  the generic llvm fallback);
* ``tag``: which tuning records are valid and meaningful for it (``llvm-x86_64-znver3``,
  ``llvm-aarch64-generic+neon``, ``cuda-sm_90``): kind, triple, cpu and features, but not
  runtime-only attributes such as ``num-cores``.

:func:`arch_of` works on the plain target dict (no TVM import), so the runtime and the target
registry can use it on a sidecar.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

_X86_TRIPLES = ("x86_64", "i386", "i686")
_ARM_TRIPLES = ("aarch64", "arm")


def arch_of(target: dict) -> str:
    """``cuda``, ``aarch64`` or ``x86_64`` for a TVM target dict (an empty triple means x86)."""
    if target.get("kind") == "cuda":
        return "cuda"
    return "aarch64" if str(target.get("mtriple", "") or "").startswith(_ARM_TRIPLES) else "x86_64"


@dataclass(frozen=True)
class TargetIdentity:
    kind: str
    arch: str
    schedule_key: str
    tag: str

    def to_dict(self) -> dict:
        return asdict(self)


def as_target(target):
    """A ``tvm.target.Target`` from a Target, a target dict, or None (the current target, else
    plain llvm)."""
    import tvm

    if target is None:
        target = tvm.target.Target.current() or {"kind": "llvm"}
    return target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)


def _schedule_key(t) -> str:
    keys = list(t.keys)
    if "cuda" in keys:
        return "cuda"
    if "arm_cpu" in keys:
        return "arm_cpu"
    if t.kind.name == "llvm" and "cpu" in keys:
        triple = str(t.attrs.get("mtriple", "") or "")
        if triple.startswith(_ARM_TRIPLES):
            return "arm_cpu"
        if triple == "" or triple.startswith(_X86_TRIPLES):
            return "x86"
    return "cpu"


def _tag(t) -> str:
    kind = t.kind.name
    if kind == "cuda":
        return f"cuda-{t.attrs.get('arch', 'sm_xx')}"
    triple = str(t.attrs.get("mtriple", "") or "")
    arch = triple.split("-")[0] if triple else "native"
    cpu = str(t.attrs.get("mcpu", "") or "generic")
    mattr = t.attrs.get("mattr", None)
    feats = "".join(sorted(str(a) for a in mattr)) if mattr else ""
    return f"{kind}-{arch}-{cpu}{feats}".replace("/", "_")


def identify(target) -> TargetIdentity:
    """The identity of ``target`` (a ``tvm.target.Target``, a target dict, or None)."""
    t = as_target(target)
    arch = "cuda" if t.kind.name == "cuda" else arch_of({"mtriple": t.attrs.get("mtriple", "")})
    return TargetIdentity(t.kind.name, arch, _schedule_key(t), _tag(t))


def vector_bits(target) -> int:
    """SIMD register width of a CPU target, from its features: 512 (AVX-512F), 256 (AVX), 128
    (SSE, NEON, unknown).  TVM 0.27's ``llvm_get_vector_width`` answers 512 for AVX2-only CPUs
    (haswell, znver3), which made every float kernel tile for registers twice the real width
    (spilling on AVX2: the 7x7 stem ran at 16 instead of 21+ G MAC/s on Zen 3)."""
    for feature, bits in (("avx512f", 512), ("avx", 256)):
        if has_x86_features(target, [feature]):
            return bits
    return 128


def has_x86_features(target, features) -> bool:
    """Is ``target`` an x86 llvm target whose CPU (as LLVM knows it: ``mcpu`` plus ``mattr``) has
    every one of ``features`` (LLVM names: ``avx512vnni``, ``amx-int8``, ...)?"""
    t = as_target(target)
    if t.kind.name != "llvm" or _schedule_key(t) != "x86":
        return False
    from tvm.target.codegen import llvm_cpu_has_features

    return bool(llvm_cpu_has_features(list(features), t))

