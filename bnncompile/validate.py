"""``validate_parity``: compiled model vs PyTorch golden outputs vs ONNX Runtime, layer by layer.

Binarization is discontinuous: a float difference of one ulp upstream of a threshold can flip a
sign, and a flip legitimately moves the logits. So the report has three levels:

1. per DynamicSign layer: the number of sign flips between the build (its ``debug_signs`` entry:
   the bits the binary kernels consume) and ONNX Runtime on the same inputs, the first layer that
   diverges, and whether its flips are near-ties (:mod:`bnncompile.verify`);
2. end to end: max/mean absolute output error against PyTorch (golden file) and ONNX Runtime;
3. top-1 agreement.

A library compiled with ``--conv-precision int16|int8`` or ``--attention-precision int8`` is held
to the same three levels against the file's graph quantized the same way
(:mod:`bnncompile.frontend.quantized_reference`; the near-tie margin widened to a few
quantization steps, ``schedules.quantize.tie_rtol``), and the
quantization's own effect against the fp32 model (sign flips, top-1 against PyTorch, the largest
logit change) is reported beside it, not judged: the user chose it.

Any batch size works: inputs run in chunks of the library's compiled batch (the last chunk
zero-padded) and in chunks of the graph's fixed batch in ONNX Runtime.  Tolerances
(``Tolerances``) are data with reasons; ``ParityReport.ok`` is True only within them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import targets
from .artifacts import (
    check_library_matches_model,
    golden_path_for,
    input_array,
    load_golden,
    load_npz,
    load_onnx,
)
from .errors import InputFileError, UsageError
from .verify import LayerParity, compare_signs, reference, run_chunked, sign_nodes, top1_agreement

__all__ = ["InputSetReport", "LayerParity", "ParityReport", "Tolerances", "validate_parity"]


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
    #: the golden file's PyTorch outputs vs ONNX Runtime on the same file: beyond this the golden
    #: file belongs to another model (export parity is ~1e-6 relative)
    golden_rtol: float = 1e-2


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
    #: ONNX Sign sites (compiled as 0 -> +1): how many of their inputs were exactly 0 here
    sign_zero_inputs: dict[str, int] = field(default_factory=dict)
    #: a --conv-precision int16/int8 or --attention-precision int8 library: the quantization's
    #: effect against the fp32 model
    #: (the fields above compare with the file's graph quantized the same way, see
    #: frontend.quantized_reference): {"precision", "flips", "elements", "first_layer",
    #: "top1_vs_torch", "top1_vs_fp32_ort", "max_abs_vs_fp32_ort"}; reported, not judged
    precision_effect: dict | None = None

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

    def format(self, *, verbose: bool = False) -> str:
        """Verdict and totals first; per-layer rows only for layers with flips (all with
        ``verbose``)."""
        flips = sum(s.flips for s in self.sets)
        elements = sum(s.binarized_elements for s in self.sets)
        layers = len(self.sets[0].layers) if self.sets else 0
        where = f"{self.target}" + (f" ({self.library})" if self.library else "")
        lines = [f"{'PASS' if self.ok else 'FAIL'}: {self.model} on {where}: {len(self.sets)} input "
                 f"set(s), {layers} DynamicSign layers, {flips} sign flips of {elements:,}"]
        t = self.tolerances
        lines += [f"warning: {w}" for w in self.warnings]
        for s in self.sets:
            vs_t = ("n/a" if s.max_abs_vs_torch is None else
                    f"max {s.max_abs_vs_torch:.3g} mean {s.mean_abs_vs_torch:.3g} top-1 {s.top1_vs_torch:.0%}")
            lines.append(f"[{s.name}] {s.batch} samples: vs PyTorch {vs_t}; vs ONNX Runtime max "
                         f"{s.max_abs_vs_ort:.3g} mean {s.mean_abs_vs_ort:.3g} top-1 {s.top1_vs_ort:.0%}; "
                         f"sign flips {s.flips}/{s.binarized_elements} -> {'OK' if s.ok else 'FAIL'}")
            if s.first_divergent_layer:
                cause = ("near-tie flips only: downstream drift is their consequence" if s.tie_induced
                         else "flips away from any tie: a kernel or lowering bug")
                lines.append(f"  first layer that diverges: {s.first_divergent_layer} ({cause})")
            if s.precision_effect:
                e = s.precision_effect
                t1 = "n/a" if e["top1_vs_torch"] is None else f"{e['top1_vs_torch']:.0%}"
                lines.append(f"  {e['precision']} vs the fp32 model: sign flips {e['flips']}/"
                             f"{e['elements']} (first: {e['first_layer'] or 'none'}), top-1 vs PyTorch {t1}, "
                             f"vs fp32 ONNX Runtime {e['top1_vs_fp32_ort']:.0%}, max |logit change| "
                             f"{e['max_abs_vs_fp32_ort']:.3g} (reported, not judged)")
            lines += [f"  {r}" for r in [*s.notes, *s.reasons]]
            shown = s.layers if verbose else [la for la in s.layers if la.flips]
            width = max((len(la.name) for la in shown), default=0)
            for la in shown:
                margin = "" if la.max_margin is None else f"  (margin up to {la.max_margin:.2g} rel.)"
                lines.append(f"  {la.name:<{width}}  flips {la.flips:>6} / {la.elements}{margin}")
        lines.append(f"tolerances: outputs atol {t.atol:g} + rtol {t.rtol:g}*max|ref|, flips <= "
                     f"{t.max_flip_fraction:.2%} of binarized elements, identical top-1; near-tie flips "
                     f"(|x-t| <= {t.tie_rtol:g}*(|t|+mean|x|)) leave top-1 alone to decide")
        return "\n".join(lines)


# -- input sets ----------------------------------------------------------------------------------


def _check_inputs(x: np.ndarray, spec: dict, what: str) -> np.ndarray:
    """``x`` against the model's input ``spec`` (name, shape with a free batch dim): a clear
    error naming the input and the expected shape instead of an ONNX Runtime traceback."""
    want = spec["shape"]
    if x.dtype.kind not in "fiu":
        raise InputFileError(f"{what}: input '{spec['name']}' has dtype {x.dtype}; expected float32")
    if x.ndim != len(want) or list(x.shape[1:]) != [int(d) for d in want[1:]]:
        raise InputFileError(f"{what}: input '{spec['name']}' has shape {list(x.shape)}; the model "
                             f"expects [N, {', '.join(map(str, want[1:]))}]")
    if x.shape[0] < 1:
        raise InputFileError(f"{what}: input '{spec['name']}' has no samples")
    return np.ascontiguousarray(x, dtype=np.float32)


def _input_sets(model, onnx_path: Path, spec: dict, inputs, real_images: int):
    sets = []
    golden = golden_path_for(onnx_path)
    if golden.is_file():
        g = load_golden(golden)
        sets.append(("golden", _check_inputs(g["inputs"], spec, f"golden file {golden}"), g["outputs"]))
    if inputs is not None:
        arrays = load_npz(inputs, what="--inputs")
        x = _check_inputs(np.asarray(input_array(arrays, inputs, what="--inputs")), spec, f"--inputs {inputs}")
        sets.append((Path(inputs).name, x, arrays.get("outputs")))
    shape = [int(d) for d in spec["shape"]]
    if real_images and len(shape) == 4 and shape[1] in (1, 3) and shape[2] == shape[3]:
        from .data import real_images as photos

        # seed 7: other crops than the golden file's (the exporter uses seed 0)
        sets.append(("photos", photos(real_images, shape[2], channels=shape[1], seed=7), None))
    if not sets:
        raise UsageError(f"nothing to validate {onnx_path} on: no golden file {golden.name} next to "
                         "it, no --inputs, and the model's input is not an image for --images")
    return sets


def _model_input(model) -> dict:
    from .frontend import static_input_shapes

    shapes = static_input_shapes(model, 1)
    if len(shapes) != 1:
        raise UsageError(f"validate handles single-input models; this one takes {sorted(shapes)} "
                         "(use bnncompile.load(...).run({name: array}) and compare yourself)")
    name, shape = next(iter(shapes.items()))
    return {"name": name, "shape": shape}


# -- the builds ----------------------------------------------------------------------------------


class _Build:
    """A callable build with a ``debug_signs`` entry: the library when it has one, else an
    in-memory build with the library's (or default) options."""

    def __init__(self, model, spec, *, runner=None, batch: int, binary_kernels: bool = True):
        import tvm
        from tvm import relax

        meta = runner.meta if runner is not None else {}
        self.batch = int(meta["inputs"][0]["shape"][0]) if runner is not None else batch
        self.signs = list(meta.get("debug_signs") or [])
        if runner is not None and self.signs:
            self.vm = runner.vm
        else:
            from .compiler import build_relax, library_build_options

            options = {**library_build_options(meta), "binary_kernels": binary_kernels}
            ex, plan = build_relax(model, spec=spec, batch=self.batch, debug_signs=True, **options)
            self.vm, self.signs = relax.VirtualMachine(ex, tvm.cpu(0)), plan.debug_signs
        self.runner = runner
        self.device = runner._device if runner is not None and self.vm is runner.vm else None

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        import tvm

        dev = self.device or tvm.cpu(0)

        def call(a):
            # invoke_stateful + get_outputs: tuple outputs also come back over RPC (a remote
            # call returns the tuple as an opaque reference)
            self.vm.set_input("debug_signs", tvm.runtime.tensor(np.ascontiguousarray(a), dev))
            self.vm.invoke_stateful("debug_signs")
            res = self.vm.get_outputs("debug_signs")
            return [r.numpy() for r in (res if isinstance(res, tuple) else (res,))]

        return run_chunked(call, {"x": x}, ["x"], self.batch)


def validate_parity(onnx_path, *, lib=None, inputs=None, target: str = "host", real_images: int = 4,
                    tolerances: Tolerances | None = None, binary_kernels: bool = True,
                    progress=None, remote=None) -> ParityReport:
    """Compare the compiled model with PyTorch (golden file) and ONNX Runtime.

    Args:
        onnx_path: the exported model; its golden file (``<stem>.golden.npz``) is used if present.
        lib: a compiled library; outputs and per-layer signs come from it (its ``debug_signs``
            entry; a library built with ``--no-verify`` has none, and an in-memory debug build
            with its options is compiled instead). Without it, an in-memory build for ``target``.
        inputs: an ``.npz`` with ``inputs`` (and optionally ``outputs``) to validate on as well.
        real_images: natural photos (scikit-image) to add as an input set, for image models.
        remote: a :class:`bnncompile.remote.Endpoint`: run ``lib`` on that board (its
            ``debug_signs`` entry; ONNX Runtime, the reference, runs here).
    """
    from .frontend import prepare
    from .frontend.graph import GraphIndex

    tol = tolerances or Tolerances()
    say = progress or (lambda msg: None)
    onnx_path = Path(onnx_path)
    if isinstance(real_images, bool) or not isinstance(real_images, int) or real_images < 0:
        raise UsageError(f"Expected --images to be a number of photos >= 0, got {real_images!r}")
    model = load_onnx(onnx_path)
    spec_in = _model_input(model)
    spec = targets.resolve(target)
    runner = None
    if remote is not None and lib is None:
        raise UsageError("--rpc / --rpc-tracker validate a compiled library: pass --lib")
    if lib is not None:
        from .runtime import load

        runner = load(lib, remote=remote)
        check_library_matches_model(runner.meta, lib, onnx_path)
        name = runner.meta.get("target_name")
        spec = targets.resolve(name) if name in targets.names() else spec
        if remote is not None and not runner.meta.get("debug_signs"):
            raise UsageError(f"{lib} has no debug_signs entry (compiled with --no-verify); recompile "
                             "it without --no-verify to validate it on a board")
    ok, why = targets.runnable_here(spec)
    if not ok and remote is None:
        raise UsageError(f"cannot validate target {spec.name} on this machine: {why}")
    sets = _input_sets(model, onnx_path, spec_in, inputs, real_images)
    from .frontend.canonicalize import sign_zero_sites

    canonical = prepare(model)
    meta = runner.meta if runner is not None else {}
    options = meta.get("options") or {}
    conv, attention = options.get("conv_precision", "fp32"), options.get("attention_precision", "fp32")
    # what quantized here, as the report names it ("int8 float convs, int8 attention products")
    precision = ", ".join([f"{conv} float convs"] * (conv != "fp32") +
                          [f"{attention} attention products"] * (attention != "fp32"))
    exact_ref = canonical  # what the build must match: the file, its float convs as the library computes them
    if precision:
        from .frontend.quantized_reference import quantized_reference
        from .schedules.quantize import activation_levels, tie_rtol

        convs, matmuls = meta.get("quantized_convs") or {}, meta.get("quantized_matmuls") or {}
        exact_ref = quantized_reference(canonical, convs, conv, matmuls)
        tol = dataclasses.replace(tol, tie_rtol=tie_rtol(activation_levels(convs, matmuls), tol.tie_rtol))
    zero_sites = sign_zero_sites(canonical)
    signs = sign_nodes(canonical)
    index = GraphIndex(canonical)
    consts = {t: index.constant(t) for n in signs for t in n.input if t}
    static = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value or None
    wanted = [s.output[0] for s in signs] + [t for t, v in consts.items() if v is None]
    wanted += [site.input for site in zero_sites]
    refs = []  # ONNX Runtime first: a foreign golden file fails before any build
    for set_name, x, ref in sets:
        say(f"running ONNX Runtime on {set_name} ({x.shape[0]} samples)")
        ort = reference(canonical, {spec_in["name"]: x}, wanted, batch=static)
        y_ort = ort[model.graph.output[0].name]
        if ref is not None:
            if ref.shape != y_ort.shape:
                raise InputFileError(f"{set_name}: its outputs have shape {list(ref.shape)} but the "
                                     f"model's are {list(y_ort.shape)}: the file belongs to another model")
            _check_golden_belongs(set_name, ref, y_ort, tol, zero_sites)
        quantized = (None if exact_ref is canonical else
                     reference(exact_ref, {spec_in["name"]: x}, wanted, batch=static))
        refs.append((ort, quantized))
    say("compiling a debug build" if runner is None or not runner.meta.get("debug_signs")
        else "loading the library's debug entry")
    build = _Build(model, spec, runner=runner, batch=static or min(8, max(s[1].shape[0] for s in sets)),
                   binary_kernels=binary_kernels)
    by_output = {n.output[0]: n for n in signs}
    report = ParityReport(str(onnx_path), spec.name, None if lib is None else str(lib), tol, [])
    for (set_name, x, ref), (fp32_ort, quantized_ort) in zip(sets, refs):
        ort = fp32_ort if quantized_ort is None else quantized_ort
        if not np.all(np.isfinite(x)):
            report.warnings.append(f"input set {set_name!r} contains NaN/Inf; DynamicSign maps NaN to -1")
        say(f"running the build on {set_name}")
        got = build(x)
        y, ours = got[0], dict(zip(build.signs, got[len(got) - len(build.signs):]))
        y_ort = ort[model.graph.output[0].name]
        check = compare_signs([by_output[s] for s in build.signs], ours, ort, consts, tie_rtol=tol.tie_rtol)
        s = InputSetReport(
            name=set_name, batch=int(x.shape[0]),
            max_abs_vs_torch=None if ref is None else float(np.max(np.abs(y - ref))),
            mean_abs_vs_torch=None if ref is None else float(np.mean(np.abs(y - ref))),
            max_abs_vs_ort=float(np.max(np.abs(y - y_ort))), mean_abs_vs_ort=float(np.mean(np.abs(y - y_ort))),
            top1_vs_torch=None if ref is None else top1_agreement(y, ref), top1_vs_ort=top1_agreement(y, y_ort),
            layers=check.layers, first_divergent_layer=check.first_divergent, tie_induced=check.tie_induced)
        for site in zero_sites:
            s.sign_zero_inputs[site.node] = int(np.count_nonzero(ort[site.input] == 0))
            if s.sign_zero_inputs[site.node]:
                s.notes.append(f"{s.sign_zero_inputs[site.node]} inputs of '{site.node}' were exactly 0: "
                               "the file's Sign gives 0 there, the compiled model +1 (compare with "
                               "ONNX Runtime on the original file, not this report, to see the effect)")
        if quantized_ort is not None:
            # PyTorch ran the fp32 model: the build is judged against the quantized graph alone
            s.max_abs_vs_torch = s.mean_abs_vs_torch = s.top1_vs_torch = None
            s.precision_effect = _precision_effect(precision, [by_output[n] for n in build.signs], ours,
                                                   fp32_ort, consts, y, ref, fp32_ort[model.graph.output[0].name], tol)
            ref = None
        _judge(s, y, ref if ref is not None else y_ort, tol)
        report.sets.append(s)
    del build  # it holds the library's VM (and a board's session)
    if runner is not None:
        runner.close()  # a board's RPC server serves one session at a time
    return report


def _precision_effect(precision, signs, ours, fp32_ort, consts, y, torch_ref, y_fp32, tol) -> dict:
    """How far a quantized build moved from the fp32 model: its sign flips per layer against
    ONNX Runtime on the original file, and its top-1 against PyTorch and that run."""
    check = compare_signs(signs, ours, fp32_ort, consts, tie_rtol=tol.tie_rtol)
    return {"precision": precision, "flips": sum(la.flips for la in check.layers),
            "elements": sum(la.elements for la in check.layers), "first_layer": check.first_divergent,
            "layers": {la.name: la.flips for la in check.layers if la.flips},
            "top1_vs_torch": None if torch_ref is None else top1_agreement(y, torch_ref),
            "top1_vs_fp32_ort": top1_agreement(y, y_fp32),
            "max_abs_vs_fp32_ort": float(np.max(np.abs(y - y_fp32)))}


def _check_golden_belongs(set_name: str, ref: np.ndarray, y_ort: np.ndarray, tol: Tolerances,
                          zero_sites=()) -> None:
    """The recorded PyTorch outputs must be this model's (ONNX Runtime runs the same file)."""
    err = float(np.max(np.abs(ref - y_ort)))
    bound = tol.golden_rtol * max(float(np.max(np.abs(y_ort))), 1e-6)
    if not math.isfinite(err) or err > bound:
        hint = (" (or: this model's ONNX Sign nodes are compiled as 0 -> +1, and these inputs reach "
                "them with exact zeros)" if zero_sites else "")
        raise InputFileError(f"{set_name}: the recorded outputs differ from ONNX Runtime's on the same "
                             f"inputs by {err:.3g} (> {bound:.3g}): the file belongs to another model "
                             f"(or another export); re-export, or validate with --inputs{hint}")


def _judge(s: InputSetReport, y: np.ndarray, ref: np.ndarray, tol: Tolerances) -> None:
    bound = tol.atol + tol.rtol * float(np.max(np.abs(ref)))
    err = float(np.max(np.abs(y - ref)))
    top1 = min(v for v in (s.top1_vs_torch, s.top1_vs_ort) if v is not None)
    if top1 < tol.min_top1_agreement:
        s.reasons.append(f"top-1 agreement {top1:.1%} < {tol.min_top1_agreement:.0%}")
    if s.first_divergent_layer and s.tie_induced:
        s.notes.append(f"output drift {err:.3g} (bound {bound:.3g} without flips) follows near-tie flips")
    else:
        if not math.isfinite(err) or err > bound:
            s.reasons.append(f"output error {err:.3g} exceeds {bound:.3g}")
        if s.binarized_elements and s.flips > tol.max_flip_fraction * s.binarized_elements:
            s.reasons.append(f"{s.flips} sign flips exceed {tol.max_flip_fraction:.2%} of "
                             f"{s.binarized_elements} binarized elements")
    s.ok = not s.reasons
