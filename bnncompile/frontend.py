"""ONNX → TVM Relax: TVM's importer for standard ops, our converters for the BNN parts.

TVM's ONNX importer dispatches on ``op_type`` alone and rejects unknown ops up front, so before
import we give the nodes we own an unambiguous op type (``bnncompile::...``) and subclass the
importer to convert those:

* ``com.bnncompile::DynamicSign`` → float ±1 (``custom_ops.dynamic_sign.relax_convert``). The
  converter also remembers its (X, T) so a binary consumer can pack bits straight from X and T;
  when every consumer is binary the float ±1 tensor is dead and Relax's DCE drops it.
* a Conv / Gemm / MatMul proven binary by :mod:`bnncompile.graph` → ``bitpack(X, T)`` +
  ``bconv2d`` / ``bdense`` / ``bbatch_matmul`` PrimFuncs from ``bnncompile.schedules`` via
  ``call_tir``. A following per-output-channel constant ``Mul`` (the mean|W| scale) is folded
  into the kernel's output transform, so the popcount result never exists as a float tensor.

* the float chain after a binary conv (BN, residual add, RPReLU's shifts and slope, ...) →
  the conv kernel's epilogue (:mod:`bnncompile.epilogue`); its tail node emits the fused kernel.
  When the chain's output feeds a DynamicSign with a constant threshold, the same kernel also
  writes the packed bits that sign's binary consumers read (no separate bit-packing pass).
* on CPUs: float Conv with constant weights → blocked float conv kernel (channel-blocked output
  when only a MaxPool reads it); 2-D MaxPool → separable max-pool kernel; AveragePool with
  stride = kernel → average-pool kernel.
* ``ReduceMean`` over H, W (of x, ``x*x`` or ``x*x*x``) → one reduction of x; a dynamic PReLU
  (DyBNN, INSTA) whose output is pooled that way → one kernel computing the PReLU and the pools.

Everything else (LayerNorm, softmax, threshold MLPs, ...) goes through TVM's own converters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import onnx

from .custom_ops import registry as custom_registry
from .custom_ops.dynamic_sign import DOMAIN as DS_DOMAIN
from .custom_ops.dynamic_sign import OP_TYPE as DS_OP
from .custom_ops.dynamic_sign import is_dynamic_sign
from .custom_ops.dynamic_sign import relax_convert as dynamic_sign_to_relax
from .custom_ops.dynamic_sign import verify_node as verify_dynamic_sign
from .epilogue import Epilogue, match_chain, merge_concat, value_shapes
from .errors import UnsupportedModelError, node_label
from .graph import BinaryLayer, GraphIndex, find_binary_layers, per_channel

MANGLE = "bnncompile::"
OP_SIGN = MANGLE + "DynamicSign"
OP_BCONV = MANGLE + "BinaryConv"
OP_BDENSE = MANGLE + "BinaryDense"
OP_BBMM = MANGLE + "BinaryBatchMatMul"
OP_FOLDED = MANGLE + "FoldedScale"  # a Mul whose scale went into the binary kernel
OP_FCONV = MANGLE + "FloatConv"  # a float Conv with constant weights -> blocked CPU kernel
OP_MAXPOOL = MANGLE + "MaxPool"  # 2-D MaxPool -> separable CPU kernel
OP_AVGPOOL = MANGLE + "AveragePool"  # 2-D AveragePool, stride = kernel, no pads -> CPU kernel
OP_EPILOGUE = MANGLE + "FusedEpilogue"  # last node of a chain fused into a binary conv's epilogue
OP_POWER_MEAN = MANGLE + "PowerMean"  # ReduceMean over H, W of x*x or x*x*x (INSTA statistics)
OP_PRELU_STATS = MANGLE + "PreluStats"  # a dynamic PReLU whose output's H, W means it also computes


@dataclass
class FrontendOptions:
    batch: int = 1
    #: lower binary layers to bit-packed kernels (False: everything float, for debugging parity)
    binary_kernels: bool = True
    #: extra graph outputs to expose (e.g. every DynamicSign output for per-layer parity)
    extra_outputs: tuple[str, ...] = ()
    #: run BN / residual / RPReLU chains after binary convs in the conv's epilogue
    fuse_epilogues: bool = True


@dataclass
class PreluStats:
    """``y = Where(d >= 0, d, slope * d) + shift_out``, ``d = x - shift_in`` (DyBNN's DPReLU,
    INSTA's PReLU: shifts and slope per sample and channel) and the ReduceMean nodes over H, W
    of ``y**p`` it computes alongside, as (node name, p)."""

    x: str
    shift_in: str
    slope: str
    shift_out: str
    means: list[tuple[str, int]]
    nodes: list[str]  # Sub, GreaterOrEqual, Mul, Where, Add


@dataclass
class LoweringPlan:
    """What the pre-pass decided, keyed by ONNX node name."""

    binary: dict[str, BinaryLayer] = field(default_factory=dict)
    #: binary node name -> (scale vector [K], Mul node name) folded into its epilogue
    folded_scale: dict[str, tuple[np.ndarray, str]] = field(default_factory=dict)
    #: tail node name -> the float chain a binary conv computes in its epilogue
    #: (bnncompile.epilogue); ``fused_convs`` maps the conv's name to that tail
    epilogues: dict[str, Epilogue] = field(default_factory=dict)
    fused_convs: dict[str, str] = field(default_factory=dict)
    #: ReduceMean node name -> (x, power, keepdims): E[x^p] over H, W in one pass over x
    power_means: dict[str, tuple[str, int, bool]] = field(default_factory=dict)
    #: a dynamic PReLU's last Add -> :class:`PreluStats`: the PReLU runs as one kernel that also
    #: computes the power means of its output (the next threshold's statistics)
    prelu_stats: dict[str, PreluStats] = field(default_factory=dict)
    #: float Conv nodes lowered to bnncompile's blocked float conv (CPU targets)
    float_convs: set[str] = field(default_factory=set)
    #: MaxPool nodes lowered to bnncompile's separable max-pool kernel (CPU targets)
    max_pools: set[str] = field(default_factory=set)
    #: AveragePool nodes (stride = kernel, no padding) lowered to bnncompile's kernel (CPU targets)
    avg_pools: set[str] = field(default_factory=set)
    #: float convs whose output only such a MaxPool reads: written channel-blocked (NCHWc)
    pooled_float_convs: set[str] = field(default_factory=set)
    #: DynamicSign output -> "nchw" | "last": how its binary consumers pack it (one pack kernel
    #: per sign, shared by all consumers; the debug build unpacks these bits for parity)
    sign_layout: dict[str, str] = field(default_factory=dict)
    #: kernel symbol -> {"layer": ONNX node name, "kind": ..., "binary_macs"/"float_macs": n,
    #: "calls": n}; lets bench attribute time per layer and compute achieved G binary-MAC/s
    kernels: dict[str, dict] = field(default_factory=dict)


def _static_input_shapes(model: onnx.ModelProto, batch: int) -> dict[str, list[int]]:
    inits = {t.name for t in model.graph.initializer}
    shapes = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = []
        for i, d in enumerate(inp.type.tensor_type.shape.dim):
            if d.HasField("dim_value"):
                dims.append(d.dim_value)
            elif i == 0:
                dims.append(batch)
            else:
                raise UnsupportedModelError(
                    f"input '{inp.name}' has symbolic dimension {i} ('{d.dim_param}'); only the "
                    "batch dimension may be symbolic")
        shapes[inp.name] = dims
    return shapes


def _unique_names(model: onnx.ModelProto) -> None:
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.name or node.op_type}__{i}"
        seen.add(node.name)


def _is_plain_float_conv(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """2-D, groups=1, explicit pads, constant weight (and bias): our blocked kernel handles it."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return False
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    w = index.constant(node.input[1])
    bias_ok = len(node.input) < 3 or not node.input[2] or index.constant(node.input[2]) is not None
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    return (w is not None and w.ndim == 4 and w.dtype == np.float32 and bias_ok
            and int(attrs.get("group", 1)) == 1 and auto_pad in (b"NOTSET", "NOTSET"))


def _is_plain_max_pool(node: onnx.NodeProto) -> bool:
    """2-D MaxPool, explicit pads, no dilation / ceil mode / indices output."""
    if node.op_type != "MaxPool" or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return False
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return (len(attrs.get("kernel_shape", [])) == 2 and not attrs.get("ceil_mode", 0)
            and all(d == 1 for d in attrs.get("dilations", [1, 1]))
            and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))


def _is_plain_avg_pool(node: onnx.NodeProto) -> bool:
    """2-D AveragePool whose windows tile the map: stride = kernel, no padding, no ceil mode
    (the downsampling shortcuts of ResNet / ReActNet)."""
    if node.op_type != "AveragePool" or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return False
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    k = list(attrs.get("kernel_shape", []))
    return (len(k) == 2 and list(attrs.get("strides", [1, 1])) == k and not any(attrs.get("pads", [0] * 4))
            and not attrs.get("ceil_mode", 0) and all(d == 1 for d in attrs.get("dilations", [1, 1]))
            and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))


def plan_lowering(model: onnx.ModelProto, index: GraphIndex, *, float_convs: bool = True,
                  fuse_epilogues: bool = True) -> LoweringPlan:
    plan = LoweringPlan()
    if float_convs:  # CPU-only kernels
        plan.float_convs = {n.name for n in model.graph.node if _is_plain_float_conv(index, n)}
        plan.max_pools = {n.name for n in model.graph.node if _is_plain_max_pool(n)}
        plan.avg_pools = {n.name for n in model.graph.node if _is_plain_avg_pool(n)}
    outputs = {o.name for o in model.graph.output}
    layouts: dict[str, set[str]] = {}
    for out_name, layer in find_binary_layers(model, index).items():
        plan.binary[layer.node.name] = layer
        plan.float_convs.discard(layer.node.name)
        packed = layer.signs if layer.kind != "batch_matmul" or layer.b_transposed else layer.signs[:1]
        for sign in packed:
            layouts.setdefault(sign.output[0], set()).add("nchw" if layer.kind == "conv" else "last")
        consumers = index.consumers.get(out_name, [])
        if out_name in outputs or len(consumers) != 1 or consumers[0].op_type != "Mul":
            continue
        mul = consumers[0]
        other = mul.input[1] if mul.input[0] == out_name else mul.input[0]
        const = index.constant(other)
        if layer.kind == "conv":
            k = layer.weight.shape[0]
            vec = per_channel(const, k, 3, max_ndim=4)
        elif layer.kind == "dense":
            k = _dense_weight(layer).shape[0]
            vec = per_channel(const, k, 1)
        else:
            vec = const.reshape(-1)[:1].astype(np.float32) if const is not None and const.size == 1 else None
        if vec is not None:
            plan.folded_scale[layer.node.name] = (vec, mul.name)
    plan.sign_layout = {k: next(iter(v)) for k, v in layouts.items() if len(v) == 1}
    if fuse_epilogues:
        _plan_epilogues(plan, index, value_shapes(model), outputs)
        plan.pooled_float_convs = {node.name for node in model.graph.node if node.name in plan.float_convs
                                   and _only_read_by(index, node.output[0], plan.max_pools, outputs)}
    plan.power_means = _plan_power_means(model, index, outputs)
    if fuse_epilogues:
        plan.prelu_stats = _plan_prelu_stats(index, plan.power_means, outputs)
    return plan


def _only_read_by(index: GraphIndex, tensor: str, readers: set[str], keep: set[str]) -> bool:
    """``tensor`` has one consumer, one of ``readers``, and is not a graph output."""
    consumers = index.consumers.get(tensor, [])
    return tensor not in keep and len(consumers) == 1 and consumers[0].name in readers


def _plan_prelu_stats(index: GraphIndex, power_means: dict, keep: set[str]) -> dict:
    """Dynamic PReLUs (ONNX: Sub → GreaterOrEqual(·, 0) → Mul(slope, ·) → Where → Add) whose
    output is pooled over H, W: DyBNN's DPReLU feeding the next DySign's pool, INSTA's PReLU
    feeding E[y] / E[y³].  The PReLU pass and those pools read the same activation; one kernel
    (schedules.compute.prelu_stats) writes y and sums its powers while they are in registers.
    Shapes are checked at import; a PReLU that does not fit there is imported as it is."""
    by_src: dict[str, list] = {}
    for name, (src, power, _) in power_means.items():
        by_src.setdefault(src, []).append((name, power))
    found = {}
    for y, means in by_src.items():
        add = index.producer.get(y)
        if add is None or add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
            continue
        match = _match_dynamic_prelu(index, add, keep)
        if match is not None:
            found[add.name] = PreluStats(*match[:4], means=sorted(means), nodes=match[4])
    return found


def _match_dynamic_prelu(index: GraphIndex, add: onnx.NodeProto, keep: set[str]):
    """(x, shift_in, slope, shift_out, nodes) if ``add`` ends a PReLU with tensor shifts."""
    def only(t, n_uses=1):
        node = index.producer.get(t)
        ok = (node is not None and node.domain in ("", "ai.onnx") and t not in keep
              and len(index.consumers.get(t, [])) == n_uses)
        return node if ok else None

    for w_in, out_in in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        where = only(w_in)
        if where is None or where.op_type != "Where":
            continue
        ge, mul = only(where.input[0]), only(where.input[2])
        d = where.input[1]
        sub = only(d, n_uses=3)
        if (ge is None or mul is None or sub is None or ge.op_type != "GreaterOrEqual"
                or mul.op_type != "Mul" or sub.op_type != "Sub" or ge.input[0] != d or d not in mul.input):
            continue
        zero = index.constant(ge.input[1])
        if zero is None or zero.size != 1 or float(zero.reshape(-1)[0]) != 0.0:
            continue
        slope = mul.input[1] if mul.input[0] == d else mul.input[0]
        return sub.input[0], sub.input[1], slope, out_in, [sub.name, ge.name, mul.name, where.name, add.name]
    return None


def _plan_power_means(model: onnx.ModelProto, index: GraphIndex, keep: set[str]) -> dict:
    """Every ``ReduceMean`` over H, W (the thresholds' statistics), as one reduction of x.

    ``ReduceMean(Mul(Mul(x, x), x), axes=[2, 3])`` (INSTA's E[x³]; E[x²] likewise): TVM fuses
    the mean with its consumers but not with the Mul producer, so x³ was written out as a whole
    tensor and read back.  Plain means (power 1) go the same way so that the reduction can run
    over the flattened H*W row (``_power_mean``)."""
    found = {}
    for node in model.graph.node:
        keepdims = _hw_mean(index, node)
        if keepdims is None:
            continue
        match = _power_of(index, node.input[0], keep) or (node.input[0], 1)
        found[node.name] = (*match, keepdims)
    return found


def _power_of(index: GraphIndex, name: str, keep: set[str]) -> tuple[str, int] | None:
    """``name`` = x*x → (x, 2); (x*x)*x or x*(x*x) → (x, 3); intermediates used only here."""
    def single_use_mul(t):
        node = index.producer.get(t)
        ok = (node is not None and node.op_type == "Mul" and node.domain in ("", "ai.onnx")
              and t not in keep and len(index.consumers.get(t, [])) == 1)
        return node if ok else None

    top = single_use_mul(name)
    if top is None:
        return None
    a, b = top.input
    if a == b:
        return a, 2
    for sq, x in ((a, b), (b, a)):
        inner = single_use_mul(sq)
        if inner is not None and inner.input[0] == inner.input[1] == x:
            return x, 3
    return None


def _conv_scale_bias(plan: LoweringPlan, index: GraphIndex, node: onnx.NodeProto, k: int):
    """The kernel's own ``acc * scale + bias`` from the conv bias and the folded scale Mul."""
    bias = index.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if len(node.input) > 2 and node.input[2] and bias is None:
        raise UnsupportedModelError(f"node {node_label(node)}: conv bias must be a constant")
    return _scale_bias(plan, node.name, k, None if bias is None else bias.reshape(-1).astype(np.float32))


def _scale_bias(plan: LoweringPlan, name: str, k: int, bias: np.ndarray | None):
    """(scale, bias) of a binary kernel's ``acc * scale + bias``: the folded Mul and the layer's
    own bias; (None, None) for a plain integer output."""
    folded = plan.folded_scale.get(name)
    scale = folded[0] if folded is not None else None
    if scale is not None and bias is not None:
        bias = bias * scale  # (acc + b) * s == acc * s + b * s
    if scale is None and bias is not None:
        scale = np.ones(k, np.float32)
    return scale, bias


def _plan_epilogues(plan: LoweringPlan, index: GraphIndex, shapes: dict, keep: set[str]) -> None:
    for name, layer in plan.binary.items():
        if layer.kind != "conv":
            continue
        k = layer.weight.shape[0]
        # a folded scale Mul is the conv output's only consumer: the chain starts after it
        start = layer.node.output[0]
        if name in plan.folded_scale:
            start = index.consumers[start][0].output[0]
        scale, bias = _conv_scale_bias(plan, index, layer.node, k)
        epi = match_chain(index, layer.node, start, k, scale, bias, shapes=shapes, keep=keep)
        if epi is not None:
            plan.epilogues[epi.tail] = epi
            plan.fused_convs[name] = epi.tail
            epi.pack = _packable_sign(plan, index, epi)
    by_output = {epi.output: epi for epi in plan.epilogues.values()}
    for node in index.model.graph.node:
        if node.op_type != "Concat":
            continue
        parts = [by_output.get(name) for name in node.input]
        if len(parts) < 2 or any(p is None for p in parts):
            continue
        merged = merge_concat(index, node, parts, [plan.binary[p.conv] for p in parts],
                              shapes=shapes, keep=keep)
        if merged is None:
            continue
        for part in parts:
            del plan.epilogues[part.tail]
            plan.fused_convs[part.conv] = merged.tail
        plan.epilogues[merged.tail] = merged
        merged.pack = _packable_sign(plan, index, merged)


def _packable_sign(plan: LoweringPlan, index: GraphIndex, epi: Epilogue):
    """A DynamicSign of the chain's output whose bits only binary convs read, with a constant
    per-channel threshold (ReActNet, Bi-Real) → (sign output, threshold [K]); DyBNN / INSTA
    thresholds are pooled from the output itself, so the conv cannot know them yet."""
    k = len(epi.scale)
    for sign in index.consumers.get(epi.output, []):
        if (not is_dynamic_sign(sign) or sign.input[0] != epi.output
                or plan.sign_layout.get(sign.output[0]) != "nchw"):
            continue
        t = sign.input[1] if len(sign.input) > 1 and sign.input[1] else None
        if t is None:
            return sign.output[0], np.zeros(k, np.float32)
        thr = per_channel(index.constant(t), k, 3, max_ndim=4)
        if thr is not None:
            return sign.output[0], thr
    return None


def _hw_mean(index: GraphIndex, node: onnx.NodeProto) -> bool | None:
    """keepdims of a ``ReduceMean`` over axes {2, 3} of a 4-D tensor, else None."""
    if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx"):
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    axes = index.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    axes = attrs.get("axes") if axes is None else axes.reshape(-1).tolist()
    if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]:
        return None
    return bool(attrs.get("keepdims", 1))


def _dense_weight(layer: BinaryLayer) -> np.ndarray:
    """±1 weight as ``[N_out, K_in]`` whatever the node stored."""
    node, w = layer.node, layer.weight
    # Decide on transB alone: from_onnx renames the node to bnncompile::BinaryDense before import,
    # so its op_type is no longer "Gemm" there. MatMul has no transB and Gemm's default is 0.
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return w if trans_b else w.T


def _conv_geometry(node: onnx.NodeProto, layer: BinaryLayer):
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        raise UnsupportedModelError(f"node {node_label(node)}: auto_pad={auto_pad} is not supported; "
                                    "export with explicit pads")
    kh, kw = layer.weight.shape[2:]
    strides = list(attrs.get("strides", [1, 1]))
    dilations = list(attrs.get("dilations", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0])) if auto_pad == "NOTSET" else [0, 0, 0, 0]
    if len(strides) != 2 or len(pads) != 4:
        raise UnsupportedModelError(f"node {node_label(node)}: only 2-D convolutions are supported")
    top, left, bottom, right = pads[0], pads[1], pads[2], pads[3]
    pad_value = "zero"
    if layer.pad_node is not None:
        pt, pl, pb, pr = layer.pads
        if layer.pad_value == 1.0 and not any(pads):
            pad_value = "one"
            top, left, bottom, right = pt, pl, pb, pr
        elif layer.pad_value == 0.0:
            top, left, bottom, right = top + pt, left + pl, bottom + pb, right + pr
        else:
            raise UnsupportedModelError(
                f"node {node_label(node)}: Pad value {layer.pad_value} combined with conv pads "
                f"{pads} has no exact bit-packed form")
    return (kh, kw), tuple(strides), (top, left, bottom, right), tuple(dilations), pad_value


def _conv_out(size: int, k: int, stride: int, lo: int, hi: int, dil: int) -> int:
    return (size + lo + hi - dil * (k - 1) - 1) // stride + 1


def _make_importer_class():
    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend as of

    class BNNGraphImporter(of.ONNXGraphImporter):
        """TVM's importer plus bnncompile's converters (see the module docstring)."""

        def __init__(self, shape_dict, *, plan: LoweringPlan, nodes_by_name, index, target,
                     debug_outputs=()):
            super().__init__(shape_dict, "float32")
            self._plan = plan
            self._bnn_nodes = nodes_by_name
            self._index = index
            self._target = target
            self._sign_inputs: dict[str, tuple] = {}
            self._kernel_gvs: dict[tuple, object] = {}
            self._packs: dict[tuple[str, bool], object] = {}
            #: (PReLU output, p) -> its mean of y**p over H, W [N, C], from the fused kernel
            self._prelu_means: dict[tuple[str, int], object] = {}
            self._debug_outputs = set(debug_outputs)

        def _check_for_unsupported_ops(self, graph):
            convert_map = of._get_convert_map()
            bad = [n for n in graph.node if not n.op_type.startswith(MANGLE)
                   and n.op_type not in convert_map and n.op_type not in ("If", "Constant")]
            if bad:
                listed = "; ".join(node_label(n) for n in bad[:10])
                more = f" (+{len(bad) - 10} more)" if len(bad) > 10 else ""
                raise UnsupportedModelError(
                    f"{len(bad)} node(s) use ops TVM's ONNX frontend cannot convert: {listed}{more}")

        def _convert_operator(self, op_name, inputs, attrs, opset):
            if not op_name.startswith(MANGLE):
                try:
                    return super()._convert_operator(op_name, inputs, attrs, opset)
                except Exception as exc:  # TVM's converters raise assorted types; name the node
                    name = attrs.get("tvm_custom", {}).get("name", "<unnamed>")
                    raise UnsupportedModelError(
                        f"node '{name}' (ai.onnx::{op_name}): TVM's converter failed: "
                        f"{str(exc).splitlines()[0][:200]}") from exc
            node = self._bnn_nodes[attrs["tvm_custom"]["name"]]
            try:
                if op_name == OP_SIGN:
                    t = inputs[1] if len(inputs) > 1 else None
                    out = node.output[0]
                    self._sign_inputs[out] = (inputs[0], t)
                    layout = self._plan.sign_layout.get(out)
                    if out in self._debug_outputs and layout is not None:
                        # expose the bits the binary kernels consume, not a float recomputation
                        packed = self._pack(inputs[0], t, last_axis=layout == "last", key=out)
                        return self._unpack(packed, self._shape_of(inputs[0]), layout)
                    return dynamic_sign_to_relax(self.bb, [inputs[0], t])
                if op_name == OP_FOLDED:
                    # the producer already applied this scale in its epilogue
                    idx = 0 if self._index.producer.get(node.input[0]) is not None and \
                        self._index.producer[node.input[0]].name in self._plan.folded_scale else 1
                    return inputs[idx]
                if op_name == OP_FCONV:
                    return self._float_conv(node, inputs)
                if op_name == OP_EPILOGUE:
                    return self._fused_epilogue(node)
                if op_name == OP_MAXPOOL:
                    return self._max_pool(node, inputs, attrs, opset)
                if op_name == OP_AVGPOOL:
                    return self._avg_pool(node, inputs, attrs, opset)
                if op_name == OP_POWER_MEAN:
                    return self._power_mean(node, inputs, attrs, opset)
                if op_name == OP_PRELU_STATS:
                    return self._prelu_stats(node, inputs, attrs, opset)
                layer = self._plan.binary[node.name]
                if op_name == OP_BCONV:
                    return self._binary_conv(node, layer, inputs)
                if op_name == OP_BDENSE:
                    return self._binary_dense(node, layer, inputs)
                if op_name == OP_BBMM:
                    return self._binary_bmm(node, layer)
            except UnsupportedModelError:
                raise
            except Exception as exc:
                raise UnsupportedModelError(f"node {node_label(node)}: lowering failed: {exc}") from exc
            raise UnsupportedModelError(f"node {node_label(node)}: no converter for {op_name}")

        # -- helpers ------------------------------------------------------------------------

        def _shape_of(self, expr):
            return [int(s) for s in expr.ty.shape]

        def _call(self, prim_func, args, out_shape, out_dtype, *, layer=None, kind="bitpack",
                  binary_macs=0, float_macs=0, extra_outputs=()):
            """Emit ``call_tir``; with ``extra_outputs`` [(shape, dtype)] the kernel writes those
            after the main output and the result is [main, *extras]."""
            name = prim_func.attrs["global_symbol"]
            info = self._plan.kernels.setdefault(
                name, {"layers": [], "kind": kind, "binary_macs": int(binary_macs),
                       "float_macs": int(float_macs), "calls": 0})
            info["calls"] += 1
            if layer is not None:
                info["layers"].append(layer)
            gv = self._kernel_gvs.get(name)
            if gv is None:
                # Opaque: FuseTIR cannot merge an already scheduled kernel with its neighbours
                # ("inconsistent buffers"), and the kernels fuse their own epilogues.
                prim_func = prim_func.with_attr("op_pattern", 8)
                gv = self.bb.add_func(prim_func, name)
                self._kernel_gvs[name] = gv
            out_ty = relax.TensorType(out_shape, out_dtype)
            if not extra_outputs:
                return self.bb.emit(relax.call_tir(gv, args, out_ty=out_ty))
            tys = [out_ty] + [relax.TensorType(shp, dt) for shp, dt in extra_outputs]
            res = self.bb.emit(relax.call_tir(gv, args, out_ty=tys))
            return [self.bb.emit(relax.TupleGetItem(res, i)) for i in range(len(tys))]

        def _sign_operand(self, sign_node):
            try:
                return self._sign_inputs[sign_node.output[0]]
            except KeyError as exc:
                raise UnsupportedModelError(
                    f"DynamicSign {node_label(sign_node)} was not converted before its consumer") from exc

        def _threshold(self, x, t):
            """T as an explicit tensor (scalar 0 when absent) with rank <= rank(x)."""
            if t is None:
                return relax.const(np.zeros((), np.float32))
            return t

        def _pack(self, x, t, *, last_axis: bool, key: str | None = None):
            """bitpack(x >= t); ``key`` (the DynamicSign output) shares one pack among consumers."""
            from .schedules import registry as kernels

            if key is not None and (key, last_axis) in self._packs:
                return self._packs[(key, last_axis)]
            packed = self._pack_uncached(x, self._threshold(x, t), kernels, last_axis)
            if key is not None:
                self._packs[(key, last_axis)] = packed
            return packed

        def _unpack(self, packed, shape, layout):
            """Float ±1 in the DynamicSign's own layout from packed words (debug builds)."""
            from tvm import te, tirx

            def compute(p):
                one, neg = tirx.const(1.0, "float32"), tirx.const(-1.0, "float32")

                def bit(word, c):
                    shift = (c % 64).astype("uint64")
                    return ((word >> shift) & tirx.const(1, "uint64")) == tirx.const(1, "uint64")

                if layout == "nchw":
                    return te.compute(shape, lambda n, c, h, w: tirx.Select(
                        bit(p[n, h, w, c // 64], c), one, neg), name="unpack_bits")
                return te.compute(shape, lambda *i: tirx.Select(
                    bit(p[(*i[:-1], i[-1] // 64)], i[-1]), one, neg), name="unpack_bits")

            return self.bb.emit_te(compute, packed, primfunc_name_hint="unpack_bits")

        def _pack_uncached(self, x, t, kernels, last_axis: bool):
            xs, ts = self._shape_of(x), self._shape_of(t)
            if last_axis:
                pf = kernels.make_bitpack_last(xs, ts, self._target)
                out = [*xs[:-1], (xs[-1] + 63) // 64]
            elif len(xs) == 4 and ([1] * (4 - len(ts)) + ts)[2:] == [1, 1]:
                # A threshold constant over H, W: pack the [N, C, 1, H*W] view (free reshapes on
                # both sides).  One row of H*W vectorises where a row of W does not (14, 28):
                # 512x14x14 44 -> 13 us, 256x28x28 32 -> 13 us (examples/bench_micro.py bitpack).
                n, c, h, w = xs
                flat = self.bb.emit(relax.op.reshape(x, [n, c, 1, h * w]))
                pf = kernels.make_bitpack([n, c, 1, h * w], ts, self._target)
                words = self._call(pf, [flat, t], [n, 1, h * w, (c + 63) // 64], "uint64")
                return self.bb.emit(relax.op.reshape(words, [n, h, w, (c + 63) // 64]))
            else:
                pf = kernels.make_bitpack(xs, ts, self._target)
                out = [xs[0], xs[2], xs[3], (xs[1] + 63) // 64]
            return self._call(pf, [x, t], out, "uint64")

        def _binary_conv(self, node, layer, inputs):
            if node.name in self._plan.fused_convs:
                # The chain's tail node emits the kernel (its residual inputs may come later in
                # the graph); until then the chain computes on a placeholder that DCE removes.
                xs = self._shape_of(self._sign_operand(layer.signs[0])[0])
                return self.bb.emit(relax.op.zeros(self._conv_out_shape(node, layer, xs), "float32"))
            scale, bias = _conv_scale_bias(self._plan, self._index, node, layer.weight.shape[0])
            return self._emit_bconv(node, layer, scale, bias)

        def _fused_epilogue(self, tail):
            epi = self._plan.epilogues[tail.name]
            node = self._bnn_nodes[epi.conv]
            layer = self._plan.binary[epi.conv]
            if epi.weight is not None:  # sibling convs under a Concat, output channels stacked
                layer = dataclasses.replace(layer, weight=epi.weight)
            post_args = []
            for kind, payload in epi.post:
                if kind == "residual":
                    post_args.append(self._nodes[payload])
                elif payload is not None:
                    post_args.append(relax.const(payload))
            pack = None
            if epi.pack is not None:
                sign_out, thr = epi.pack
                pack = (sign_out, relax.const(thr.reshape(1, -1, 1, 1)))
            return self._emit_bconv(node, layer, epi.scale, epi.bias, epi.post_kinds, post_args,
                                    fused=epi.nodes, pack=pack, residual_channels=epi.residual_channels,
                                    siblings=epi.siblings)

        def _conv_out_shape(self, node, layer, xs):
            kernel, stride, pads, dil, _ = _conv_geometry(node, layer)
            return [xs[0], layer.weight.shape[0],
                    *(_conv_out(xs[2 + i], kernel[i], stride[i], pads[i], pads[i + 2], dil[i])
                      for i in range(2))]

        def _emit_bconv(self, node, layer, scale, bias, post=(), post_args=(), fused=(), pack=None,
                        residual_channels=None, siblings=()):
            """``pack`` = (DynamicSign output, threshold [1, K, 1, 1]): the kernel also writes the
            packed bits of its output for that sign's binary consumers.  ``residual_channels``,
            ``siblings``: the shared shortcut's channel count and the other conv nodes when sibling
            convs under a Concat run as this one kernel (epilogue.merge_concat)."""
            from .schedules import packing
            from .schedules import registry as kernels

            x, t = self._sign_operand(layer.signs[0])
            xs = self._shape_of(x)
            if len(xs) != 4:
                raise UnsupportedModelError(f"node {node_label(node)}: binary conv needs NCHW input, got {xs}")
            _, stride, pads, dil, pad_value = _conv_geometry(node, layer)
            out_shape = self._conv_out_shape(node, layer, xs)
            res_shape = list(out_shape)
            if residual_channels is not None:
                res_shape[1] = residual_channels
            for kind, arg in zip([k for k in post if k != "relu"], post_args):
                if kind == "residual" and self._shape_of(arg) != res_shape:
                    raise UnsupportedModelError(
                        f"node {node_label(node)}: fused residual has shape {self._shape_of(arg)}, "
                        f"expected {res_shape} (graph value_info disagrees with the import)")
            pf = kernels.make_bconv2d(xs, layer.weight.shape, stride=stride, padding=pads,
                                      dilation=dil, pad_value=pad_value, with_scale=scale is not None,
                                      with_bias=bias is not None, post=post,
                                      pack_output=pack is not None,
                                      residual_channels=residual_channels, target=self._target)
            packed = self._pack(x, t, last_axis=False, key=layer.signs[0].output[0])
            args = [packed, relax.const(packing.pack_conv_weight(layer.weight))]
            if packing.needs_border_table(pads, pad_value):
                args.append(relax.const(packing.conv_border_table(
                    layer.weight, xs[2:], stride=stride, padding=pads, dilation=dil)))
            args += [relax.const(v.astype(np.float32)) for v in (scale, bias) if v is not None]
            args += list(post_args)
            if pack is not None:
                args.append(pack[1])
            dtype = "float32" if scale is not None else "int32"
            macs = int(np.prod(out_shape)) * int(np.prod(layer.weight.shape[1:]))
            packed_shape = [out_shape[0], *out_shape[2:], (out_shape[1] + 63) // 64]
            extra = [(packed_shape, "uint64")] if pack is not None else []
            y = self._call(pf, args, out_shape, dtype, layer=node.name, kind="bconv2d", binary_macs=macs,
                           extra_outputs=extra)
            if pack is not None:
                y, self._packs[(pack[0], False)] = y  # the sign's binary consumers read these
            info = self._plan.kernels[str(pf.attrs["global_symbol"])]
            info["layers"].extend(siblings)
            if fused:
                info.setdefault("fused", []).extend(fused)
            return y if dtype == "float32" else self.bb.emit(relax.op.astype(y, "float32"))

        def _float_conv(self, node, inputs):
            from .schedules import packing
            from .schedules import registry as kernels

            x = inputs[0]
            xs = self._shape_of(x)
            w = self._index.constant(node.input[1])
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            auto_pad = attrs.get("auto_pad", b"NOTSET")
            pads = list(attrs.get("pads", [0, 0, 0, 0])) if auto_pad in (b"NOTSET", "NOTSET") else [0] * 4
            stride, dil = tuple(attrs.get("strides", [1, 1])), tuple(attrs.get("dilations", [1, 1]))
            if len(xs) != 4 or len(pads) != 4:
                raise UnsupportedModelError(f"node {node_label(node)}: only 2-D convolutions are supported")
            bias = self._index.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            ob = kernels.fconv2d_block(self._target)
            out = [xs[0], w.shape[0], *(_conv_out(xs[2 + i], w.shape[2 + i], stride[i], pads[i],
                                                  pads[i + 2], dil[i]) for i in range(2))]
            macs = int(np.prod(out)) * int(np.prod(w.shape[1:]))
            # only a max-pool reads it (a ResNet stem): keep the channel blocks, the pool reads
            # them whole and transposes its 4x smaller output instead (stem 1.54 -> 1.33 ms)
            blocked = node.name in self._plan.pooled_float_convs and w.shape[0] % ob == 0
            if blocked:
                out = [out[0], out[1] // ob, *out[2:], ob]
            pf = kernels.make_fconv2d(xs, w.shape, stride=stride, padding=pads, dilation=dil,
                                      with_bias=bias is not None, out_layout="NCHWc" if blocked else "NCHW",
                                      target=self._target)
            args = [x, relax.const(packing.block_conv_weight(w, ob))]
            if bias is not None:
                args.append(relax.const(bias.astype(np.float32)))
            return self._call(pf, args, out, "float32", layer=node.name, kind="fconv2d", float_macs=macs)

        def _power_mean(self, node, inputs, attrs, opset):
            from tvm import te

            from .schedules import compute as kernels_compute

            src, power, keepdims = self._plan.power_means[node.name]
            if (src, power) in self._prelu_means:  # computed with the PReLU that made src
                m = self._prelu_means[(src, power)]
                n, c = self._shape_of(m)
                return self.bb.emit(relax.op.reshape(m, [n, c, 1, 1])) if keepdims else m
            x = self._nodes[src]
            xs = self._shape_of(x)
            if len(xs) != 4:
                return super()._convert_operator("ReduceMean", inputs, attrs, opset)
            n, c, h, w = xs
            # Reduce over the flattened H*W row (a free reshape) where that gives the float
            # glue's RowReduction wider vector lanes of partial sums than the map's rows: a row
            # of 28 takes 4 lanes, 28*28 = 784 takes 16 (a mean over 256x28x28: 23 -> 9 us).
            # Rows of 7 or 14 stay rows (7*7 = 49 has no lanes at all).
            flat = w % 16 != 0 and (h * w) % 16 == 0
            if flat:
                x = self.bb.emit(relax.op.reshape(x, [n, c, 1, h * w]))

            def compute(x):
                n, c, h, w = (int(v) for v in x.shape)
                rh, rw = te.reduce_axis((0, h), name="rh"), te.reduce_axis((0, w), name="rw")
                acc = te.compute((n, c), lambda i, j: te.sum(kernels_compute.power(x[i, j, rh, rw], power),
                                                             axis=[rh, rw]), name="power_sum")
                shape = (n, c, 1, 1) if keepdims else (n, c)
                return te.compute(shape, lambda i, j, *_: acc[i, j] / float(h * w), name="power_mean")

            return self.bb.emit_te(compute, x, primfunc_name_hint=f"mean_pow{power}")

        def _prelu_stats(self, node, inputs, attrs, opset):
            from .schedules import registry as kernels

            fused = self._plan.prelu_stats[node.name]
            x = self._nodes[fused.x]
            xs = self._shape_of(x)
            ops = [self._nodes[t] for t in (fused.shift_in, fused.slope, fused.shift_out)]
            shapes = [self._shape_of(t) for t in ops]
            per_nc = all(len(s) == 4 and s[2:] == [1, 1] and s[1] == xs[1] and s[0] in (1, xs[0])
                         for s in shapes) if len(xs) == 4 else False
            if not per_nc:  # e.g. a token PReLU, or a shift that varies over H, W
                return super()._convert_operator("Add", inputs, attrs, opset)
            n, c, h, w = xs
            powers = sorted({p for _, p in fused.means})
            # the kernel reads the map as [N, C, 1, H*W] (free reshapes) and the graph's own
            # [N|1, C, 1, 1] views of the shifts and slope
            flat = self.bb.emit(relax.op.reshape(x, [n, c, 1, h * w]))
            pf = kernels.make_prelu_stats([n, c, 1, h * w], *shapes, powers, target=self._target)
            y, *means = self._call(pf, [flat, *ops], [n, c, 1, h * w], "float32", layer=node.name,
                                   kind="prelu_stats", extra_outputs=[([n, c], "float32")] * len(powers))
            info = self._plan.kernels[str(pf.attrs["global_symbol"])]
            info.setdefault("fused", []).extend(fused.nodes[:-1] + [m for m, _ in fused.means])
            for p, m in zip(powers, means):
                self._prelu_means[(node.output[0], p)] = m
            return self.bb.emit(relax.op.reshape(y, [n, c, h, w]))

        def _max_pool(self, node, inputs, attrs, opset):
            from .schedules import registry as kernels

            x = inputs[0]
            xs = self._shape_of(x)
            if len(xs) not in (4, 5):  # 1-D / 3-D pooling: TVM's converter
                return super()._convert_operator("MaxPool", inputs, attrs, opset)
            a = {at.name: onnx.helper.get_attribute_value(at) for at in node.attribute}
            k = tuple(a["kernel_shape"])
            stride = tuple(a.get("strides", [1, 1]))
            pads = tuple(a.get("pads", [0, 0, 0, 0]))
            # 5-D: the NCHWc output of a float conv only this pool reads (_float_conv)
            pf = kernels.make_maxpool2d(xs, kernel=k, stride=stride, padding=pads, target=self._target)
            channels = xs[1] * xs[4] if len(xs) == 5 else xs[1]
            out = [xs[0], channels, *(_conv_out(xs[2 + i], k[i], stride[i], pads[i], pads[i + 2], 1)
                                      for i in range(2))]
            return self._call(pf, [x], out, "float32", layer=node.name, kind="maxpool2d")

        def _avg_pool(self, node, inputs, attrs, opset):
            from .schedules import registry as kernels

            x = inputs[0]
            xs = self._shape_of(x)
            if len(xs) != 4:
                return super()._convert_operator("AveragePool", inputs, attrs, opset)
            k = tuple(onnx.helper.get_attribute_value(
                next(a for a in node.attribute if a.name == "kernel_shape")))
            pf = kernels.make_avgpool2d(xs, kernel=k, target=self._target)
            out = [xs[0], xs[1], xs[2] // k[0], xs[3] // k[1]]
            return self._call(pf, [x], out, "float32", layer=node.name, kind="avgpool2d")

        def _binary_dense(self, node, layer, inputs):
            from .schedules import packing
            from .schedules import registry as kernels

            x, t = self._sign_operand(layer.signs[0])
            xs = self._shape_of(x)
            w = _dense_weight(layer)
            bias = None
            if node.op_type == "Gemm":
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                if float(attrs.get("alpha", 1.0)) != 1.0 or float(attrs.get("beta", 1.0)) != 1.0:
                    raise UnsupportedModelError(f"node {node_label(node)}: Gemm alpha/beta != 1")
                if len(node.input) > 2 and node.input[2]:
                    c = self._index.constant(node.input[2])
                    bias = per_channel(c, w.shape[0], 1)
                    if bias is None:
                        raise UnsupportedModelError(f"node {node_label(node)}: Gemm C must be a per-output constant")
            scale, bias = _scale_bias(self._plan, node.name, w.shape[0], bias)
            pf = kernels.make_bdense(xs, w.shape, with_scale=scale is not None,
                                     with_bias=bias is not None, target=self._target)
            packed = self._pack(x, t, last_axis=True, key=layer.signs[0].output[0])
            args = [packed, relax.const(packing.pack_dense_weight(w))]
            args += [relax.const(v.astype(np.float32)) for v in (scale, bias) if v is not None]
            dtype = "float32" if scale is not None else "int32"
            macs = int(np.prod(xs)) * w.shape[0]
            y = self._call(pf, args, [*xs[:-1], w.shape[0]], dtype, layer=node.name, kind="bdense",
                           binary_macs=macs)
            return y if dtype == "float32" else self.bb.emit(relax.op.astype(y, "float32"))

        def _binary_bmm(self, node, layer):
            from .schedules import registry as kernels

            (xa, ta), (xb, tb) = (self._sign_operand(s) for s in layer.signs)
            a_shape = self._shape_of(xa)
            if not layer.b_transposed:
                # pack B along its reduction axis (-2): transpose X and the broadcast threshold
                tb = self._threshold(xb, tb)
                tb = self.bb.emit(relax.op.broadcast_to(tb, xb.ty.shape))
                perm = [*range(len(a_shape) - 2), len(a_shape) - 1, len(a_shape) - 2]
                xb = self.bb.emit(relax.op.permute_dims(xb, perm))
                tb = self.bb.emit(relax.op.permute_dims(tb, perm))
            b_shape = self._shape_of(xb)
            folded = self._plan.folded_scale.get(node.name)
            alpha = float(folded[0][0]) if folded is not None else None
            pf = kernels.make_bbatch_matmul(a_shape, b_shape, alpha=alpha, target=self._target)
            pa = self._pack(xa, ta, last_axis=True, key=layer.signs[0].output[0])
            pb = self._pack(xb, tb, last_axis=True,
                            key=layer.signs[1].output[0] if layer.b_transposed else None)
            dtype = "float32" if alpha is not None else "int32"
            macs = int(np.prod(a_shape)) * b_shape[-2]
            y = self._call(pf, [pa, pb], [*a_shape[:-1], b_shape[-2]], dtype, layer=node.name,
                           kind="bbatch_matmul", binary_macs=macs)
            return y if dtype == "float32" else self.bb.emit(relax.op.astype(y, "float32"))

    return BNNGraphImporter


def check_custom_nodes(model: onnx.ModelProto) -> None:
    """Every non-standard node must be a registered custom op that passes its own check."""
    for node in model.graph.node:
        if node.domain in ("", "ai.onnx"):
            continue
        op = custom_registry.lookup(node.domain, node.op_type)
        if op is None:
            raise UnsupportedModelError(
                f"node {node_label(node)}: unknown custom op; bnncompile knows "
                f"{', '.join(f'{d}::{o}' for d, o in custom_registry.CUSTOM_OPS)}")
        op.verify_node(node)


def from_onnx(model: onnx.ModelProto, *, target, options: FrontendOptions | None = None):
    """Convert a bnncompile ONNX model to a Relax IRModule for ``target`` (a tvm Target)."""
    options = options or FrontendOptions()
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _unique_names(m)
    check_custom_nodes(m)
    for name in options.extra_outputs:
        m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    index = GraphIndex(m)
    cpu = target.kind.name == "llvm"
    plan = (plan_lowering(m, index, float_convs=cpu, fuse_epilogues=options.fuse_epilogues)
            if options.binary_kernels else LoweringPlan())
    folded_muls = {mul for _, mul in plan.folded_scale.values()}
    nodes_by_name = {}  # node name -> the node as written in the file (for messages)
    for node in m.graph.node:
        original = onnx.NodeProto()
        original.CopyFrom(node)
        if node.domain == DS_DOMAIN and node.op_type == DS_OP:
            verify_dynamic_sign(node)
            node.op_type, node.domain = OP_SIGN, ""
        elif node.name in plan.binary:
            kind = plan.binary[node.name].kind
            node.op_type = {"conv": OP_BCONV, "dense": OP_BDENSE, "batch_matmul": OP_BBMM}[kind]
        elif node.name in folded_muls:
            node.op_type = OP_FOLDED
        elif node.name in plan.float_convs:
            node.op_type = OP_FCONV
        elif node.name in plan.epilogues:
            node.op_type, node.domain = OP_EPILOGUE, ""
        elif node.name in plan.max_pools:
            node.op_type = OP_MAXPOOL
        elif node.name in plan.avg_pools:
            node.op_type = OP_AVGPOOL
        elif node.name in plan.power_means:
            node.op_type = OP_POWER_MEAN
        elif node.name in plan.prelu_stats:
            node.op_type = OP_PRELU_STATS
        else:
            continue
        nodes_by_name[node.name] = original
    shapes = _static_input_shapes(m, options.batch)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 18)
    importer = _make_importer_class()(shapes, plan=plan, nodes_by_name=nodes_by_name, index=index,
                                      target=target, debug_outputs=options.extra_outputs)
    import contextlib
    import io

    # TVM prints "Error converting operator ..." before re-raising; our errors already name the node.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            mod = importer.from_onnx(m.graph, opset)
        except UnsupportedModelError:
            raise
        except Exception as exc:
            raise UnsupportedModelError(f"TVM's ONNX frontend failed: {str(exc).splitlines()[0][:300]}") from exc
    return mod, plan
