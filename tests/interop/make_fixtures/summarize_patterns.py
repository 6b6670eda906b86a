"""One line per Conv/Gemm/MatMul: how its activation and weight operands are spelled.

Needs only ``onnx`` and ``numpy`` (any of the generator venvs, or the project's .venv):

    python tests/interop/make_fixtures/summarize_patterns.py tests/interop/fixtures/*.onnx

For each Conv/Gemm/MatMul it prints
  act=   the chain from the layer's data input back to the binariser, e.g.
         `Transpose[0,3,1,2] <- Pad(const=1.0) <- larq_sign(Sign(Add(Sign(x),0.1)))`
  w=     the weight: `+-1` (initializer holding only +1/-1), `scaled+-1[axis ...]` (every
         output channel is +-s_c: BN or a magnitude scale folded in), `Sign(W)` (computed
         at run time: sign(0)=0), `BipolarQuant(W,s)`, ... or `float`
  next=  the first few ops that consume the result (BN, Mul/Add, Relu, Add...)
"""
from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import numpy_helper

LAYOUT = {"Transpose", "Reshape", "Pad", "MaxPool", "Flatten", "Squeeze", "Unsqueeze", "Identity"}


class G:
    def __init__(self, path):
        self.m = onnx.load(path)
        g = self.m.graph
        self.init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.prod = {}
        self.cons = {}
        for n in g.node:
            for o in n.output:
                self.prod[o] = n
            for i in n.input:
                self.cons.setdefault(i, []).append(n)
            if n.op_type == "Constant" and n.attribute[0].name == "value":
                self.init[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)

    def const(self, name):
        return self.init.get(name)

    def attr(self, n, key, default=None):
        for a in n.attribute:
            if a.name == key:
                return onnx.helper.get_attribute_value(a)
        return default


def classify_array(w, axis):
    u = np.unique(w)
    if u.size and set(u.tolist()) <= {-1.0, 1.0}:
        return "+-1"
    a = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1))
    if a.size and np.all(a == a[:, :1]) and np.all(a[:, 0] > 0):
        s = a[:, 0]
        return f"scaled+-1[out-axis {axis}, |s| in {s.min():.3g}..{s.max():.3g}]"
    if a.size and np.all(a == a[:, :1]):
        return "scaled+-1 with ZERO rows"
    return f"float{list(w.shape)}"


def sign_spelling(g, name, depth=0):
    """Name the binariser that produces `name`, or None."""
    n = g.prod.get(name)
    if n is None:
        return None
    if n.op_type == "Sign":
        inner = g.prod.get(n.input[0])
        if inner is not None and inner.op_type == "Add":
            c = [g.const(i) for i in inner.input]
            srcs = [g.prod.get(i) for i in inner.input]
            for k in range(2):
                if c[k] is not None and c[k].size == 1 and srcs[1 - k] is not None and srcs[1 - k].op_type == "Sign":
                    return f"larq_sign: Sign(Add(Sign(x), {float(c[k].ravel()[0]):.3g}))  [0 -> +1]"
        return "Sign(x)  [torch.sign: 0 -> 0]"
    if n.op_type == "Where":
        cond = g.prod.get(n.input[0])
        a, b = g.const(n.input[1]), g.const(n.input[2])
        if cond is not None and a is not None and b is not None:
            t = g.const(cond.input[1])
            return (f"Where({cond.op_type}(x, {None if t is None else float(t.ravel()[0])}), "
                    f"{float(a.ravel()[0])}, {float(b.ravel()[0])})  [0 -> {'+1' if cond.op_type == 'GreaterOrEqual' else '?'}]")
    if n.op_type == "BipolarQuant":
        s = g.const(n.input[1])
        return f"BipolarQuant(x, scale={s.ravel().tolist() if s is not None and s.size <= 4 else 'tensor'})  [0 -> +1]"
    if n.op_type == "Quant":
        bits = g.const(n.input[3])
        return f"Quant(x, bitwidth={None if bits is None else bits.ravel().tolist()}, signed={g.attr(n, 'signed')}, narrow={g.attr(n, 'narrow')})  [NOT bipolar unless checked]"
    if n.op_type == "Add":
        # detach-STE: Add(Sub(Sign(x), p), p)
        for k in range(2):
            s = g.prod.get(n.input[k])
            if s is not None and s.op_type == "Sub" and s.input[1] == n.input[1 - k]:
                src = g.prod.get(s.input[0])
                if src is not None and src.op_type == "Sign":
                    return "detach-STE: Add(Sub(Sign(x), p(x)), p(x))  [~Sign(x), 0 -> 0, NOT bit-exact +-1]"
    return None


def act_chain(g, name):
    steps = []
    for _ in range(8):
        sp = sign_spelling(g, name)
        if sp:
            steps.append(sp)
            return " <- ".join(steps)
        n = g.prod.get(name)
        if n is None:
            steps.append("graph input" if g.const(name) is None else "const")
            return " <- ".join(steps)
        if n.op_type in LAYOUT:
            if n.op_type == "Transpose":
                steps.append(f"Transpose{g.attr(n, 'perm')}")
            elif n.op_type == "Pad":
                v = g.const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
                pads = g.const(n.input[1]) if len(n.input) > 1 else None
                steps.append(f"Pad(mode={(g.attr(n, 'mode', b'constant') or b'constant').decode()}, "
                             f"value={0.0 if v is None else float(v.ravel()[0])}, pads={None if pads is None else pads.tolist()})")
            elif n.op_type == "MaxPool":
                steps.append(f"MaxPool(k={g.attr(n, 'kernel_shape')}, s={g.attr(n, 'strides')}, pads={g.attr(n, 'pads')})")
            else:
                steps.append(n.op_type)
            name = n.input[0]
            continue
        steps.append(f"float({n.op_type})")
        return " <- ".join(steps)
    return " <- ".join(steps + ["..."])


def weight_desc(g, name, axis):
    c = g.const(name)
    if c is not None:
        return classify_array(c, axis)
    n = g.prod.get(name)
    if n is None:
        return "graph input (no initializer)"
    if n.op_type == "Transpose":
        return f"Transpose{g.attr(n, 'perm')}(" + weight_desc(g, n.input[0], 1 - axis if g.attr(n, 'perm') == [1, 0] else axis) + ")"
    if n.op_type == "Sign" and g.const(n.input[0]) is not None:
        w = g.const(n.input[0])
        return f"Sign(W init)  [runtime; W has {(w == 0).sum()} zeros]"
    if n.op_type == "BipolarQuant" and g.const(n.input[0]) is not None:
        s = g.const(n.input[1])
        return f"BipolarQuant(W init, scale={s.ravel().tolist() if s.size <= 4 else 'tensor'})"
    if n.op_type == "Mul":
        parts = [weight_desc(g, i, axis) if g.prod.get(i) is not None and g.prod[i].op_type == "Sign" else
                 (g.prod[i].op_type if g.prod.get(i) is not None else "const") for i in n.input]
        return "Mul(" + ", ".join(parts) + ")"
    return f"computed by {n.op_type}"


def next_ops(g, name, k=3):
    out = []
    for _ in range(k):
        cs = g.cons.get(name, [])
        if not cs:
            break
        c = cs[0]
        out.append(c.op_type + (f"x{len(cs)}" if len(cs) > 1 else ""))
        name = c.output[0]
    return ",".join(out)


def summarize(path):
    g = G(path)
    lines = [f"== {path.split('/')[-1]}"]
    for n in g.m.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        if n.op_type == "Conv":
            axis = 0
            extra = (f" k={g.attr(n, 'kernel_shape')} s={g.attr(n, 'strides')} pads={g.attr(n, 'pads', [0, 0, 0, 0])} "
                     f"group={g.attr(n, 'group', 1)} bias={'yes' if len(n.input) > 2 and n.input[2] else 'no'}")
        elif n.op_type == "Gemm":
            axis = 0 if g.attr(n, "transB", 0) else 1
            extra = f" transA={g.attr(n, 'transA', 0)} transB={g.attr(n, 'transB', 0)} bias={'yes' if len(n.input) > 2 and n.input[2] else 'no'}"
        else:
            axis = 1
            extra = ""
        act = act_chain(g, n.input[0])
        w = weight_desc(g, n.input[1], axis)
        lines.append(f"  {n.op_type}{extra}\n      act= {act}\n      w= {w}\n      next= {next_ops(g, n.output[0])}")
    return "\n".join(lines)


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(summarize(p))
