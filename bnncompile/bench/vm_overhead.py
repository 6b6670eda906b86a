"""The Relax VM's own cost per inference, measured rather than instrumented.

The VM's instrument hook (:func:`bench.profile.profile`) counts every builtin call exactly, but
the time it gives them is mostly the hook's own Python callback (a few µs a call). Here the
library's VM program is rebuilt from the same ONNX file with the library's options, every
kernel's body replaced by nothing (its argument checks stay: they are part of a call's cost), and
timed with TVM's ``time_evaluator``: what remains is the interpreter, the builtins
(``alloc_storage`` / ``alloc_tensor`` / ``reshape`` / ``null_value`` / ``make_tuple``) and the
kernel calls themselves — everything an inference spends outside the kernels."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np


@dataclass
class VMOverhead:
    ms: float  # median of ``repeat`` timings, each the mean of ``number`` calls
    min_ms: float
    kernels_emptied: int  # PrimFuncs whose bodies were removed
    how: str = "the library's VM program with every kernel body emptied, TVM time_evaluator, 1 thread"


def empty_kernel_bodies(emptied: list | None = None):
    """A module pass: every PrimFunc keeps its signature (and so its argument checks) and does
    nothing. Run last in the pipeline, after memory planning, so the VM program is unchanged.
    The names of the functions it emptied are appended to ``emptied``."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="EmptyKernelBodies")
    def run(mod, ctx):
        bodies = {gv: f.with_body(tvm.tirx.Evaluate(0)) for gv, f in mod.functions.items()
                  if isinstance(f, tvm.tirx.PrimFunc)}
        for gv, f in bodies.items():
            mod[gv] = f
        if emptied is not None:
            emptied.extend(gv.name_hint for gv in bodies)
        return mod

    return run


def emptied_build(model, meta: dict):
    """(Executable, names of the emptied kernels): ``model`` built with the options the library
    of sidecar ``meta`` was compiled with (target, batch, float fusion, sign-zero rule) and
    :func:`empty_kernel_bodies` last."""
    from .. import targets
    from ..compiler import build_relax, library_build_options

    spec = targets.resolve(json.dumps(meta["target"]["target"]))
    emptied: list[str] = []
    ex, _ = build_relax(model, spec=spec, batch=int(meta["inputs"][0]["shape"][0]),
                        **library_build_options(meta), then=(empty_kernel_bodies(emptied),))
    return ex, emptied


def measure(model, meta: dict, x: np.ndarray, *, number: int = 200, repeat: int = 7) -> VMOverhead:
    """Time the emptied program of ``model`` (see the module docstring) on input ``x``, with
    TVM's thread pool at 1 thread (the caller sets it)."""
    import tvm
    from tvm import relax

    ex, emptied = emptied_build(model, meta)
    dev = tvm.cpu(0)
    vm = relax.VirtualMachine(ex, dev)
    args = [tvm.runtime.tensor(np.ascontiguousarray(x), dev)]
    res = vm.time_evaluator("main", dev, number=number, repeat=repeat, min_repeat_ms=0)(*args)
    times = np.asarray(res.results) * 1e3
    return VMOverhead(float(np.median(times)), float(times.min()), len(emptied))
