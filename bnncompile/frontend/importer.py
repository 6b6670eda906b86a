"""The glue over TVM's ONNX importer: claimed nodes go to their converter, the rest to TVM.

TVM's importer dispatches on ``op_type`` alone and rejects unknown ops up front, so the nodes a
converter claimed (:mod:`.plan`) are renamed ``bnncompile::<converter name>`` before import, and
:class:`Importer` routes them back to that converter.  The helpers here are what converters
build with: emitting a kernel (``call_kernel``), bit-packing a DynamicSign's operand once for
all its binary consumers (``pack``), handing a node back to TVM (``fallback``).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import onnx
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend as of

from ..errors import UnsupportedModelError, node_label
from .converters import BY_OP_TYPE
from .converters.base import MANGLE
from .graph import standard_opset


class Importer(of.ONNXGraphImporter):
    """TVM's importer plus bnncompile's converters."""

    def __init__(self, shape_dict, *, plan, nodes_by_name, index, target, tuning=None,
                 debug_outputs=()):
        super().__init__(shape_dict, "float32")
        self.plan = plan
        self.index = index
        self.target = target
        self.tuning = tuning
        self._originals = nodes_by_name
        self._sign_inputs: dict[str, tuple] = {}
        self._kernel_gvs: dict[str, object] = {}
        self._packs: dict[tuple[str, bool], object] = {}
        #: (tensor, key) -> value a converter computed ahead for a later node (fused kernels)
        self.provided: dict[tuple, object] = {}
        self._debug_outputs = set(debug_outputs)

    # -- dispatch ---------------------------------------------------------------------------

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
        converter = BY_OP_TYPE.get(op_name)
        if converter is None:
            return self.fallback(op_name, inputs, attrs, opset)
        node = self._originals[attrs["tvm_custom"]["name"]]
        try:
            return converter.convert(self, node, inputs, attrs, opset)
        except UnsupportedModelError:
            raise
        except Exception as exc:
            raise UnsupportedModelError(f"node {node_label(node)}: lowering failed: {exc}") from exc

    def fallback(self, op_name, inputs, attrs, opset):
        """TVM's own converter for ``op_name`` (errors name the node)."""
        try:
            return super()._convert_operator(op_name, inputs, attrs, opset)
        except Exception as exc:  # TVM's converters raise assorted types; name the node
            name = attrs.get("tvm_custom", {}).get("name", "<unnamed>")
            raise UnsupportedModelError(
                f"node '{name}' (ai.onnx::{op_name}): TVM's converter failed: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from exc

    # -- helpers for converters -------------------------------------------------------------

    def value(self, tensor: str):
        """The Relax value of an ONNX tensor converted earlier."""
        return self._nodes[tensor]

    def shape_of(self, expr) -> list[int]:
        return [int(s) for s in expr.ty.shape]

    def emit(self, expr):
        return self.bb.emit(expr)

    def emit_te(self, fn, *args, name: str, **kwargs):
        """A TE compute of ``schedules.compute`` on Relax values (TVM legalizes and schedules it
        with the float glue)."""
        return self.bb.emit_te(fn, *args, primfunc_name_hint=name, **kwargs)

    def const(self, array: np.ndarray):
        return relax.const(array)

    def is_debug_output(self, tensor: str) -> bool:
        return tensor in self._debug_outputs

    def kernel(self, op: str, *args, **kwargs):
        """``schedules.make_<op>`` (:mod:`~bnncompile.schedules.registry` or its quantized
        builders) for this build's target and tuning session."""
        from .. import schedules

        return getattr(schedules, f"make_{op}")(*args, target=self.target, tuning=self.tuning, **kwargs)

    def call_kernel(self, prim_func, args, out_shape, out_dtype, *, layer=None, kind="bitpack",
                    binary_macs=0, float_macs=0, extra_outputs=()):
        """Emit ``call_tir`` of a scheduled kernel and record it in ``plan.kernels``; with
        ``extra_outputs`` [(shape, dtype)] the kernel writes those after the main output and
        the result is ``[main, *extras]``."""
        name = str(prim_func.attrs["global_symbol"])
        info = self.plan.kernels.setdefault(
            name, {"layers": [], "kind": kind, "binary_macs": int(binary_macs),
                   "float_macs": int(float_macs), "calls": 0})
        info["calls"] += 1
        if layer is not None:
            info["layers"].append(layer)
        gv = self._kernel_gvs.get(name)
        if gv is None:
            # Opaque: FuseTIR cannot merge an already scheduled kernel with its neighbours
            # ("inconsistent buffers"), and the kernels fuse their own epilogues.
            gv = self.bb.add_func(prim_func.with_attr("op_pattern", 8), name)
            self._kernel_gvs[name] = gv
        out_ty = relax.TensorType(out_shape, out_dtype)
        if not extra_outputs:
            return self.bb.emit(relax.call_tir(gv, args, out_ty=out_ty))
        tys = [out_ty] + [relax.TensorType(shp, dt) for shp, dt in extra_outputs]
        res = self.bb.emit(relax.call_tir(gv, args, out_ty=tys))
        return [self.bb.emit(relax.TupleGetItem(res, i)) for i in range(len(tys))]

    def kernel_info(self, prim_func) -> dict:
        return self.plan.kernels[str(prim_func.attrs["global_symbol"])]

    # -- DynamicSign operands ---------------------------------------------------------------

    def record_sign(self, sign_output: str, x, t) -> tuple:
        """Remember a DynamicSign's (X, T) so binary consumers pack bits straight from them;
        returns the pair the sign computes with: ``(margin, None)`` where a binary dense's sums
        decide it (``X`` is then that margin, +1 iff ``>= 0``: converters.count_threshold)."""
        if sign_output in self.plan.cut_signs:
            t = None
        self._sign_inputs[sign_output] = (x, t)
        return x, t

    def sign_operand(self, sign_node):
        try:
            return self._sign_inputs[sign_node.output[0]]
        except KeyError as exc:
            raise UnsupportedModelError(
                f"DynamicSign {node_label(sign_node)} was not converted before its consumer") from exc

    def provide_packed(self, sign_output: str, words, *, last_axis: bool = False) -> None:
        """Bits of ``sign_output`` computed by another kernel (a conv writing its output packed)."""
        self._packs[(sign_output, last_axis)] = words

    def read_through(self, x) -> tuple:
        """``(source, (source shape, steps))`` where ``x`` is static slices / reshapes /
        transposes of another value (a kernel's ``view=``, compute.index_view), else ``(x,
        None)``."""
        found = self._view_of(x)
        return (x, None) if found is None else (found[0], (self.shape_of(found[0]), found[1]))

    def _view_of(self, x):
        """``(source, steps)`` where ``x`` is static slices / reshapes / transposes of another
        value, at least one of them a copy (a slice or a transpose), else None."""
        steps, cur = [], x
        while isinstance(cur, (relax.Var, relax.Call)):  # a converter's result may be unbound
            value = self.bb.lookup_binding(cur) if isinstance(cur, relax.Var) else cur
            if not isinstance(value, relax.Call) or getattr(value.op, "name", None) not in _VIEW_OPS:
                break
            in_shape = _static_shape(value.args[0])
            step = None if in_shape is None else _view_step(value, in_shape)
            if step is None:
                break
            steps.append(step)
            cur = value.args[0]
        if all(step[0] == "reshape" for step in steps) or _static_shape(cur) is None:
            return None
        return cur, steps[::-1]

    def pack(self, x, t, *, last_axis: bool, key: str | None = None):
        """``bitpack(x >= t)``; ``key`` (the DynamicSign output) shares one pack among consumers."""
        if key is not None and (key, last_axis) in self._packs:
            return self._packs[(key, last_axis)]
        if t is None:
            t = relax.const(np.zeros((), np.float32))
        packed = self._pack(x, t, last_axis)
        if key is not None:
            self._packs[(key, last_axis)] = packed
        return packed

    def _pack(self, x, t, last_axis: bool):
        xs, ts = self.shape_of(x), self.shape_of(t)
        words = lambda n: (n + 63) // 64  # noqa: E731
        if last_axis:
            src, view = self.read_through(x)  # no copy of a head split (dead code then)
            pf = self.kernel("bitpack_last", xs, ts, view=view)
            return self.call_kernel(pf, [src, t], [*xs[:-1], words(xs[-1])], "uint64")
        if len(xs) == 4 and ([1] * (4 - len(ts)) + ts)[2:] == [1, 1]:
            # A threshold constant over H, W: pack the [N, C, 1, H*W] view (free reshapes on
            # both sides).  One row of H*W vectorises where a row of W does not (14, 28):
            # 512x14x14 44 -> 13 us, 256x28x28 32 -> 13 us (examples/bench_micro.py bitpack).
            n, c, h, w = xs
            flat = self.emit(relax.op.reshape(x, [n, c, 1, h * w]))
            pf = self.kernel("bitpack", [n, c, 1, h * w], ts)
            packed = self.call_kernel(pf, [flat, t], [n, 1, h * w, words(c)], "uint64")
            return self.emit(relax.op.reshape(packed, [n, h, w, words(c)]))
        if len(xs) != 4:
            raise UnsupportedModelError(f"cannot bit-pack a rank-{len(xs)} map along channels")
        pf = self.kernel("bitpack", xs, ts)
        return self.call_kernel(pf, [x, t], [xs[0], xs[2], xs[3], words(xs[1])], "uint64")


_VIEW_OPS = ("relax.strided_slice", "relax.reshape", "relax.permute_dims")


def _static_shape(expr) -> list[int] | None:
    try:
        return [int(v) for v in expr.ty.shape]
    except (TypeError, AttributeError):
        return None


def _view_step(call, in_shape: list[int]):
    """One :mod:`~bnncompile.schedules.compute.index_view` step for a Relax slice / reshape /
    transpose with static arguments, or None."""
    out_shape = _static_shape(call)
    if out_shape is None:
        return None
    name = call.op.name
    if name == "relax.reshape":
        return ("reshape", tuple(out_shape))
    if name == "relax.permute_dims":
        axes = call.attrs.axes
        axes = list(range(len(in_shape)))[::-1] if axes is None else [int(a) for a in axes]
        return ("permute", tuple(axes))
    try:
        axes, begins, ends, strides = ([int(v.value) for v in arg.fields] for arg in call.args[1:5])
    except (AttributeError, TypeError, ValueError):
        return None
    sizes = []
    for i, (a, b, e, st) in enumerate(zip(axes, begins, ends, strides)):
        dim = in_shape[a]
        b = b + dim if b < 0 else b
        e = min(e + dim if e < 0 else e, dim)
        if st < 1 or not 0 <= b < e:
            return None
        begins[i], sizes = b, [*sizes, (e - b + st - 1) // st]
        if sizes[-1] != out_shape[a]:
            return None
    return ("slice", tuple(axes), tuple(begins), tuple(strides), tuple(sizes))


def import_graph(model: onnx.ModelProto, shapes: dict, *, plan, nodes_by_name, index, target,
                 tuning=None, debug_outputs=()):
    """Run the importer over ``model`` (claimed nodes already renamed) → Relax IRModule."""
    opset = standard_opset(model)
    importer = Importer(shapes, plan=plan, nodes_by_name=nodes_by_name, index=index, target=target,
                        tuning=tuning, debug_outputs=debug_outputs)
    # TVM prints "Error converting operator ..." before re-raising; our errors already name the node.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return importer.from_onnx(model.graph, opset)
        except UnsupportedModelError:
            _close_blocks(importer.bb)
            raise
        except Exception as exc:
            _close_blocks(importer.bb)
            raise UnsupportedModelError(
                f"TVM's ONNX frontend failed: {str(exc).splitlines()[0][:300]}") from exc


def _close_blocks(bb) -> None:
    """End the blocks an import abandoned: TVM logs "BlockBuilder destroyed with remaining
    blocks!" to the user's terminal otherwise, after the real error."""
    for _ in range(8):
        try:
            bb._end_block()
        except Exception:
            break
