"""Shared harness of the kernel tests: the host target, a compile cache, and the input kinds.

Loaded by ``conftest.py`` (by file path, so it works under any pytest import mode) and handed to
the tests through fixtures (``host``, ``run_primfunc``, ``run_primfunc_outs``, ``inputs``): test
modules import nothing from here or from conftest.

Input kinds (``INPUT_KINDS``; a test that takes the ``inputs`` fixture runs once per kind, the
kind in its id):

* ``random-seed0..2``: random operands, seeded from the test's node id (which contains the kind):
  every case has its own, reproducible seed, printed when the test fails;
* ``all+1``, ``all-1``, ``alternating`` (a checkerboard: the sign flips along *every* axis, so
  along the packed one too) and ``one-flip`` (a constant tensor, one element of the other sign):
  the operand under test (activations of conv / dense, the left operand of batch-matmul, x of
  bitpack relative to its threshold, the float input of the float kernels) takes that pattern;
  weights and the other operands stay seeded random, so the outputs still differ per output
  channel / column (a constant output cannot catch a kernel that mixes up columns).
"""
from __future__ import annotations

import zlib

import numpy as np
import tvm
import tvm_ffi

# AVX2 code that runs on any AVX2 x86, Zen 3 and Intel alike (the x86-avx2 target).  Not "znver3":
# LLVM may then emit AMD-only SSE4a (insertq seen in a zero-padded bconv2d), which faults on Intel.
HOST = {"kind": "llvm", "mcpu": "haswell"}

RANDOM_KINDS = ("random-seed0", "random-seed1", "random-seed2")
ADVERSARIAL_KINDS = ("all+1", "all-1", "alternating", "one-flip")
INPUT_KINDS = RANDOM_KINDS + ADVERSARIAL_KINDS

# Compiled kernels, keyed by the PrimFunc's structure (less its symbol) and the target: the
# schedule keys that produce the same TIR (arm_cpu and x86 share the generic bitpack, the pools,
# prelu_stats) are compiled once; each entry keeps the symbol it was compiled under.
_LIBS: dict = {}


def _compiled(pf, target):
    """Built as the libraries are (``schedules.stack_scratch``'s TIR pipeline)."""
    from bnncompile.schedules import stack_scratch

    sym = str(pf.attrs["global_symbol"])
    key = (tvm_ffi.StructuralKey(pf.without_attr("global_symbol")), repr(sorted(target.items())))
    if key not in _LIBS:
        _LIBS[key] = (tvm.compile(pf, target=tvm.target.Target(target), tir_pipeline=stack_scratch.register()).jit(),
                      sym)
    lib, lib_sym = _LIBS[key]
    return lib[lib_sym]


def run_primfunc_outs(pf, inputs, outs, target=HOST):
    """Compile (cached, see ``_compiled``) and run; ``outs`` = [(shape, dtype), ...] of the
    output parameters after ``inputs``.  Returns the outputs as numpy arrays."""
    fn = _compiled(pf, target)
    res = [tvm.runtime.empty(tuple(shape), dtype) for shape, dtype in outs]
    fn(*[tvm.runtime.tensor(np.array(a, order="C")) for a in inputs], *res)  # 0-d stays 0-d
    return [r.numpy() for r in res]


def run_primfunc(pf, inputs, out_shape, out_dtype, target=HOST):
    return run_primfunc_outs(pf, inputs, [(out_shape, out_dtype)], target)[0]


def _checkerboard(shape) -> np.ndarray:
    """True where the sum of the indices is even: alternates along every axis."""
    if not len(shape):
        return np.ones((), bool)
    return np.indices(shape).sum(axis=0) % 2 == 0


class Inputs:
    """The operands of one test case of a given input kind (see the module docstring)."""

    def __init__(self, kind: str, nodeid: str):
        if kind not in INPUT_KINDS:
            raise ValueError(f"unknown input kind {kind!r}")
        self.kind = kind
        self.seed = zlib.crc32(nodeid.encode())
        self.rng = np.random.default_rng(self.seed)
        self.notes: list[str] = []  # where the one-flip went, per operand

    @property
    def random(self) -> bool:
        return self.kind in RANDOM_KINDS

    def __str__(self) -> str:
        extra = f" ({'; '.join(self.notes)})" if self.notes else ""
        return f"inputs={self.kind} seed={self.seed}{extra}"

    def pattern(self, shape) -> np.ndarray:
        """Boolean pattern of an adversarial kind (True: +1 / at-or-above the threshold)."""
        shape = tuple(int(s) for s in shape)
        if self.kind == "all+1":
            return np.ones(shape, bool)
        if self.kind == "all-1":
            return np.zeros(shape, bool)
        if self.kind == "alternating":
            return _checkerboard(shape)
        if self.kind == "one-flip":
            base = bool(self.rng.integers(2))
            p = np.full(shape, base)
            if p.size:
                idx = np.unravel_index(int(self.rng.integers(p.size)), shape) if shape else ()
                p[idx] = not base
                note = f"{shape}: all {'+1' if base else '-1'}, flipped at {tuple(map(int, idx))}"
                self.notes.append(note)
                print(f"one-flip operand {note}")  # shown with a failure (captured stdout)
            return p
        raise ValueError(f"{self.kind} has no pattern")

    # ---- the operand under test
    def pm1(self, shape, dtype="float32") -> np.ndarray:
        """The +-1 operand under test: random or the kind's pattern."""
        if self.random:
            return self.rng.choice([-1.0, 1.0], tuple(shape)).astype(dtype)
        return np.where(self.pattern(shape), 1.0, -1.0).astype(dtype)

    def floats(self, shape, scale: float = 1.0) -> np.ndarray:
        """Float input of the float kernels: standard normal, or the kind's +-1 pattern."""
        if self.random:
            return (self.rng.standard_normal(tuple(shape)) * scale).astype("float32")
        return np.where(self.pattern(shape), scale, -scale).astype("float32")

    def thresholded(self, shape, t) -> np.ndarray:
        """x for bitpack against the threshold ``t`` (broadcast to ``shape``): random normal, or
        the pattern as x == t exactly (bit 1: a tie) / the next float below t (bit 0)."""
        if self.random:
            return self.rng.standard_normal(tuple(shape)).astype("float32")
        tb = np.broadcast_to(np.asarray(t, np.float32), tuple(shape))
        below = np.nextafter(tb, np.float32(-np.inf)).astype("float32")
        return np.where(self.pattern(shape), tb, below).astype("float32")

    # ---- everything else: always seeded random
    def weights(self, shape, dtype="float32") -> np.ndarray:
        return self.rng.choice([-1.0, 1.0], tuple(shape)).astype(dtype)

    def normal(self, shape=(), scale: float = 1.0) -> np.ndarray:
        return np.asarray(self.rng.standard_normal(shape) * scale, dtype="float32")


def staircase_pm1(n: int, k: int) -> np.ndarray:
    """[n, k] +-1 rows with ``w[j, i] = +1 iff i <= j`` (clipped to k): rows j-1 and j differ in
    exactly one entry for j < k, so a dot product with ANY +-1 vector differs between neighbouring
    output columns.  A kernel that gives every column the same value fails on it whatever the
    other operand is."""
    return np.where(np.arange(k)[None, :] <= np.arange(n)[:, None], 1.0, -1.0).astype("float32")
