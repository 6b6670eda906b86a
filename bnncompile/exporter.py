"""PyTorch → ONNX with the ``com.bnncompile::DynamicSign`` op, plus a golden file.

Exporter: ``torch.onnx.export(dynamo=True)`` (the default and the maintained path in torch 2.13)
from a ``torch.export`` program, with a ``custom_translation_table`` that turns
``torch.ops.bnncompile.dynamic_sign`` into one DynamicSign node. The TorchScript exporter is
deprecated and cannot see ``torch.library`` custom ops without a separate ``symbolic``.

After export the model gets the DynamicSign ONNX function body (so ONNX Runtime runs it), IR
version 10 (ONNX Runtime 1.31 loads at most 13), readable node names from the module paths, and
``onnx.checker``'s full check. Files are written to a temporary name and renamed, so a failure
never leaves a half-written model behind.

``portable=True`` (``export --portable``) inlines the DynamicSign function into standard
``GreaterOrEqual`` + ``Where`` ops (:func:`make_portable`): the file then runs unchanged in any
ONNX runtime, OpenVINO included (which refuses the ``com.bnncompile`` domain), and the compiler's
canonicalize stage turns the inlined form back into the same binary layers.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from . import artifacts, limits
from .custom_ops import dynamic_sign, registry
from .errors import ExportError, InputFileError, UsageError
from .nn.layers import freeze

IR_VERSION = 10
OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class ExportResult:
    model_path: Path
    golden_path: Path | None
    num_dynamic_sign: int  # DynamicSign sites (inlined ones included when portable)
    portable: bool = False


def export(module: torch.nn.Module, example_input: torch.Tensor, path, *,
           golden_inputs: torch.Tensor | np.ndarray | None = None, dynamic_batch: bool = True,
           write_golden: bool = True, opset: int = OPSET,
           metadata: dict[str, str] | None = None, portable: bool = False) -> ExportResult:
    """Export a module built from ``bnncompile.nn`` (or any torch module) to ONNX.

    Args:
        module: the model; it is deep-copied, put in eval mode and its binary layers frozen, so
            the caller's module is untouched.
        example_input: a tensor of the input shape (batch may differ when ``dynamic_batch``).
        path: the ``.onnx`` file to write. The golden file goes to ``<stem>.golden.npz``.
        golden_inputs: inputs to record with their PyTorch outputs (default: ``example_input``).
        dynamic_batch: make the batch dimension symbolic (``"batch"``).
        metadata: extra ``metadata_props`` (e.g. ``bnncompile.zoo``: how to rebuild the PyTorch
            model, used by ``bench`` to time PyTorch eager on the same weights).
        portable: inline DynamicSign into ``GreaterOrEqual`` + ``Where`` (:func:`make_portable`)
            so OpenVINO and other runtimes without the custom domain read the file; the golden
            file is the same as without it.

    Returns:
        :class:`ExportResult` with the written paths.
    """
    path = Path(path)
    artifacts.check_writable(path)
    model = freeze(copy.deepcopy(module).eval())
    example_input = torch.as_tensor(example_input, dtype=torch.float32)
    onnx_model = to_onnx(model, example_input, dynamic_batch=dynamic_batch, opset=opset)
    n_sign = sum(dynamic_sign.is_dynamic_sign(n) for n in onnx_model.graph.node)
    if portable:
        onnx_model = make_portable(onnx_model)
    for key, value in (metadata or {}).items():
        onnx_model.metadata_props.add(key=key, value=value)
    artifacts.atomic_write_bytes(path, onnx_model.SerializeToString())
    golden_path = None
    if write_golden:
        inputs = example_input if golden_inputs is None else torch.as_tensor(golden_inputs, dtype=torch.float32)
        with torch.no_grad():
            outputs = model(inputs)
        golden_path = artifacts.golden_path_for(path)
        artifacts.save_golden(golden_path, inputs.numpy(), outputs.numpy())
    return ExportResult(path, golden_path, n_sign, portable)


def to_onnx(model: torch.nn.Module, example_input: torch.Tensor, *, dynamic_batch: bool = True,
            opset: int = OPSET) -> onnx.ModelProto:
    """Trace, translate and post-process; returns a checked in-memory ModelProto."""
    import logging

    # torch's exporter warns once per missing torchvision op; meaningless for a bnncompile user
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    if dynamic_batch and example_input.shape[0] == 1:
        # torch.export specialises size-1 dimensions; trace with batch 2 to keep batch symbolic
        example_input = torch.cat([example_input, example_input])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(model, (example_input,), dynamic_shapes=dynamic_shapes)
    except Exception as exc:  # torch raises many types; all mean "cannot trace this module"
        raise ExportError(f"torch.export could not trace {type(model).__name__}: {artifacts.first_line(exc)}") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_program = torch.onnx.export(
                program, (example_input,), dynamo=True, opset_version=opset,
                custom_translation_table=registry.translation_table(),
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
            )
    except Exception as exc:
        raise ExportError(_explain_conversion_failure(exc, program)) from exc
    onnx_model = onnx_program.model_proto
    postprocess(onnx_model)
    return onnx_model


def postprocess(model: onnx.ModelProto) -> onnx.ModelProto:
    """Attach custom-op functions, pin the IR version, name nodes after their modules, check."""
    dynamic_sign.attach_function(model)
    model.ir_version = IR_VERSION
    name_nodes_by_module(model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"exported model failed onnx.checker: {artifacts.first_line(exc)}") from exc
    return model


def make_portable(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every ``com.bnncompile::DynamicSign`` node replaced by its ONNX
    function body (``onnx.inliner.inline_local_functions``), in standard ai.onnx ops only.

    Each site becomes ``Where(GreaterOrEqual(X, T), 1, -1)``: the body's ``CastLike`` of the two
    float constants to ``X``'s type is folded away (DynamicSign's ``X`` is float32 by its type
    constraint, so the cast is the identity), which is exactly the spelling the compiler's
    canonicalize stage (``frontend/canonicalize/where_compare.py``) turns back into DynamicSign.
    The inlined nodes are named ``<sign node name>/GreaterOrEqual`` etc.; the custom domain's
    opset import is dropped once no node uses it. The result passes ``onnx.checker``'s full check
    (:class:`ExportError` otherwise). A model without DynamicSign comes back as a plain copy.
    """
    import onnx.inliner

    model = copy.deepcopy(model)
    if not any(dynamic_sign.is_dynamic_sign(n) for n in model.graph.node):
        return model
    dynamic_sign.attach_function(model)  # the body in the model's opset; an explicit T everywhere
    sites = {n.output[0]: n.name or f"DynamicSign_{i}"
             for i, n in enumerate(model.graph.node) if dynamic_sign.is_dynamic_sign(n)}
    try:
        inlined = onnx.inliner.inline_local_functions(model)
    except Exception as exc:  # the C++ inliner raises plain RuntimeErrors
        raise ExportError(f"inlining DynamicSign failed: {artifacts.first_line(exc)}") from exc
    graph = inlined.graph
    producer = {o: n for n in graph.node for o in n.output}
    drop: set[int] = set()
    for where in graph.node:
        if where.op_type != "Where" or where.domain not in ("", "ai.onnx") or where.output[0] not in sites:
            continue
        name = sites[where.output[0]]
        where.name = f"{name}/Where"
        cond = producer.get(where.input[0])
        if cond is not None and cond.op_type == "GreaterOrEqual":
            cond.name = f"{name}/GreaterOrEqual"
        for slot, suffix in ((1, "Constant"), (2, "Constant_1")):
            cast = producer.get(where.input[slot])
            if cast is None or cast.op_type != "CastLike":
                continue
            const = producer.get(cast.input[0])
            if const is None or const.op_type != "Constant":
                continue
            const.name = f"{name}/{suffix}"
            where.input[slot] = const.output[0]
            drop.add(id(cast))
    kept = [n for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(kept)
    used = {n.domain for n in graph.node}
    for f in inlined.functions:
        used |= {n.domain for n in f.node}
    if dynamic_sign.DOMAIN not in used:
        imports = [o for o in inlined.opset_import if o.domain != dynamic_sign.DOMAIN]
        del inlined.opset_import[:]
        inlined.opset_import.extend(imports)
    try:
        onnx.checker.check_model(inlined, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"portable model failed onnx.checker: {artifacts.first_line(exc)}") from exc
    return inlined


def _module_path(node: onnx.NodeProto) -> str | None:
    """Module path of a node from the exporter's ``namespace`` metadata (``blocks.3.sign1``)."""
    for prop in node.metadata_props:
        if prop.key == "namespace":
            names = [seg.split(":")[0].strip() for seg in prop.value.split("/")]
            names = [n for n in names[:-1] if n]  # the last segment is the aten op itself
            return names[-1] if names else None
    return None


def name_nodes_by_module(model: onnx.ModelProto) -> None:
    """Rename nodes to ``<module path>/<OpType>`` (unique) so reports read like the model code."""
    seen: dict[str, int] = {}
    for node in model.graph.node:
        scope = _module_path(node)
        base = f"{scope}/{node.op_type}" if scope else node.op_type
        count = seen.get(base, 0)
        seen[base] = count + 1
        node.name = base if count == 0 else f"{base}_{count}"


def _explain_conversion_failure(exc: Exception, program) -> str:
    """Name the module whose op the ONNX translator could not handle."""
    text = str(exc)
    for node in program.graph.nodes:
        if node.op != "call_function" or f"%{node.name} " not in text:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            path, cls = list(stack.values())[-1]
            cls_name = getattr(cls, "__name__", str(cls)).split(".")[-1]
            return (f"cannot export layer '{path}' ({cls_name}): ONNX has no translation for "
                    f"{node.target}; replace the layer or add a custom op in bnncompile.custom_ops")
        return f"cannot export op {node.target} (node {node.name}) to ONNX"
    return f"ONNX conversion failed: {artifacts.first_line(exc)}"


def export_zoo_model(name: str, output, *, checkpoint=None, batch: int | None = None,
                     input_size: int | None = None, num_classes: int | None = None, seed: int = 0,
                     golden_images: int | None = None, log=None, portable: bool = False):
    """Build zoo model ``name`` (optionally load ``checkpoint``) and export it.

    Args:
        batch: None (default) exports a dynamic batch dimension (traced with 2 images: torch.export
            specialises a batch of 1 to a constant); an int fixes the batch of the graph.
        golden_images: real photos (``bnncompile.data.real_images``, seeded) recorded with their
            PyTorch outputs; default ``batch`` if fixed, else 2. Must equal ``batch`` if fixed.
        portable: inline DynamicSign into standard ops (see :func:`export`).

    Returns :class:`bnncompile.exporter.ExportResult`.
    """
    import json

    from . import zoo
    from .data import real_images

    log = log or (lambda msg: None)
    if golden_images is None:
        golden_images = batch or 2
    for flag, v, top in (("--batch", batch, limits.MAX_BATCH), ("--golden-images", golden_images, limits.MAX_BATCH),
                         ("--input-size", input_size, limits.MAX_INPUT_SIZE),
                         ("--num-classes", num_classes, limits.MAX_CLASSES)):
        limits.check_size(flag, v, top)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise InputFileError(f"--checkpoint {checkpoint}: no such file")
    if batch is not None and golden_images != batch:
        raise UsageError(f"with a fixed --batch {batch}, --golden-images must be {batch}, got {golden_images}")
    zoo.get_spec(name)  # unknown name -> UsageError listing the known models
    output = Path(output)
    artifacts.check_writable(output)  # fail before the slow build/export
    log(f"building {name} (seed {seed})")
    model = zoo.build(name, num_classes=num_classes, input_size=input_size, seed=seed)
    if checkpoint is not None:
        log(f"loading checkpoint {checkpoint}")
        zoo.load_checkpoint(model, checkpoint)
    c, h, w = model.zoo_config["input_shape"]
    if h != w:
        raise UsageError(f"expected a square input size, got {h}x{w}")
    images = torch.from_numpy(real_images(max(golden_images, 2), h, channels=c, seed=seed))
    example = images[:2] if batch is None else images[:batch]
    log(f"exporting {name} at {c}x{h}x{w}, batch {batch or 'dynamic'}, to ONNX")
    # bench rebuilds the same PyTorch model from this to time PyTorch eager on identical weights
    meta = {"name": name, "input_size": h, "num_classes": model.zoo_config["num_classes"],
            "seed": seed, "checkpoint": None if checkpoint is None else str(checkpoint)}
    return export(model, example, output, golden_inputs=images[:golden_images],
                  dynamic_batch=batch is None, metadata={artifacts.ZOO_METADATA_KEY: json.dumps(meta)},
                  portable=portable)
