"""``validate_parity``: compiled model vs PyTorch golden outputs vs ONNX Runtime, layer by layer.

Binarization is discontinuous: a float difference of one ulp upstream of a threshold can flip a
sign, and a flip legitimately moves the logits. So the report has three levels:

1. per DynamicSign layer: the number of sign flips between TVM and ONNX Runtime (both computed on
   the same inputs, all layers exposed as extra outputs), and the first layer that diverges;
2. end to end: max/mean absolute logit error against PyTorch (golden file) and ONNX Runtime;
3. top-1 agreement.

Tolerances (``Tolerances``) are data with reasons; ``ParityReport.ok`` is True only within them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import targets
from .artifacts import (
    check_library_matches_model,
    golden_path_for,
    load_golden,
    load_npz,
    load_onnx,
)
from .custom_ops.dynamic_sign import is_dynamic_sign
from .errors import InputFileError, UsageError


@dataclass(frozen=True)
class Tolerances:
    #: logits: |tvm - ref| <= atol + rtol * max|ref|. Float glue (BN, PReLU, pooling, softmax) is
    #: computed in a different order by TVM, ORT and PyTorch (and softmax/erf with polynomial
    #: exp/erf): measured <= 1e-5 relative on the zoo without flips; 1e-4 leaves 10x headroom yet
    #: catches a wrong binary layer even in the zoo's contractive random init (branches ~0.3 %).
    atol: float = 1e-4
    rtol: float = 1e-4
    #: sign flips are only legitimate at near-ties; allow at most this fraction of all binarized
    #: elements (0.01 %) and still demand identical top-1.
    max_flip_fraction: float = 1e-4
    min_top1_agreement: float = 1.0
    #: a flip is a *near-tie* when ``|x - t| <= tie_rtol * (|t| + mean|x|)`` in the reference:
    #: float glue computed in a different order moves x by about that much (1e-6 relative
    #: observed), so such a flip says nothing about the kernels. When the first divergent layer
    #: flips only near-ties, the downstream logit drift is a consequence (random-init BNNs amplify
    #: one flip), and the set is judged on top-1 alone, with the drift reported.
    tie_rtol: float = 1e-5


@dataclass
class LayerParity:
    name: str
    output: str
    elements: int
    flips: int


@dataclass
class InputSetReport:
    name: str
    batch: int
    max_abs_vs_torch: float | None
    mean_abs_vs_torch: float | None
    max_abs_vs_ort: float
    mean_abs_vs_ort: float
    top1_vs_torch: float | None
    top1_vs_ort: float
    layers: list[LayerParity]
    first_divergent_layer: str | None
    #: True when every flip in the first divergent layer is a near-tie (see Tolerances.tie_rtol)
    tie_induced: bool = False
    ok: bool = False
    reasons: list[str] = field(default_factory=list)  # why it failed
    notes: list[str] = field(default_factory=list)  # what a reader should know even if it passed

    @property
    def flips(self) -> int:
        return sum(layer.flips for layer in self.layers)

    @property
    def binarized_elements(self) -> int:
        return sum(layer.elements for layer in self.layers)


@dataclass
class ParityReport:
    model: str
    target: str
    library: str | None
    tolerances: Tolerances
    sets: list[InputSetReport]
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.sets)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        for s, sd in zip(self.sets, d["sets"]):
            sd["flips"] = s.flips
            sd["binarized_elements"] = s.binarized_elements
        return d

    def format(self, *, per_layer: bool = True) -> str:
        lines = [f"parity: {self.model} on {self.target}" + (f" ({self.library})" if self.library else "")]
        t = self.tolerances
        lines.append(f"tolerances: logits atol {t.atol:g} + rtol {t.rtol:g}*max|ref|, "
                     f"flips <= {t.max_flip_fraction:.2%} of binarized elements, identical top-1; "
                     f"if the first divergent layer flips only near-ties (|x-t| <= {t.tie_rtol:g}*(|t|+mean|x|)), "
                     "top-1 alone decides")
        for w in self.warnings:
            lines.append(f"warning: {w}")
        for s in self.sets:
            vs_t = ("n/a" if s.max_abs_vs_torch is None else
                    f"max {s.max_abs_vs_torch:.3g} mean {s.mean_abs_vs_torch:.3g} top-1 {s.top1_vs_torch:.0%}")
            lines.append(f"[{s.name}] batch {s.batch}: vs PyTorch {vs_t}; vs ONNX Runtime max "
                         f"{s.max_abs_vs_ort:.3g} mean {s.mean_abs_vs_ort:.3g} top-1 {s.top1_vs_ort:.0%}; "
                         f"sign flips {s.flips}/{s.binarized_elements} -> {'OK' if s.ok else 'FAIL'}")
            if s.first_divergent_layer:
                cause = ("near-tie flips only: downstream drift is their consequence" if s.tie_induced
                         else "flips away from any tie: a kernel or lowering bug")
                lines.append(f"  first layer that diverges: {s.first_divergent_layer} ({cause})")
            for r in [*s.notes, *s.reasons]:
                lines.append(f"  {r}")
            if per_layer and s.layers:
                width = max(len(layer.name) for layer in s.layers)
                for layer in s.layers:
                    lines.append(f"  {layer.name:<{width}}  flips {layer.flips:>6} / {layer.elements}")
        lines.append("PASS" if self.ok else "FAIL")
        return "\n".join(lines)


def _top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    if a.ndim < 2:
        return float(np.mean(np.sign(a) == np.sign(b)))
    return float(np.mean(a.reshape(a.shape[0], -1).argmax(1) == b.reshape(b.shape[0], -1).argmax(1)))


def _ort_run(model, x: np.ndarray, extra: list[str]) -> list[np.ndarray]:
    """ONNX Runtime outputs: the model output first, then the ``extra`` intermediates."""
    from .parity import onnx_intermediates

    names = [model.graph.output[0].name, *extra]
    got = onnx_intermediates(model, x, names)
    return [got[n] for n in names]


def _tvm_debug_run(model, spec, x: np.ndarray, extra: list[str], binary_kernels=True,
                   options: dict | None = None) -> list[np.ndarray]:
    """Compile in memory with every DynamicSign exposed, run once; ``options`` are the library's
    sidecar options, so the debug build makes the same lowering choices."""
    import tvm
    from tvm import relax

    from .compiler import build_relax

    options = options or {}
    ex, _ = build_relax(model, spec=spec, batch=x.shape[0], binary_kernels=binary_kernels,
                        extra_outputs=tuple(extra), fast_math=options.get("fast_math", True),
                        fuse_epilogues=options.get("fuse_epilogues", True))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x)))
    outs = [out] if hasattr(out, "numpy") else list(out)
    return [o.numpy() for o in outs]


def _run_library(runner, x: np.ndarray) -> np.ndarray:
    """Run a fixed-batch library over any number of samples (last chunk zero-padded)."""
    b = runner.inputs[0]["shape"][0]
    outs = []
    for i in range(0, x.shape[0], b):
        chunk = x[i:i + b]
        n = chunk.shape[0]
        if n < b:
            chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), chunk.dtype)])
        outs.append(runner(chunk)[:n])
    return np.concatenate(outs)


def _input_sets(model, onnx_path: Path, inputs, real_images: int) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    sets = []
    golden = golden_path_for(onnx_path)
    if golden.is_file():
        g = load_golden(golden)
        sets.append(("golden", g["inputs"], g["outputs"]))
    if inputs is not None:
        path = Path(inputs)
        if not path.is_file():
            raise InputFileError(f"--inputs {path}: no such file")
        arrays = load_npz(path, what="--inputs")
        x = arrays.get("inputs", next(iter(arrays.values())))
        sets.append((path.name, np.asarray(x, np.float32), arrays.get("outputs")))
    if real_images:
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        if len(dims) == 4 and dims[2] and dims[2] == dims[3]:
            from .data import real_images as photos

            sets.append(("photos", photos(real_images, dims[2], channels=dims[1]), None))
    if not sets:
        raise UsageError(f"nothing to validate {onnx_path} on: no golden file "
                         f"{golden.name} next to it and no --inputs")
    return sets


def validate_parity(onnx_path, *, lib=None, inputs=None, target: str = "host", real_images: int = 4,
                    tolerances: Tolerances | None = None, binary_kernels: bool = True,
                    progress=None) -> ParityReport:
    """Compare the compiled model with PyTorch (golden file) and ONNX Runtime.

    Args:
        onnx_path: the exported model; its golden file (``<stem>.golden.npz``) is used if present.
        lib: a compiled library; end-to-end outputs come from it. Per-layer sign flips always come
            from an in-memory debug build that exposes every DynamicSign output.
        inputs: an ``.npz`` with ``inputs`` (and optionally ``outputs``) to validate on as well.
        real_images: number of natural photos (scikit-image) to add as a third input set.
    """
    tol = tolerances or Tolerances()
    say = progress or (lambda msg: None)
    onnx_path = Path(onnx_path)
    model = load_onnx(onnx_path)
    spec = targets.resolve(target)
    runner = None
    if lib is not None:
        from .runtime import load

        runner = load(lib)
        spec = targets.resolve(runner.meta["target_name"]) if runner.meta["target_name"] in targets.names() else spec
        check_library_matches_model(runner.meta, lib, onnx_path)
    ok, why = targets.runnable_here(spec)
    if not ok:
        raise UsageError(f"cannot validate target {spec.name} on this machine: {why}")
    signs = [n for n in model.graph.node if is_dynamic_sign(n)]
    sign_outputs = [n.output[0] for n in signs]
    from .frontend.graph import GraphIndex

    index = GraphIndex(model)
    report = ParityReport(str(onnx_path), spec.name, None if lib is None else str(lib), tol, [])
    for name, x, ref in _input_sets(model, onnx_path, inputs, real_images):
        if not np.all(np.isfinite(x)):
            report.warnings.append(f"input set {name!r} contains NaN/Inf; DynamicSign maps NaN to -1")
        say(f"running ONNX Runtime on {name} ({x.shape[0]} samples)")
        ort_outs = _ort_run(model, x, sign_outputs)
        say(f"compiling a debug build and running it on {name}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tvm_outs = _tvm_debug_run(model, spec, x, sign_outputs, binary_kernels,
                                      None if runner is None else runner.meta.get("options"))
        y = tvm_outs[0] if runner is None else _run_library(runner, x)
        layers = [LayerParity(n.name, n.output[0], int(a.size), int(np.count_nonzero(a != b)))
                  for n, a, b in zip(signs, tvm_outs[1:], ort_outs[1:])]
        first_i = next((i for i, layer in enumerate(layers) if layer.flips), None)
        first = None if first_i is None else layers[first_i].name
        tie_induced = False
        if first_i is not None:
            tie_induced = _flips_are_ties(model, index, signs[first_i], x, tvm_outs[1 + first_i],
                                          ort_outs[1 + first_i], tol.tie_rtol)
        y_ort = ort_outs[0]
        s = InputSetReport(
            name=name, batch=int(x.shape[0]),
            max_abs_vs_torch=None if ref is None else float(np.max(np.abs(y - ref))),
            mean_abs_vs_torch=None if ref is None else float(np.mean(np.abs(y - ref))),
            max_abs_vs_ort=float(np.max(np.abs(y - y_ort))),
            mean_abs_vs_ort=float(np.mean(np.abs(y - y_ort))),
            top1_vs_torch=None if ref is None else _top1_agreement(y, ref),
            top1_vs_ort=_top1_agreement(y, y_ort),
            layers=layers, first_divergent_layer=first, tie_induced=tie_induced,
        )
        _judge(s, y, ref if ref is not None else y_ort, tol)
        report.sets.append(s)
    return report


def _flips_are_ties(model, index, sign, x, a, b, tie_rtol: float) -> bool:
    """Are all flips of one DynamicSign near-ties of the ONNX Runtime reference's X and T?"""
    names = [n for n in sign.input if n]
    consts = {n: index.constant(n) for n in names}
    wanted = [n for n in names if consts[n] is None]
    got = dict(zip(wanted, _ort_run(model, x, wanted)[1:])) if wanted else {}
    xs = consts[names[0]] if consts[names[0]] is not None else got[names[0]]
    t = np.float32(0) if len(names) < 2 else (consts[names[1]] if consts[names[1]] is not None else got[names[1]])
    t = np.broadcast_to(t, xs.shape)
    flipped = a != b
    margin = np.abs(xs - t)[flipped]
    bound = tie_rtol * (np.abs(t)[flipped] + float(np.mean(np.abs(xs))))
    return bool(np.all(margin <= bound))


def _judge(s: InputSetReport, y: np.ndarray, ref: np.ndarray, tol: Tolerances) -> None:
    bound = tol.atol + tol.rtol * float(np.max(np.abs(ref)))
    err = float(np.max(np.abs(y - ref)))
    top1 = min(v for v in (s.top1_vs_torch, s.top1_vs_ort) if v is not None)
    if top1 < tol.min_top1_agreement:
        s.reasons.append(f"top-1 agreement {top1:.1%} < {tol.min_top1_agreement:.0%}")
    if s.first_divergent_layer and s.tie_induced:
        s.notes.append(f"logit drift {err:.3g} (bound {bound:.3g} without flips) follows near-tie flips")
    else:
        if not math.isfinite(err) or err > bound:
            s.reasons.append(f"logit error {err:.3g} exceeds {bound:.3g}")
        if s.binarized_elements and s.flips > tol.max_flip_fraction * s.binarized_elements:
            s.reasons.append(f"{s.flips} sign flips exceed {tol.max_flip_fraction:.2%} of "
                             f"{s.binarized_elements} binarized elements")
    s.ok = not s.reasons
