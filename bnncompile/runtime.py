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
        #: the RPC session when the library runs on a board (kept open while the runner lives)
        self.session = None

    def _check(self, name: str, value) -> np.ndarray:
        spec = next((i for i in self.inputs if i["name"] == name), None)
        if spec is None:
            raise UsageError(f"unknown input {name!r}; the model takes {[i['name'] for i in self.inputs]}")
        arr = np.asarray(value)
        if arr.dtype != np.dtype(spec["dtype"]):
            # floats of another width convert exactly enough (the model is float32 anyway); an
            # integer or bool array is almost always unnormalised data: say so, do not guess
            if arr.dtype.kind != "f":
                raise UsageError(f"input {name!r}: expected {spec['dtype']}, got {arr.dtype} "
                                 f"(convert it, e.g. x.astype(np.float32), normalised as in training)")
            arr = arr.astype(spec["dtype"])
        if list(arr.shape) != list(spec["shape"]):
            raise UsageError(f"input {name!r}: expected shape {spec['shape']}, got {list(arr.shape)}"
                             + (" (the batch size is fixed at compile time: --batch)"
                                if list(arr.shape[1:]) == list(spec["shape"][1:]) else ""))
        return np.ascontiguousarray(arr)

    def close(self) -> None:
        """Release the library (and the RPC session of a board, which serves one at a time)."""
        self._vm = None
        self._staged = None
        session, self.session = self.session, None
        del session
        import gc

        gc.collect()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def vm(self):
        """The Relax VM (``vm["main"]``; ``vm["debug_signs"]`` when compiled with --verify)."""
        return self._vm

    def run(self, feeds: dict) -> dict[str, np.ndarray]:
        import tvm

        missing = [i["name"] for i in self.inputs if i["name"] not in feeds]
        if missing:
            raise UsageError(f"missing input(s) {missing}")
        args = [tvm.runtime.tensor(self._check(i["name"], feeds[i["name"]]), self._device)
                for i in self.inputs]
        if self.session is None:
            out = self._vm["main"](*args)
            outs = list(out) if not hasattr(out, "numpy") else [out]
        else:  # over RPC a returned tuple is an opaque reference: fetch the fields one by one
            self._vm.set_input("main", *args)
            self._vm.invoke_stateful("main")
            out = self._vm.get_outputs("main")
            outs = list(out) if isinstance(out, tuple) else [out]
        return {o["name"]: v.numpy() for o, v in zip(self.outputs, outs)}

    @property
    def batch(self) -> int:
        """The batch size compiled into the library (every input's first dimension)."""
        return int(self.inputs[0]["shape"][0]) if self.inputs and self.inputs[0]["shape"] else 1

    def __call__(self, x) -> np.ndarray:
        """The first output for one input array of exactly the compiled batch."""
        if len(self.inputs) != 1:
            raise UsageError(f"this model takes {len(self.inputs)} inputs "
                             f"({[i['name'] for i in self.inputs]}); use runner.run({{name: array}})")
        return next(iter(self.run({self.inputs[0]["name"]: x}).values()))

    def run_batches(self, x) -> np.ndarray:
        """The first output for any number of samples: chunks of the compiled batch, the last
        one zero-padded (its padding rows dropped from the result)."""
        x = np.asarray(x)
        b = self.batch
        spec = self.inputs[0]["shape"] if self.inputs else []
        if x.ndim != len(spec) or list(x.shape[1:]) != [int(d) for d in spec[1:]]:
            raise UsageError(f"input {self.inputs[0]['name']!r}: expected shape [N, "
                             f"{', '.join(map(str, spec[1:]))}], got {list(x.shape)}")
        outs = []
        for i in range(0, x.shape[0], b):
            chunk = x[i:i + b]
            n = chunk.shape[0]
            if n < b:
                chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), chunk.dtype)])
            outs.append(self(chunk)[:n])
        return np.concatenate(outs)

    def time_evaluator(self, number: int = 10, repeat: int = 5):
        """TVM's timer over ``main`` (seconds per call, see ``tvm.runtime`` docs)."""
        return self._vm.time_evaluator("main", self._device, number=number, repeat=repeat)

    def set_inputs(self, x):
        import tvm

        self._staged = [tvm.runtime.tensor(self._check(self.inputs[0]["name"], x), self._device)]
        return self._staged


def load(path, *, remote=None) -> Runner:
    """Load a library written by ``bnncompile compile`` (checks the sidecar, and that it runs on
    this machine).  ``remote``: a :class:`bnncompile.remote.Endpoint` — the library is uploaded
    to that device over TVM's RPC and runs there (a board; arrays travel over the network)."""
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
    if remote is None:
        ok, why = targets.runnable_here(spec)
        if not ok:
            raise UsageError(f"{path} was built for target {meta.get('target_name')} and cannot run "
                             f"here: {why} (a board: --rpc HOST:PORT, or --rpc-tracker with --rpc-key)")
    if meta.get("library_format") == "tar":
        raise UsageError(f"{path} is an object archive for another machine; link and load it there")
    check_library_integrity(path, meta)
    if remote is not None:
        session = remote.connect()
        try:
            session.upload(str(path))
            lib = session.load_module(path.name)
        except Exception as exc:
            raise InputFileError(f"{path}: the device at {remote} cannot load it "
                                 f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})") from exc
        device = session.cuda(0) if spec.arch == "cuda" else session.cpu(0)
        runner = Runner(relax.VirtualMachine(lib, device), meta, device)
        runner.session = session
        return runner
    try:
        lib = tvm.runtime.load_module(str(path))
    except Exception as exc:
        raise InputFileError(f"{path}: cannot load library ({str(exc).splitlines()[0][:200]})") from exc
    device = tvm.cuda(0) if spec.arch == "cuda" else tvm.cpu(0)
    return Runner(relax.VirtualMachine(lib, device), meta, device)
