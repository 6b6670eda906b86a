"""CLI: compile / run / validate / bench happy paths and bad inputs.

Errors must be one line on stderr (``error: ...``), a non-zero exit code from
:mod:`bnncompile.errors`, no traceback, and no half-written output files. Most tests call
``bnncompile.cli.main.main([...])`` in-process; one runs the real console script.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from torch import nn

from bnncompile import nn as bnn
from bnncompile.cli.main import main

logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


class Tiny(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.b = bnn.BinaryConv2d(c, c, 3, padding=1, binarizer=bnn.DySign(c, reduction=2))
        self.act = bnn.RPReLU(c)
        self.fc = nn.Linear(c, 4)

    def forward(self, x):
        x = self.bn(self.stem(x))
        x = self.act(self.b(x)) + x
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """An exported tiny model (+ golden) and a library compiled for host through the CLI."""
    from bnncompile.exporter import export

    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    export(Tiny().eval(), x, d / "tiny.onnx")
    np.save(d / "x.npy", x[:1].numpy())
    assert main(["compile", str(d / "tiny.onnx"), "-o", str(d / "tiny.so"), "-q"]) == 0
    return d


def _err_one_line(capsys, code, expected_code, *fragments):
    out, err = capsys.readouterr()
    assert code == expected_code, (code, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    return lines[0]


# -- happy paths ---------------------------------------------------------------------------------

def test_compile_writes_library_and_sidecar(work, capsys):
    files = sorted(p.name for p in work.iterdir())
    assert {"tiny.so", "tiny.json", "tiny.onnx", "tiny.golden.npz"} <= set(files)
    assert not [f for f in files if f.startswith(".")], files  # no temp files left
    meta = json.loads((work / "tiny.json").read_text())
    assert meta["binary_layers"] == 1


def test_run(work, capsys, tmp_path):
    out = tmp_path / "y.npy"
    assert main(["run", str(work / "tiny.so"), "-i", str(work / "x.npy"), "-o", str(out)]) == 0
    y = np.load(out)
    assert y.shape == (1, 4)
    assert "wrote" in capsys.readouterr().out


def test_validate_text_and_json(work, capsys):
    assert main(["validate", str(work / "tiny.onnx"), "--lib", str(work / "tiny.so"), "-q",
                 "--images", "2"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "[golden]" in out and "[photos]" in out
    assert main(["validate", str(work / "tiny.onnx"), "--lib", str(work / "tiny.so"), "-q",
                 "--images", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["sets"][0]["flips"] == 0


def test_bench_json_and_plot(work, capsys, tmp_path):
    png = tmp_path / "bench.png"
    args = ["bench", str(work / "tiny.onnx"), "--lib", str(work / "tiny.so"), "--rounds", "1",
            "--number", "1", "--threads", "1"]
    assert main(args) == 0
    assert "bnncompile" in capsys.readouterr().out
    assert main([*args, "--json", "--plot", str(png)]) == 0
    report = json.loads(capsys.readouterr().out)
    engines = {t["engine"] for t in report["timings"]}
    assert {"bnncompile", "onnxruntime-fp32"} <= engines  # never assert on timings
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_console_script_subprocess(work, tmp_path):
    exe = Path(sys.executable).with_name("bnncompile")
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not an onnx model\n")
    proc = subprocess.run([str(exe), "compile", str(bad), "-o", str(tmp_path / "m.so"), "-q"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.onnx"]
    proc = subprocess.run([str(exe), "run", str(work / "tiny.so"), "-i", str(work / "x.npy"),
                           "-o", str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "y.npy").shape == (1, 4)


# -- bad inputs ------------------------------------------------------------------------------------

def _compile(src, out, *extra):
    return main(["compile", str(src), "-o", str(out), "-q", *extra])


def test_text_file_is_not_onnx(tmp_path, capsys):
    bad = tmp_path / "m.onnx"
    bad.write_text("hello\n")
    code = _compile(bad, tmp_path / "m.so")
    _err_one_line(capsys, code, 3, "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_truncated_onnx(work, tmp_path, capsys):
    data = (work / "tiny.onnx").read_bytes()
    (tmp_path / "t.onnx").write_bytes(data[: len(data) // 2])
    code = _compile(tmp_path / "t.onnx", tmp_path / "t.so")
    _err_one_line(capsys, code, 3, "t.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.onnx"]


def test_missing_model(tmp_path, capsys):
    _err_one_line(capsys, _compile(tmp_path / "nope.onnx", tmp_path / "m.so"), 3, "nope.onnx")


def test_unknown_target_lists_known(work, tmp_path, capsys):
    code = _compile(work / "tiny.onnx", tmp_path / "m.so", "--target", "riscv-v")
    line = _err_one_line(capsys, code, 2, "riscv-v")
    for name in ("host", "x86-avx2", "x86-avx512", "aarch64-neon", "cuda-sm80", "cuda-sm90"):
        assert name in line
    assert list(tmp_path.iterdir()) == []


def test_invalid_target_json(work, tmp_path, capsys):
    code = _compile(work / "tiny.onnx", tmp_path / "m.so", "--target", '{"kind": "llvm",')
    _err_one_line(capsys, code, 2, "invalid JSON")
    assert list(tmp_path.iterdir()) == []


def test_bad_batch(work, tmp_path, capsys):
    _err_one_line(capsys, _compile(work / "tiny.onnx", tmp_path / "m.so", "--batch", "0"), 2, "--batch")


def test_run_missing_sidecar(work, tmp_path, capsys):
    (tmp_path / "tiny.so").write_bytes((work / "tiny.so").read_bytes())
    code = main(["run", str(tmp_path / "tiny.so"), "-i", str(work / "x.npy"), "-o", str(tmp_path / "y.npy")])
    _err_one_line(capsys, code, 3, "sidecar", "missing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.so"]


def test_validate_mismatched_sidecar(work, tmp_path, capsys):
    # a library compiled from another ONNX file than the one validated
    other = tmp_path / "other.onnx"
    m = onnx.load(str(work / "tiny.onnx"))
    m.doc_string = "changed"
    other.write_bytes(m.SerializeToString())
    code = main(["validate", str(other), "--lib", str(work / "tiny.so"), "-q", "--images", "0"])
    _err_one_line(capsys, code, 2, "different ONNX file")


def test_run_aarch64_library(work, tmp_path, capsys):
    assert _compile(work / "tiny.onnx", tmp_path / "arm.so", "--target", "aarch64-neon") == 0
    capsys.readouterr()
    lib = next(p for p in tmp_path.iterdir() if p.suffix in (".tar", ".so"))
    code = main(["run", str(lib), "-i", str(work / "x.npy"), "-o", str(tmp_path / "y.npy")])
    _err_one_line(capsys, code, 2, "aarch64", "cannot run here")
    assert not (tmp_path / "y.npy").exists()


def _graph_file(path, node, extra_opsets=()):
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", 1, [1, 2, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), *extra_opsets])
    model.ir_version = 10
    path.write_bytes(model.SerializeToString())


def test_op_tvm_cannot_convert_names_node(tmp_path, capsys):
    _graph_file(tmp_path / "celu.onnx", helper.make_node("Celu", ["x"], ["y"], name="my_celu"))
    code = _compile(tmp_path / "celu.onnx", tmp_path / "m.so")
    _err_one_line(capsys, code, 4, "my_celu", "Celu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["celu.onnx"]


def test_unknown_custom_op_names_node(tmp_path, capsys):
    _graph_file(tmp_path / "odd.onnx",
                helper.make_node("Frobnicate", ["x"], ["y"], name="frob1", domain="com.example"),
                [helper.make_opsetid("com.example", 1)])
    code = _compile(tmp_path / "odd.onnx", tmp_path / "m.so")
    _err_one_line(capsys, code, 4, "frob1", "com.example::Frobnicate")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.onnx"]


def test_run_wrong_input_shape(work, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.zeros((1, 3, 9, 8), np.float32))
    code = main(["run", str(work / "tiny.so"), "-i", str(tmp_path / "bad.npy"), "-o", str(tmp_path / "y.npy")])
    _err_one_line(capsys, code, 2, "'input'", "[N, 3, 8, 8]", "[1, 3, 9, 8]")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npy"]


def test_run_input_not_numpy(work, tmp_path, capsys):
    (tmp_path / "x.npy").write_text("nope")
    code = main(["run", str(work / "tiny.so"), "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")])
    _err_one_line(capsys, code, 3, "x.npy")


def test_compile_into_missing_directory(work, tmp_path, capsys):
    code = _compile(work / "tiny.onnx", tmp_path / "nodir" / "m.so")
    _err_one_line(capsys, code, 3, "does not exist")
    assert list(tmp_path.iterdir()) == []


def _unwritable_dir(tmp_path) -> Path:
    import os

    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o500)
        return d
    if os.access("/sys", os.W_OK) and Path("/sys").is_dir():
        return Path("/sys")  # root: permissions do not stop us, a read-only sysfs does
    pytest.skip("no unwritable directory available")


def test_compile_into_unwritable_directory(work, tmp_path, capsys):
    d = _unwritable_dir(tmp_path)
    before = sorted(p.name for p in d.iterdir())
    code = _compile(work / "tiny.onnx", d / "m.so")
    _err_one_line(capsys, code, 3, "m.so")
    assert sorted(p.name for p in d.iterdir()) == before


def test_run_output_into_unwritable_directory(work, tmp_path, capsys):
    d = _unwritable_dir(tmp_path)
    before = sorted(p.name for p in d.iterdir())
    code = main(["run", str(work / "tiny.so"), "-i", str(work / "x.npy"), "-o", str(d / "y.npy")])
    _err_one_line(capsys, code, 3, "y.npy")
    assert sorted(p.name for p in d.iterdir()) == before


def test_roofline_clock_is_measured():
    """The popcount ceiling uses the clock a busy core runs at, not /proc/cpuinfo's figure (a VM's
    nominal clock; the development VM reports 2.3 GHz and turbos to ~3.8)."""
    from bnncompile import bench

    ghz, how = bench.cpu_ghz()
    assert "measured" in how and 0.3 < ghz < 8.0


def test_popcount_loop_rate_is_measured_and_plausible():
    """Without VPOPCNTDQ the ceiling is the measured xor-popcount loop: at least ~10 binary MACs
    per cycle (a scalar popcnt loop does 64 bits per cycle or so; any vector build more) and
    below 512 per cycle (no CPU here pops more than one 512-bit vector per cycle)."""
    from bnncompile import bench
    from bnncompile.bench.machine import popcount_loop_gbmacs

    ghz, _ = bench.cpu_ghz()
    rate = popcount_loop_gbmacs()
    assert 10 * ghz < rate < 512 * ghz, (rate, ghz)


def test_fma_loop_rate_is_measured_and_plausible():
    """The float convs' roofline: the measured broadcast-FMA loop does at least 2 and at most 64
    FP32 multiply-adds per cycle (two 512-bit FMA pipes), and the ceiling says it was measured."""
    from bnncompile import bench
    from bnncompile.bench.machine import fma_loop_gmacs

    ghz, _ = bench.cpu_ghz()
    rate = fma_loop_gmacs()
    assert 2 * ghz < rate < 64 * ghz, (rate, ghz)
    assert "measured" in bench.float_ceiling_gmacs()[1]


def test_int16_loop_rate_is_measured_and_plausible():
    """The quantized convs' roofline: the vpmaddwd + vpaddd loop does at least 4 and at most 64
    int16 multiply-adds per cycle (1 to 2 vpmaddwd of 16 MACs per cycle, on AVX2 or AVX-512 cores)."""
    from bnncompile import bench
    from bnncompile.bench.machine import pmaddwd_loop_gmacs

    ghz, _ = bench.cpu_ghz()
    rate = pmaddwd_loop_gmacs()
    assert 4 * ghz < rate < 64 * ghz, (rate, ghz)
    assert "measured" in bench.int16_ceiling_gmacs()[1]


def test_per_kernel_table_rates_each_kind_against_its_own_ceiling():
    """float convs against the FP32 FMA ceiling, AMX convs (where the CPU has AMX-INT8) against
    AMX's: the same 500 G MAC/s reads as over 100 % of one and a fraction of the other."""
    from bnncompile import bench
    from bnncompile.bench.profile import LayerTiming, format_layers
    from bnncompile.targets import cpu_flags

    rows = [LayerTiming("f", "fconv2d", ["a"], 1, 1.0, 0.5, None, 500.0),
            LayerTiming("q", "qconv2d_amx", ["b"], 1, 1.0, 0.5, None, 500.0)]
    text = format_layers(rows)
    pct = {line.split()[-2]: int(line.split()[4].rstrip("%")) for line in text.splitlines()
           if line.strip().endswith(("(a)", "(b)"))}
    fma = bench.float_ceiling_gmacs()[0]
    assert pct["f"] == round(100 * 500 / fma)
    if "amx_int8" in cpu_flags():
        assert "against the AMX ceiling" in text
        assert pct["q"] == round(100 * 500 / bench.amx_ceiling_gmacs()[0]) < 30
    else:
        assert "AMX ceiling" not in text and pct["q"] == pct["f"]


def test_bench_bad_threads(work, capsys):
    code = main(["bench", str(work / "tiny.onnx"), "--lib", str(work / "tiny.so"), "--threads", "0"])
    _err_one_line(capsys, code, 2, "--threads")


def test_exact_math_flag_is_recorded(work, tmp_path):
    """--exact-math keeps libm exp/erf/tanh; the sidecar records the choice."""
    import json

    out = tmp_path / "exact.so"
    assert main(["compile", str(work / "tiny.onnx"), "-o", str(out), "--exact-math", "-q"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["options"]["fast_math"] is False


def test_conv_precision_compile_validate_bench(work, tmp_path, capsys):
    """--conv-precision int16: the stem is quantized (sidecar), compile's verify and validate
    judge the build against the quantized graph and report its effect against fp32."""
    out = tmp_path / "q.so"
    assert main(["compile", str(work / "tiny.onnx"), "-o", str(out), "--conv-precision", "int16", "-q"]) == 0
    assert "1 float conv(s) quantized to int16" in capsys.readouterr().err
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["options"]["conv_precision"] == "int16" and len(meta["quantized_convs"]) == 1
    assert meta["verify"]["ok"] is True
    assert main(["validate", str(work / "tiny.onnx"), "--lib", str(out), "-q", "--images", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    effect = report["sets"][0]["precision_effect"]
    assert effect["precision"] == "int16 float convs" and 0 < effect["max_abs_vs_fp32_ort"] < 0.05
    assert main(["bench", str(work / "tiny.onnx"), "--lib", str(out), "--rounds", "1", "--number", "1",
                 "--threads", "1", "--json"]) == 0
    ours = [t for t in json.loads(capsys.readouterr().out)["timings"] if t["engine"] == "bnncompile"]
    assert ours[0]["precision"] == "conv:int16"


class TinyAttention(nn.Module):
    """stem -> 16 tokens -> binary q, k, v -> softmax(q k^T / 4) v -> binary linear -> mean."""

    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, stride=2, padding=1)
        self.q, self.k, self.v, self.out = (bnn.BinaryLinear(c, c, binarizer=bnn.DySign(c, reduction=2))
                                            for _ in range(4))

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)
        a = torch.softmax(self.q(t) @ self.k(t).transpose(1, 2) / 4, dim=-1)
        return self.out(a @ self.v(t)).mean(1)


def test_attention_precision_compile_validate_bench(tmp_path, capsys):
    """--attention-precision int8: the Softmax x values product runs on int8 (sidecar), compile's
    verify and validate judge the build against the quantized graph and report its effect."""
    from bnncompile.exporter import export

    torch.manual_seed(0)
    export(TinyAttention().eval(), torch.randn(2, 3, 8, 8), tmp_path / "att.onnx")
    out = tmp_path / "att.so"
    assert main(["compile", str(tmp_path / "att.onnx"), "-o", str(out), "--attention-precision", "int8",
                 "-q"]) == 0
    assert "1 attention product(s) (Softmax x values) on int8" in capsys.readouterr().err
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["options"]["attention_precision"] == "int8" and len(meta["quantized_matmuls"]) == 1
    assert meta["verify"]["ok"] is True
    assert main(["validate", str(tmp_path / "att.onnx"), "--lib", str(out), "-q", "--images", "2",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    effect = report["sets"][0]["precision_effect"]
    assert report["ok"] is True and effect["precision"] == "int8 attention products"
    assert 0 < effect["max_abs_vs_fp32_ort"] < 0.1
    assert main(["bench", str(tmp_path / "att.onnx"), "--lib", str(out), "--rounds", "1", "--number", "1",
                 "--threads", "1", "--no-layers", "--json"]) == 0
    ours = [t for t in json.loads(capsys.readouterr().out)["timings"] if t["engine"] == "bnncompile"]
    assert ours[0]["precision"] == "attn:int8"


@pytest.mark.parametrize("flag,choices", [("--conv-precision", "'fp32', 'int16', 'int8'"),
                                          ("--attention-precision", "'fp32', 'int8'")])
def test_precision_unknown_choice(work, tmp_path, capsys, flag, choices):
    code = main(["compile", str(work / "tiny.onnx"), "-o", str(tmp_path / "x.so"), flag, "int4"])
    err = capsys.readouterr().err
    assert code == 2 and f"'{flag}': 'int4' is not one of {choices}" in err
    assert "Traceback" not in err and not list(tmp_path.iterdir())


@pytest.mark.parametrize("extra,fragment", [
    (["--conv-precision", "int8", "--float-only"], "--float-only"),
    (["--conv-precision", "int8", "--target", "cuda-sm80"], "CPU kernels"),
    (["--attention-precision", "int8", "--float-only"], "--float-only"),
    (["--attention-precision", "int8", "--target", "cuda-sm80"], "CPU kernels"),
])
def test_conv_precision_bad_combinations(work, tmp_path, capsys, extra, fragment):
    out = tmp_path / "bad.so"
    code = main(["compile", str(work / "tiny.onnx"), "-o", str(out), "-q", *extra])
    _err_one_line(capsys, code, 2, fragment)
    assert not list(tmp_path.iterdir())


def test_all_float_model_compiles_and_verifies(tmp_path, capsys):
    """A model without any DynamicSign compiles (all float, said so) with the default self-check:
    its debug entry once shared the main function's variables and TVM refused the module."""
    w = np.random.default_rng(0).standard_normal((4, 3, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[1, 1]),
         helper.make_node("Relu", ["c"], ["y"], name="relu")], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 5, 5])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 5, 5])],
        [onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, str(tmp_path / "float.onnx"))
    out = tmp_path / "float.so"
    assert main(["compile", str(tmp_path / "float.onnx"), "-o", str(out), "-q"]) == 0
    assert "no layer of this model is binary" in capsys.readouterr().err
    assert json.loads(out.with_suffix(".json").read_text())["verify"]["ok"] is True
