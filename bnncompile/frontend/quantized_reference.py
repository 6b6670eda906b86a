"""The ONNX model a ``--conv-precision int16|int8`` build must match: each quantized float conv
rewritten into standard ops computing ``schedules.quantize``'s numbers, so ONNX Runtime is the
reference for ``compile --verify`` and ``validate`` exactly as for fp32 builds (binary layers
bit-exact, flips only at near-ties), while the quantization's own effect is measured against the
original file.

Per conv ``Y = Conv(X, W, B)`` with levels ``(qa, qw)``::

    amax = ReduceMax(Abs(X)) over all but the batch axis
    Xq   = Clip(Round(X * Where(amax > 0, qa / amax, 0)), -qa, qa)      (Round: half to even)
    acc  = sum Xq * Wq, exact
    Y    = float(acc) * (amax * dequant[k]) + B[k]

The exact sum: a float32 ``Conv`` rounds once its sums pass 2**24 (int16 levels reach 2**31)
and ORT has no int16 or float64 conv, so each operand is split into bytes, ``v = 256 * hi + lo``
(hi signed, lo in [0, 255]), and four ``ConvInteger`` (uint8, zero point 128 for the signed
halves: exact int32) are combined in int64: ``65536 hh + 256 (hl + lh) + ll``, then cast to
float32 once, as the kernel casts its int32 sum.

Per attention product ``Y = MatMul(P, V)`` of an ``--attention-precision int8`` build::

    pmax = ReduceMax(P) over the last axis;  vmax = ReduceMax(Abs(V)) over the second last
    Pq   = Clip(Round(P * Where(pmax > 0, 255 / pmax, 0)), 0, 255) as uint8
    Vq   = Clip(Round(V * Where(vmax > 0, 127 / vmax, 0)), -127, 127) as int8
    Y    = float(MatMulInteger(Pq, Vq)) * ((pmax / 255) * (vmax / 127))

(``MatMulInteger`` of uint8 x int8 is exact in int32, as ``vpdpbusd`` is.)
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import UnsupportedModelError, node_label
from .graph import standard_opset

__all__ = ["quantized_reference"]


def quantized_reference(model: onnx.ModelProto, convs: dict[str, dict], precision: str,
                        matmuls: dict[str, dict] | None = None) -> onnx.ModelProto:
    """A copy of the canonical ``model`` with every conv named in ``convs`` ({node: {"qa", "qw"}},
    the plan's ``quantized_convs``) computed as ``precision`` would, and every attention product
    named in ``matmuls`` (the plan's ``quantized_matmuls``) on int8."""
    from ..schedules import quantize

    out = onnx.ModelProto()
    out.CopyFrom(model)
    if matmuls:
        _attention_products(out, matmuls)
    if not convs:
        return out
    opset = standard_opset(out)
    if opset < 11:  # Round and input-form Clip; ConvInteger needs 10
        raise UnsupportedModelError(f"--conv-precision {precision}: the model's opset {opset} has no "
                                    "Round (opset 11); re-export it with opset >= 11, or compile with fp32")
    inits = {t.name: t for t in out.graph.initializer}
    new_nodes, new_inits = [], []
    reduce_axes_attr = opset < 18
    found = set()
    for node in out.graph.node:
        if node.name not in convs:
            new_nodes.append(node)
            continue
        found.add(node.name)
        if node.input[1] not in inits:
            raise UnsupportedModelError(f"node {node_label(node)}: its weight is not an initializer")
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        qw = quantize.quantize_conv_weight(w, precision)
        want = convs[node.name]
        if (qw.qa, qw.qw) != (int(want["qa"]), int(want["qw"])):
            raise UnsupportedModelError(f"node {node_label(node)}: levels {qw.qa}/{qw.qw} at {precision}, "
                                        f"the library used {want['qa']}/{want['qw']}")
        p = f"{node.name}__q"
        k = w.shape[0]

        def const(name, value):
            new_inits.append(numpy_helper.from_array(np.asarray(value), f"{p}_{name}"))
            return f"{p}_{name}"

        x = node.input[0]
        if reduce_axes_attr:
            amax_node = helper.make_node("ReduceMax", [f"{p}_abs"], [f"{p}_amax"], axes=[1, 2, 3], keepdims=1)
        else:
            amax_node = helper.make_node("ReduceMax", [f"{p}_abs", const("axes", np.int64([1, 2, 3]))],
                                         [f"{p}_amax"], keepdims=1)
        wh = np.floor_divide(qw.ints.astype(np.int32), 256)
        wl = qw.ints.astype(np.int32) - 256 * wh
        wparts = {"h": (const("wh", (wh + 128).astype(np.uint8)), const("zp128", np.uint8(128))),
                  "l": (const("wl", wl.astype(np.uint8)), const("zp0", np.uint8(0)))}
        xparts = {"h": (f"{p}_xh8", f"{p}_zp128"), "l": (f"{p}_xl8", f"{p}_zp0")}
        parts = []
        for a in "hl":
            for b in "hl":
                (xa, xz), (wb, wz) = xparts[a], wparts[b]
                conv = helper.make_node("ConvInteger", [xa, wb, xz, wz], [f"{p}_c{a}{b}"],
                                        name=f"{p}_conv{a}{b}")
                conv.attribute.extend(node.attribute)
                parts += [conv, helper.make_node("Cast", [f"{p}_c{a}{b}"], [f"{p}_c{a}{b}64"],
                                                 to=onnx.TensorProto.INT64)]
        split = [
            helper.make_node("Div", [f"{p}_x", const("f256", np.float32(256))], [f"{p}_xd"]),
            helper.make_node("Floor", [f"{p}_xd"], [f"{p}_xhf"]),
            helper.make_node("Mul", [f"{p}_xhf", f"{p}_f256"], [f"{p}_xh256"]),
            helper.make_node("Sub", [f"{p}_x", f"{p}_xh256"], [f"{p}_xlf"]),
            helper.make_node("Add", [f"{p}_xhf", const("f128", np.float32(128))], [f"{p}_xhu"]),
            helper.make_node("Cast", [f"{p}_xhu"], [f"{p}_xh8"], to=onnx.TensorProto.UINT8),
            helper.make_node("Cast", [f"{p}_xlf"], [f"{p}_xl8"], to=onnx.TensorProto.UINT8),
        ]
        combine = [
            helper.make_node("Mul", [f"{p}_chh64", const("i65536", np.int64(65536))], [f"{p}_s2"]),
            helper.make_node("Add", [f"{p}_chl64", f"{p}_clh64"], [f"{p}_mid"]),
            helper.make_node("Mul", [f"{p}_mid", const("i256", np.int64(256))], [f"{p}_s1"]),
            helper.make_node("Add", [f"{p}_s2", f"{p}_s1"], [f"{p}_s21"]),
            helper.make_node("Add", [f"{p}_s21", f"{p}_cll64"], [f"{p}_acc64"]),
            helper.make_node("Cast", [f"{p}_acc64"], [f"{p}_acc"], to=onnx.TensorProto.FLOAT),
        ]
        tail = [helper.make_node("Mul", [f"{p}_acc", f"{p}_scale"],
                                 [f"{p}_y" if len(node.input) > 2 and node.input[2] else node.output[0]])]
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32).reshape(1, k, 1, 1)
            tail.append(helper.make_node("Add", [f"{p}_y", const("b", bias)], [node.output[0]]))
        new_nodes += [
            helper.make_node("Abs", [x], [f"{p}_abs"]),
            amax_node,
            helper.make_node("Greater", [f"{p}_amax", const("zero", np.float32(0))], [f"{p}_pos"]),
            helper.make_node("Div", [const("qa", np.float32(qw.qa)), f"{p}_amax"], [f"{p}_inv0"]),
            helper.make_node("Where", [f"{p}_pos", f"{p}_inv0", f"{p}_zero"], [f"{p}_inv"]),
            helper.make_node("Mul", [x, f"{p}_inv"], [f"{p}_xs"]),
            helper.make_node("Round", [f"{p}_xs"], [f"{p}_xr"]),
            helper.make_node("Clip", [f"{p}_xr", const("lo", np.float32(-qw.qa)), f"{p}_qa"], [f"{p}_x"]),
            *split, *parts, *combine,
            helper.make_node("Mul", [f"{p}_amax", const("dq", qw.dequant.reshape(1, k, 1, 1))], [f"{p}_scale"]),
            *tail,
        ]
    _splice(out, new_nodes, new_inits, set(convs) - found, "quantized convs")
    return out


def _splice(model: onnx.ModelProto, nodes, inits, missing: set, what: str) -> None:
    """Replace ``model``'s nodes by ``nodes`` and add ``inits``, once every rewritten node the
    library named was found (``missing`` empty)."""
    if missing:
        raise UnsupportedModelError(f"{what} {sorted(missing)} are not in the model")
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)


def _attention_products(model: onnx.ModelProto, matmuls: dict[str, dict]) -> None:
    """Rewrite, in place, each ``MatMul(P, V)`` named in ``matmuls`` as the int8 build computes it
    (the module docstring's formula; ``schedules.quantize.quantize_rows`` / ``quantize_columns``)."""
    from ..schedules.quantize import P_LEVELS, V_LEVELS

    opset = standard_opset(model)
    if opset < 11:
        raise UnsupportedModelError(f"--attention-precision int8: the model's opset {opset} has no "
                                    "Round (opset 11); re-export it with opset >= 11, or compile with fp32")
    new_nodes, new_inits, found = [], [], set()

    def const(p, name, value):
        new_inits.append(numpy_helper.from_array(np.asarray(value), f"{p}_{name}"))
        return f"{p}_{name}"

    def reduce_max(p, x, axis, y):
        if opset < 18:
            return helper.make_node("ReduceMax", [x], [y], axes=[axis], keepdims=1)
        return helper.make_node("ReduceMax", [x, const(p, f"axes{axis}", np.int64([axis]))], [y], keepdims=1)

    def levels(p, x, peak, top, lo, to):
        """Clip(Round(x * Where(peak > 0, top / peak, 0)), lo, top) cast to ``to``."""
        return [
            helper.make_node("Greater", [peak, const(p, "zero", np.float32(0))], [f"{p}_pos"]),
            helper.make_node("Div", [const(p, "top", np.float32(top)), peak], [f"{p}_inv0"]),
            helper.make_node("Where", [f"{p}_pos", f"{p}_inv0", f"{p}_zero"], [f"{p}_inv"]),
            helper.make_node("Mul", [x, f"{p}_inv"], [f"{p}_xs"]),
            helper.make_node("Round", [f"{p}_xs"], [f"{p}_xr"]),
            helper.make_node("Clip", [f"{p}_xr", const(p, "lo", np.float32(lo)), f"{p}_top"], [f"{p}_xc"]),
            helper.make_node("Cast", [f"{p}_xc"], [f"{p}_q"], to=to),
            helper.make_node("Div", [peak, f"{p}_top"], [f"{p}_d"]),
        ]

    for node in model.graph.node:
        if node.name not in matmuls:
            new_nodes.append(node)
            continue
        if node.op_type != "MatMul" or len(node.input) != 2:
            raise UnsupportedModelError(f"node {node_label(node)}: the library quantized it as an "
                                        "attention product, but it is not a MatMul here")
        found.add(node.name)
        p, (a, b) = f"{node.name}__q", node.input
        pa, pb = f"{p}_p", f"{p}_v"
        new_nodes += [
            reduce_max(pa, a, -1, f"{pa}_max"),
            *levels(pa, a, f"{pa}_max", P_LEVELS, 0, onnx.TensorProto.UINT8),
            helper.make_node("Abs", [b], [f"{pb}_abs"]),
            reduce_max(pb, f"{pb}_abs", -2, f"{pb}_max"),
            *levels(pb, b, f"{pb}_max", V_LEVELS, -V_LEVELS, onnx.TensorProto.INT8),
            helper.make_node("MatMulInteger", [f"{pa}_q", f"{pb}_q"], [f"{p}_acc"], name=f"{p}_mm"),
            helper.make_node("Cast", [f"{p}_acc"], [f"{p}_accf"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [f"{pa}_d", f"{pb}_d"], [f"{p}_scale"]),  # [.., M, 1] x [.., 1, N]
            helper.make_node("Mul", [f"{p}_accf", f"{p}_scale"], [node.output[0]]),
        ]
    _splice(model, new_nodes, new_inits, set(matmuls) - found, "quantized attention products")
