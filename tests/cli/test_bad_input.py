"""Bad input, for every command, as a table: wrong files, wrong arrays, wrong flags, mismatched
artifacts.  Each case asserts the exit code, that nothing but one ``error:`` line reaches stderr
(no traceback, no TVM log line), that the message names the thing (file, node, flag, input) and
what was expected, and that no output or temporary file is left behind.

Cases run in-process (``main([...])``) against one shared tiny model compiled once; the
console-script speed check and the interruption tests (Ctrl-C / SIGTERM) run real processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper
from testkit.onnx_graphs import ds, make_model, pm1

from bnncompile.cli.main import main

# exit codes (bnncompile.errors.EXIT_CODES)
USAGE, FILE, MODEL, BUILD = 2, 3, 4, 5


@pytest.fixture(scope="module")
def w(tmp_path_factory, tiny_onnx):
    """Shared artifacts: the tiny model (+ golden) compiled for host, a second model and its
    library, and a gallery of broken files."""
    d = tmp_path_factory.mktemp("bad")
    shutil.copy(tiny_onnx, d / "tiny.onnx")
    shutil.copy(tiny_onnx.with_name("tiny.golden.npz"), d / "tiny.golden.npz")
    assert main(["compile", str(d / "tiny.onnx"), "-o", str(d / "tiny.so"), "-q"]) == 0
    rng = np.random.default_rng(0)
    other = make_model([ds("x", None, "s"), helper.make_node("Conv", ["s", "w"], ["y"], pads=[1] * 4)],
                       {"x": [1, 3, 8, 8]}, {"y": None}, {"w": pm1(rng, (4, 3, 3, 3))})
    onnx.save(other, d / "other.onnx")
    assert main(["compile", str(d / "other.onnx"), "-o", str(d / "other.so"), "-q", "--no-verify"]) == 0
    np.save(d / "x.npy", rng.standard_normal((3, 3, 8, 8)).astype(np.float32))
    np.save(d / "x_int.npy", np.ones((1, 3, 8, 8), np.int64))
    np.save(d / "x_shape.npy", np.ones((1, 3, 9, 9), np.float32))
    np.save(d / "x_obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(d / "empty.npz")
    np.savez(d / "wrong.npz", inputs=np.ones((2, 3, 5, 5), np.float32))
    (d / "text.onnx").write_text("not a model")
    (d / "trunc.onnx").write_bytes((d / "tiny.onnx").read_bytes()[:1500])
    (d / "notes.txt").write_text("hello")
    (d / "adir").mkdir()
    # the golden file of another model with the same input shape
    g = np.load(d / "tiny.golden.npz")
    np.savez(d / "foreign.golden.npz", inputs=g["inputs"], outputs=g["outputs"] + 5.0)
    shutil.copy(d / "tiny.onnx", d / "foreign.onnx")
    # sidecar damage: a copy of the library with a corrupted / foreign / missing sidecar
    for name in ("badside", "foreignside", "noside", "trunclib", "armlib"):
        shutil.copy(d / "tiny.so", d / f"{name}.so")
        shutil.copy(d / "tiny.json", d / f"{name}.json")
        meta = json.loads((d / f"{name}.json").read_text())
        meta["library"] = f"{name}.so"
        (d / f"{name}.json").write_text(json.dumps(meta))
    (d / "badside.json").write_text("{not json")
    json.dump({**json.loads((d / "foreignside.json").read_text()), "library": "tiny.so"},
              (d / "foreignside.json").open("w"))
    (d / "noside.json").unlink()
    (d / "trunclib.so").write_bytes((d / "tiny.so").read_bytes()[:4000])
    arm = json.loads((d / "armlib.json").read_text())
    arm["target"]["target"] = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
    arm["target_name"], arm["arch"] = "aarch64-neon", "aarch64"
    (d / "armlib.json").write_text(json.dumps(arm))
    # models the compiler must refuse, naming the node / input
    def save(name, nodes, inputs, inits=None, **kw):
        m = make_model(nodes, inputs, {"y": [1, 4]}, inits)  # explicit shape: no ORT run
        for k, v in kw.items():
            setattr(m, k, v)
        onnx.save(m, d / name)

    vi = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 4]) for n in ("x", "y")]
    foreign = helper.make_model(
        helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], domain="com.acme", name="frob")],
                          "g", vi[:1], vi[1:]),
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.acme", 1)])
    foreign.ir_version = 10
    onnx.save(foreign, d / "unknown_op.onnx")
    save("celu.onnx", [helper.make_node("Celu", ["x"], ["y"], name="celu_node")], {"x": [1, 4]})
    sym = make_model([ds("x", None, "y")], {"x": [1, 4]}, {"y": [1, 4]})
    sym.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "width"
    sym.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "width"
    onnx.save(sym, d / "symbolic.onnx")
    big = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": [1, 4]}, {"y": [1, 4]})
    for v in (big.graph.input[0], big.graph.output[0]):
        v.type.tensor_type.shape.dim[1].dim_value = 3_000_000_000
    onnx.save(big, d / "huge.onnx")
    ints = make_model([helper.make_node("Cast", ["x"], ["y"], to=onnx.TensorProto.FLOAT)], {"x": [1, 4]},
                      {"y": [1, 4]})
    ints.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT32
    onnx.save(ints, d / "int_input.onnx")
    (d / "notadb").mkdir()
    onnx.save(make_model([helper.make_node("Sign", ["x"], ["s"], name="user_sign"),
                          helper.make_node("Conv", ["s", "w"], ["y"], pads=[1] * 4, name="conv")],
                         {"x": [1, 3, 8, 8]}, {"y": None}, {"w": pm1(rng, (4, 3, 3, 3))}), d / "sign.onnx")
    # a deep stack of binary convs of distinct widths (one kernel each): a compile long enough
    # to interrupt in the middle
    nodes, inits, x = [], {}, "x"
    widths = [16 + 2 * i for i in range(41)]
    for i in range(40):
        inits[f"w{i}"] = pm1(rng, (widths[i + 1], widths[i], 3, 3))
        nodes += [ds(x, None, f"s{i}", name=f"sign{i}"),
                  helper.make_node("Conv", [f"s{i}", f"w{i}"], [f"c{i}"], pads=[1] * 4, name=f"conv{i}"),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}" if i < 39 else "y"], name=f"relu{i}")]
        x = f"r{i}"
    onnx.save(make_model(nodes, {"x": [1, 16, 16, 16]}, {"y": None}, inits), d / "deep.onnx")
    return d


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


# (id, argv with {d} for the work dir, exit code, fragments the message must contain)
CASES = [
    # -- usage ------------------------------------------------------------------------------
    ("no-command", ["frobnicate"], USAGE, ["No such command"]),
    ("unknown-option", ["zoo", "--colour"], USAGE, ["--colour"]),
    ("compile-no-args", ["compile"], USAGE, ["MODEL"]),
    ("bench-no-lib", ["bench", "{d}/tiny.onnx"], USAGE, ["--lib"]),
    # -- export -----------------------------------------------------------------------------
    ("export-unknown-model", ["export", "no_such_net", "-o", "{d}/o.onnx"], USAGE, ["no_such_net", "reactnet_a"]),
    ("export-missing-dir", ["export", "reactnet_18", "-o", "{d}/nodir/o.onnx"], FILE, ["--output", "does not exist"]),
    ("export-output-is-dir", ["export", "reactnet_18", "-o", "{d}/adir"], USAGE, ["adir"]),
    ("export-missing-checkpoint", ["export", "reactnet_18", "-o", "{d}/o.onnx", "--checkpoint", "{d}/nope.pt"],
     FILE, ["--checkpoint", "nope.pt", "no such file"]),
    ("export-garbage-checkpoint", ["export", "reactnet_18", "-o", "{d}/o.onnx", "--input-size", "32",
                                   "--checkpoint", "{d}/notes.txt"], FILE, ["notes.txt"]),
    ("export-huge-size", ["export", "reactnet_18", "-o", "{d}/o.onnx", "--input-size", "100000"], USAGE,
     ["--input-size", "1,024", "100000"]),
    ("export-zero-size", ["export", "reactnet_18", "-o", "{d}/o.onnx", "--input-size", "0"], USAGE, ["--input-size"]),
    ("export-zero-batch", ["export", "reactnet_18", "-o", "{d}/o.onnx", "--batch", "0"], USAGE, ["--batch"]),
    ("export-negative-golden", ["export", "reactnet_18", "-o", "{d}/o.onnx", "--golden-images", "-1"], USAGE,
     ["--golden-images"]),
    ("export-huge-classes", ["export", "reactnet_18", "-o", "{d}/o.onnx", "--num-classes", "10000000"], USAGE,
     ["--num-classes"]),
    # -- inspect ----------------------------------------------------------------------------
    ("inspect-missing", ["inspect", "{d}/missing.onnx"], FILE, ["missing.onnx", "no such file"]),
    ("inspect-text", ["inspect", "{d}/text.onnx"], FILE, ["text.onnx", "not a readable ONNX"]),
    ("inspect-truncated", ["inspect", "{d}/trunc.onnx"], FILE, ["trunc.onnx"]),
    ("inspect-zero-batch", ["inspect", "{d}/tiny.onnx", "--batch", "0"], USAGE, ["batch"]),
    ("inspect-compare-missing", ["inspect", "{d}/tiny.onnx", "--compare-to", "{d}/nope.onnx"], FILE, ["nope.onnx"]),
    # -- compile ----------------------------------------------------------------------------
    ("compile-missing", ["compile", "{d}/missing.onnx", "-o", "{d}/o.so"], FILE, ["missing.onnx", "no such file"]),
    ("compile-text", ["compile", "{d}/text.onnx", "-o", "{d}/o.so"], FILE, ["text.onnx"]),
    ("compile-truncated", ["compile", "{d}/trunc.onnx", "-o", "{d}/o.so"], FILE, ["trunc.onnx"]),
    ("compile-unknown-target", ["compile", "{d}/tiny.onnx", "-o", "{d}/o.so", "-t", "riscv-magic"], USAGE,
     ["riscv-magic", "x86-avx2"]),
    ("compile-bad-json-target", ["compile", "{d}/tiny.onnx", "-o", "{d}/o.so", "-t", "{{kind: llvm"], USAGE,
     ["--target", "invalid JSON"]),
    ("compile-unknown-kind", ["compile", "{d}/tiny.onnx", "-o", "{d}/o.so", "-t", '{{"kind": "frob"}}'], USAGE,
     ["--target", "frob"]),
    ("compile-unknown-mcpu", ["compile", "{d}/tiny.onnx", "-o", "{d}/o.so", "-t",
                              '{{"kind": "llvm", "mcpu": "znver9"}}'], USAGE, ["znver9", "did you mean"]),
    ("compile-zero-batch", ["compile", "{d}/tiny.onnx", "-o", "{d}/o.so", "--batch", "0"], USAGE, ["--batch"]),
    ("compile-missing-dir", ["compile", "{d}/tiny.onnx", "-o", "{d}/nodir/o.so"], FILE, ["does not exist"]),
    ("compile-output-is-dir", ["compile", "{d}/tiny.onnx", "-o", "{d}/adir"], USAGE, ["adir"]),
    ("compile-unknown-custom-op", ["compile", "{d}/unknown_op.onnx", "-o", "{d}/o.so"], MODEL,
     ["frob", "com.acme::Frobnicate", "unknown custom op"]),
    ("compile-unconvertible-op", ["compile", "{d}/celu.onnx", "-o", "{d}/o.so"], MODEL, ["celu_node", "Celu"]),
    ("compile-symbolic-dim", ["compile", "{d}/symbolic.onnx", "-o", "{d}/o.so"], MODEL,
     ["input 'x'", "symbolic dimension 1", "width"]),
    ("compile-huge-input", ["compile", "{d}/huge.onnx", "-o", "{d}/o.so"], MODEL, ["input 'x'", "3000000000"]),
    ("compile-int-input", ["compile", "{d}/int_input.onnx", "-o", "{d}/o.so"], MODEL,
     ["input 'x'", "int32", "float32"]),
    ("compile-missing-tuning-db", ["compile", "{d}/tiny.onnx", "-o", "{d}/o.so", "--tuning-db", "{d}/nodb"], FILE,
     ["--tuning-db", "does not exist"]),
    ("compile-not-a-tuning-db", ["compile", "{d}/tiny.onnx", "-o", "{d}/o.so", "--tuning-db", "{d}/notadb"], FILE,
     ["--tuning-db", "not a tuning database"]),
    ("compile-sign-zero-refuse", ["compile", "{d}/sign.onnx", "-o", "{d}/o.so", "--sign-zero", "refuse"], MODEL,
     ["user_sign", "Sign maps 0 to 0"]),
    ("compile-sign-zero-bad-choice", ["compile", "{d}/sign.onnx", "-o", "{d}/o.so", "--sign-zero", "zero"], USAGE,
     ["--sign-zero", "zero"]),
    # -- run --------------------------------------------------------------------------------
    ("run-missing-lib", ["run", "{d}/nope.so", "-i", "{d}/x.npy", "-o", "{d}/y.npy"], FILE, ["nope.so"]),
    ("run-onnx-not-lib", ["run", "{d}/tiny.onnx", "-i", "{d}/x.npy", "-o", "{d}/y.npy"], FILE,
     ["ONNX model", "compile it first"]),
    ("run-no-sidecar", ["run", "{d}/noside.so", "-i", "{d}/x.npy", "-o", "{d}/y.npy"], FILE,
     ["noside.json", "missing"]),
    ("run-bad-sidecar", ["run", "{d}/badside.so", "-i", "{d}/x.npy", "-o", "{d}/y.npy"], FILE,
     ["badside.json", "JSON"]),
    ("run-foreign-sidecar", ["run", "{d}/foreignside.so", "-i", "{d}/x.npy", "-o", "{d}/y.npy"], FILE,
     ["describes library 'tiny.so'"]),
    ("run-truncated-lib", ["run", "{d}/trunclib.so", "-i", "{d}/x.npy", "-o", "{d}/y.npy"], FILE,
     ["trunclib.so", "truncated"]),
    ("run-other-arch", ["run", "{d}/armlib.so", "-i", "{d}/x.npy", "-o", "{d}/y.npy"], USAGE,
     ["aarch64", "cannot run here"]),
    ("run-missing-input", ["run", "{d}/tiny.so", "-i", "{d}/nope.npy", "-o", "{d}/y.npy"], FILE,
     ["--input", "nope.npy", "no such file"]),
    ("run-pickled-input", ["run", "{d}/tiny.so", "-i", "{d}/x_obj.npy", "-o", "{d}/y.npy"], FILE,
     ["x_obj.npy", "without pickles"]),
    ("run-empty-npz", ["run", "{d}/tiny.so", "-i", "{d}/empty.npz", "-o", "{d}/y.npy"], FILE, ["holds no arrays"]),
    ("run-text-input", ["run", "{d}/tiny.so", "-i", "{d}/notes.txt", "-o", "{d}/y.npy"], FILE, ["notes.txt"]),
    ("run-wrong-shape", ["run", "{d}/tiny.so", "-i", "{d}/x_shape.npy", "-o", "{d}/y.npy"], USAGE,
     ["input 'input'", "[N, 3, 8, 8]", "[1, 3, 9, 9]"]),
    ("run-int-dtype", ["run", "{d}/tiny.so", "-i", "{d}/x_int.npy", "-o", "{d}/y.npy"], USAGE, ["int64", "float32"]),
    ("run-output-missing-dir", ["run", "{d}/tiny.so", "-i", "{d}/x.npy", "-o", "{d}/nodir/y.npy"], FILE,
     ["--output", "does not exist"]),
    # -- validate ---------------------------------------------------------------------------
    ("validate-missing-model", ["validate", "{d}/nope.onnx"], FILE, ["nope.onnx"]),
    ("validate-foreign-lib", ["validate", "{d}/tiny.onnx", "--lib", "{d}/other.so", "--images", "0"], USAGE,
     ["other.so", "different ONNX file"]),
    ("validate-wrong-inputs-shape", ["validate", "{d}/tiny.onnx", "--lib", "{d}/tiny.so", "--inputs",
                                     "{d}/wrong.npz", "--images", "0"], FILE, ["wrong.npz", "[N, 3, 8, 8]"]),
    ("validate-missing-inputs", ["validate", "{d}/tiny.onnx", "--inputs", "{d}/nope.npz"], FILE, ["nope.npz"]),
    ("validate-empty-inputs", ["validate", "{d}/tiny.onnx", "--inputs", "{d}/empty.npz"], FILE, ["holds no arrays"]),
    ("validate-foreign-golden", ["validate", "{d}/foreign.onnx", "--images", "0"], FILE, ["another model"]),
    ("validate-negative-images", ["validate", "{d}/tiny.onnx", "--images", "-2"], USAGE, ["--images", "-2"]),
    ("validate-nothing-to-check", ["validate", "{d}/other.onnx", "--images", "0"], USAGE, ["nothing to validate"]),
    ("validate-unknown-target", ["validate", "{d}/tiny.onnx", "-t", "nope"], USAGE, ["nope"]),
    # -- bench ------------------------------------------------------------------------------
    ("bench-foreign-lib", ["bench", "{d}/tiny.onnx", "--lib", "{d}/other.so", "--rounds", "1"], USAGE,
     ["different ONNX file"]),
    ("bench-plot-missing-dir", ["bench", "{d}/tiny.onnx", "--lib", "{d}/tiny.so", "--plot", "{d}/nodir/p.png"],
     FILE, ["--plot", "does not exist"]),
    ("bench-zero-threads", ["bench", "{d}/tiny.onnx", "--lib", "{d}/tiny.so", "--threads", "0"], USAGE, ["--threads"]),
    ("bench-bad-threads", ["bench", "{d}/tiny.onnx", "--lib", "{d}/tiny.so", "--threads", "a,b"], USAGE, ["--threads"]),
    # -- tune -------------------------------------------------------------------------------
    ("tune-zero-trials", ["tune", "{d}/tiny.onnx", "--db", "{d}/db", "--trials", "0"], USAGE, ["--trials"]),
    ("tune-tracker-without-key", ["tune", "{d}/tiny.onnx", "--db", "{d}/db", "--rpc-tracker", "h:1"], USAGE,
     ["--rpc-key"]),
    ("tune-bad-tracker", ["tune", "{d}/tiny.onnx", "--db", "{d}/db", "--rpc-tracker", "nohost", "--rpc-key", "k"],
     USAGE, ["HOST:PORT"]),
    ("tune-db-is-file", ["tune", "{d}/tiny.onnx", "--db", "{d}/notes.txt"], USAGE, ["notes.txt"]),
]


@pytest.mark.parametrize("argv,code,fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(w, argv, code, fragments, capsys):
    before = _files(w)
    args = [a.format(d=w) for a in argv]
    got = main(args)
    out, err = capsys.readouterr()
    assert got == code, (got, err)
    assert "Traceback" not in err + out and "BlockBuilder" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    if code == USAGE and lines and lines[0].startswith("Usage:"):  # click's own usage errors
        lines = [line for line in lines if line.startswith("Error:")]
    assert len(lines) == 1 and lines[0].lower().startswith("error"), err
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    assert _files(w) == before, sorted(_files(w) ^ before)  # nothing written, nothing left


def test_failed_cross_compile_leaves_a_good_library_alone(w, monkeypatch, capsys):
    """A cross build that cannot link fails naming every missing package, and the library and
    sidecar already at that path stay as they were."""
    from bnncompile import targets

    monkeypatch.setattr(targets, "_CROSS_CC", {"aarch64": "no-such-aarch64-gcc"})
    lib, side = w / "tiny.so", w / "tiny.json"
    before = (lib.read_bytes(), side.read_text())
    assert main(["compile", str(w / "tiny.onnx"), "-o", str(lib), "-t", "aarch64-neon", "-q"]) == BUILD
    err = capsys.readouterr().err
    assert "gcc-aarch64-linux-gnu" in err and "libc6-dev-arm64-cross" in err and "-o model.tar" in err
    assert (lib.read_bytes(), side.read_text()) == before


def test_sign_is_compiled_with_a_warning_naming_the_site(w, tmp_path, capsys):
    """ONNX Sign maps 0 to 0: compiled as 0 -> +1 with a warning; validate counts the zeros."""
    assert main(["compile", str(w / "sign.onnx"), "-o", str(tmp_path / "s.so"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "warning: node 'user_sign': Sign maps 0 to 0; compiled as 0 -> +1" in err
    x = np.ones((2, 3, 8, 8), np.float32)
    x[0, 0, :2] = 0.0  # 16 exact zeros reach the Sign
    np.savez(tmp_path / "x.npz", inputs=x)
    code = main(["validate", str(w / "sign.onnx"), "--lib", str(tmp_path / "s.so"), "--inputs",
                 str(tmp_path / "x.npz"), "--images", "0", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["sets"][0]["sign_zero_inputs"] == {"user_sign": 16}


def test_run_chunks_any_number_of_samples(w, capsys):
    """The golden file holds 2 samples, the library batch 1: run chunks like validate does."""
    assert main(["run", str(w / "tiny.so"), "-i", str(w / "x.npy"), "-o", str(w / "y.npy")]) == 0
    assert np.load(w / "y.npy").shape[0] == 3
    (w / "y.npy").unlink()
    capsys.readouterr()


def _console(*args, **kw):
    exe = shutil.which("bnncompile", path=f"{sys.prefix}/bin") or shutil.which("bnncompile")
    return subprocess.run([exe, *args], capture_output=True, text=True, **kw)


def test_argument_errors_are_fast(w):
    """File and flag errors come back before torch or TVM is imported (under a second of the
    command's own work; measured with a generous bound for a loaded CI machine)."""
    t0 = time.perf_counter()
    res = _console("compile", str(w / "missing.onnx"), "-o", str(w / "o.so"))
    assert res.returncode == FILE and "no such file" in res.stderr
    res2 = _console("export", "reactnet_18", "-o", str(w / "o.onnx"), "--input-size", "100000")
    assert res2.returncode == USAGE
    assert time.perf_counter() - t0 < 8.0


def _interrupt(argv, sig, cwd, *, after: float):
    proc = subprocess.Popen([shutil.which("bnncompile", path=f"{sys.prefix}/bin"), *argv], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    sent = time.perf_counter()
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=60)
    return proc.returncode, err, time.perf_counter() - sent


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_interrupted_compile_leaves_the_previous_library(w, tmp_path, sig, code):
    """Ctrl-C / SIGTERM in the middle of a compile: prompt exit with 130 / 143 and one line, no
    temporary left, and the library that was at the output path is untouched."""
    shutil.copy(w / "deep.onnx", tmp_path / "m.onnx")
    shutil.copy(w / "tiny.so", tmp_path / "m.so")
    meta = json.loads((w / "tiny.json").read_text())
    meta["library"] = "m.so"
    (tmp_path / "m.json").write_text(json.dumps(meta))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    got, err, seconds = _interrupt(["compile", "m.onnx", "-o", "m.so", "-q"], sig, tmp_path, after=3.0)
    assert got == code, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: ")
    assert seconds < 10, seconds
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_interrupted_export_writes_nothing(tmp_path):
    got, err, _ = _interrupt(["export", "reactnet_18", "--input-size", "32", "-o", "m.onnx"],
                             signal.SIGINT, tmp_path, after=4.0)
    assert got == 130 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.environ.get("CI_FAST") == "1", reason="CI_FAST")
def test_interrupted_tune_keeps_its_records(w, tmp_path):
    """SIGTERM during tuning: exit 143; the database keeps every complete record and a rerun
    resumes (reads it without error).  64 trials: the tuning must still be running at 25 s (with
    6 it once finished first on a quiet machine and exited 0)."""
    from bnncompile.schedules import tuning

    got, err, _ = _interrupt(["tune", str(w / "tiny.onnx"), "--db", "db", "--trials", "64", "-q"],
                             signal.SIGTERM, tmp_path, after=25.0)
    assert got == 143 and "records" in err
    if (tmp_path / "db" / "database_workload.json").is_file():
        tuning.open_database(tmp_path / "db")  # readable: no torn last line
