"""Print a compact node list of ONNX files (op_type, domain, inputs, outputs, attrs).

Needs only the ``onnx`` package (any venv used by the generators works, or the
project's .venv):

    python tests/interop/make_fixtures/dump_graph.py tests/interop/fixtures/*.onnx
    python tests/interop/make_fixtures/dump_graph.py --summary tests/interop/fixtures/*.onnx

Inputs that are initializers are shown as ``name[init shape]`` (with ``=+-1`` when
every value is exactly +1/-1 and ``vals=...`` when tiny); outputs of Constant
nodes are shown the same way with ``[const ...]``.
"""
from __future__ import annotations

import collections
import sys

import numpy as np
import onnx
from onnx import numpy_helper


def _attr_str(a: onnx.AttributeProto) -> str:
    v = onnx.helper.get_attribute_value(a)
    if isinstance(v, bytes):
        v = v.decode()
    elif isinstance(v, onnx.TensorProto):
        arr = numpy_helper.to_array(v)
        v = f"tensor{list(arr.shape)}" + (f"={arr.ravel().tolist()}" if arr.size <= 4 else "")
    elif isinstance(v, list):
        v = [x.decode() if isinstance(x, bytes) else x for x in v]
    return f"{a.name}={v}"


def _tensor_desc(arr: np.ndarray, tag: str) -> str:
    s = f"[{tag} {arr.dtype}{list(arr.shape)}"
    if arr.size and np.issubdtype(arr.dtype, np.number):
        u = np.unique(arr)
        if u.size <= 2 and set(u.tolist()) <= {-1.0, 1.0}:
            s += " =+-1"
        elif arr.size <= 4:
            s += f" vals={arr.ravel().tolist()}"
        elif u.size <= 4:
            s += f" uniq={u.tolist()}"
    return s + "]"


def describe(path: str, summary: bool = False) -> str:
    m = onnx.load(path, load_external_data=False)
    g = m.graph
    inits = {}
    for t in g.initializer:
        try:
            inits[t.name] = numpy_helper.to_array(t)
        except Exception:  # external data not loaded
            inits[t.name] = np.zeros([d for d in t.dims], dtype=np.float32)
    consts = {}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    opsets = {o.domain or "ai.onnx": o.version for o in m.opset_import}
    lines = [f"== {path}", f"ir_version={m.ir_version} opsets={opsets} producer={m.producer_name} {m.producer_version}"]
    for vi in list(g.input) + list(g.output):
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]
        kind = "input" if vi in g.input else "output"
        lines.append(f"  {kind} {vi.name} {dims}")
    if g.functions if hasattr(g, "functions") else False:
        pass
    if m.functions:
        lines.append(f"  local functions: {[(f.domain, f.name) for f in m.functions]}")
    counts = collections.Counter((n.domain or "", n.op_type) for n in g.node)
    lines.append("  op counts: " + ", ".join(f"{d + '::' if d else ''}{o}={c}" for (d, o), c in sorted(counts.items(), key=lambda kv: -kv[1])))
    if summary:
        return "\n".join(lines)

    def nm(x: str) -> str:
        if x in inits:
            return x + _tensor_desc(inits[x], "init")
        if x in consts:
            return x + _tensor_desc(consts[x], "const")
        return x

    for i, n in enumerate(g.node):
        if n.op_type == "Constant":
            continue
        dom = (n.domain + "::") if n.domain else ""
        attrs = " ".join(_attr_str(a) for a in n.attribute)
        lines.append(f"  {i:3d} {dom}{n.op_type}({', '.join(nm(x) for x in n.input)}) -> {', '.join(n.output)}  {attrs}")
    return "\n".join(lines)


if __name__ == "__main__":
    args = sys.argv[1:]
    summary = "--summary" in args
    for p in [a for a in args if a != "--summary"]:
        print(describe(p, summary))
