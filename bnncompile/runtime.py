"""Loading a compiled library: ``bnncompile.load(path)`` → a :class:`Runner` (numpy in, numpy out).

The sidecar written by ``compile`` is required: it says what the library expects, and it is
checked against the library file and this machine before anything runs.

A board needs only this module: it imports the artifacts module, the target registry (data),
numpy and TVM's runtime — not the compiler, onnx or torch (``pip install apache-tvm numpy`` and
bnncompile without extras is enough to run a library).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import targets
from .artifacts import check_library_integrity, read_sidecar
from .errors import InputFileError, UsageError

__all__ = ["Runner", "load", "read_sidecar"]


class Runner:
    """A loaded model. ``runner(x)`` for single-input models, ``runner.run({name: x})`` in general."""

    def __init__(self, vm, meta: dict, device):
        self._vm = vm
        self.meta = meta
        self._device = device
        self.inputs = meta["inputs"]
        self.outputs = meta["outputs"]

    def _check(self, name: str, value) -> np.ndarray:
        spec = next((i for i in self.inputs if i["name"] == name), None)
        if spec is None:
            raise UsageError(f"unknown input {name!r}; the model takes {[i['name'] for i in self.inputs]}")
        arr = np.asarray(value)
        if arr.dtype != np.dtype(spec["dtype"]):
            if arr.dtype.kind in "fiu":
                arr = arr.astype(spec["dtype"])
            else:
                raise UsageError(f"input {name!r}: expected dtype {spec['dtype']}, got {arr.dtype}")
        if list(arr.shape) != list(spec["shape"]):
            raise UsageError(f"input {name!r}: expected shape {spec['shape']}, got {list(arr.shape)}"
                             + (" (the batch size is fixed at compile time: --batch)"
                                if list(arr.shape[1:]) == list(spec["shape"][1:]) else ""))
        return np.ascontiguousarray(arr)

    def run(self, feeds: dict) -> dict[str, np.ndarray]:
        import tvm

        missing = [i["name"] for i in self.inputs if i["name"] not in feeds]
        if missing:
            raise UsageError(f"missing input(s) {missing}")
        args = [tvm.runtime.tensor(self._check(i["name"], feeds[i["name"]]), self._device)
                for i in self.inputs]
        out = self._vm["main"](*args)
        outs = list(out) if not hasattr(out, "numpy") else [out]
        return {o["name"]: v.numpy() for o, v in zip(self.outputs, outs)}

    def __call__(self, x) -> np.ndarray:
        if len(self.inputs) != 1:
            raise UsageError("this model has several inputs; use runner.run({name: array})")
        return next(iter(self.run({self.inputs[0]["name"]: x}).values()))

    def time_evaluator(self, number: int = 10, repeat: int = 5):
        """TVM's timer over ``main`` (seconds per call, see ``tvm.runtime`` docs)."""
        return self._vm.time_evaluator("main", self._device, number=number, repeat=repeat)

    def set_inputs(self, x):
        import tvm

        self._staged = [tvm.runtime.tensor(self._check(self.inputs[0]["name"], x), self._device)]
        return self._staged


def load(path) -> Runner:
    """Load a library written by ``bnncompile compile`` (checks the sidecar and the machine)."""
    import tvm
    from tvm import relax

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such library")
    meta = read_sidecar(path)
    spec = targets.TargetSpec(meta.get("target_name", "custom"), meta["target"]["target"], "",
                              host=meta["target"].get("host"), requires=tuple(meta.get("requires", ())))
    registered = targets.TARGETS.get(spec.name)
    if registered is not None:
        spec = registered
    ok, why = targets.runnable_here(spec)
    if not ok:
        raise UsageError(f"{path} was built for target {meta.get('target_name')} and cannot run here: {why}")
    if meta.get("library_format") == "tar":
        raise UsageError(f"{path} is an object archive for another machine; link and load it there")
    check_library_integrity(path, meta)
    try:
        lib = tvm.runtime.load_module(str(path))
    except Exception as exc:
        raise InputFileError(f"{path}: cannot load library ({str(exc).splitlines()[0][:200]})") from exc
    device = tvm.cuda(0) if spec.arch == "cuda" else tvm.cpu(0)
    return Runner(relax.VirtualMachine(lib, device), meta, device)
