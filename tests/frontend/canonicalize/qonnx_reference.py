"""QONNX's custom ops for ``onnx.reference`` (ONNX Runtime cannot run them): the semantics copied
from qonnx 1.0.0 (``custom_op/general/bipolar_quant.py`` and ``intquant.py``), so a rewritten
graph can be checked against the original one."""

from __future__ import annotations

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

QONNX = "qonnx.custom_op.general"


class BipolarQuant(OpRun):
    op_domain = QONNX

    def _run(self, x, scale):
        ones = np.ones(x.shape, dtype=x.dtype)
        return ((np.where(x >= 0.0, ones, -ones) * scale),)


def _min_int(signed, narrow, bits):
    if signed and narrow:
        return -(2 ** (bits - 1)) + 1
    if signed:
        return -(2 ** (bits - 1))
    return 0 * bits


def _max_int(signed, narrow, bits):
    if not signed and not narrow:
        return 2**bits - 1
    if not signed:
        return 2**bits - 2
    return 2 ** (bits - 1) - 1


_ROUND = {
    "ROUND": np.round,
    "HALF_EVEN": np.round,
    "CEIL": np.ceil,
    "FLOOR": np.floor,
    "DOWN": np.fix,
    "UP": lambda x: np.sign(x) * np.ceil(np.abs(x)),
    "HALF_UP": lambda x: np.sign(x) * np.floor(np.abs(x) + 0.5),
    "HALF_DOWN": lambda x: np.sign(x) * np.ceil(np.abs(x) - 0.5),
}


class Quant(OpRun):
    op_domain = QONNX

    def _run(self, x, scale, zeropt, bitwidth, signed=1, narrow=1, rounding_mode="ROUND"):
        y = x / scale
        y = y + zeropt
        if bitwidth == 1 and signed:
            ones = np.ones(y.shape, dtype=y.dtype)
            y = np.where(y >= 0.0, ones, -ones)
        else:
            lo = np.asarray(_min_int(signed, narrow, bitwidth))
            hi = np.asarray(_max_int(signed, narrow, bitwidth))
            y = np.where(y > hi, hi.astype(y.dtype), y)
            y = np.where(y < lo, lo.astype(y.dtype), y)
            mode = rounding_mode.decode() if isinstance(rounding_mode, bytes) else rounding_mode
            y = _ROUND[mode.upper()](y)
        return (((y - zeropt) * scale).astype(x.dtype),)


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """The model's outputs by ``onnx.reference`` with the QONNX ops above (and DynamicSign through
    its function body)."""
    return ReferenceEvaluator(model, new_ops=[BipolarQuant, Quant]).run(None, feeds)


def qonnx_model(nodes, inputs: dict, outputs: dict, inits: dict | None = None) -> onnx.ModelProto:
    """A float32 model importing the QONNX domain (not checked: onnx does not know the ops)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "q",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in (inits or {}).items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(QONNX, 1)]
    )
    model.ir_version = 10
    return model
