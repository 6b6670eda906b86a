"""Loading checkpoints into zoo models, including the official ReActNet ones.

:func:`load_checkpoint` accepts a state_dict, or a path read with
``torch.load(path, map_location="cpu", weights_only=True)`` (never full unpickling), unwraps a
``{"state_dict": ...}`` / ``{"model": ...}`` container, strips DataParallel's ``module.`` prefix and
runs :func:`map_state_dict`, then checks keys and shapes *before* loading, so a mismatch raises a
:class:`~bnncompile.errors.CheckpointError` that names the offending keys.

Name mapping (:func:`map_state_dict`), applied only to keys the model does not already have:

================================================  ===============================================
official ReActNet key                             zoo key (value transform)
================================================  ===============================================
``module.<k>``                                    ``<k>``
``<p>.weights`` (Cout·Cin·k·k, 1) — MobileNet      ``<p>.weight`` reshaped to (Cout, Cin, k, k)
step 2 ``HardBinaryConv``
``<p>.weight`` of step-1 ``nn.Conv2d``             unchanged: zoo modules use the official names
                                                   (``binary_3x3``, ``binary_pw``,
                                                   ``binary_pw_down1/2``, ``binary_conv``)
``<b>.move11.bias`` / ``<b>.move21.bias`` (A)      threshold of ``<b>.binary_3x3.binarizer`` /
``<b>.move0.bias`` (ResNet)                        ``<b>.sign2`` / ``<b>.binary_conv.binarizer``
``<b>.move12`` / ``prelu1.weight`` / ``move13``    ``<b>.act1`` input shift / slope / output shift
``<b>.move22`` / ``prelu2.weight`` / ``move23``    ``<b>.act2`` (same)
``<b>.move1`` / ``prelu.weight`` / ``move2``       ``<b>.act`` (same)
================================================  ===============================================

Thresholds and shifts are converted to the target module's parameterisation (LearnableBias is
``x + b``, shape (1,C,1,1)), so a ReActNet checkpoint also initialises the *dynamic* twins
(load with ``strict=False``; the hyper-function MLPs are then reported missing):

* RSign ``bias = b``; DySign ``alpha0 = -b``; InstaTh / InstaThPlus ``alpha = -b``;
* RPReLU ``shift_in = b_in, shift_out = b_out``; DPReLU ``gamma0 = -b_in, zeta0 = b_out``;
  InstaPReLU ``gamma = -b_in, zeta = b_out``; slope = ``prelu.weight`` in every case.

Checkpoints of a model whose binary layers were frozen carry ``weight_pm1``/``scale_frozen``
buffers; when loading into a frozen model without them, they are recomputed from ``weight``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import CheckpointError, InputFileError
from ..nn.activations import DPReLU, InstaPReLU, RPReLU
from ..nn.binarizers import DySign, InstaTh, InstaThPlus, RSign
from ..nn.layers import _BinaryBase

#: official module name -> (zoo module path relative to the block, role)
SITE_RENAMES: dict[str, tuple[str, str]] = {
    # ReActNet-A (mobilenet/*/reactnet.py BasicBlock)
    "move11": ("binary_3x3.binarizer", "threshold"),
    "move12": ("act1", "in"), "prelu1": ("act1", "slope"), "move13": ("act1", "out"),
    "move21": ("sign2", "threshold"),
    "move22": ("act2", "in"), "prelu2": ("act2", "slope"), "move23": ("act2", "out"),
    # ReActNet-18 (resnet/*/birealnet.py BasicBlock)
    "move0": ("binary_conv.binarizer", "threshold"),
    "move1": ("act", "in"), "prelu": ("act", "slope"), "move2": ("act", "out"),
}

_FROZEN_BUFFERS = ("weight_pm1", "scale_frozen")


def _site_param(module: nn.Module, role: str) -> tuple[str, float] | None:
    """(parameter name, sign factor) that holds ``role`` in ``module``; None if it has none."""
    table = {
        RSign: {"threshold": ("bias", 1.0)},
        DySign: {"threshold": ("alpha0", -1.0)},
        InstaTh: {"threshold": ("alpha", -1.0)},
        InstaThPlus: {"threshold": ("alpha", -1.0)},
        RPReLU: {"in": ("shift_in", 1.0), "out": ("shift_out", 1.0), "slope": ("slope", 1.0)},
        DPReLU: {"in": ("gamma0", -1.0), "out": ("zeta0", 1.0), "slope": ("slope", 1.0)},
        InstaPReLU: {"in": ("gamma", -1.0), "out": ("zeta", 1.0), "slope": ("slope", 1.0)},
    }
    entry = table.get(type(module), {}).get(role)
    if entry is None or getattr(module, entry[0], None) is None:
        return None
    return entry


def map_state_dict(state_dict: Mapping[str, torch.Tensor],
                   model: nn.Module) -> dict[str, torch.Tensor]:
    """Translate official ReActNet / DataParallel key names to ``model``'s names (table above).

    Keys the model already has, and keys no rule applies to, pass through unchanged (so they
    are reported as unexpected by :func:`load_checkpoint`).
    """
    own = model.state_dict()
    modules = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if key in own:
            out[key] = value
            continue
        prefix, _, leaf = key.rpartition(".")
        block, _, mod_name = prefix.rpartition(".")
        # MobileNet step-2 HardBinaryConv: `weights` of shape (Cout*Cin*k*k, 1)
        if leaf == "weights" and f"{prefix}.weight" in own:
            target = own[f"{prefix}.weight"]
            if isinstance(value, torch.Tensor) and value.numel() == target.numel():
                value = value.reshape(target.shape)
            out[f"{prefix}.weight"] = value
            continue
        # LearnableBias / PReLU sites
        if mod_name in SITE_RENAMES and leaf in ("bias", "weight"):
            path, role = SITE_RENAMES[mod_name]
            if (leaf == "weight") == (role == "slope"):
                tpath = f"{block}.{path}" if block else path
                target_mod = modules.get(tpath)
                found = None if target_mod is None else _site_param(target_mod, role)
                if found is not None and isinstance(value, torch.Tensor):
                    pname, factor = found
                    out[f"{tpath}.{pname}"] = value.reshape(-1) * factor
                    continue
        out[key] = value
    return out


def _read(path) -> object:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputFileError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip/EOF errors, or a pickle needing more than weights_only
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint "
            f"(torch.load weights_only=True: {msg[:200]})"
        ) from e


def _unwrap(obj, source: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    for _ in range(3):  # {"state_dict": {...}}, {"model": {...}}, possibly nested
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in ("state_dict", "model", "model_state_dict")
                      if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source} does not contain a state_dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{source} is not a state_dict: non-tensor entries {', '.join(map(str, bad[:5]))}"
        )
    return dict(obj)


def _shape(t) -> str:
    return str(tuple(t.shape))


def _listing(title: str, items: list[str], limit: int = 5) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"{len(items)} {title}: " + "; ".join(items[:limit]) + more


def load_checkpoint(model: nn.Module, path_or_state_dict, *, strict: bool = True):
    """Load a checkpoint into ``model`` (in place) and return ``(missing, unexpected)`` key lists.

    Args:
        model: a zoo model (or any module).
        path_or_state_dict: a state_dict, a dict with a ``"state_dict"``/``"model"`` entry, or a
            path to a file saved with ``torch.save``.
        strict: raise on missing or unexpected keys. Shape mismatches always raise.

    Raises:
        InputFileError: the path does not exist.
        CheckpointError: not a checkpoint; keys (strict) or shapes do not match — the message
            names up to 5 offending keys with expected vs found shapes.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        source = os.fspath(path_or_state_dict)
        sd = _unwrap(_read(source), source)
    else:
        source = "state_dict"
        sd = _unwrap(path_or_state_dict, source)
    sd = map_state_dict(sd, model)
    own = model.state_dict()
    frozen_prefixes = {n for n, m in model.named_modules()
                       if isinstance(m, _BinaryBase) and m.frozen}

    def optional(k):  # frozen buffers are recomputed when absent
        p, _, leaf = k.rpartition(".")
        return leaf in _FROZEN_BUFFERS and p in frozen_prefixes

    missing = [k for k in own if k not in sd and not optional(k)]
    unexpected = [k for k in sd if k not in own]
    mismatched = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    problems = []
    if mismatched:
        problems.append(_listing("shape mismatch(es)", [
            f"{k} expected {_shape(own[k])} found {_shape(sd[k])}" for k in mismatched]))
    if strict and missing:
        problems.append(_listing("missing key(s)",
                                 [f"{k} expected {_shape(own[k])}" for k in missing]))
    if strict and unexpected:
        problems.append(_listing("unexpected key(s)",
                                 [f"{k} found {_shape(sd[k])}" for k in unexpected]))
    if problems:
        name = getattr(model, "zoo_config", {}).get("name", type(model).__name__)
        raise CheckpointError(
            f"checkpoint {source} does not match model {name}: " + " | ".join(problems))
    loadable = {k: v for k, v in sd.items() if k in own}
    model.load_state_dict(loadable, strict=False)
    for n, m in model.named_modules():
        if n in frozen_prefixes and f"{n}.weight_pm1" not in sd:
            m.frozen = False
            m.freeze()
    return missing, unexpected
