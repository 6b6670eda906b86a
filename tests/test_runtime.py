"""``bnncompile.load``: the sidecar and the machine are checked before anything runs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from onnx import helper
from testkit.onnx_graphs import ds, make_model, pm1

import bnncompile
from bnncompile.errors import InputFileError, UsageError


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    rng = np.random.default_rng(1)
    d = tmp_path_factory.mktemp("lib")
    nodes = [ds("input", "t", "s"), helper.make_node("Conv", ["s", "w"], ["logits"], name="bconv")]
    model = make_model(nodes, {"input": ["batch", 4, 5, 5]}, {"logits": ["batch", 3, 3, 3]},
                       {"t": np.float32(0), "w": pm1(rng, (3, 4, 3, 3))})
    (d / "m.onnx").write_bytes(model.SerializeToString())
    res = bnncompile.compile_model(d / "m.onnx", output=d / "m.so", batch=2)
    return res


def _copy(res, tmp_path, name="m"):
    so, js = tmp_path / f"{name}.so", tmp_path / f"{name}.json"
    shutil.copy(res.library, so)
    shutil.copy(res.sidecar, js)
    return so, js


def test_sidecar_contents(lib):
    meta = json.loads(lib.sidecar.read_text())
    assert meta["format"] == "bnncompile-library" and meta["library"] == "m.so"
    assert meta["inputs"] == [{"name": "input", "shape": [2, 4, 5, 5], "dtype": "float32"}]
    assert meta["outputs"][0]["shape"] == [2, 3, 3, 3] and meta["binary_layers"] == 1
    assert meta["target_name"] == "host" and meta["options"]["batch"] == 2


def test_runs(lib):
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 5)).astype(np.float32)
    y = bnncompile.load(lib.library)(x)
    assert y.shape == (2, 3, 3, 3) and np.all(y == np.rint(y))  # integer accumulators


def test_missing_library(tmp_path):
    with pytest.raises(InputFileError, match="no such library"):
        bnncompile.load(tmp_path / "nope.so")


def test_missing_sidecar(lib, tmp_path):
    so, js = _copy(lib, tmp_path)
    js.unlink()
    with pytest.raises(InputFileError, match=r"sidecar m\.json is missing"):
        bnncompile.load(so)


def test_sidecar_for_another_library(lib, tmp_path):
    so, _js = _copy(lib, tmp_path, "other")  # sidecar still says library "m.so"
    with pytest.raises(InputFileError, match=r"describes library 'm\.so', not 'other\.so'"):
        bnncompile.load(so)


@pytest.mark.parametrize("text", ["{not json", "", "[1, 2]", '{"format": "something-else"}'])
def test_corrupted_sidecar(lib, tmp_path, text):
    so, js = _copy(lib, tmp_path)
    js.write_text(text)
    with pytest.raises(InputFileError, match=r"m\.json"):
        bnncompile.load(so)


def test_truncated_library_is_an_error_not_a_crash(lib, tmp_path):
    # Run in a subprocess: without the sidecar's size/SHA-256 check, dlopen of a truncated .so
    # kills the process with SIGBUS.
    import subprocess
    import sys

    so, _js = _copy(lib, tmp_path)
    data = so.read_bytes()
    so.write_bytes(data[: len(data) // 2])
    code = ("import bnncompile, sys\n"
            "from bnncompile.errors import InputFileError\n"
            "try:\n    bnncompile.load(sys.argv[1])\n"
            "except InputFileError as e:\n    print('ERR', e); sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(so)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 3 and "ERR" in proc.stdout, (proc.returncode, proc.stderr[-500:])


def test_wrong_input_shape_names_input_and_shape(lib):
    runner = bnncompile.load(lib.library)
    with pytest.raises(UsageError, match=r"input 'input': expected shape \[2, 4, 5, 5\], got \[2, 4, 6, 5\]"):
        runner(np.zeros((2, 4, 6, 5), np.float32))
    with pytest.raises(UsageError, match=r"batch size is fixed at compile time"):
        runner(np.zeros((1, 4, 5, 5), np.float32))


def test_wrong_dtype(lib):
    runner = bnncompile.load(lib.library)
    with pytest.raises(UsageError, match=r"input 'input': expected float32, got complex64"):
        runner(np.zeros((2, 4, 5, 5), np.complex64))
    # integers are refused (unnormalised data, almost always), other float widths converted
    with pytest.raises(UsageError, match=r"input 'input': expected float32, got int64 \(convert it"):
        runner(np.ones((2, 4, 5, 5), np.int64))
    y64 = runner(np.ones((2, 4, 5, 5), np.float64))
    assert np.array_equal(y64, runner(np.ones((2, 4, 5, 5), np.float32)))


def test_missing_and_unknown_inputs(lib):
    runner = bnncompile.load(lib.library)
    with pytest.raises(UsageError, match=r"missing input\(s\) \['input'\]"):
        runner.run({"x": np.zeros((2, 4, 5, 5), np.float32)})


def test_library_for_aarch64_refused(lib, tmp_path):
    so, js = _copy(lib, tmp_path)
    meta = json.loads(js.read_text())
    meta.update(target_name="aarch64-neon", arch="aarch64",
                target={"target": {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}, "host": None})
    js.write_text(json.dumps(meta))
    with pytest.raises(UsageError, match=r"built for target aarch64-neon and cannot run here: "
                                         r"library is for aarch64"):
        bnncompile.load(so)


def test_runtime_imports_without_torch_onnx_or_the_compiler(tmp_path):
    """A board has TVM and numpy at most: ``bnncompile.runtime`` (and ``bnncompile run``'s
    imports) must not need torch, onnx, onnxruntime or the compiler."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'onnx', 'onnxruntime', 'onnxscript', 'onnx_ir'):\n"
        "            raise ImportError(f'blocked: {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import bnncompile.runtime, bnncompile.cli.run_cmd\n"
        "from bnncompile.runtime import load\n"
        "bad = [m for m in ('bnncompile.compiler', 'bnncompile.frontend', 'bnncompile.exporter') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('light')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0 and "light" in res.stdout, res.stderr


def test_project_folders_are_not_top_level_modules(tmp_path):
    """custom_ops/ and schedules/ are installed as bnncompile.custom_ops / bnncompile.schedules
    only: no generic top-level import names leak into a user's environment."""
    import subprocess
    import sys

    code = ("import importlib.util as u\n"
            "assert u.find_spec('schedules') is None and u.find_spec('custom_ops') is None\n"
            "import bnncompile.schedules.packing, bnncompile.custom_ops.dynamic_sign\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
