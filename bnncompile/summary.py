"""Per-layer cost of an exported BNN, computed from the ONNX graph alone.

``summarize(model_or_path, batch=1)`` fixes the symbolic batch dimension, runs ONNX shape
inference and walks the nodes. Conventions (chosen to reproduce the published numbers of the
ReActNet family, spec §1.2/§1.3/§5.7):

* **BOPs** = multiply-accumulates of the *binary* layers, i.e. Conv/Gemm/MatMul proven binary by
  :func:`bnncompile.frontend.binary_layers.find_binary_layers` (DynamicSign input, ±1 weights).
* **FLOPs** = multiply-accumulates of every *float* Conv/Gemm/MatMul: the stem, the classifier,
  float shortcuts (ReActNet-18's three downsampling 1×1 convs) and the hyper-function MLPs of the
  dynamic modules. Element-wise work (BN, PReLU, adds, thresholds) and reductions are *not* in
  FLOPs, as in the papers. ReActNet-A at 224: stem 0.108e8 + FC 0.010e8 = 0.119e8 (published
  0.12e8); ReActNet-18: stem 1.180e8 + 3 downsample 0.193e8 + FC 0.005e8 = 1.378e8 (published
  1.39e8, i.e. -0.9 %; without the FC it is 1.373e8, -1.2 %, so the FC-included count is closer).
* **OPs** = BOPs / 64 + FLOPs.
* **Dynamic overhead**: the sub-graphs that compute per-sample statistics of a feature map and
  feed them back into the feature path (DySign / INSTA thresholds, DPReLU / INSTA-PReLU shifts,
  SE-like blocks). Found structurally: a reduction (``ReduceMean``/``ReduceSum``/
  ``GlobalAveragePool``...) whose downstream nodes re-join a tensor that does not descend from it;
  the classifier head never re-joins, so it is not overhead. The nodes that only feed such a
  reduction (INSTA's ``x*x*x``) belong to it too. Reported: its MLP MACs (already inside FLOPs),
  reduction adds and element-wise ops (not inside FLOPs) and its parameters.
* **Parameters** are float initializers of rank >= 1, counted per consuming node (the exporter
  merges equal-valued constants, e.g. the zero-initialised biases of a fresh model, into one
  initializer; counting per use recovers the PyTorch count). The ±1 weights of binary layers are
  1-bit, everything else 32-bit; ``packed_bytes`` is the model size with 1-bit weights packed.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import shape_inference

from .custom_ops.dynamic_sign import is_dynamic_sign
from .errors import InputFileError, UsageError
from .frontend.binary_layers import find_binary_layers, layer_report
from .frontend.graph import GraphIndex

_MAC_OPS = ("Conv", "Gemm", "MatMul")
_REDUCE_OPS = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceL1",
               "ReduceSumSquare", "ReduceProd", "GlobalAveragePool", "GlobalMaxPool")
#: ops that move or reshape data and cost no arithmetic.
_FREE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Concat", "Split",
             "Identity", "Constant", "Shape", "Gather", "Expand", "Cast", "CastLike", "Dropout")


@dataclass
class LayerCost:
    """One ONNX node: shapes, kind and cost."""

    name: str
    op_type: str
    input_shapes: list
    output_shapes: list
    binary: bool
    binary_macs: int = 0
    float_macs: int = 0
    other_ops: int = 0  # element-wise ops and reduction adds (not in FLOPs)
    params: int = 0
    param_bits: int = 32
    dynamic: bool = False  # part of a dynamic-threshold / dynamic-activation sub-graph
    #: Conv / Gemm / MatMul only: "yes (via <spelling>)" or "no (<reason>)"
    binary_verdict: str = ""


@dataclass
class DynamicOverhead:
    """Cost of the input-dependent modules (threshold generators, dynamic activations)."""

    sites: int = 0  # reductions whose statistics flow back into the feature path
    nodes: int = 0
    params: int = 0
    mlp_macs: int = 0  # Gemm/MatMul/Conv MACs inside them (included in FLOPs)
    reduction_adds: int = 0  # elements reduced (not in FLOPs)
    elementwise_ops: int = 0  # e.g. INSTA's x^3, adds to the threshold (not in FLOPs)

    @property
    def extra_ops(self) -> int:
        """Work outside FLOPs: reduction adds + element-wise ops."""
        return self.reduction_adds + self.elementwise_ops

    @property
    def total_ops(self) -> int:
        return self.mlp_macs + self.extra_ops


@dataclass
class ModelSummary:
    """What :func:`summarize` returns; see the module docstring for the counting conventions."""

    name: str
    batch: int
    input_shapes: dict
    layers: list[LayerCost]
    dynamic: DynamicOverhead
    num_dynamic_sign: int
    num_binary_layers: int
    bops: int = 0
    flops: int = 0
    params: int = 0
    binary_params: int = 0
    packed_bytes: int = 0
    fp32_bytes: int = 0
    other_ops: int = 0
    #: nodes in custom domains bnncompile does not know (it cannot compile the model)
    unknown_ops: list[str] = field(default_factory=list)

    @property
    def float_params(self) -> int:
        return self.params - self.binary_params

    @property
    def ops(self) -> float:
        """BOPs / 64 + FLOPs (the ReActNet/Bi-Real convention)."""
        return self.bops / 64.0 + self.flops

    @property
    def ops_with_dynamic(self) -> float:
        """OPs plus the dynamic modules' reduction and element-wise work."""
        return self.ops + self.dynamic.extra_ops

    def overhead_vs(self, other: ModelSummary) -> dict:
        """Extra cost of this model over ``other`` (typically its static twin)."""
        base_ops = other.ops_with_dynamic or 1.0
        return {
            "reference": other.name,
            "extra_params": self.params - other.params,
            "extra_float_params": self.float_params - other.float_params,
            "extra_bops": self.bops - other.bops,
            "extra_flops": self.flops - other.flops,
            "extra_dynamic_ops": self.dynamic.total_ops - other.dynamic.total_ops,
            "extra_ops": self.ops_with_dynamic - other.ops_with_dynamic,
            "extra_ops_percent": 100.0 * (self.ops_with_dynamic - other.ops_with_dynamic) / base_ops,
            "extra_packed_bytes": self.packed_bytes - other.packed_bytes,
        }

    def totals(self) -> dict:
        return {
            "bops": self.bops, "flops": self.flops, "ops": self.ops,
            "ops_with_dynamic": self.ops_with_dynamic, "other_ops": self.other_ops,
            "params": self.params, "binary_params": self.binary_params,
            "float_params": self.float_params, "packed_bytes": self.packed_bytes,
            "fp32_bytes": self.fp32_bytes, "num_dynamic_sign": self.num_dynamic_sign,
            "num_binary_layers": self.num_binary_layers,
        }

    def to_dict(self) -> dict:
        dyn = asdict(self.dynamic)
        dyn.update(extra_ops=self.dynamic.extra_ops, total_ops=self.dynamic.total_ops)
        return {
            "name": self.name, "batch": self.batch, "inputs": self.input_shapes,
            "totals": self.totals(), "dynamic_overhead": dyn,
            "layers": [asdict(layer) for layer in self.layers],
        }

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def verdicts(self) -> list[LayerCost]:
        return [la for la in self.layers if la.binary_verdict]

    def render(self, *, verbose: bool = False, all_nodes: bool = False) -> str:
        """Totals first, then one line per Conv / Gemm / MatMul saying whether it is binary and
        why; ``verbose`` adds the per-node cost table (``all_nodes``: every node in it)."""
        d = self.dynamic
        layers = self.verdicts()
        n_float = sum(not la.binary for la in layers)
        lines = [
            f"model {self.name}  batch {self.batch}  inputs {self.input_shapes}",
            f"binary layers {self.num_binary_layers} of {len(layers)} Conv/Gemm/MatMul "
            f"({n_float} float)  DynamicSign nodes {self.num_dynamic_sign}",
            f"BOPs  {self.bops:.4g}   FLOPs {self.flops:.4g}   OPs (BOPs/64 + FLOPs) {self.ops:.4g}",
            f"params in the file {self.params:,} ({self.binary_params:,} 1-bit, {self.float_params:,} fp32)   "
            f"size packed {_mb(self.packed_bytes)}  fp32 {_mb(self.fp32_bytes)}",
            f"dynamic overhead: {d.sites} sites, {d.params:,} params, MLP MACs {d.mlp_macs:.4g} "
            f"(in FLOPs), reductions {d.reduction_adds:.4g} + element-wise {d.elementwise_ops:.4g} "
            f"(not in FLOPs); OPs incl. these {self.ops_with_dynamic:.4g}",
        ]
        if self.unknown_ops:
            lines.append(f"warning: {len(self.unknown_ops)} node(s) in custom domains bnncompile does "
                         f"not know (it cannot compile this model): {', '.join(self.unknown_ops[:8])}")
        if not self.num_binary_layers:
            lines.append("warning: no binary layer: this model would compile all-float")
        width = max((len(la.name) for la in layers), default=0)
        lines += ["", "layers (binary: yes/no, and why):"]
        lines += [f"  {la.name:<{width}}  {la.op_type:<7} binary: {la.binary_verdict}" for la in layers]
        if verbose or all_nodes:
            lines += ["", self._table(all_nodes)]
        return "\n".join(lines)

    def _table(self, all_nodes: bool) -> str:
        rows = [("node", "op", "in", "out", "kind", "BMACs", "FMACs", "params", "bits")]
        for la in self.layers:
            if not (all_nodes or la.binary_macs or la.float_macs or la.params or la.op_type == "DynamicSign"):
                continue
            kind = "binary" if la.binary else ("dynamic" if la.dynamic else "float")
            shape = lambda s: "x".join(map(str, s[0])) if s and s[0] is not None else "?"  # noqa: E731
            rows.append((la.name, la.op_type, shape(la.input_shapes), shape(la.output_shapes), kind,
                         _eng(la.binary_macs), _eng(la.float_macs), _eng(la.params),
                         str(la.param_bits) if la.params else ""))
        widths = [min(48, max(len(r[i]) for r in rows)) for i in range(len(rows[0]))]
        lines = ["  ".join(c[:48].ljust(w) if i < 5 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines)


def render_overhead(overhead: dict) -> str:
    o = overhead
    return (f"vs {o['reference']}: +{o['extra_params']:,} params, +{o['extra_flops']:.4g} FLOPs, "
            f"+{o['extra_dynamic_ops']:.4g} dynamic ops, {o['extra_bops']:+.4g} BOPs, "
            f"OPs {o['extra_ops_percent']:+.1f} %, size {o['extra_packed_bytes']:+,} B packed")


def _eng(v) -> str:
    if not v:
        return ""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.3g}{unit}"
    return str(v)


def _mb(b: int) -> str:
    return f"{b / 2**20:.2f} MiB"


# -- computation ---------------------------------------------------------------------------------


def _load(model_or_path) -> tuple[onnx.ModelProto, str]:
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path, model_or_path.graph.name or "model"
    if isinstance(model_or_path, (str, Path)):
        from .artifacts import load_onnx

        return load_onnx(model_or_path), Path(model_or_path).stem
    raise UsageError(f"Expected an onnx.ModelProto or a path, got {type(model_or_path).__name__}")


def _with_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """Copy with the first dimension of inputs/outputs fixed to ``batch`` and fresh shapes."""
    m = copy.deepcopy(model)
    init_names = {t.name for t in m.graph.initializer}
    for v in list(m.graph.input) + list(m.graph.output):
        if v.name in init_names or not v.type.tensor_type.HasField("shape"):
            continue
        dims = v.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
        elif dims and dims[0].dim_value != batch and v in m.graph.input:
            raise UsageError(f"input '{v.name}' has a fixed batch {dims[0].dim_value}; got --batch {batch}")
    del m.graph.value_info[:]
    try:
        return shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError and others
        raise InputFileError(f"ONNX shape inference failed: {str(exc).splitlines()[0][:300]}") from exc


def _shapes(model: onnx.ModelProto) -> dict[str, tuple | None]:
    out = {}
    for v in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        tt = v.type.tensor_type
        if tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            out[v.name] = None if any(d is None for d in dims) else tuple(dims)
    for t in model.graph.initializer:
        out[t.name] = tuple(t.dims)
    return out


def _numel(shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape is not None else 0


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _macs(node, shapes) -> int:
    """Multiply-accumulates of a Conv/Gemm/MatMul (0 when shapes are unknown)."""
    out = shapes.get(node.output[0])
    if out is None:
        return 0
    if node.op_type == "Conv":
        w = shapes.get(node.input[1])
        return _numel(out) * _numel(w[1:]) if w is not None else 0
    a = shapes.get(node.input[0])
    if a is None:
        return 0
    if node.op_type == "Gemm":
        k = a[0] if _attr(node, "transA", 0) else a[-1]
    else:
        k = a[-1]
    return _numel(out) * int(k)


def _input_dependent(model: onnx.ModelProto) -> set[str]:
    """Tensor names whose value depends on a graph input."""
    init = {t.name for t in model.graph.initializer}
    dep = {v.name for v in model.graph.input if v.name not in init}
    for node in model.graph.node:
        if any(i in dep for i in node.input if i):
            dep.update(node.output)
    return dep


def _dynamic_nodes(model: onnx.ModelProto, dep: set[str]) -> tuple[set[int], int]:
    """Indices of nodes in dynamic sub-graphs, and the number of reductions feeding them.

    *Statistics* tensors are computed only from reductions of input-dependent tensors (and
    constants). A node mixing a statistics input with a non-statistics input re-joins the feature
    path; every statistics node upstream of such a node is dynamic overhead, and so are the nodes
    that only feed dynamic nodes (INSTA's ``x*x*x`` before its ReduceMean).
    """
    nodes = list(model.graph.node)
    producer_idx = {o: i for i, n in enumerate(nodes) for o in n.output}
    stats: set[str] = set()
    stat_nodes: list[int] = []
    rejoin_inputs: set[str] = set()
    for i, node in enumerate(nodes):
        dep_inputs = [x for x in node.input if x and x in dep]
        if not dep_inputs:
            continue
        if node.op_type in _REDUCE_OPS or all(x in stats for x in dep_inputs):
            stats.update(node.output)
            stat_nodes.append(i)
        elif any(x in stats for x in dep_inputs):
            rejoin_inputs.update(x for x in dep_inputs if x in stats)
    # walk back from the re-joining statistics to the reductions
    dynamic: set[int] = set()
    todo = [producer_idx[x] for x in rejoin_inputs if x in producer_idx]
    while todo:
        i = todo.pop()
        if i in dynamic:
            continue
        dynamic.add(i)
        if nodes[i].op_type in _REDUCE_OPS:
            continue
        todo.extend(producer_idx[x] for x in nodes[i].input if x in stats and x in producer_idx)
    sites = sum(nodes[i].op_type in _REDUCE_OPS for i in dynamic)
    consumers: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        for x in n.input:
            if x in producer_idx:
                consumers.setdefault(producer_idx[x], []).append(i)
    graph_outputs = {o.name for o in model.graph.output}
    changed = True
    while changed:
        changed = False
        for i in range(len(nodes) - 1, -1, -1):
            if i in dynamic or nodes[i].op_type == "Constant":
                continue
            cons = consumers.get(i, [])
            if cons and all(c in dynamic for c in cons) and not set(nodes[i].output) & graph_outputs \
                    and any(x in dep for x in nodes[i].input):
                dynamic.add(i)
                changed = True
    return dynamic, sites


def _unknown_custom_ops(model: onnx.ModelProto) -> list[str]:
    from .custom_ops import registry

    return [f"{n.name} ({n.domain}::{n.op_type})" for n in model.graph.node
            if n.domain not in ("", "ai.onnx") and registry.lookup(n.domain, n.op_type) is None]


def summarize(model_or_path, *, batch: int = 1) -> ModelSummary:
    """Cost summary of an exported model (path or ModelProto); see the module docstring."""
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise UsageError(f"Expected batch to be a positive integer, got {batch!r}")
    from .frontend import prepare

    model, name = _load(model_or_path)
    # every spelling of a sign canonicalised, as compile sees it; unknown custom ops reported
    inferred = _with_batch(prepare(model, check_custom=False), batch)
    shapes = _shapes(inferred)
    index = GraphIndex(inferred)
    binary = find_binary_layers(inferred, index)
    verdicts = layer_report(inferred, index)
    binary_weights = {layer.node.input[1] for layer in binary.values() if layer.weight is not None}
    float_inits = {t.name: t for t in inferred.graph.initializer
                   if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                      onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
                   and len(t.dims) >= 1}
    dep = _input_dependent(inferred)
    dyn_idx, sites = _dynamic_nodes(inferred, dep)
    init_names = {t.name for t in inferred.graph.initializer}

    layers, dyn = [], DynamicOverhead(sites=sites, nodes=len(dyn_idx))
    totals = dict(bops=0, flops=0, params=0, binary_params=0, other_ops=0)
    for i, node in enumerate(inferred.graph.node):
        if node.op_type == "Constant":
            continue
        is_bin = node.output[0] in binary
        macs = _macs(node, shapes) if node.op_type in _MAC_OPS and node.domain in ("", "ai.onnx") else 0
        other = 0
        if not macs:
            if node.op_type in _REDUCE_OPS:
                other = _numel(shapes.get(node.input[0]))
            elif node.op_type not in _FREE_OPS and not is_dynamic_sign(node) and node.output:
                other = _numel(shapes.get(node.output[0]))
        params = sum(_numel(tuple(float_inits[x].dims)) for x in set(node.input) if x in float_inits)
        bits = 1 if is_bin and any(x in binary_weights for x in node.input) else 32
        layer = LayerCost(
            name=node.name or node.output[0], op_type=node.op_type,
            input_shapes=[list(shapes[x]) if shapes.get(x) is not None else None
                          for x in node.input if x and x not in init_names],
            output_shapes=[list(shapes[x]) if shapes.get(x) is not None else None for x in node.output],
            binary=is_bin, binary_macs=macs if is_bin else 0, float_macs=0 if is_bin else macs,
            other_ops=other, params=params, param_bits=bits, dynamic=i in dyn_idx,
            binary_verdict=verdicts.get(node.name, ""),
        )
        layers.append(layer)
        totals["bops"] += layer.binary_macs
        totals["flops"] += layer.float_macs
        totals["other_ops"] += other
        totals["params"] += params
        if bits == 1:
            # only the ±1 weight is 1-bit; a bias on a binary Gemm stays fp32
            totals["binary_params"] += sum(_numel(tuple(float_inits[x].dims))
                                           for x in set(node.input) if x in binary_weights)
        if layer.dynamic:
            dyn.params += params
            dyn.mlp_macs += layer.float_macs
            if node.op_type in _REDUCE_OPS:
                dyn.reduction_adds += other
            else:
                dyn.elementwise_ops += other

    float_params = totals["params"] - totals["binary_params"]
    return ModelSummary(
        name=name, batch=batch,
        input_shapes={v.name: list(shapes.get(v.name) or ()) for v in inferred.graph.input
                      if v.name not in init_names},
        layers=layers, dynamic=dyn,
        num_dynamic_sign=sum(is_dynamic_sign(n) for n in inferred.graph.node),
        num_binary_layers=len(binary),
        unknown_ops=_unknown_custom_ops(inferred),
        packed_bytes=(totals["binary_params"] + 7) // 8 + 4 * float_params,
        fp32_bytes=4 * totals["params"],
        **totals,
    )
