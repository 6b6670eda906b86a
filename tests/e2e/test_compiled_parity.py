"""Zoo models end to end: export → compile (host) → load → validate_parity with the library.

One CNN (DyBNN ReActNet-18 at 32 px) and one transformer (DyBinaryCCT-7/3x1 at 32 px) run in the
default suite. Tolerances (stated): logits within atol 1e-4 + rtol 1e-4 · max|ref| of PyTorch
(validate's defaults), identical top-1, and sign flips ≤ 0.01 % of binarized elements — in
practice 0 for these inputs, which is asserted on the golden set.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

import bnncompile
from bnncompile import zoo
from bnncompile.validate import Tolerances

logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


@pytest.mark.parametrize("name,size,batch", [
    ("dybnn_reactnet_18", 32, 2),   # CNN: DySign + DPReLU, stride-2 downsampling, batch > 1
    ("dybinary_cct_7_3x1", 32, 1),  # CCT: binary linears on tokens + binary Q·Kᵀ
])
def test_zoo_model_compiled_parity(tmp_path, name, size, batch):
    import torch

    from bnncompile.data import real_images

    model = zoo.build(name, input_size=size, num_classes=10)
    x = torch.from_numpy(real_images(4, size, seed=3))
    res = bnncompile.export(model, x[:2], tmp_path / f"{name}.onnx", golden_inputs=x)
    out = bnncompile.compile_model(res.model_path, output=tmp_path / f"{name}.so", batch=batch)
    assert out.num_binary_layers > 0 and out.runnable_here

    # the library alone reproduces the golden PyTorch logits
    runner = bnncompile.load(out.library)
    y = np.concatenate([runner(x[i:i + batch].numpy()) for i in range(0, 4, batch)])
    with torch.no_grad():
        ref = model(x).numpy()
    tol = Tolerances()
    bound = tol.atol + tol.rtol * float(np.abs(ref).max())
    assert float(np.abs(y - ref).max()) <= bound
    assert np.array_equal(y.argmax(1), ref.argmax(1))

    report = bnncompile.validate_parity(res.model_path, lib=out.library, real_images=2)
    assert report.ok, report.format()
    golden = report.sets[0]
    assert golden.name == "golden" and golden.flips == 0, report.format()
    assert golden.max_abs_vs_torch <= bound and golden.top1_vs_torch == 1.0
    for s in report.sets:
        assert s.flips <= tol.max_flip_fraction * s.binarized_elements
        assert s.top1_vs_ort == 1.0
