"""Zoo models compiled for ``aarch64-neon`` (run under qemu-user over RPC) against ``host``.

Each model is exported at 32 px, batch 1, then compiled twice with ``compile_model``: for
``host`` (run here) and ``aarch64-neon`` (cross-linked .so, uploaded and run through
``relax.VirtualMachine(remote.load_module(name), remote.cpu(0))``).

* ReActNet-18 (static thresholds): the float glue around the binary kernels is elementwise, so
  the two builds must agree **bit for bit**.
* DyBNN-ReActNet-18 and binary CCT-7/3x1: float *reductions* outside the binary kernels (DySign's
  pooled MLP, DPReLU statistics, the CCT's float matmuls and softmax) are vectorised 4-wide on
  NEON and 8/16-wide on x86, so partial sums are added in another order: about 255 ulp measured
  on the logits.  Bound: ``max|a64 - host| <= REL_TOL * max|host|`` (REL_TOL = 1e-4, the
  project's validate rtol; a real kernel bug moves logits by O(max|host|)) and equal top-1.
"""

from __future__ import annotations

import numpy as np
import pytest

from .a64 import TARGET

REL_TOL = 1e-4
SIZE = 32
MODELS = [("reactnet_18", "exact"), ("dybnn_reactnet_18", "float"), ("binary_cct_7_3x1", "float")]


def _inputs(channels: int) -> np.ndarray:
    """[n, 1, C, 32, 32]: a real photo, two N(0, 1) images, all zeros (a tie at every threshold
    the input feeds)."""
    from bnncompile.data import real_images

    photo = np.asarray(real_images(1, SIZE, channels=channels, seed=3), dtype="float32")[:1]
    rnd = np.random.default_rng(0).standard_normal((2, channels, SIZE, SIZE)).astype("float32")
    zeros = np.zeros((1, channels, SIZE, SIZE), "float32")
    return np.concatenate([photo, rnd, zeros])[:, None]


def _ulps(a: np.ndarray, b: np.ndarray) -> int:
    """Largest distance in float32 units in the last place (same-sign values)."""
    ia = a.astype("float32").view("int32").astype(np.int64)
    ib = b.astype("float32").view("int32").astype(np.int64)
    ia = np.where(ia < 0, -(2**31) - ia, ia)  # monotone integer image of the floats
    ib = np.where(ib < 0, -(2**31) - ib, ib)
    return int(np.max(np.abs(ia - ib))) if a.size else 0


def _is_aarch64_elf(path) -> bool:
    head = open(path, "rb").read(20)
    return head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64


@pytest.mark.parametrize("name,mode", MODELS, ids=[m for m, _ in MODELS])
def test_zoo_model_aarch64_vs_host(name, mode, remote, tmp_path):
    import tvm
    from tvm import relax

    from bnncompile import runtime, targets
    from bnncompile.compiler import compile_model
    from bnncompile.exporter import export_zoo_model

    assert targets.TARGETS["aarch64-neon"].target == TARGET
    onnx_path = tmp_path / f"{name}.onnx"
    export_zoo_model(name, onnx_path, batch=1, input_size=SIZE, num_classes=10, golden_images=1)
    host = compile_model(onnx_path, output=tmp_path / f"{name}_host.so", target="host")
    a64 = compile_model(onnx_path, output=tmp_path / f"{name}_a64.so", target="aarch64-neon")
    assert a64.exported_as == "so" and _is_aarch64_elf(a64.library), a64.notes
    assert not a64.runnable_here

    runner = runtime.load(host.library)
    channels = int(runner.inputs[0]["shape"][1])
    xs = _inputs(channels)
    y_host = np.stack([runner(x) for x in xs])

    remote.upload(str(a64.library))
    dev = remote.cpu(0)
    vm = relax.VirtualMachine(remote.load_module(a64.library.name), dev)
    outs = []
    for x in xs:
        y = vm["main"](tvm.runtime.tensor(x, dev))
        outs.append((y if hasattr(y, "numpy") else y[0]).numpy())
    y_a64 = np.stack(outs)

    assert y_a64.shape == y_host.shape and np.isfinite(y_a64).all()
    diff = float(np.max(np.abs(y_a64 - y_host)))
    detail = (f"{name}: max|a64 - host| = {diff:.3g} ({_ulps(y_a64, y_host)} ulp), "
              f"max|host| = {float(np.max(np.abs(y_host))):.3g}")
    if mode == "exact":
        assert np.array_equal(y_a64, y_host), "not bit-identical: " + detail
    else:
        bound = REL_TOL * float(np.max(np.abs(y_host)))
        assert diff <= bound, f"{detail} > {REL_TOL:g} * max|host| = {bound:.3g}"
        top_a64 = y_a64.reshape(len(xs), -1).argmax(1)
        top_host = y_host.reshape(len(xs), -1).argmax(1)
        assert (top_a64 == top_host).all(), f"top-1 differs: {top_a64} vs {top_host}; " + detail
    print(detail)
