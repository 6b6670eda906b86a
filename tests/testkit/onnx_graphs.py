"""Hand-built ONNX graphs for the compiler tests, in-memory builds, ONNX Runtime references."""

from __future__ import annotations

import numpy as np
import onnx
from bnncompile.custom_ops import dynamic_sign
from onnx import TensorProto, helper, numpy_helper

from bnncompile.frontend import FrontendOptions, from_onnx

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


RTOL, ATOL = 1e-6, 1e-5
#: PrimFuncs of the bit-packed path (other ``bnn_*`` functions may be fused float glue)
BINARY_KERNELS = ("bnn_bconv2d_", "bnn_bitpack_", "bnn_bdense_", "bnn_bbmm_")
#: a standard float op TVM 0.27's ONNX frontend has no converter for
UNCONVERTIBLE = "Celu"


def has_binary_kernel(names) -> bool:
    return any(n.startswith(BINARY_KERNELS) for n in names)


def import_model(model, batch=1, binary_kernels=True):
    return from_onnx(model, target=host_target(),
                     options=FrontendOptions(batch=batch, binary_kernels=binary_kernels))


def conv_model(rng, *, c=5, k=7, hw=(6, 7), pads=(1, 1, 1, 1), strides=(1, 1), pre=None,
                weight=None, with_scale=True, threshold=True, pad_value=None):
    """x → [pre] → DynamicSign(x, t) → [Pad] → Conv(±1) → [Mul scale]."""
    nodes, inits = [], {}
    src = "x"
    if pre == "relu":
        nodes.append(helper.make_node("Relu", ["x"], ["xr"], name="relu"))
        src = "xr"
    if pre != "no_sign":
        if threshold:
            inits["t"] = rng.integers(-1, 2, size=(1, c, 1, 1)).astype(np.float32)
        nodes.append(ds(src, "t" if threshold else None, "s", name="sign"))
        src = "s"
    conv_pads = list(pads)
    if pad_value is not None:
        inits["pads"] = np.array([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], np.int64)
        inits["pv"] = np.array(pad_value, np.float32)
        nodes.append(helper.make_node("Pad", [src, "pads", "pv"], ["sp"], name="pad", mode="constant"))
        src, conv_pads = "sp", [0, 0, 0, 0]
    inits["w"] = pm1(rng, (k, c, 3, 3)) if weight is None else weight
    nodes.append(helper.make_node("Conv", [src, "w"], ["y"], name="conv", pads=conv_pads,
                                  strides=list(strides), kernel_shape=[3, 3]))
    out = "y"
    if with_scale:
        inits["a"] = (rng.random((1, k, 1, 1)) * 2 - 1).astype(np.float32)  # incl. negative scales
        nodes.append(helper.make_node("Mul", ["y", "a"], ["z"], name="scale"))
        out = "z"
    return make_model(nodes, {"x": [2, c, *hw]}, {out: None}, inits)


def check_against_ort(model, x, batch=2, **kw):
    (y,), plan = build_and_run(model, {"x": x}, batch=batch, **kw)
    (ref,) = ort_run(model, {"x": x})
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)
    return plan

