"""ONNX → TVM Relax, in the order data flows:

1. :mod:`.canonicalize` — every recognised spelling of a binarizer becomes one
   ``com.bnncompile::DynamicSign`` node (rules, one module each, applied to a fixpoint);
2. :mod:`.plan` — every converter of :mod:`.converters` (one ordered registry) claims the nodes
   it will convert and records why: binary layers are proven from the graph
   (:mod:`.binary_layers`), float chains after binary convs fuse into their epilogue
   (:mod:`.epilogue`), and every Conv / Gemm / MatMul that stays float has a reason;
3. :mod:`.importer` — TVM's ONNX importer for the standard ops, the claimed nodes dispatched to
   their converters, which emit ``call_tir`` into ``bnncompile.schedules`` kernels.

Adding an ONNX pattern: one rule module under ``canonicalize/`` (a new spelling of a sign) or one
converter module under ``converters/`` (a new lowering), one line in that package's registry,
one test file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import UnsupportedModelError, node_label
from ..limits import MAX_ELEMENTS

__all__ = ["FrontendOptions", "check_custom_nodes", "from_onnx", "static_input_shapes"]


@dataclass(frozen=True)
class FrontendOptions:
    batch: int = 1
    #: lower binary layers to bit-packed kernels (False: everything float, for debugging parity)
    binary_kernels: bool = True
    #: extra graph outputs to expose (e.g. every DynamicSign output for per-layer parity)
    extra_outputs: tuple[str, ...] = ()
    #: run BN / residual / RPReLU chains after binary convs in the conv's epilogue, and the
    #: bias / residual Adds and sign-deciding chains after binary denses in the dense's
    fuse_epilogues: bool = True
    #: ONNX ``Sign`` (0 -> 0): "plus" compiles it as DynamicSign (0 -> +1) and reports each site,
    #: "refuse" stops with an error naming it (canonicalize.sign_zero_sites)
    sign_zero: str = "plus"
    #: the float convs bnncompile's kernels compute (stems, tokenizers, shortcuts): "fp32", or
    #: quantized "int16" / "int8" (schedules.quantize; CPU targets)
    conv_precision: str = "fp32"
    #: attention's Softmax x value MatMuls: "fp32", or "int8" (schedules.quantize; CPU targets)
    attention_precision: str = "fp32"
    #: the build's softmax is the polynomial one (compile's fast_math): an int8 attention
    #: product may then compute it in its own kernel
    fast_math: bool = True
    #: also build a ``debug_signs`` function returning the outputs followed by every
    #: DynamicSign's ±1 as the binary kernels consume it (one build serves ``main`` and the
    #: per-layer parity checks of ``compile --verify`` and ``validate``)
    debug_signs: bool = False

    def switches(self, target) -> frozenset[str]:
        """The plan switches this build enables (see converters.base)."""
        on = set()
        if self.binary_kernels:
            on.add("binary_kernels")
            if target.kind.name == "llvm":
                on.add("cpu")
            if self.fuse_epilogues:
                on.add("fuse_epilogues")
            if self.attention_precision == "int8":
                on.add("attention_int8")
            if self.fast_math:
                on.add("fast_math")
            from ..schedules.float_glue.count_softmax import table_lookup_available

            if table_lookup_available(target):
                on.add("table_lookup")
        return frozenset(on)


def static_input_shapes(model: onnx.ModelProto, batch: int) -> dict[str, list[int]]:
    """Graph input name → static shape, the symbolic batch dimension set to ``batch``."""
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
        n = 1
        for d in dims:
            n *= max(int(d), 0)
        if not dims or min(dims) < 1 or n > MAX_ELEMENTS:
            raise UnsupportedModelError(
                f"input '{inp.name}' has shape {dims}: every dimension must be >= 1 and the tensor "
                f"at most {MAX_ELEMENTS:,} elements (TVM indexes with int32)")
        elem = inp.type.tensor_type.elem_type
        if elem != onnx.TensorProto.FLOAT:
            raise UnsupportedModelError(
                f"input '{inp.name}' is {onnx.helper.tensor_dtype_to_np_dtype(elem)}; bnncompile "
                "compiles float32 inputs (insert a Cast after the input, or export in float32)")
        shapes[inp.name] = dims
    return shapes


def check_custom_nodes(model: onnx.ModelProto) -> None:
    """Every non-standard node must be a registered custom op that passes its own check."""
    from ..custom_ops import registry as custom_registry

    for node in model.graph.node:
        if node.domain in ("", "ai.onnx"):
            continue
        op = custom_registry.lookup(node.domain, node.op_type)
        if op is None:
            raise UnsupportedModelError(
                f"node {node_label(node)}: unknown custom op; bnncompile knows "
                f"{', '.join(f'{d}::{o}' for d, o in custom_registry.CUSTOM_OPS)}")
        op.verify_node(node)


def _tensor_constants(model: onnx.ModelProto) -> None:
    """``Constant(value_float=...)`` and the other scalar / list forms as ``value`` tensors, the
    one form TVM's importer reads (TorchScript writes the others)."""
    dtypes = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
              "value_ints": np.int64}
    for node in model.graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
            continue
        a = node.attribute[0]
        if a.name in dtypes:
            value = np.asarray(onnx.helper.get_attribute_value(a), dtypes[a.name])
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute(
                "value", onnx.numpy_helper.from_array(value)))


def _unique_names(model: onnx.ModelProto) -> None:
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.name or node.op_type}__{i}"
        seen.add(node.name)


def prepare(model: onnx.ModelProto, *, extra_outputs=(), check_custom: bool = True,
            sign_zero: str = "plus") -> onnx.ModelProto:
    """A canonical copy of ``model``: unique node names, binarizers as DynamicSign, custom ops
    checked (unless ``check_custom=False``: ``inspect`` reports unknown ones instead),
    ``extra_outputs`` exposed."""
    from .canonicalize import canonicalize

    m = onnx.ModelProto()
    m.CopyFrom(model)
    _unique_names(m)
    _tensor_constants(m)
    canonicalize(m, sign_zero=sign_zero)
    if check_custom:
        check_custom_nodes(m)
    for name in extra_outputs:
        m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return m


def from_onnx(model: onnx.ModelProto, *, target, options: FrontendOptions | None = None,
              tuning=None):
    """Convert an ONNX model to ``(Relax IRModule, LoweringPlan)`` for ``target`` (a tvm Target).

    ``tuning``: a ``schedules.tuning`` session handed to every kernel builder (a database whose
    records replace hand schedules, or a workload collector); None keeps the hand schedules."""
    from .canonicalize import sign_zero_sites
    from .converters import CONVERTERS
    from .converters.base import op_type
    from .graph import GraphIndex
    from .importer import import_graph
    from .plan import plan_lowering

    options = options or FrontendOptions()
    m = prepare(model, extra_outputs=options.extra_outputs, sign_zero=options.sign_zero)
    n_outputs = len(m.graph.output)
    if options.debug_signs:
        from ..custom_ops.dynamic_sign import is_dynamic_sign

        signs = [n.output[0] for n in m.graph.node if is_dynamic_sign(n)]
        for name in signs:
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        options = dataclasses.replace(options, extra_outputs=(*options.extra_outputs, *signs))
    index = GraphIndex(m)
    plan = plan_lowering(m, index, CONVERTERS, switches=options.switches(target),
                         keep=set(options.extra_outputs))
    plan.canonical, plan.outputs = m, [o.name for o in m.graph.output[:n_outputs]]
    plan.conv_precision = options.conv_precision
    plan.sign_zero_sites = sign_zero_sites(m)
    # TVM's importer sees a copy whose claimed nodes carry their converter's op type; the plan
    # and the converters keep reading the canonical graph.
    by_name = {c.name: c for c in CONVERTERS}
    renamed = onnx.ModelProto()
    renamed.CopyFrom(m)
    for node in renamed.graph.node:
        owner = plan.claims.get(node.name)
        if owner is not None:
            node.op_type, node.domain = op_type(by_name[owner]), ""
    nodes_by_name = {node.name: node for node in m.graph.node}
    shapes = static_input_shapes(m, options.batch)
    mod = import_graph(renamed, shapes, plan=plan, nodes_by_name=nodes_by_name, index=index,
                       target=target, tuning=tuning, debug_outputs=options.extra_outputs)
    if plan.quantized_convs or plan.quantized_matmuls:
        from .quantized_reference import quantized_reference

        # what verify / validate compare with: the file's graph computing the quantized numbers
        plan.canonical = quantized_reference(m, plan.quantized_convs, options.conv_precision,
                                             plan.quantized_matmuls)
    if options.debug_signs:
        plan.debug_signs = [o.name for o in m.graph.output[n_outputs:]]
        mod = _split_debug_entry(mod, n_outputs, len(plan.debug_signs))
    return mod, plan


def _split_debug_entry(mod, n_outputs: int, n_signs: int):
    """``main`` returning outputs + signs → ``debug_signs`` (all of them) and ``main`` (the first
    ``n_outputs``; dead-code elimination then drops the unpacking kernels from it).  The output
    tuple is rebuilt where it is bound: its fields may be dataflow vars, legal only inside their
    block."""
    from tvm import relax

    full = mod["main"]
    if not n_signs:  # a model without DynamicSign: the same program, its own vars
        mod["debug_signs"] = relax.utils.copy_with_new_vars(full).with_attr("global_symbol", "debug_signs")
        return mod
    body = full.body
    out = body.body
    blocks = []
    for block in body.blocks:
        bindings = []
        for b in block.bindings:
            if b.var.same_as(out) and isinstance(b.value, relax.Tuple):
                fields = list(b.value.fields)
                value = fields[0] if n_outputs == 1 else relax.Tuple(fields[:n_outputs])
                value = relax.BlockBuilder().normalize(value)
                out = relax.Var(b.var.name, value.ty)
                b = relax.VarBinding(out, value)
            bindings.append(b)
        blocks.append(relax.DataflowBlock(bindings) if isinstance(block, relax.DataflowBlock)
                      else relax.BindingBlock(bindings))
    if out.same_as(body.body):
        raise RuntimeError("debug_signs: the importer's output tuple was not found")
    main = relax.Function(full.params, relax.SeqExpr(blocks, out), out.ty, is_pure=full.is_pure,
                          attrs=full.attrs)
    mod["main"] = relax.utils.copy_with_new_vars(main)  # a var is defined in one function only
    mod["debug_signs"] = full.with_attr("global_symbol", "debug_signs")
    return mod
