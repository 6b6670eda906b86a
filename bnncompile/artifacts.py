"""Every file bnncompile reads or writes: ONNX models, golden files, arrays, libraries and their
sidecars, hashes, and the atomic writes behind them.

Rules kept here once, for every command:

* nothing is half-written: outputs go to a hidden temporary next to the destination and are
  renamed over it; the temporary is removed on any exit (errors, Ctrl-C, SIGTERM via
  :mod:`bnncompile.cli.interrupts`), and a library is replaced together with its sidecar or not
  at all (:func:`replace_together`);
* nothing is unpickled: arrays load with ``allow_pickle=False``;
* every error names the file and what was expected (:class:`~bnncompile.errors.InputFileError`).

This module imports only numpy and the standard library at import time (``onnx`` inside
:func:`load_onnx`), so the runtime can use it on a board with a light install.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import InputFileError, UsageError

#: temporaries alive right now; removed by :func:`remove_live_temporaries` on a signal
_LIVE: set[str] = set()


def first_line(exc: BaseException) -> str:
    """The informative first line of an exception's message (for one-line errors)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    summary = next((ln for ln in lines if re.match(r"^<class", ln)), lines[0] if lines else repr(exc))
    return summary[:300]


# -- writing -------------------------------------------------------------------------------------


def check_writable(path, *, flag: str | None = None) -> Path:
    """Fail before any work if ``path`` cannot be written (missing or read-only directory, a
    directory in the way). ``flag`` names the option in the message."""
    path = Path(path)
    what = f"{flag} {path}" if flag else str(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputFileError(f"cannot write {what}: directory {parent} does not exist")
    if path.is_dir():
        raise InputFileError(f"cannot write {what}: it is a directory")
    try:  # os.access says yes to root on a read-only mount; a real file says the truth
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
    except OSError as exc:
        raise InputFileError(f"cannot write {what}: {exc.strerror or exc}") from exc
    os.close(fd)
    os.unlink(probe)
    return path


@contextlib.contextmanager
def temporary_sibling(path, suffix: str = ".tmp") -> Iterator[Path]:
    """A hidden temporary file in ``path``'s directory, removed when the block exits unless it
    was renamed away (:func:`replace_together`)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent or ".")
    except OSError as exc:
        raise InputFileError(f"cannot write {path}: {exc.strerror or exc}") from exc
    os.close(fd)
    _LIVE.add(tmp)
    try:
        yield Path(tmp)
    finally:
        _LIVE.discard(tmp)
        Path(tmp).unlink(missing_ok=True)


def remove_live_temporaries() -> None:
    """Delete every temporary still open (called from signal handlers before exiting)."""
    for tmp in list(_LIVE):
        Path(tmp).unlink(missing_ok=True)
        _LIVE.discard(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_together(pairs: list[tuple[Path, Path]]) -> None:
    """Rename each ``(temporary, destination)``; if any rename fails, the destinations that were
    already replaced get their previous files back, so a library and its sidecar never mix."""
    backups: list[tuple[Path, Path | None]] = []
    current = pairs[0][1] if pairs else None
    try:
        for tmp, dst in pairs:
            current = dst
            # mkstemp makes 0600; a library is executable like any linker output
            os.chmod(tmp, (0o777 if dst.suffix == ".so" else 0o666) & ~_umask())
            old = None
            if dst.exists():
                old = dst.with_name(f".{dst.name}.previous")
                os.replace(dst, old)
            backups.append((dst, old))
            os.replace(tmp, dst)
    except OSError as exc:
        for dst, old in reversed(backups):
            if old is not None:
                os.replace(old, dst)
            else:
                dst.unlink(missing_ok=True)
        raise InputFileError(f"cannot write {current}: {exc.strerror or exc}") from exc
    for _, old in backups:
        if old is not None:
            old.unlink(missing_ok=True)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to a temporary next to ``path``, then rename it over ``path``."""
    path = Path(path)
    with temporary_sibling(path) as tmp:
        try:
            tmp.write_bytes(data)
        except OSError as exc:
            raise InputFileError(f"cannot write {path}: {exc.strerror or exc}") from exc
        replace_together([(tmp, path)])


def save_npy(path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- arrays and golden files ---------------------------------------------------------------------


def load_npz(path, *, what: str) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` (or one ``.npy`` as ``{"inputs": ...}``), never unpickling.
    ``what`` names the file's role in messages (``"--input"``, ``"golden file"``)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{what} {path}: no such file")
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):
            arrays = {"inputs": data}
        else:
            with data:
                arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        raise InputFileError(f"{what} {path} is not a readable .npz/.npy without pickles: "
                             f"{first_line(exc)}") from exc
    if not arrays:
        raise InputFileError(f"{what} {path} holds no arrays; expected an 'inputs' array")
    return arrays


def input_array(arrays: dict[str, np.ndarray], path, *, what: str) -> np.ndarray:
    """The ``inputs`` array of a loaded file, or its only array."""
    if "inputs" in arrays:
        return arrays["inputs"]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise InputFileError(f"{what} {path} has arrays {sorted(arrays)} and none named 'inputs'")


def golden_path_for(model_path) -> Path:
    p = Path(model_path)
    return p.with_name(p.stem + ".golden.npz")


def save_golden(path, inputs: np.ndarray, outputs: np.ndarray, **extra) -> None:
    """Golden file: an npz with ``inputs`` and ``outputs`` (never a pickle)."""
    buf = io.BytesIO()
    np.savez(buf, inputs=np.asarray(inputs, np.float32), outputs=np.asarray(outputs, np.float32), **extra)
    atomic_write_bytes(path, buf.getvalue())


def load_golden(path) -> dict[str, np.ndarray]:
    out = load_npz(path, what="golden file")
    missing = {"inputs", "outputs"} - set(out)
    if missing:
        raise InputFileError(f"golden file {path} lacks arrays {sorted(missing)}")
    return out


# -- ONNX models ---------------------------------------------------------------------------------

#: metadata_props key of an exported zoo model: how to rebuild the PyTorch model (bench times
#: PyTorch eager on identical weights)
ZOO_METADATA_KEY = "bnncompile.zoo"


def load_onnx(path, *, check: bool = True):
    """Load (and check) an ONNX file, external data included; one clear error for missing,
    truncated or non-ONNX files."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise InputFileError(f"{path} is not a readable ONNX model (truncated, wrong format or "
                             f"missing external data): {first_line(exc)}") from exc
    if not model.graph.node:
        raise InputFileError(f"{path} is not an ONNX model: it has no graph nodes")
    if check:
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as exc:
            raise InputFileError(f"{path} fails onnx.checker: {first_line(exc)}") from exc
    return model


# -- compiled libraries --------------------------------------------------------------------------

SIDECAR_FORMAT = "bnncompile-library"
SIDECAR_VERSION = 2


def sidecar_path_for(lib_path) -> Path:
    return Path(lib_path).with_suffix(".json")


def read_sidecar(lib_path) -> dict:
    """The sidecar of a library, checked to describe that library."""
    side = sidecar_path_for(lib_path)
    if Path(lib_path).suffix == ".onnx":
        raise InputFileError(f"{lib_path} is an ONNX model, not a compiled library; compile it "
                             f"first: bnncompile compile {lib_path} -o {Path(lib_path).with_suffix('.so')}")
    if not side.is_file():
        raise InputFileError(f"{lib_path}: sidecar {side.name} is missing; recompile with "
                             "`bnncompile compile` (it writes both files)")
    try:
        meta = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{side}: not a readable JSON sidecar ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT or "inputs" not in meta:
        raise InputFileError(f"{side}: not a bnncompile sidecar (no 'format: {SIDECAR_FORMAT}')")
    if meta.get("library") != Path(lib_path).name:
        raise InputFileError(f"{side} describes library {meta.get('library')!r}, not {Path(lib_path).name!r}")
    return meta


def check_library_integrity(path: Path, meta: dict) -> None:
    """Size and SHA-256 from the sidecar: dlopen of a truncated file kills the process (SIGBUS)."""
    size = meta.get("library_size")
    if size is not None and path.stat().st_size != size:
        raise InputFileError(f"{path} is {path.stat().st_size} bytes but its sidecar says {size}: "
                             "truncated or replaced; recompile it")
    digest = meta.get("library_sha256")
    if digest is not None and sha256_file(path) != digest:
        raise InputFileError(f"{path} does not match the SHA-256 in its sidecar: modified or "
                             "replaced; recompile it")


def check_library_matches_model(meta: dict, lib_path, onnx_path) -> None:
    """A library must have been compiled from this ONNX file (sidecar SHA-256)."""
    if meta.get("onnx_sha256") != sha256_file(onnx_path):
        raise UsageError(f"{lib_path} was compiled from a different ONNX file than {onnx_path} "
                         f"(its sidecar names {meta.get('onnx_file')!r} with another SHA-256); "
                         "recompile, or pass the matching model")
