"""Self-checks of a build against ONNX Runtime, shared by ``compile --verify`` and ``validate``.

A library built with a ``debug_signs`` entry returns its outputs followed by every DynamicSign's
±1 *as the binary kernels consume it* (unpacked from the packed words).  Against ONNX Runtime on
the same inputs:

* every sign must agree, except where ONNX Runtime's own ``x`` lies within ``tie_rtol`` of its
  threshold: float glue computed in another order (BN folded, FMAs, another summation order)
  moves ``x`` by about 1e-6 relative, so such a flip says nothing about the kernels.  A flip
  anywhere else is a kernel or lowering bug, and the first such layer is named;
* when no sign flipped, the outputs must agree within the tolerance; after a near-tie flip the
  outputs are reported but not judged (random-init BNNs amplify one flip).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: a flip is a near-tie when |x - t| <= TIE_RTOL * (|t| + mean|x|) in the reference
TIE_RTOL = 1e-5


@dataclass
class LayerParity:
    name: str  # the DynamicSign node
    output: str  # its output tensor
    elements: int
    flips: int
    #: largest |x - t| among the flipped elements, relative to |t| + mean|x| (None: no flips)
    max_margin: float | None = None


@dataclass
class SignCheck:
    layers: list[LayerParity]
    #: index of the first layer with a flip, and whether all its flips are near-ties
    first: int | None = None
    tie_induced: bool = False

    @property
    def flips(self) -> int:
        return sum(layer.flips for layer in self.layers)

    @property
    def elements(self) -> int:
        return sum(layer.elements for layer in self.layers)

    @property
    def first_divergent(self) -> str | None:
        return None if self.first is None else self.layers[self.first].name

    @property
    def bug(self) -> bool:
        """A flip that is not a near-tie: the build computes something else."""
        return self.first is not None and not self.tie_induced


def sign_nodes(model) -> list:
    from .custom_ops.dynamic_sign import is_dynamic_sign

    return [n for n in model.graph.node if is_dynamic_sign(n)]


def reference(model, feeds: dict, names=(), *, batch: int | None = None) -> dict[str, np.ndarray]:
    """ONNX Runtime on ``model`` (a canonical model: standard ops + DynamicSign), returning the
    graph outputs and the tensors ``names``.  ``batch``: run in chunks of that many samples (a
    graph with a fixed batch dimension); None runs everything at once."""
    from .custom_ops.dynamic_sign import attach_function
    from .parity import onnx_intermediates

    m = model.__class__()
    m.CopyFrom(model)
    attach_function(m)
    n = next(iter(feeds.values())).shape[0]
    if batch is None or batch == n:
        return onnx_intermediates(m, feeds, list(names))
    # fewer samples than a fixed batch (2 random ones for a batch-4 graph) are zero-padded too
    parts = [onnx_intermediates(m, {k: _chunk(v, i, batch) for k, v in feeds.items()}, list(names))
             for i in range(0, n, batch)]
    return {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}


def _chunk(x: np.ndarray, start: int, size: int) -> np.ndarray:
    """``x[start:start+size]``, zero-padded to ``size`` samples."""
    part = x[start:start + size]
    if part.shape[0] < size:
        part = np.concatenate([part, np.zeros((size - part.shape[0], *part.shape[1:]), part.dtype)])
    return part


def run_chunked(fn, feeds: dict, order: list[str], batch: int) -> list[np.ndarray]:
    """``fn(*arrays)`` (list of numpy outputs) over samples in chunks of ``batch`` (the last one
    zero-padded), outputs concatenated and trimmed to the sample count."""
    n = next(iter(feeds.values())).shape[0]
    parts = [fn(*[_chunk(feeds[k], i, batch) for k in order]) for i in range(0, n, batch)]
    return [np.concatenate([p[j] for p in parts])[:n] for j in range(len(parts[0]))]


def compare_signs(signs, ours: dict, ref: dict, consts: dict, *, tie_rtol: float = TIE_RTOL) -> SignCheck:
    """Flips per DynamicSign between ``ours`` and ``ref`` (by output name); ``ref`` also holds
    each sign's X and T (by tensor name) unless they are constants (``consts``)."""
    layers, first, tie_induced = [], None, False
    for i, node in enumerate(signs):
        a, b = ours[node.output[0]], ref[node.output[0]]
        flipped = a != b
        layer = LayerParity(node.name, node.output[0], int(a.size), int(np.count_nonzero(flipped)))
        if layer.flips:
            names = [t for t in node.input if t]
            xs = _value(names[0], ref, consts)
            t = np.float32(0) if len(names) < 2 else _value(names[1], ref, consts)
            t = np.broadcast_to(t, xs.shape)
            scale = np.abs(t)[flipped] + float(np.mean(np.abs(xs)))
            rel = np.abs(xs - t)[flipped] / np.maximum(scale, np.finfo(np.float32).tiny)
            layer.max_margin = float(rel.max())
            if first is None:
                first, tie_induced = i, bool(np.all(rel <= tie_rtol))
        layers.append(layer)
    return SignCheck(layers, first, tie_induced)


def _value(name: str, ref: dict, consts: dict) -> np.ndarray:
    return consts[name] if consts.get(name) is not None else ref[name]


@dataclass
class OutputCheck:
    max_abs: float
    bound: float
    top1: float  # fraction of samples whose argmax agrees (sign agreement for 1-D outputs)

    @property
    def ok(self) -> bool:
        return math.isfinite(self.max_abs) and self.max_abs <= self.bound


def compare_outputs(y: np.ndarray, ref: np.ndarray, *, atol: float, rtol: float) -> OutputCheck:
    bound = atol + rtol * float(np.max(np.abs(ref))) if ref.size else atol
    err = float(np.max(np.abs(y - ref))) if y.size else 0.0
    return OutputCheck(err, bound, top1_agreement(y, ref))


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    if a.ndim < 2:
        return float(np.mean(np.sign(a) == np.sign(b)))
    return float(np.mean(a.reshape(a.shape[0], -1).argmax(1) == b.reshape(b.shape[0], -1).argmax(1)))


@dataclass
class VerifyResult:
    """What ``compile --verify`` found (also written to the sidecar)."""

    ok: bool
    samples: int
    signs: SignCheck | None = None
    outputs: dict[str, OutputCheck] = field(default_factory=dict)
    message: str = ""

    def to_dict(self) -> dict:
        d = {"ok": self.ok, "samples": self.samples, "message": self.message}
        if self.signs is not None:
            d.update(sign_layers=len(self.signs.layers), flips=self.signs.flips,
                     binarized_elements=self.signs.elements,
                     first_divergent_layer=self.signs.first_divergent,
                     near_tie_flips_only=self.signs.tie_induced if self.signs.first is not None else None)
        d["outputs"] = {k: {"max_abs": v.max_abs, "bound": v.bound} for k, v in self.outputs.items()}
        return d


def verify_build(vm, plan, inputs: list[dict], batch: int, *, device=None, seed: int = 0,
                 samples: int = 2, atol: float = 1e-4, rtol: float = 1e-4) -> VerifyResult:
    """Run random inputs (N(0, 1), seeded) through the build's ``debug_signs`` entry (``vm``: a
    Relax VM of the library) and ONNX Runtime on the plan's canonical model; see the module
    docstring for the verdict.  ``inputs``: the sidecar's input list (names, shapes)."""
    import tvm

    from .frontend.graph import GraphIndex

    rng = np.random.default_rng(seed)
    n = max(samples, batch)
    feeds = {i["name"]: rng.standard_normal((n, *i["shape"][1:])).astype(np.float32) for i in inputs}
    canonical, debug_signs = plan.canonical, plan.debug_signs
    signs = sign_nodes(canonical)
    index = GraphIndex(canonical)
    consts = {t: index.constant(t) for node in signs for t in node.input if t}
    wanted = [*debug_signs, *[t for t, v in consts.items() if v is None]]
    static = canonical.graph.input[0].type.tensor_type.shape.dim[0]
    ref = reference(canonical, feeds, wanted, batch=static.dim_value or None)
    outputs = plan.outputs
    dev = device or tvm.cpu(0)

    def call(*arrays):
        res = vm["debug_signs"](*[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays])
        return [r.numpy() for r in ([res] if hasattr(res, "numpy") else list(res))]

    got = run_chunked(call, feeds, [i["name"] for i in inputs], batch)
    ours = dict(zip([*outputs, *debug_signs], got))
    by_output = {s.output[0]: s for s in signs}
    from .schedules.quantize import activation_levels, tie_rtol

    tie = tie_rtol(activation_levels(plan.quantized_convs, plan.quantized_matmuls), TIE_RTOL)
    check = compare_signs([by_output[s] for s in debug_signs], ours, ref, consts, tie_rtol=tie)
    result = VerifyResult(ok=True, samples=n, signs=check)
    if check.bug:
        layer = check.layers[check.first]
        result.ok = False
        result.message = (f"DynamicSign '{layer.name}' (first divergent layer): {layer.flips} of "
                          f"{layer.elements} signs differ from ONNX Runtime away from any tie "
                          f"(margin up to {layer.max_margin:.3g} relative)")
        return result
    if check.first is not None:
        result.message = (f"{check.flips} near-tie sign flips (first in '{check.first_divergent}'); "
                          "outputs not judged")
        return result
    for name in outputs:
        oc = compare_outputs(ours[name], ref[name], atol=atol, rtol=rtol)
        result.outputs[name] = oc
        if not oc.ok:
            result.ok = False
            result.message = (f"output '{name}' differs from ONNX Runtime by {oc.max_abs:.3g} "
                              f"(bound {oc.bound:.3g}) with every sign equal: a float lowering bug")
    return result
