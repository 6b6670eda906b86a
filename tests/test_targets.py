"""Every registry target builds for a tiny binary model; runnable ones run and match ORT.

Building never needs the hardware; running does (AVX-512 VPOPCNTDQ, aarch64, a CUDA GPU), so
those runs are skipped with a reason while the builds always happen.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from onnx import helper
from testkit.onnx_graphs import ds, make_model, ort_run, pm1

import bnncompile
from bnncompile import targets
from bnncompile.errors import UsageError

HAS_VPOPCNTDQ = "avx512_vpopcntdq" in targets.cpu_flags()


def _tiny(path, seed=0):
    """x → DynamicSign(t) → Conv(±1, pad 1) → Mul(scale) → Relu: one binary layer, C = 65."""
    rng = np.random.default_rng(seed)
    c, k = 65, 8
    nodes = [ds("x", "t", "s", name="sign"),
             helper.make_node("Conv", ["s", "w"], ["y"], name="bconv", pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["y", "a"], ["z"], name="scale"),
             helper.make_node("Relu", ["z"], ["logits"], name="relu")]
    inits = {"t": (rng.standard_normal((1, c, 1, 1)) * 0.1).astype(np.float32),
             "w": pm1(rng, (k, c, 3, 3)), "a": rng.random((1, k, 1, 1)).astype(np.float32)}
    model = make_model(nodes, {"x": [1, c, 6, 6]}, {"logits": [1, k, 6, 6]}, inits)
    path.write_bytes(model.SerializeToString())
    return model, rng.standard_normal((1, c, 6, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    model, x = _tiny(d / "tiny.onnx")
    return d / "tiny.onnx", model, x


@pytest.mark.parametrize("target", ["host", "x86-avx2", "x86-avx512"])
def test_x86_targets_build_and_run(tmp_path, tiny, target):
    path, model, x = tiny
    res = bnncompile.compile_model(path, output=tmp_path / "m.so", target=target)
    assert res.library.is_file() and res.sidecar.is_file() and res.num_binary_layers == 1
    if target == "x86-avx512" and not HAS_VPOPCNTDQ:
        assert not res.runnable_here
        with pytest.raises(UsageError, match="avx512"):
            bnncompile.load(res.library)
        pytest.skip("built; this CPU lacks avx512_vpopcntdq, so not run")
    y = bnncompile.load(res.library)(x)
    np.testing.assert_allclose(y, ort_run(model, {"x": x})[0], rtol=1e-6, atol=1e-6)


def test_aarch64_builds_and_is_refused_here(tmp_path, tiny):
    path, _, _x = tiny
    res = bnncompile.compile_model(path, output=tmp_path / "m.so", target="aarch64-neon")
    assert res.library.is_file() and res.sidecar.is_file()
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        assert res.exported_as == "tar" and res.library.suffix == ".tar"
        assert any("cross linker" in n for n in res.notes)
    if not res.runnable_here:
        with pytest.raises(UsageError, match=r"aarch64.*cannot run here|cannot run here.*aarch64"):
            bnncompile.load(res.library)


def _cuda_source(target_name, model):
    from bnncompile.compiler import build_relax

    ex, plan = build_relax(model, spec=targets.resolve(target_name))
    assert len(plan.binary) == 1
    # ex.mod (relax.VMExecutable) imports the host llvm module, which imports the device module
    mods, stack = [], [ex.mod]
    while stack:
        m = stack.pop()
        mods.append(m)
        stack.extend(m.imports)
    cuda = [m for m in mods if m.kind == "cuda"]
    assert cuda, f"no device module ({[m.kind for m in mods]}): the kernels compiled as host code"
    src = cuda[0].inspect_source("cuda")
    assert src, "empty CUDA source"
    return src


@pytest.mark.parametrize("target_name", ["cuda-sm80", "cuda-sm90"])
def test_cuda_builds_with_popcount(tmp_path, tiny, target_name):
    path, model, _ = tiny
    res = bnncompile.compile_model(path, output=tmp_path / "m.so", target=target_name)
    assert res.library.is_file() and res.sidecar.is_file() and res.num_binary_layers == 1
    src = _cuda_source(target_name, model)
    assert "__popcll" in src
    assert "__global__" in src
    if shutil.which("nvcc") is None:
        pytest.skip("built and source checked; nvcc not on PATH, PTX compile skipped")
    from tvm.support import nvcc

    arch = targets.TARGETS[target_name].target["arch"]
    with targets.tvm_target(targets.TARGETS[target_name]):  # nvcc helper reads Target.current()
        ptx = bytes(nvcc.compile_cuda(src, target_format="ptx", arch=arch, compiler="nvcc")).decode()
    assert "popc.b64" in ptx


def _has_gpu() -> bool:
    try:
        import tvm

        return bool(tvm.cuda(0).exist)
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="needs a CUDA GPU")
def test_cuda_runs_and_matches_ort(tmp_path, tiny):
    import tvm

    path, model, x = tiny
    major = int(tvm.cuda(0).compute_version.split(".")[0])
    name = "cuda-sm90" if major >= 9 else "cuda-sm80"
    res = bnncompile.compile_model(path, output=tmp_path / "m.so", target=name)
    assert res.runnable_here
    y = bnncompile.load(res.library)(x)
    np.testing.assert_allclose(y, ort_run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_raw_json_target_builds_and_runs(tmp_path, tiny):
    path, model, x = tiny
    res = bnncompile.compile_model(path, output=tmp_path / "m.so",
                                   target='{"kind": "llvm", "mcpu": "x86-64"}')
    y = bnncompile.load(res.library)(x)
    np.testing.assert_allclose(y, ort_run(model, {"x": x})[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad,match", [
    ("arm-nope", r"unknown target 'arm-nope'; known: host, x86-avx2, x86-avx512, aarch64-neon, cuda-sm80"),
    ('{"kind": "llvm", ', r"invalid JSON"),
    ('{"mcpu": "x"}', r'"kind"'),
])
def test_bad_targets(tmp_path, tiny, bad, match):
    path, _, _ = tiny
    with pytest.raises(UsageError, match=match):
        bnncompile.compile_model(path, output=tmp_path / "m.so", target=bad)
    assert list(tmp_path.iterdir()) == []


def test_host_adds_the_amx_llvm_leaves_out():
    """Under KVM an Emerald Rapids reports the model LLVM calls ``rocketlake`` (no AMX): the host
    target adds the AMX features this CPU has and Linux grants, and a library built with them
    requires them where it loads; a CPU without AMX gets neither."""
    from tvm.target.codegen import llvm_cpu_has_features

    spec = targets.host_spec()
    tgt = targets.tvm_target(spec)
    flags = targets.cpu_flags()
    usable = "amx_tile" in flags and "amx_int8" in flags and targets.amx_permitted()
    if usable:
        assert llvm_cpu_has_features(["amx-tile", "amx-int8"], tgt)
    added = spec.target.get("mattr", [])
    assert all(f.startswith("+amx-") for f in added)
    assert set(spec.requires) == {f[1:].replace("-", "_") for f in added}
    if not usable:
        assert not added
