"""Helpers for compiler tests: hand-built ONNX graphs, in-memory builds, ORT references."""

from __future__ import annotations

import numpy as np
import onnx
from bnncompile.custom_ops import dynamic_sign
from onnx import TensorProto, helper, numpy_helper

DS_DOMAIN = dynamic_sign.DOMAIN


def make_model(nodes, inputs: dict, outputs: dict, inits: dict | None = None) -> onnx.ModelProto:
    """``inputs``/``outputs``: name -> shape (float32); ``inits``: name -> numpy array."""
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in (inits or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    dynamic_sign.attach_function(model)
    missing = [o for o in model.graph.output if not o.type.tensor_type.HasField("shape")]
    if missing:  # fill output shapes from one ORT run so onnx.checker (and load_onnx) accept it
        feeds = {n: np.zeros(s, np.float32) for n, s in inputs.items()}
        shapes = dict(zip([o.name for o in model.graph.output], (a.shape for a in ort_run(model, feeds))))
        for o in missing:
            o.CopyFrom(helper.make_tensor_value_info(o.name, TensorProto.FLOAT, list(shapes[o.name])))
    onnx.checker.check_model(model, full_check=True)
    return model


def ds(x: str, t: str | None, y: str, name: str | None = None) -> onnx.NodeProto:
    return helper.make_node("DynamicSign", [x] + ([t] if t else []), [y], domain=DS_DOMAIN,
                            name=name or f"sign_{y}")


def pm1(rng, shape) -> np.ndarray:
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


def ort_run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def host_target():
    from bnncompile import targets

    return targets.tvm_target(targets.resolve("host"))


def relax_func_names(mod) -> list[str]:
    return sorted(gv.name_hint for gv in mod.get_global_vars())


def build_and_run(model: onnx.ModelProto, feeds: dict, *, batch: int = 1, binary_kernels: bool = True,
                  **build_options):
    """Compile in memory for host (bnncompile.compiler.build_relax) and run once."""
    import tvm
    from tvm import relax

    from bnncompile import targets
    from bnncompile.compiler import build_relax

    ex, plan = build_relax(model, spec=targets.resolve("host"), batch=batch,
                           binary_kernels=binary_kernels, **build_options)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[i.name])) for i in model.graph.input
            if i.name not in {t.name for t in model.graph.initializer}]
    out = vm["main"](*args)
    outs = [out] if hasattr(out, "numpy") else list(out)
    return [o.numpy() for o in outs], plan


def int_inputs(rng, shape, lo=-2, hi=2) -> np.ndarray:
    """Integer-valued float inputs: many exact ties with integer thresholds (x == t)."""
    return rng.integers(lo, hi + 1, size=shape).astype(np.float32)
