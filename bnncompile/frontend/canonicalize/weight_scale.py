"""A binary layer's ``±s_c`` weight split back into ±1 and a per-output-channel ``Mul``.

tf2onnx and PyTorch's dynamo exporter fold a BatchNormalization that follows a conv / linear into
its weight and bias; Larq's ``magnitude_aware_sign``, ReActNet's mean|W| and QONNX's scaled
``BipolarQuant`` give ``W[c] = s_c * S[c]`` with ``S`` in {±1} directly.  For a Conv / Gemm /
MatMul whose data input is a DynamicSign (directly, through a constant Pad, or ``Mul(sign, a)``
with a one-element constant ``a`` — QONNX's activation scale), and a constant float weight
whose every output channel has one magnitude::

    np.all(np.abs(W[c]) == s_c)  with  s_c > 0 finite          (proved exactly, never rounded)

the layer becomes ``layer(sign, S, no bias) → Mul(·, s [* a]) → Add(·, bias)``, ``S = sign(W)``.
In real arithmetic this is the same function (``sum_k x_k s_c S_ck = s_c sum_k x_k S_ck``; a
scalar ``a`` on the input comes out the same way; zero padding stays zero; Gemm's ``C`` adds after
the product).  ``s_c * a`` is one constant when that product is exact in float32, else two Muls.

Float rounding: the original layer sums ``K`` float products ``±s_c`` (each exact) with a rounding
per addition; the bit-packed kernel counts the exact integer ``acc = sum x S`` (``|acc| <= K``,
exact in float32) and computes ``float32(acc) * s_c + b``: one rounding for the product, one for
the bias.  The two differ by the original's accumulated rounding, at most about
``K * 2^-24 * sum_k |x_k w_k|``.

Left as it is (the layer stays float, ``binary_layers`` gives the reason): a channel of zeros, a
non-finite weight, channels whose magnitudes differ within the channel, Gemm ``alpha``/``beta`` not
1 or ``transA``, a MatMul weight that is not 2-D.
"""

from __future__ import annotations

import numpy as np

from .base import Rule, attr_float, attr_int, binary_operand, const_array


def channel_scales(w: np.ndarray | None, axis: int) -> np.ndarray | None:
    """``s`` with ``|w| == s_c`` along every output channel (``axis``), all ``s_c > 0`` finite."""
    if w is None or w.dtype != np.float32 or w.ndim < 1 or w.size == 0:
        return None
    m = np.moveaxis(np.abs(w), axis, 0).reshape(w.shape[axis], -1)
    s = m[:, 0]
    if not (np.all(np.isfinite(s)) and np.all(s > 0) and np.all(m == s[:, None])):
        return None
    return s.astype(np.float32)


class _SplitScale(Rule):
    op_type = ""

    def pattern(self, op, x, w):
        return getattr(op, self.op_type)(x, w, _allow_other_inputs=True)

    def out_axis(self, node, w) -> int | None:
        raise NotImplementedError

    def check(self, context, x, w, **_):
        operand = binary_operand(x)
        if operand is None:
            return False
        kind, sign, a = operand
        wv = const_array(w)
        root = context.root
        axis = self.out_axis(root, wv) if wv is not None else None
        if axis is None:
            return False
        s = channel_scales(wv, axis)
        if s is None or (kind != "scaled" and np.all(s == 1.0)):
            return False
        self._a = a if kind == "scaled" else None
        self._x = sign.outputs[0] if kind == "scaled" else x
        self._s, self._axis, self._w = s, axis, wv
        return self.matched(context)

    def shaped(self, v: np.ndarray, ndim: int) -> np.ndarray:
        """A per-output-channel vector shaped to broadcast onto the layer's output."""
        return v

    def rewrite(self, op, x, w, **_):
        name = self.root_name
        root = self._root
        pm1 = np.sign(self._w).astype(np.float32)
        y = self.clone(op, root, [self._x, self.const(op, pm1, "weight_pm1")])
        factors = [self._s]
        if self._a is not None:
            prod = self._s.astype(np.float64) * self._a
            if np.all(prod.astype(np.float32).astype(np.float64) == prod):
                factors = [prod.astype(np.float32)]
            else:
                factors.append(np.float32(self._a))
        for i, f in enumerate(factors):
            f = np.asarray(f, np.float32)
            if f.size > 1 or float(f.reshape(-1)[0]) != 1.0:
                value = self.shaped(f, self._w.ndim) if f.size > 1 else f.reshape(())
                c = self.const(op, value, f"scale{i or ''}")
                y = self.emit(op, "Mul", [y, c], f"{name}/scale{i or ''}")
        bias = self.bias(op, root)
        if bias is not None:
            y = self.emit(op, "Add", [y, bias], f"{name}/bias")
        return y

    def bias(self, op, root):
        return None


class SplitConvScale(_SplitScale):
    op_type = "Conv"

    def out_axis(self, node, w):
        if w.ndim < 3 or (len(node.inputs) > 2 and node.inputs[2] is not None
                          and const_array(node.inputs[2]) is None):
            return None
        return 0

    def shaped(self, v, ndim):
        return v.reshape((1, -1) + (1,) * (ndim - 2))

    def bias(self, op, root):
        if len(root.inputs) > 2 and root.inputs[2] is not None:
            b = const_array(root.inputs[2])
            return self.const(op, self.shaped(b.astype(np.float32), self._w.ndim), "bias")
        return None


class SplitGemmScale(_SplitScale):
    op_type = "Gemm"

    def out_axis(self, node, w):
        if (w.ndim != 2 or attr_int(node, "transA", 0) or attr_float(node, "alpha", 1.0) != 1.0
                or attr_float(node, "beta", 1.0) != 1.0):
            return None
        return 0 if attr_int(node, "transB", 0) else 1

    def clone(self, op, node, inputs, *, name=None):  # the product without C
        return super().clone(op, node, inputs[:2], name=name)

    def bias(self, op, root):
        return root.inputs[2] if len(root.inputs) > 2 and root.inputs[2] is not None else None


class SplitMatMulScale(_SplitScale):
    op_type = "MatMul"

    def out_axis(self, node, w):
        return 1 if w.ndim == 2 else None


RULES = (SplitConvScale, SplitGemmScale, SplitMatMulScale)
ROOT_OPS = frozenset()


def wanted(model, index) -> bool:
    """A DynamicSign already in the file feeding a layer whose weight is ``±s_c`` (not ±1)."""
    from ...custom_ops.dynamic_sign import is_dynamic_sign
    from ..graph import is_standard

    for node in model.graph.node:
        if not is_standard(node, "Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        src = index.producer.get(node.input[0])
        if src is None or not (is_dynamic_sign(src) or is_standard(src, "Pad", "Mul")):
            continue
        if not is_dynamic_sign(src) and not any(
                (p := index.producer.get(i)) is not None and is_dynamic_sign(p) for i in src.input):
            continue
        if node.input[1] not in index.initializers:
            continue
        w = index.constant(node.input[1])
        if w is None or w.dtype != np.float32 or np.all(np.abs(w) == 1.0):
            if is_standard(src, "Mul") and w is not None and np.all(np.abs(w) == 1.0):
                return True  # Mul(sign, a) before a ±1 layer: the scale moves after it
            continue
        from ..graph import attr

        axis = {"Conv": 0, "MatMul": 1}.get(node.op_type, 0 if int(attr(node, "transB", 0)) else 1)
        if channel_scales(w, axis) is not None:
            return True
    return False
