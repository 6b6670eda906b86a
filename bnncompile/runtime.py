"""Loading a compiled library: ``bnncompile.load(path)`` → a :class:`Runner` (numpy in, numpy out).

The sidecar written by ``compile`` is required: it says what the library expects, and it is
checked against the library file and this machine before anything runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import targets
from .errors import InputFileError, UsageError


def read_sidecar(lib_path) -> dict:
    from .compiler import sidecar_path_for

    side = sidecar_path_for(lib_path)
    if not side.is_file():
        raise InputFileError(f"{lib_path}: sidecar {side.name} is missing; recompile with "
                             "`bnncompile compile` (it writes both files)")
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{side}: not a readable JSON sidecar ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != "bnncompile-library" or "inputs" not in meta:
        raise InputFileError(f"{side}: not a bnncompile sidecar (no 'format: bnncompile-library')")
    if meta.get("library") != Path(lib_path).name:
        raise InputFileError(f"{side} describes library {meta.get('library')!r}, not {Path(lib_path).name!r}")
    return meta


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


def _check_integrity(path: Path, meta: dict) -> None:
    """Size and SHA-256 from the sidecar: dlopen of a truncated file kills the process (SIGBUS)."""
    from .compiler import sha256_file

    size = meta.get("library_size")
    if size is not None and path.stat().st_size != size:
        raise InputFileError(f"{path} is {path.stat().st_size} bytes but its sidecar says {size}: "
                             "truncated or replaced; recompile it")
    digest = meta.get("library_sha256")
    if digest is not None and sha256_file(path) != digest:
        raise InputFileError(f"{path} does not match the SHA-256 in its sidecar: modified or "
                             "replaced; recompile it")


def load(path) -> Runner:
    """Load a library written by ``bnncompile compile`` (checks the sidecar and the machine)."""
    import tvm
    from tvm import relax

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such library")
    meta = read_sidecar(path)
    spec = targets.TargetSpec(meta.get("target_name", "custom"), meta["target"]["target"], "",
                              host=meta["target"].get("host"), arch=meta.get("arch", "x86_64"))
    registered = targets.TARGETS.get(spec.name)
    if registered is not None:
        spec = registered
    ok, why = targets.runnable_here(spec)
    if not ok:
        raise UsageError(f"{path} was built for target {meta.get('target_name')} and cannot run here: {why}")
    if meta.get("library_format") == "tar":
        raise UsageError(f"{path} is an object archive for another machine; link and load it there")
    _check_integrity(path, meta)
    try:
        lib = tvm.runtime.load_module(str(path))
    except Exception as exc:
        raise InputFileError(f"{path}: cannot load library ({str(exc).splitlines()[0][:200]})") from exc
    device = tvm.cuda(0) if spec.arch == "cuda" else tvm.cpu(0)
    return Runner(relax.VirtualMachine(lib, device), meta, device)
