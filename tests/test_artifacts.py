"""Files bnncompile reads and writes (bnncompile.artifacts): atomic writes, pairs replaced
together, no pickles, errors that name the file."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bnncompile import artifacts
from bnncompile.errors import InputFileError, UsageError


def _leftovers(d):
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def test_atomic_write_replaces_and_leaves_nothing(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    artifacts.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and _leftovers(tmp_path) == []


def test_temporary_is_removed_on_error(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), artifacts.temporary_sibling(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_live_temporaries_are_removed_on_demand(tmp_path):
    with artifacts.temporary_sibling(tmp_path / "x.so") as tmp:
        assert tmp.exists()
        artifacts.remove_live_temporaries()  # what a signal handler calls before exiting
        assert not tmp.exists()


def test_replace_together_restores_on_failure(tmp_path):
    lib, side = tmp_path / "m.so", tmp_path / "m.json"
    lib.write_bytes(b"good lib")
    side.write_text("good sidecar")
    new_lib = tmp_path / "new_lib"
    new_lib.write_bytes(b"new lib")
    missing = tmp_path / "vanished"  # the second rename fails
    with pytest.raises(InputFileError, match=r"m\.json"):
        artifacts.replace_together([(new_lib, lib), (missing, side)])
    assert lib.read_bytes() == b"good lib" and side.read_text() == "good sidecar"
    assert _leftovers(tmp_path) == []


def test_library_is_executable_and_data_is_not(tmp_path):
    artifacts.atomic_write_bytes(tmp_path / "m.so", b"x")
    artifacts.atomic_write_bytes(tmp_path / "m.json", b"{}")
    assert os.stat(tmp_path / "m.so").st_mode & 0o111
    assert not os.stat(tmp_path / "m.json").st_mode & 0o111


def test_check_writable(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        artifacts.check_writable(tmp_path / "nope" / "m.so", flag="--output")
    with pytest.raises(InputFileError, match="is a directory"):
        artifacts.check_writable(tmp_path)
    assert artifacts.check_writable(tmp_path / "m.so") == tmp_path / "m.so"


def test_npz_never_unpickles(tmp_path):
    bad = tmp_path / "obj.npy"
    np.save(bad, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputFileError, match="without pickles"):
        artifacts.load_npz(bad, what="--input")


def test_empty_npz_and_unnamed_arrays(tmp_path):
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    with pytest.raises(InputFileError, match="holds no arrays"):
        artifacts.load_npz(empty, what="--inputs")
    two = tmp_path / "two.npz"
    np.savez(two, a=np.zeros(2), b=np.ones(2))
    arrays = artifacts.load_npz(two, what="--inputs")
    with pytest.raises(InputFileError, match="none named 'inputs'"):
        artifacts.input_array(arrays, two, what="--inputs")
    one = tmp_path / "one.npz"
    np.savez(one, x=np.ones(3))
    assert artifacts.input_array(artifacts.load_npz(one, what="--inputs"), one, what="--inputs").shape == (3,)


def test_golden_roundtrip_and_missing_arrays(tmp_path):
    path = artifacts.golden_path_for(tmp_path / "m.onnx")
    assert path.name == "m.golden.npz"
    artifacts.save_golden(path, np.ones((2, 3)), np.zeros((2, 4)))
    g = artifacts.load_golden(path)
    assert g["inputs"].dtype == np.float32 and g["outputs"].shape == (2, 4)
    np.savez(path, inputs=np.ones(2))
    with pytest.raises(InputFileError, match="lacks arrays"):
        artifacts.load_golden(path)


def test_load_onnx_errors_name_the_file(tmp_path):
    with pytest.raises(InputFileError, match="no such file"):
        artifacts.load_onnx(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07not a model")
    with pytest.raises(InputFileError, match=r"junk\.onnx"):
        artifacts.load_onnx(junk)


def test_sidecar_checks(tmp_path):
    with pytest.raises(InputFileError, match="compile it first"):
        artifacts.read_sidecar(tmp_path / "m.onnx")
    lib = tmp_path / "m.so"
    lib.write_bytes(b"lib")
    with pytest.raises(InputFileError, match=r"sidecar m\.json is missing"):
        artifacts.read_sidecar(lib)
    side = artifacts.sidecar_path_for(lib)
    side.write_text(json.dumps({"format": artifacts.SIDECAR_FORMAT, "inputs": [], "library": "x.so"}))
    with pytest.raises(InputFileError, match=r"describes library 'x\.so'"):
        artifacts.read_sidecar(lib)
    meta = {"library_size": 3, "library_sha256": artifacts.sha256_file(lib)}
    artifacts.check_library_integrity(lib, meta)
    lib.write_bytes(b"li")
    with pytest.raises(InputFileError, match="truncated"):
        artifacts.check_library_integrity(lib, meta)


def test_library_must_match_its_model(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    meta = {"onnx_sha256": artifacts.sha256_file(model), "onnx_file": "m.onnx"}
    artifacts.check_library_matches_model(meta, tmp_path / "m.so", model)
    model.write_bytes(b"another model")
    with pytest.raises(UsageError, match="different ONNX file"):
        artifacts.check_library_matches_model(meta, tmp_path / "m.so", model)
