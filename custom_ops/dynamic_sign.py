"""``com.bnncompile::DynamicSign`` — every facet of the one custom operator in one place.

Semantics (version 1)
---------------------
Inputs ``X`` (float32, rank >= 2) and optional ``T`` (float32, unidirectionally broadcastable to
``X``: ``[N,C,1,1]`` per-sample per-channel thresholds for CNNs, ``[N,1,D]`` for tokens,
``[1,C,1,1]`` for static learned thresholds, a scalar, or absent = 0). Output ``Y`` (float32,
shape of ``X``)::

    Y = +1 where X >= T, else -1

A value equal to its threshold gives +1; NaN gives -1 (a comparison with NaN is false).
``torch.sign`` is *not* this op: it returns 0 at 0, which one bit cannot hold.

Facets, in order:

1. constants (domain, op type, version);
2. the PyTorch custom op ``torch.ops.bnncompile.dynamic_sign`` with a fake (meta) kernel and a
   straight-through backward (ApproxSign by default, clipped identity as an option);
3. the ONNX side: schema, the translation used by ``torch.onnx.export(dynamo=True)``, the ONNX
   function body (``GreaterOrEqual`` + ``Where``) attached to every exported model so ONNX
   Runtime runs it unchanged, a shape rule, a node check that raises, and a numpy reference;
4. the TVM converter (:class:`Converter`, listed by ``registry.py`` for the frontend's converter
   registry): a DynamicSign whose consumers are binary layers becomes the bit-packing kernel
   they read (built by the binary converters from the ``(X, T)`` recorded here); otherwise a
   float ±1 tensor (``bnncompile.schedules.compute.dynamic_sign``).

The PyTorch facet is registered on first use (:func:`torch_op`), so the compiler and the
runtime never import torch.

To add another custom op: write one module like this one and list it in ``registry.py``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import onnx
from onnx import defs, helper

from ..errors import UnsupportedModelError, node_label

# -- 1. constants --------------------------------------------------------------------------------

DOMAIN = "com.bnncompile"
OP_TYPE = "DynamicSign"
VERSION = 1
#: ai.onnx opset the function body is written in (GreaterOrEqual needs >= 12, Where >= 9).
BODY_OPSET = 18

STE_CHOICES = ("approx", "clipped")

# -- 2. PyTorch ----------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def torch_op():
    """Register (once) and return ``torch.ops.bnncompile.dynamic_sign``:
    ``dynamic_sign(x, t, ste="approx") = +1 where x >= t else -1`` (``t`` broadcasts to ``x``).

    Backward (straight-through, applied to ``d = x - t``):

    * ``"approx"`` (ApproxSign, Bi-Real/ReActNet): ``dY/dd = 2 - 2|d|`` for ``|d| < 1``, else 0;
    * ``"clipped"``: ``dY/dd = 1`` for ``|d| <= 1``, else 0.

    ``dL/dt = -sum(dL/dd)`` over the dimensions ``t`` was broadcast along, so the gradient flows
    into whatever computed the threshold (DySign's MLP, INSTA-BNN's statistics).
    """
    import torch

    # explicit schema: this module's annotations are strings (from __future__ import annotations)
    @torch.library.custom_op("bnncompile::dynamic_sign", mutates_args=(),
                             schema='(Tensor x, Tensor t, str ste="approx") -> Tensor')
    def dynamic_sign(x, t, ste="approx"):
        one = torch.ones((), dtype=x.dtype, device=x.device)
        return torch.where(x >= t, one, -one)

    @dynamic_sign.register_fake
    def _fake(x, t, ste="approx"):
        return torch.empty_like(x)

    def setup_context(ctx, inputs, output):
        x, t, ste = inputs
        ctx.save_for_backward(x, t)
        ctx.ste = ste

    def backward(ctx, grad):
        x, t = ctx.saved_tensors
        d = x - t
        surrogate = (torch.clamp(2.0 - 2.0 * d.abs(), min=0.0) if ctx.ste == "approx"
                     else (d.abs() <= 1.0).to(d.dtype))
        g = grad * surrogate
        return g, _sum_to_shape(-g, t.shape), None

    dynamic_sign.register_autograd(backward, setup_context=setup_context)
    return torch.ops.bnncompile.dynamic_sign


def _sum_to_shape(g, shape):
    """Reduce a broadcast gradient back to ``shape`` (numpy broadcasting rules)."""
    lead = g.dim() - len(shape)
    if lead:
        g = g.sum(dim=tuple(range(lead)))
    dims = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    if dims:
        g = g.sum(dim=dims, keepdim=True)
    return g.reshape(shape)


def binarize(x, t=None, *, ste: str = "approx"):
    """Public helper: the torch op with ``t`` defaulting to 0 and ``ste`` validated."""
    import torch

    if ste not in STE_CHOICES:
        raise ValueError(f"Expected ste to be one of {STE_CHOICES}, got {ste!r}")
    if t is None or not isinstance(t, torch.Tensor):
        t = torch.full((), 0.0 if t is None else float(t), dtype=x.dtype, device=x.device)
    return torch_op()(x, t, ste)


# -- 3. ONNX -------------------------------------------------------------------------------------

SCHEMA = defs.OpSchema(
    OP_TYPE,
    DOMAIN,
    VERSION,
    doc="Y = +1 where X >= T else -1 (T broadcasts to X; absent T means 0; NaN gives -1).",
    inputs=[
        defs.OpSchema.FormalParameter("X", "T"),
        defs.OpSchema.FormalParameter(
            "T", "T", param_option=defs.OpSchema.FormalParameterOption.Optional
        ),
    ],
    outputs=[defs.OpSchema.FormalParameter("Y", "T")],
    type_constraints=[("T", ["tensor(float)"], "float32 only")],
)


def onnx_translation(x, t, ste: str = "approx"):
    """``custom_translation_table`` entry: emit one ``com.bnncompile::DynamicSign`` node.

    The STE choice only matters for training, so it is not written to the graph.
    """
    import onnxscript

    op = onnxscript.values.Op(onnxscript.values.Opset(DOMAIN, VERSION), OP_TYPE, SCHEMA)
    return op(x, t)


def translation_table() -> dict:
    return {torch_op().default: onnx_translation}


def function_proto(opset: int = BODY_OPSET) -> onnx.FunctionProto:
    """The ONNX function body that lets any ONNX runtime execute DynamicSign, written in the
    model's own ai.onnx ``opset`` (``GreaterOrEqual``, ``CastLike`` and ``Where`` have not
    changed since 15; onnx.checker wants the body's opset to match the model's).

    The body reads ``T``: :func:`attach_function` gives every node that omits it an explicit
    scalar 0, so ONNX Runtime (which rejects a function body over an absent input) runs it.
    """
    nodes = [
        helper.make_node("GreaterOrEqual", ["X", "T"], ["ge"]),
        helper.make_node("CastLike", ["pos_f", "X"], ["pos"]),
        helper.make_node("CastLike", ["neg_f", "X"], ["neg"]),
        helper.make_node("Where", ["ge", "pos", "neg"], ["Y"]),
    ]
    consts = [
        helper.make_node("Constant", [], ["pos_f"], value_float=1.0),
        helper.make_node("Constant", [], ["neg_f"], value_float=-1.0),
    ]
    return helper.make_function(
        DOMAIN,
        OP_TYPE,
        inputs=["X", "T"],
        outputs=["Y"],
        nodes=consts + nodes,
        opset_imports=[helper.make_opsetid("", max(int(opset), 15))],
        doc_string=SCHEMA.doc,
    )


ZERO_THRESHOLD = "bnncompile_dynamic_sign_zero"


def attach_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make ``model`` runnable by any ONNX runtime: it carries the DynamicSign function (in the
    model's ai.onnx opset), imports the custom domain, and every DynamicSign node has a ``T``
    (an explicit scalar 0 where it was omitted)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), BODY_OPSET)
    kept = [f for f in model.functions if not (f.domain == DOMAIN and f.name == OP_TYPE)]
    del model.functions[:]
    model.functions.extend([*kept, function_proto(opset)])
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, VERSION))
    bare = [n for n in model.graph.node if is_dynamic_sign(n) and (len(n.input) < 2 or not n.input[1])]
    if bare:
        if not any(t.name == ZERO_THRESHOLD for t in model.graph.initializer):
            model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros((), np.float32),
                                                                        ZERO_THRESHOLD))
        for n in bare:
            del n.input[1:]
            n.input.append(ZERO_THRESHOLD)
    return model


def is_dynamic_sign(node: onnx.NodeProto) -> bool:
    return node.domain == DOMAIN and node.op_type == OP_TYPE


def infer_shape(x_shape, t_shape=None):
    """Output shape rule: the shape of X; raises if T does not broadcast to X."""
    if t_shape is not None:
        if len(t_shape) > len(x_shape):
            raise ValueError(f"threshold rank {len(t_shape)} exceeds input rank {len(x_shape)}")
        for xs, ts in zip(reversed(x_shape), reversed(t_shape)):
            if ts not in (1, xs) and not (isinstance(ts, str) or isinstance(xs, str)):
                raise ValueError(f"threshold shape {list(t_shape)} does not broadcast to {list(x_shape)}")
    return tuple(x_shape)


def verify_node(node: onnx.NodeProto) -> None:
    """Raise :class:`UnsupportedModelError` naming the node if it breaks the contract."""
    if not is_dynamic_sign(node):
        raise UnsupportedModelError(f"node {node_label(node)} is not {DOMAIN}::{OP_TYPE}")
    if not 1 <= len(node.input) <= 2 or (len(node.input) == 1 and not node.input[0]):
        raise UnsupportedModelError(
            f"node {node_label(node)}: expected inputs (X[, T]), got {len(node.input)}"
        )
    if len(node.output) != 1:
        raise UnsupportedModelError(f"node {node_label(node)}: expected 1 output, got {len(node.output)}")
    if node.attribute:
        names = ", ".join(a.name for a in node.attribute)
        raise UnsupportedModelError(f"node {node_label(node)}: DynamicSign v1 has no attributes, got {names}")


def reference(x: np.ndarray, t: np.ndarray | float | None = None) -> np.ndarray:
    """Numpy reference of the contract (independent of torch and TVM)."""
    x = np.asarray(x, dtype=np.float32)
    t = np.float32(0.0) if t is None else np.asarray(t, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        return np.where(x >= t, np.float32(1.0), np.float32(-1.0)).astype(np.float32)


# -- 4. TVM ---------------------------------------------------------------------------------------


class Converter:
    """The frontend converter for DynamicSign nodes (see ``bnncompile.frontend.converters``)."""

    name = OP_TYPE
    requires = frozenset()

    def plan(self, ctx) -> None:
        for node in ctx.model.graph.node:
            if is_dynamic_sign(node):
                verify_node(node)
                ctx.claim(node, self)

    def convert(self, imp, node, inputs, attrs, opset):
        from bnncompile.schedules import compute

        x, t = inputs[0], (inputs[1] if len(inputs) > 1 else None)
        for what, value in (("X", x), ("T", t)):
            dtype = None if value is None else getattr(value.ty, "dtype", None)
            if dtype is not None and dtype != "float32":
                raise UnsupportedModelError(f"node {node_label(node)}: input {what} is {dtype}; "
                                            "DynamicSign takes float32 (insert a Cast)")
        out = node.output[0]
        x, t = imp.record_sign(out, x, t)
        layout = imp.plan.sign_layout.get(out)
        if imp.is_debug_output(out) and layout is not None:
            # expose the bits the binary kernels consume, not a float recomputation
            packed = imp.pack(x, t, last_axis=layout == "last", key=out)
            return imp.emit_te(compute.unpack_bits_float, packed, imp.shape_of(x), layout,
                               name="unpack_bits")
        if t is None:
            return imp.emit_te(compute.dynamic_sign, x, None, name="dynamic_sign")
        return imp.emit_te(compute.dynamic_sign, x, t, name="dynamic_sign")


CONVERTER = Converter()
