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
4. the TVM Relax converter for a DynamicSign whose consumer is *not* a binary layer (float ±1).
   Binary consumers are fused with the bit-packing kernel in ``bnncompile.frontend``.

To add another custom op: write one module like this one and list it in ``registry.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
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


@torch.library.custom_op("bnncompile::dynamic_sign", mutates_args=())
def dynamic_sign(x: torch.Tensor, t: torch.Tensor, ste: str = "approx") -> torch.Tensor:
    """``+1`` where ``x >= t`` else ``-1`` (``t`` broadcasts to ``x``); see the module docstring.

    Backward (straight-through, applied to ``d = x - t``):

    * ``"approx"`` (ApproxSign, Bi-Real/ReActNet): ``dY/dd = 2 - 2|d|`` for ``|d| < 1``, else 0;
    * ``"clipped"``: ``dY/dd = 1`` for ``|d| <= 1``, else 0.

    ``dL/dt = -sum(dL/dd)`` over the dimensions ``t`` was broadcast along, so the gradient flows
    into whatever computed the threshold (DySign's MLP, INSTA-BNN's statistics).
    """
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.where(x >= t, one, -one)


@dynamic_sign.register_fake
def _dynamic_sign_fake(x, t, ste="approx"):
    return torch.empty_like(x)


def _ste_grad(d: torch.Tensor, ste: str) -> torch.Tensor:
    if ste == "approx":
        return torch.clamp(2.0 - 2.0 * d.abs(), min=0.0)
    return (d.abs() <= 1.0).to(d.dtype)


def _setup_context(ctx, inputs, output):
    x, t, ste = inputs
    ctx.save_for_backward(x, t)
    ctx.ste = ste


def _backward(ctx, grad):
    x, t = ctx.saved_tensors
    g = grad * _ste_grad(x - t, ctx.ste)
    return g, _sum_to_shape(-g, t.shape), None


def _sum_to_shape(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Reduce a broadcast gradient back to ``shape`` (numpy broadcasting rules)."""
    lead = g.dim() - len(shape)
    if lead:
        g = g.sum(dim=tuple(range(lead)))
    dims = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    if dims:
        g = g.sum(dim=dims, keepdim=True)
    return g.reshape(shape)


dynamic_sign.register_autograd(_backward, setup_context=_setup_context)


def binarize(x: torch.Tensor, t: torch.Tensor | float | None = None, *, ste: str = "approx"):
    """Public helper: ``dynamic_sign`` with ``t`` defaulting to 0 and validated ``ste``."""
    if ste not in STE_CHOICES:
        raise ValueError(f"Expected ste to be one of {STE_CHOICES}, got {ste!r}")
    if t is None or not isinstance(t, torch.Tensor):
        t = torch.full((), 0.0 if t is None else float(t), dtype=x.dtype, device=x.device)
    return torch.ops.bnncompile.dynamic_sign(x, t, ste)


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
    return {torch.ops.bnncompile.dynamic_sign.default: onnx_translation}


def function_proto() -> onnx.FunctionProto:
    """The ONNX function body that lets any ONNX runtime execute DynamicSign.

    bnncompile's exporter always writes ``T`` (a scalar 0 for plain ``Sign``), so the body uses
    it unconditionally; hand-written files that omit ``T`` are still accepted by bnncompile's own
    frontend and reference.
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
        opset_imports=[helper.make_opsetid("", BODY_OPSET)],
        doc_string=SCHEMA.doc,
    )


def attach_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make sure ``model`` carries the DynamicSign function and imports the custom domain."""
    if not any(f.domain == DOMAIN and f.name == OP_TYPE for f in model.functions):
        model.functions.append(function_proto())
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, VERSION))
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


# -- 4. TVM Relax --------------------------------------------------------------------------------


def relax_convert(bb, inputs):
    """Emit DynamicSign as a float ±1 tensor (used when the consumer is not a binary layer).

    ``inputs`` are Relax expressions ``[X, T]`` (``T`` may be None). Returns the emitted var.
    """
    from tvm import te, tirx, topi

    def compute(x, t=None):
        one, neg = tirx.const(1.0, x.dtype), tirx.const(-1.0, x.dtype)
        if t is None:
            return te.compute(x.shape, lambda *i: tirx.Select(x(*i) >= tirx.const(0.0, x.dtype), one, neg),
                              name="dynamic_sign")
        tb = topi.broadcast_to(t, x.shape) if tuple(t.shape) != tuple(x.shape) else t
        return te.compute(x.shape, lambda *i: tirx.Select(x(*i) >= tb(*i), one, neg),
                          name="dynamic_sign")

    args = [inputs[0]] + ([inputs[1]] if len(inputs) > 1 and inputs[1] is not None else [])
    return bb.emit_te(compute, *args, primfunc_name_hint="dynamic_sign")
