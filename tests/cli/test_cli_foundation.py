"""The zoo / export / inspect subcommands and their bad-input behaviour (one line, no traceback)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from bnncompile import zoo
from bnncompile.cli.main import main


def run(args):
    """Run ``main`` like the console script: returns (exit code, stdout, stderr)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code, out, err):
    assert code != 0
    assert "Traceback" not in out + err
    # progress lines may precede it; the error itself is exactly one line, and the last
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert [ln for ln in lines if ln.startswith("error: ")] == lines[-1:], err


def test_zoo_table_and_json():
    code, out, _ = run(["zoo"])
    assert code == 0 and "reactnet_a" in out and "dybnn_reactnet_18" in out
    code, out, _ = run(["zoo", "--json"])
    rows = json.loads(out)
    assert {r["name"] for r in rows} == set(zoo.list_models())
    r18 = next(r for r in rows if r["name"] == "reactnet_18")
    assert r18["input_size"] == 224 and r18["num_classes"] == 1000 and r18["params"] > 1e7


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    paths = {}
    for name in ("dybnn_reactnet_18", "reactnet_18"):
        p = tmp / f"{name}.onnx"
        code, out, err = run(["export", name, "-o", str(p), "--input-size", "32",
                              "--num-classes", "10", "--golden-images", "3"])
        assert code == 0, err
        assert f"wrote {p}" in out and "golden" in out
        assert "Traceback" not in err  # progress: a bar on a terminal, nothing in a pipe
        paths[name] = p
    return paths


def test_export_writes_model_and_golden(exported):
    from bnncompile.artifacts import golden_path_for, load_golden

    g = load_golden(golden_path_for(exported["reactnet_18"]))
    assert g["inputs"].shape == (3, 3, 32, 32) and g["outputs"].shape == (3, 10)


def test_inspect_json_and_compare(exported):
    code, out, _ = run(["inspect", str(exported["dybnn_reactnet_18"]), "--json",
                        "--compare-to", str(exported["reactnet_18"])])
    assert code == 0
    d = json.loads(out)
    assert d["totals"]["num_dynamic_sign"] == 16 and d["totals"]["bops"] > 0
    assert d["overhead"]["extra_bops"] == 0 and d["overhead"]["extra_params"] > 0
    code, out, _ = run(["inspect", str(exported["reactnet_18"])])
    assert code == 0 and "OPs" in out and "binary" in out


def test_bad_inputs(tmp_path, exported):
    assert_one_line_error(*run(["export", "no_such_model", "-o", str(tmp_path / "m.onnx")]))
    _code, _out, err = run(["export", "no_such_model", "-o", str(tmp_path / "m.onnx")])
    assert "reactnet_a" in err  # lists the known models
    assert_one_line_error(*run(["export", "reactnet_18", "-o", str(tmp_path / "nodir" / "m.onnx")]))
    ckpt = tmp_path / "bad.pth"
    ckpt.write_bytes(b"garbage")
    assert_one_line_error(*run(["export", "reactnet_18", "-o", str(tmp_path / "m.onnx"),
                                "--input-size", "32", "--checkpoint", str(ckpt)]))
    assert not (tmp_path / "m.onnx").exists()
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(exported["reactnet_18"].read_bytes()[:2000])
    assert_one_line_error(*run(["inspect", str(trunc)]))
    assert_one_line_error(*run(["inspect", str(tmp_path / "missing.onnx")]))
    text = tmp_path / "text.onnx"
    text.write_text("hello")
    assert_one_line_error(*run(["inspect", str(text)]))


@pytest.mark.skipif(shutil.which("bnncompile") is None and not
                    (sys.prefix and shutil.which("bnncompile", path=f"{sys.prefix}/bin")),
                    reason="console script not installed")
def test_console_script_bad_model():
    exe = shutil.which("bnncompile") or shutil.which("bnncompile", path=f"{sys.prefix}/bin")
    res = subprocess.run([exe, "export", "nope", "-o", "/tmp/x.onnx"], capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().startswith("error: unknown model 'nope'")
