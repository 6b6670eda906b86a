"""Comparing a PyTorch model with its exported ONNX graph, sign by sign.

Binarization is discontinuous: a float difference of one ulp upstream of a threshold can flip a
sign, so whole-model parity is reported as *sign flips per DynamicSign* plus logit differences.

* :func:`torch_sign_outputs` runs the module and records the output of every
  ``torch.ops.bnncompile.dynamic_sign`` call, keyed by the path of the innermost module that made
  it (``blocks.3.binary_3x3.binarizer``; a second call from the same module gets ``#1``).
* :func:`dynamic_sign_outputs` maps the same keys to the DynamicSign output names of an exported
  graph (the exporter names nodes ``<module path>/DynamicSign[_k]``).
* :func:`onnx_intermediates` runs ONNX Runtime with any intermediate tensors exposed as outputs.
* :func:`sign_flips` counts differing elements; :func:`compare_signs` ties it together.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx

from .custom_ops.dynamic_sign import is_dynamic_sign


def torch_sign_outputs(module, x) -> dict[str, np.ndarray]:
    """``{module_path: DynamicSign output}`` for one forward of ``module`` on ``x`` (no grad).

    Uses forward pre/post hooks on every submodule to know the current module path and a
    ``TorchDispatchMode`` to catch each ``bnncompile::dynamic_sign`` call (Binarizer modules and
    layers such as the CCT's head-wise sign that call the op directly).
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    stack: list[str] = []
    records: dict[str, np.ndarray] = {}
    calls: dict[str, int] = {}
    target = torch.ops.bnncompile.dynamic_sign.default

    class _Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is target:
                path = stack[-1] if stack else ""
                k = calls.get(path, 0)
                calls[path] = k + 1
                records[path if k == 0 else f"{path}#{k}"] = out.detach().cpu().numpy().copy()
            return out

    def enter(name):
        def hook(mod, args):
            stack.append(name)  # a pre-hook must return None (or it replaces the inputs)
        return hook

    def leave(mod, args, out):
        stack.pop()  # returns None, so the output is kept

    handles = []
    for name, sub in module.named_modules():
        handles.append(sub.register_forward_pre_hook(enter(name)))
        handles.append(sub.register_forward_hook(leave))
    try:
        with torch.no_grad(), _Mode():
            module(torch.as_tensor(x))
    finally:
        for h in handles:
            h.remove()
    return records


def dynamic_sign_outputs(model: onnx.ModelProto) -> dict[str, str]:
    """``{module_path: output tensor name}`` of every DynamicSign node of an exported graph."""
    out = {}
    for node in model.graph.node:
        if not is_dynamic_sign(node):
            continue
        path, _, leaf = node.name.rpartition("/")
        suffix = leaf[len("DynamicSign"):].lstrip("_") if leaf.startswith("DynamicSign") else ""
        key = path if not suffix else f"{path}#{suffix}"
        out[key if path or suffix else node.output[0]] = node.output[0]
    return out


def onnx_intermediates(model: onnx.ModelProto, inputs, names, *, optimize: bool = True) -> dict[str, np.ndarray]:
    """Run ONNX Runtime (CPU) on ``model`` and return the tensors ``names`` (plus graph outputs).

    Args:
        model: a ModelProto (not modified; a copy gets the extra outputs).
        inputs: an array for a single-input model, or ``{input name: array}``.
        names: intermediate tensor names to expose as outputs.
        optimize: False runs every node as written (no fused kernels such as ORT's Gelu).
    """
    import onnxruntime as ort

    m = copy.deepcopy(model)
    existing = {o.name for o in m.graph.output}
    for name in names:
        if name not in existing:
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    if not isinstance(inputs, dict):
        inputs = {sess.get_inputs()[0].name: np.asarray(inputs, dtype=np.float32)}
    out_names = [o.name for o in sess.get_outputs()]
    return dict(zip(out_names, sess.run(out_names, inputs)))


def sign_flips(a: np.ndarray, b: np.ndarray) -> int:
    """Number of elements where two ±1 tensors differ (shapes must match)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"sign tensors differ in shape: {a.shape} vs {b.shape}")
    return int(np.count_nonzero(a != b))


def compare_signs(module, model: onnx.ModelProto, x) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """Sign flips per DynamicSign between PyTorch and ONNX Runtime on the same input.

    Returns ``({module_path: flips}, ort_outputs)``; ``ort_outputs`` holds the graph outputs and
    every DynamicSign output by tensor name. Raises ``KeyError`` naming sites present on one side
    only (the two models do not match).
    """
    x = np.asarray(x, dtype=np.float32)
    torch_signs = torch_sign_outputs(module, x)
    onnx_names = dynamic_sign_outputs(model)
    if set(torch_signs) != set(onnx_names):
        only_t = sorted(set(torch_signs) - set(onnx_names))[:5]
        only_o = sorted(set(onnx_names) - set(torch_signs))[:5]
        raise KeyError(f"DynamicSign sites differ: only in torch {only_t}, only in ONNX {only_o}")
    ort_out = onnx_intermediates(model, x, list(onnx_names.values()))
    flips = {k: sign_flips(torch_signs[k], ort_out[onnx_names[k]]) for k in onnx_names}
    return flips, ort_out
