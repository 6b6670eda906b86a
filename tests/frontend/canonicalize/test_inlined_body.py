"""A bnncompile export passed through ``onnx.inliner.inline_local_functions`` (what OpenVINO
needs): every DynamicSign became its function body ``Where(GreaterOrEqual(X, T),
CastLike(Constant(1), X), CastLike(Constant(-1), X))``; canonicalize brings back the same binary
layers and the compiled model gives the same outputs as the original file's."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.inliner
from bnncompile.custom_ops.dynamic_sign import is_dynamic_sign

from bnncompile import targets
from bnncompile.frontend import prepare
from bnncompile.frontend.binary_layers import layer_report
from bnncompile.frontend.canonicalize import via


def test_inlined_export_canonicalizes_back(exported_small, small_input):
    import tvm
    from tvm import relax

    from bnncompile.compiler import build_relax

    model = onnx.load(str(exported_small.model_path))
    inlined = onnx.inliner.inline_local_functions(model)
    assert not any(is_dynamic_sign(n) for n in inlined.graph.node)
    assert any(n.op_type == "CastLike" for n in inlined.graph.node)
    original, canonical = prepare(model), prepare(inlined)
    n_signs = sum(is_dynamic_sign(n) for n in original.graph.node)
    signs = [n for n in canonical.graph.node if is_dynamic_sign(n)]
    assert len(signs) == n_signs and all(via(n).startswith("Where(") for n in signs)
    assert not any(
        n.op_type in ("CastLike", "Where") and "binarizer" in n.name for n in canonical.graph.node
    )
    report = layer_report(original)
    assert sum(v.startswith("yes") for v in report.values()) == 6
    assert {k: v.startswith("yes") for k, v in layer_report(canonical).items()} == {
        k: v.startswith("yes") for k, v in report.items()
    }

    x = small_input[:1].numpy()
    outs = []
    for m in (model, inlined):
        ex, plan = build_relax(m, spec=targets.resolve("host"), batch=1)
        outs.append(relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy())
        assert len(plan.binary) == 6
    np.testing.assert_array_equal(outs[0], outs[1])
