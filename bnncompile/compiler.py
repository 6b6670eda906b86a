"""``compile_model``: an exported ONNX file → a deployable TVM library + JSON sidecar.

The sidecar (``model.json`` next to ``model.so``) records what a loader must know and check:
input/output names, shapes and dtypes, the target, batch size, versions, and the SHA-256 of the
ONNX file it came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, targets
from .errors import CompileError, InputFileError, UsageError
from .exporter import atomic_write_bytes, load_onnx

SIDECAR_VERSION = 1


@dataclass(frozen=True)
class CompileOptions:
    """Validated once at the entry point; written into the sidecar."""

    target: str = "host"
    batch: int = 1
    binary_kernels: bool = True
    fast_math: bool = True
    fuse_epilogues: bool = True
    version: int = SIDECAR_VERSION

    def __post_init__(self):
        if not isinstance(self.batch, int) or self.batch < 1:
            raise UsageError(f"Expected --batch to be a positive integer, got {self.batch!r}")


@dataclass
class CompileResult:
    library: Path
    sidecar: Path
    seconds: float
    num_binary_layers: int
    exported_as: str  # "so" or "tar"
    runnable_here: bool
    notes: list[str] = field(default_factory=list)


def sidecar_path_for(lib_path) -> Path:
    p = Path(lib_path)
    return p.with_suffix(".json")


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fast_math_legalize_map() -> dict:
    """softmax / erf (GELU) / tanh with TVM's polynomial exp/erf/tanh: the libm calls are scalar
    and dominated the CCT models (softmax ~40 % of CCT-7). Relative error ~1e-7..1e-6, far
    inside validate's logit tolerance; binary layers are unaffected (they are integer-exact)."""
    from tvm import topi

    return {
        "relax.nn.softmax": lambda bb, call: bb.call_te(topi.nn.fast_softmax, call.args[0],
                                                         call.attrs.axis),
        "relax.erf": lambda bb, call: bb.call_te(topi.fast_erf, call.args[0]),
        "relax.tanh": lambda bb, call: bb.call_te(topi.fast_tanh, call.args[0]),
    }


def relax_pipeline(target, *, fast_math: bool = True):
    """TVM's default Relax pipeline, plus: dead-code elimination first (drops the float ±1 of
    DynamicSigns whose consumers all became bit-packed kernels) and, on CPUs, default schedules
    for the float glue TVM legalizes (TVM 0.27 leaves those single-threaded) and, with
    ``fast_math``, vectorizable exp/erf/tanh (:func:`fast_math_legalize_map`)."""
    import tvm
    from tvm import relax

    if target.kind.name != "llvm":
        return tvm.transform.Sequential([relax.transform.DeadCodeElimination(),
                                         relax.get_default_pipeline(target)])
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from .schedules.float_glue import schedule_pass

    legalize = cpu.legalize_passes(target)
    if fast_math:
        legalize = [relax.transform.LegalizeOps(customize_legalize_map=fast_math_legalize_map()),
                    *legalize[1:]]
    return tvm.transform.Sequential(
        [relax.transform.DeadCodeElimination()]
        + cpu.library_dispatch_passes(target) + legalize
        + [schedule_pass()]
        + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))


def build_relax(model, *, spec: targets.TargetSpec, batch: int = 1, binary_kernels: bool = True,
                extra_outputs: tuple[str, ...] = (), tuning_db=None, fast_math: bool = True,
                fuse_epilogues: bool = True):
    """ONNX ModelProto → (tvm Executable, plan). Used by compile, validate and bench.

    ``tuning_db``: a MetaSchedule database (directory or ``ms.Database``) whose records for this
    target replace the hand schedules (``schedules/tuning.py``); after the call, ``plan.tuning``
    is the :class:`~bnncompile.schedules.tuning.DatabaseSession` (None without a database)."""
    import contextlib

    import tvm

    from .frontend import FrontendOptions, from_onnx

    tgt = targets.tvm_target(spec)
    opts = FrontendOptions(batch=batch, binary_kernels=binary_kernels, extra_outputs=extra_outputs,
                           fuse_epilogues=fuse_epilogues)
    # --- tuning (schedules/tuning.py) ---
    if tuning_db is not None:
        from .schedules import tuning

        try:
            use = tuning.use_database(tuning.open_database(tuning_db), tgt)
        except FileNotFoundError as exc:
            raise InputFileError(f"--tuning-db: {exc}") from exc
    else:
        use = contextlib.nullcontext()
    with use as session:
        mod, plan = from_onnx(model, target=tgt, options=opts)
    plan.tuning = session
    # --- end tuning ---
    try:
        with tgt:
            ex = tvm.compile(mod, target=tgt, relax_pipeline=relax_pipeline(tgt, fast_math=fast_math))
    except Exception as exc:
        raise CompileError(f"TVM failed to build for target {spec.name}: {str(exc).splitlines()[0][:300]}") from exc
    return ex, plan


def _io_signature(model, batch: int) -> tuple[list[dict], list[dict]]:
    from .frontend import _static_input_shapes

    shapes = _static_input_shapes(model, batch)
    inputs = [{"name": n, "shape": s, "dtype": "float32"} for n, s in shapes.items()]
    outputs = []
    for o in model.graph.output:
        dims = [d.dim_value if d.HasField("dim_value") else batch
                for d in o.type.tensor_type.shape.dim]
        outputs.append({"name": o.name, "shape": dims, "dtype": "float32"})
    return inputs, outputs


def _check_output_dir(output: Path) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".probe", dir=output.parent)
    except OSError as exc:  # read-only or unwritable directory (root passes os.access checks)
        raise InputFileError(f"cannot write {output}: {exc.strerror or exc}") from exc
    os.close(fd)
    os.unlink(probe)


def compile_model(onnx_path, *, output, target: str = "host", batch: int = 1,
                  binary_kernels: bool = True, progress=None, tuning_db=None,
                  pretuned: bool = True, fast_math: bool = True,
                  fuse_epilogues: bool = True) -> CompileResult:
    """Compile ``onnx_path`` for ``target`` into ``output`` (a ``.so``; ``.tar`` when no linker).

    Args:
        onnx_path: a model written by ``bnncompile export`` (or any ONNX file using only
            standard ops plus ``com.bnncompile::DynamicSign``).
        output: library path; the sidecar goes next to it with the ``.json`` suffix.
        target: a registry name (see :mod:`bnncompile.targets`) or raw TVM target JSON.
        batch: static batch size compiled in.
        binary_kernels: False lowers everything as float (a debugging aid for parity).
        fast_math: polynomial exp/erf/tanh for softmax/GELU/tanh on CPUs (~1e-7..1e-6 relative);
            False keeps TVM's libm calls (slower CCT glue, closest to ONNX Runtime).
        fuse_epilogues: run the BN / residual / RPReLU chain after each binary conv in the
            conv's epilogue (``bnncompile.epilogue``); False leaves it to TVM's float fusion.
        progress: optional callable ``(message)`` for stage updates.
        tuning_db: MetaSchedule database directory (``bnncompile tune``); its records for the
            target replace the hand schedules. Default: the shipped pre-tuned records for the
            target's tag (``schedules/databases/<tag>``) if any, unless ``pretuned=False``.
    """
    opts = CompileOptions(target=target, batch=batch, binary_kernels=binary_kernels,
                          fast_math=fast_math, fuse_epilogues=fuse_epilogues)
    spec = targets.resolve(target)
    say = progress or (lambda msg: None)
    output = Path(output)
    if not output.parent.is_dir():
        raise InputFileError(f"cannot write {output}: directory {output.parent} does not exist")
    _check_output_dir(output)  # fail before a minute-long build, not after
    model = load_onnx(onnx_path)
    t0 = time.perf_counter()
    say(f"importing {onnx_path} for {spec.name}")
    # --- tuning: explicit database, else the shipped pre-tuned one for this target ---
    if tuning_db is None and pretuned and binary_kernels:
        from .schedules import tuning

        tuning_db = tuning.pretuned_dir(targets.tvm_target(spec))
    ex, plan = build_relax(model, spec=spec, batch=batch, binary_kernels=binary_kernels,
                          tuning_db=tuning_db, fast_math=fast_math, fuse_epilogues=fuse_epilogues)
    # --- end tuning ---
    notes = []
    fmt = "so"
    fcompile = None
    if spec.arch == "aarch64" and targets.cross_compiler(spec) is None:
        fmt = "tar"
        notes.append("no aarch64 cross linker (apt-get install gcc-aarch64-linux-gnu); "
                     "wrote an object archive (.tar) that TVM links on the device")
    elif spec.arch == "aarch64":
        from tvm.support import cc

        fcompile = cc.cross_compiler(targets.cross_compiler(spec))
    if fmt == "tar" and output.suffix != ".tar":
        output = output.with_suffix(".tar")
    say(f"linking {output.name}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=f".{fmt}", dir=output.parent)
    except OSError as exc:  # unwritable / read-only directory (root passes permission checks)
        raise InputFileError(f"cannot write {output}: {exc.strerror or exc}") from exc
    os.close(fd)
    try:
        if fcompile is not None:
            ex.export_library(tmp, fcompile=fcompile)
        else:
            ex.export_library(tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, output)
    except Exception as exc:
        Path(tmp).unlink(missing_ok=True)
        raise CompileError(f"exporting the library {output} failed: {str(exc).splitlines()[0][:300]}") from exc
    ok, why = targets.runnable_here(spec)
    if not ok:
        notes.append(f"built, not runnable here: {why}")
    inputs, outputs = _io_signature(model, batch)
    import tvm

    sidecar = {
        "format": "bnncompile-library",
        "sidecar_version": SIDECAR_VERSION,
        "library": output.name,
        "library_format": fmt,
        "inputs": inputs,
        "outputs": outputs,
        "target_name": spec.name,
        "target": json.loads(spec.to_json()),
        "arch": spec.arch,
        "options": asdict(opts),
        "onnx_sha256": sha256_file(onnx_path),
        "onnx_file": str(Path(onnx_path).name),
        # load() checks these before dlopen: a truncated library would crash the process (SIGBUS)
        "library_size": output.stat().st_size,
        "library_sha256": sha256_file(output),
        "binary_layers": len(plan.binary),
        "kernels": plan.kernels,
        "tuning": _tuning_sidecar(tuning_db, getattr(plan, "tuning", None)),
        "versions": {"bnncompile": __version__, "tvm": tvm.__version__, "numpy": np.__version__},
    }
    side = sidecar_path_for(output)
    atomic_write_bytes(side, json.dumps(sidecar, indent=2).encode())
    return CompileResult(output, side, time.perf_counter() - t0, len(plan.binary), fmt, ok, notes)


def _tuning_sidecar(tuning_db, session) -> dict | None:
    """Which MetaSchedule records the build used (None: hand schedules only, no database)."""
    if session is None:
        return None
    return {"database": str(Path(tuning_db).resolve()) if isinstance(tuning_db, (str, os.PathLike))
            else None,
            "target_tag": session.tag,
            "records_digest": session.digest(),
            "tuned_kernels": sorted(session.applied),
            "failed": dict(session.failed)}
