"""``compile_model``: an exported ONNX file → a deployable TVM library + JSON sidecar.

The sidecar (``model.json`` next to ``model.so``) records what a loader must know and check:
input/output names, shapes and dtypes, the target, batch size, versions, and the SHA-256 of the
ONNX file it came from.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, artifacts, targets
from .errors import CompileError, InputFileError, UsageError


@dataclass(frozen=True)
class CompileOptions:
    """Validated once at the entry point; written into the sidecar."""

    target: str = "host"
    batch: int = 1
    binary_kernels: bool = True
    fast_math: bool = True
    fuse_epilogues: bool = True
    verify: bool = True
    sign_zero: str = "plus"
    conv_precision: str = "fp32"
    attention_precision: str = "fp32"
    version: int = artifacts.SIDECAR_VERSION

    def __post_init__(self):
        from .schedules.quantize import ATTENTION_PRECISIONS, PRECISIONS

        if not isinstance(self.batch, int) or self.batch < 1:
            raise UsageError(f"Expected --batch to be a positive integer, got {self.batch!r}")
        for flag, value, allowed in (("--conv-precision", self.conv_precision, PRECISIONS),
                                     ("--attention-precision", self.attention_precision, ATTENTION_PRECISIONS)):
            if value not in allowed:
                raise UsageError(f"Expected {flag} to be one of {', '.join(allowed)}, got {value!r}")
            if value != "fp32" and not self.binary_kernels:
                raise UsageError(f"{flag} {value} runs bnncompile's quantized kernels; --float-only "
                                 "builds none (drop one of the two)")


@dataclass
class CompileResult:
    library: Path
    sidecar: Path
    seconds: float
    num_binary_layers: int
    exported_as: str  # "so" or "tar"
    runnable_here: bool
    notes: list[str] = field(default_factory=list)
    #: Conv / Gemm / MatMul that stayed float -> why
    not_binary: dict[str, str] = field(default_factory=dict)
    verify: dict | None = None
    #: what may differ from the file's own semantics (ONNX Sign sites compiled as 0 -> +1)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: how many layers became binary, and why the others did not."""
        reasons: dict[str, int] = {}
        for why in self.not_binary.values():
            reasons[why] = reasons.get(why, 0) + 1
        text = f"{self.num_binary_layers} binary layers"
        if reasons:
            parts = "; ".join(f"{n}x {why}" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
            text += f", {len(self.not_binary)} float Conv/Gemm/MatMul ({parts})"
        return text


def fast_math_legalize_map(target=None) -> dict:
    """softmax / erf (GELU) / tanh with TVM's polynomial exp/erf/tanh, and float32 division by a
    scalar constant as a multiplication by its reciprocal: the libm calls are scalar
    and dominated the CCT models (softmax ~40 % of CCT-7). Relative error ~1e-7..1e-6, far
    inside validate's logit tolerance; binary layers are unaffected (they are integer-exact).
    On a CPU ``target``, a static float32 softmax over the last axis is our scheduled kernel
    (``schedules.float_glue.softmax_last_func``: one exponential per element, rows in
    parallel), also when every axis after the softmax's is 1 (CCT's sequence pooling,
    ``[1, L, 1]`` over the tokens: 0.15 ms in TOPI's kernel for 256 values); anything else
    TOPI's ``fast_softmax``."""
    from tvm import relax, tirx, topi

    def softmax(bb, call):
        x = call.args[0]
        ty = x.ty
        shape = getattr(ty, "shape", None)
        static = shape is not None and all(isinstance(v, tirx.IntImm) for v in shape)
        if (target is not None and target.kind.name == "llvm" and static and len(shape) >= 1
                and str(ty.dtype) == "float32"):
            from .schedules.float_glue import softmax_last_func

            dims = [int(v) for v in shape]
            axis = int(call.attrs.axis) % len(dims)
            if all(d == 1 for d in dims[axis + 1:]):
                rows = [1] * max(0, 1 - axis) + dims[:axis + 1]  # rank >= 2, softmax axis last
                gv = bb.add_func(softmax_last_func(rows, target).with_attr("op_pattern", 8),
                                 "softmax_last")
                if rows == dims:
                    return relax.call_tir(gv, [x], out_ty=relax.TensorType(dims, "float32"))
                y = bb.emit(relax.call_tir(gv, [bb.emit(relax.op.reshape(x, rows))],
                                           out_ty=relax.TensorType(rows, "float32")))
                return relax.op.reshape(y, dims)
        return bb.call_te(topi.nn.fast_softmax, x, call.attrs.axis)

    def divide(bb, call):
        from tvm.relax.transform.legalize_ops.common import (
            _is_relax_expr,
            _try_convert_to_scalar_const,
        )

        x, d = call.args[0], _try_convert_to_scalar_const(call.args[1])
        if not _is_relax_expr(d) and str(getattr(x.ty, "dtype", "")) == "float32" and float(d) != 0.0:
            # x / c as x * (1 / c): one multiply per element instead of a divide (GELU's x / sqrt 2:
            # vdivps is ~4x the cost of vmulps on Zen 3); within ~1.5 ulp of the quotient
            return bb.call_te(topi.multiply, x, tirx.const(float(1.0 / np.float64(d)), "float32"))
        if _is_relax_expr(d):
            x = _try_convert_to_scalar_const(x)
        return bb.call_te(topi.divide, x, d)

    return {
        "relax.nn.softmax": softmax,
        "relax.divide": divide,
        "relax.erf": lambda bb, call: bb.call_te(topi.fast_erf, call.args[0]),
        "relax.tanh": lambda bb, call: bb.call_te(topi.fast_tanh, call.args[0]),
    }


def relax_pipeline(target, *, fast_math: bool = True, then: tuple = ()):
    """TVM's default Relax pipeline, plus: dead-code elimination first (drops the float ±1 of
    DynamicSigns whose consumers all became bit-packed kernels) and, on CPUs, default schedules
    for the float glue TVM legalizes (TVM 0.27 leaves those single-threaded) and, with
    ``fast_math``, vectorizable exp/erf/tanh (:func:`fast_math_legalize_map`). ``then``: module
    passes run last, before code generation (``bench.vm_overhead`` empties the kernels)."""
    import tvm
    from tvm import relax

    if target.kind.name != "llvm":
        return tvm.transform.Sequential([relax.transform.DeadCodeElimination(),
                                         relax.get_default_pipeline(target), *then])
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from .schedules.float_glue import schedule_pass

    legalize = cpu.legalize_passes(target)
    if fast_math:
        legalize = [relax.transform.LegalizeOps(customize_legalize_map=fast_math_legalize_map(target)),
                    *legalize[1:]]
    return tvm.transform.Sequential(
        [relax.transform.DeadCodeElimination()]
        + cpu.library_dispatch_passes(target) + legalize
        + [schedule_pass()]
        + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target) + list(then))


def library_build_options(meta: dict) -> dict:
    """The :func:`build_relax` keyword arguments a library was compiled with, read from its
    sidecar ``meta`` (the defaults where a sidecar lacks one): rebuilds of the same program
    (validate's debug build, bench's emptied-kernel build) start from here."""
    opts = meta.get("options") or {}
    return {"binary_kernels": opts.get("binary_kernels", True), "fast_math": opts.get("fast_math", True),
            "fuse_epilogues": opts.get("fuse_epilogues", True), "sign_zero": opts.get("sign_zero", "plus"),
            "conv_precision": opts.get("conv_precision", "fp32"),
            "attention_precision": opts.get("attention_precision", "fp32")}


def build_relax(model, *, spec: targets.TargetSpec, batch: int = 1, binary_kernels: bool = True,
                extra_outputs: tuple[str, ...] = (), tuning_db=None, fast_math: bool = True,
                fuse_epilogues: bool = True, debug_signs: bool = False, sign_zero: str = "plus",
                conv_precision: str = "fp32", attention_precision: str = "fp32", then: tuple = ()):
    """ONNX ModelProto → (tvm Executable, plan). Used by compile, validate and bench.

    ``tuning_db``: a MetaSchedule database (directory or ``ms.Database``) whose records for this
    target replace the hand schedules (``schedules/tuning.py``); after the call, ``plan.tuning``
    is the :class:`~bnncompile.schedules.tuning.DatabaseSession` (None without a database).
    ``then``: extra module passes at the end of the pipeline (:func:`relax_pipeline`)."""
    import tvm

    from .frontend import FrontendOptions, from_onnx
    from .schedules import stack_scratch

    tgt = targets.tvm_target(spec)
    opts = FrontendOptions(batch=batch, binary_kernels=binary_kernels, extra_outputs=extra_outputs,
                           fuse_epilogues=fuse_epilogues, debug_signs=debug_signs, sign_zero=sign_zero,
                           conv_precision=conv_precision, attention_precision=attention_precision,
                           fast_math=fast_math)
    session = None
    if tuning_db is not None:
        from .schedules import tuning

        try:
            session = tuning.open_session(tuning_db, tgt)
        except FileNotFoundError as exc:
            raise InputFileError(f"--tuning-db: {exc}") from exc
    mod, plan = from_onnx(model, target=tgt, options=opts, tuning=session)
    plan.tuning = session
    try:
        with tgt:
            ex = tvm.compile(mod, target=tgt, relax_pipeline=relax_pipeline(tgt, fast_math=fast_math, then=then),
                             tir_pipeline=stack_scratch.register())
    except Exception as exc:
        raise CompileError(f"TVM failed to build for target {spec.name}: {tvm_error_text(exc)}") from exc
    return ex, plan


def _io_signature(model, batch: int) -> tuple[list[dict], list[dict]]:
    from .frontend import static_input_shapes

    shapes = static_input_shapes(model, batch)
    inputs = [{"name": n, "shape": s, "dtype": "float32"} for n, s in shapes.items()]
    outputs = []
    for o in model.graph.output:
        dims = [d.dim_value if d.HasField("dim_value") else batch
                for d in o.type.tensor_type.shape.dim]
        outputs.append({"name": o.name, "shape": dims, "dtype": "float32"})
    return inputs, outputs


def compile_model(onnx_path, *, output, target: str = "host", batch: int = 1,
                  binary_kernels: bool = True, progress=None, tuning_db=None,
                  pretuned: bool = True, fast_math: bool = True,
                  fuse_epilogues: bool = True, verify: bool = True,
                  sign_zero: str = "plus", conv_precision: str = "fp32",
                  attention_precision: str = "fp32") -> CompileResult:
    """Compile ``onnx_path`` for ``target`` into ``output`` (a ``.so``, or a ``.tar`` object
    archive when ``output`` ends in ``.tar``) and its sidecar ``.json``, both replaced together
    or not at all.

    Args:
        onnx_path: a model written by ``bnncompile export`` (or any ONNX file using only
            standard ops plus ``com.bnncompile::DynamicSign``).
        output: library path; the sidecar goes next to it with the ``.json`` suffix.
        target: a registry name (see :mod:`bnncompile.targets`) or raw TVM target JSON.
        batch: static batch size compiled in.
        binary_kernels: False lowers everything as float (a debugging aid for parity).
        fast_math: polynomial exp/erf/tanh for softmax/GELU/tanh on CPUs (~1e-7..1e-6 relative);
            False keeps TVM's libm calls (slower CCT glue, closest to ONNX Runtime).
        fuse_epilogues: run the BN / residual / RPReLU chain after each binary conv in the
            conv's epilogue (``bnncompile.epilogue``); False leaves it to TVM's float fusion.
        progress: optional callable ``(message)`` for stage updates.
        tuning_db: MetaSchedule database directory (``bnncompile tune``); its records for the
            target replace the hand schedules. Default: the shipped pre-tuned records for the
            target's tag (``schedules/databases/<tag>``) if any, unless ``pretuned=False``.
        verify: build a ``debug_signs`` entry into the library and, where the library runs on
            this machine, check it against ONNX Runtime on random inputs before writing it
            (every DynamicSign's bits and the outputs; :mod:`bnncompile.verify`); a mismatch
            fails the compile naming the first divergent layer.  The result goes to the sidecar.
        sign_zero: ONNX ``Sign`` maps 0 to 0, one bit cannot: "plus" compiles it as 0 -> +1 and
            lists each site in ``CompileResult.notes`` (and the sidecar), "refuse" stops with an
            error naming the node.
        conv_precision: the float convs bnncompile computes (stem, tokenizer, shortcuts): "fp32"
            (exact), or "int16" / "int8", quantized per sample (``schedules.quantize``; CPU
            targets).  ``verify`` / ``validate`` then compare with the file's graph computing the
            same quantization, and ``validate`` reports its effect against the fp32 model.
        attention_precision: attention's probability x value products (a float MatMul of a
            Softmax with an activation): "fp32" (exact), or "int8", both operands quantized at
            run time (``schedules.quantize``; CPU targets), held to the same checks.
    """
    opts = CompileOptions(target=target, batch=batch, binary_kernels=binary_kernels,
                          fast_math=fast_math, fuse_epilogues=fuse_epilogues, verify=verify,
                          sign_zero=sign_zero, conv_precision=conv_precision,
                          attention_precision=attention_precision)
    spec = targets.resolve(target)
    for flag, value in (("--conv-precision", conv_precision), ("--attention-precision", attention_precision)):
        if value != "fp32" and spec.arch == "cuda":
            raise UsageError(f"{flag} {value}: the quantized kernels are CPU kernels; target "
                             f"{spec.name} is a GPU (use fp32)")
    say = progress or (lambda msg: None)
    output = Path(output)
    if not output.parent.is_dir():
        raise InputFileError(f"cannot write {output}: directory {output.parent} does not exist")
    artifacts.check_writable(output, flag="--output")  # fail before a minute-long build
    fmt = "tar" if output.suffix == ".tar" else "so"
    fcompile = None
    if fmt == "so" and spec.arch == "aarch64":
        fcompile = targets.cross_linker(spec)  # CompileError naming the missing packages
    model = artifacts.load_onnx(onnx_path)
    onnx_sha256 = artifacts.sha256_file(onnx_path)
    t0 = time.perf_counter()
    say(f"importing {onnx_path} for {spec.name}")
    if tuning_db is None and pretuned and binary_kernels:
        from .schedules import tuning

        tuning_db = tuning.pretuned_dir(targets.tvm_target(spec))
    ex, plan = build_relax(model, spec=spec, batch=batch, binary_kernels=binary_kernels,
                          tuning_db=tuning_db, fast_math=fast_math, fuse_epilogues=fuse_epilogues,
                          debug_signs=verify, sign_zero=sign_zero, conv_precision=conv_precision,
                          attention_precision=attention_precision)
    notes = []
    say(f"linking {output.name}")
    side = artifacts.sidecar_path_for(output)
    with artifacts.temporary_sibling(output, f".{fmt}") as tmp, \
            artifacts.temporary_sibling(side, ".json") as tmp_side:
        try:
            ex.export_library(str(tmp), **({"fcompile": fcompile} if fcompile is not None else {}))
        except Exception as exc:
            raise CompileError(f"exporting the library {output} failed: {tvm_error_text(exc)}") from exc
        ok, why = targets.runnable_here(spec)
        if not ok:
            notes.append(f"built, not runnable here: {why}")
        checked = (_verify(tmp, plan, model, batch, spec.arch, ok and fmt == "so", why, say)
                   if verify else None)
        if checked is not None and checked.get("skipped"):
            notes.append(f"not verified: {checked['skipped']}")
        elif checked is not None and checked.get("message"):
            notes.append(f"verify: {checked['message']}")
        if fmt == "tar":
            notes.append("wrote an object archive (.tar): link it on the device "
                         "(tvm.runtime.load_module after cc.create_shared)")
        sidecar = _sidecar(spec, opts, model, batch, output, fmt, tmp, onnx_path, onnx_sha256, plan,
                           tuning_db)
        sidecar["verify"] = checked
        tmp_side.write_text(json.dumps(sidecar, indent=2))
        artifacts.replace_together([(tmp, output), (tmp_side, side)])
    if conv_precision != "fp32":
        # the float Convs bnncompile's kernel does not take (grouped, non-constant weights) stay fp32
        kept = sorted(n.name for n in plan.canonical.graph.node if n.op_type == "Conv"
                      and n.name in plan.not_binary and n.name not in plan.quantized_convs)
        notes.append(f"{len(plan.quantized_convs)} float conv(s) quantized to {conv_precision}" +
                     ("" if plan.quantized_convs else " (none in this model)") +
                     (f"; {len(kept)} stay fp32 (grouped or non-constant weights: "
                      f"{', '.join(kept[:3])}{' ...' if len(kept) > 3 else ''})" if kept else "") +
                     "; `bnncompile validate` reports the effect against the fp32 model")
    if attention_precision != "fp32":
        notes.append(f"{len(plan.quantized_matmuls)} attention product(s) (Softmax x values) on "
                     f"{attention_precision}" + ("" if plan.quantized_matmuls else " (none in this model)") +
                     "; `bnncompile validate` reports the effect against the fp32 model")
    stale = getattr(getattr(plan, "tuning", None), "stale", None)
    if stale:
        notes.append(f"{len(stale)} tuned record(s) predate today's hand schedules and were not "
                     "used (the sidecar's tuning.stale says why); `bnncompile tune` re-measures them")
    if not plan.binary:
        notes.append("no layer of this model is binary: it compiled all-float (see `bnncompile "
                     "inspect` for why each Conv/Gemm/MatMul is not)")
    return CompileResult(output, side, time.perf_counter() - t0, len(plan.binary), fmt, ok, notes,
                         dict(plan.not_binary), checked,
                         [site.message() for site in plan.sign_zero_sites])


def _verify(lib_path, plan, model, batch: int, arch: str, runnable: bool, why: str, say) -> dict:
    """``compile --verify``: the freshly linked library against ONNX Runtime (bnncompile.verify)."""
    if not runnable:
        return {"skipped": why or "an object archive cannot be loaded here"}
    import tvm
    from tvm import relax

    from .verify import verify_build

    say("verifying against ONNX Runtime")
    inputs, _ = _io_signature(model, batch)
    device = tvm.cuda(0) if arch == "cuda" else tvm.cpu(0)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib_path)), device)
    # the library's batch: --batch, unless the graph fixes its own (a Brevitas export: 4)
    result = verify_build(vm, plan, inputs, int(inputs[0]["shape"][0]), device=device)
    if not result.ok:
        raise CompileError(f"verification against ONNX Runtime failed: {result.message} "
                           "(please report this with the model; --no-verify skips the check)")
    return result.to_dict()


def tvm_error_text(exc: BaseException, limit: int = 1200) -> str:
    """A TVM error's message without its C++ backtrace, all of it: the first line alone is often
    just "Compilation error:" with the linker's actual complaint below."""
    lines = [ln.rstrip() for ln in str(exc).splitlines()]
    keep = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith(("File \"", "at ", "0x"))
            and "Stack trace" not in ln and not ln.lstrip()[:3].rstrip(":").isdigit()]
    text = " | ".join(keep) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


def _requires(spec, plan) -> list[str]:
    """The CPU flags the library needs where it loads: the target's, less AMX's when no kernel
    uses AMX (``host`` names the AMX features whenever the CPU has them, and LLVM emits AMX
    instructions only for the AMX kernels), plus AVX-512 VNNI's when a kernel calls
    ``vpdpbusd`` (named targets list only what their binary kernels need)."""
    kinds = {info.get("kind") for info in plan.kernels.values()}
    needs = [f for f in spec.requires if "qconv2d_amx" in kinds or not f.startswith("amx")]
    vnni = {"qconv2d_vnni", "qbmm_vnni"} & set(kinds)
    return needs + (["avx512_vnni"] if vnni and "avx512_vnni" not in needs else [])


def _sidecar(spec, opts, model, batch, output, fmt, lib_tmp, onnx_path, onnx_sha256, plan, tuning_db) -> dict:
    import tvm

    inputs, outputs = _io_signature(model, batch)
    return {
        "format": artifacts.SIDECAR_FORMAT,
        "sidecar_version": artifacts.SIDECAR_VERSION,
        "library": output.name,
        "library_format": fmt,
        "inputs": inputs,
        "outputs": outputs,
        "target_name": spec.name,
        "target": json.loads(spec.to_json()),
        "arch": spec.arch,
        "identity": spec.identity().to_dict(),
        "requires": _requires(spec, plan),
        "options": asdict(opts),
        "onnx_sha256": onnx_sha256,
        "onnx_file": str(Path(onnx_path).name),
        # load() checks these before dlopen: a truncated library would crash the process (SIGBUS)
        "library_size": lib_tmp.stat().st_size,
        "library_sha256": artifacts.sha256_file(lib_tmp),
        "binary_layers": len(plan.binary),
        "debug_signs": list(plan.debug_signs),  # what the debug_signs entry returns after the outputs
        "not_binary": dict(plan.not_binary),
        "sign_zero_sites": [site.node for site in plan.sign_zero_sites],
        "quantized_convs": dict(plan.quantized_convs),  # node -> {"qa", "qw"} (--conv-precision)
        "quantized_matmuls": dict(plan.quantized_matmuls),  # node -> levels (--attention-precision)
        "kernels": plan.kernels,
        "tuning": _tuning_sidecar(tuning_db, getattr(plan, "tuning", None)),
        "versions": {"bnncompile": __version__, "tvm": tvm.__version__, "numpy": np.__version__},
    }


def _tuning_sidecar(tuning_db, session) -> dict | None:
    """Which MetaSchedule records the build used (None: hand schedules only, no database)."""
    if session is None:
        return None
    return {"database": str(Path(tuning_db).resolve()) if isinstance(tuning_db, (str, os.PathLike))
            else None,
            "target_tag": session.tag,  # the target identity's tag
            "records_digest": session.digest(),
            "tuned_kernels": sorted(session.applied),
            "hand_won": sorted(session.hand_won),  # best record: the hand schedule, built as it is now
            # a searched best measured against an older hand schedule: today's hand schedule built
            "stale": dict(session.stale),
            "failed": dict(session.failed)}
