"""Seeded initialisation that makes a freshly built (untrained) zoo model non-degenerate.

Two steps, both driven by one ``torch.Generator``:

1. :func:`randomize_dynamic` — the hyper-function MLPs of DySign / DPReLU / InstaThPlus /
   InstaPReLU have a zero-initialised last layer (spec §7.1: training starts as the static twin).
   With that init the "dynamic" threshold never depends on the input, which makes a random model
   useless for testing the dynamic path of the compiler. ``dynamic_init="random"`` (the zoo
   default) draws the last layer (and InstaTh's λ) from a small seeded normal so thresholds vary
   per image; ``dynamic_init="zero"`` keeps the training init.
2. :func:`calibrate_batchnorm` — running mean/var of every BatchNorm2d are set to the cumulative
   statistics of a few forward passes (train mode) over seeded *smooth* random images (sum of
   upsampled Gaussian noise at three scales, like natural images' 1/f spectrum). Every BN then
   outputs ≈ zero-mean, unit-variance activations in eval mode, so each sign site sees inputs
   spread around its threshold (≈ half +1, half −1) instead of one constant sign.
3. :func:`center_thresholds` (part of calibration) — an untrained residual stream drifts (PReLU
   and MaxPool shift its mean upwards block after block), so deep sites would still be ~90 % +1.
   One extra train-mode pass moves the *static* part of every threshold (RSign ``bias``, DySign
   ``alpha0``, InstaTh/InstaTh+ ``alpha``) to the per-channel median of ``x − threshold(x)``, site
   by site in forward order, before BN statistics are collected. ``Sign`` (Bi-Real) has no
   threshold parameter and is left alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.binarizers import Binarizer, DySign, InstaTh, InstaThPlus, RSign, _HyperMLP
from ..nn.layers import _BinaryBase


def smooth_images(n: int, c: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """Seeded image-like noise, standardised per image: N(0,1)-ish, spatially correlated."""
    x = torch.zeros(n, c, h, w)
    for factor, amp in ((8, 1.0), (2, 0.5), (1, 0.25)):
        lo = torch.randn(n, c, max(1, h // factor), max(1, w // factor), generator=generator)
        x += amp * F.interpolate(lo, size=(h, w), mode="bilinear", align_corners=False)
    x = x - x.mean(dim=(1, 2, 3), keepdim=True)
    return x / x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


@torch.no_grad()
def randomize_dynamic(model: nn.Module, generator: torch.Generator, strength: float = 1.0) -> None:
    """Give every zero-initialised dynamic generator a small seeded random last layer."""
    for m in model.modules():
        if isinstance(m, _HyperMLP):
            hidden = m.fc2.in_features
            m.fc2.weight.copy_(torch.randn(m.fc2.weight.shape, generator=generator)
                               * (strength / hidden ** 0.5))
        elif isinstance(m, InstaTh):
            m.lam.copy_(torch.randn(m.lam.shape, generator=generator) * (0.3 * strength))


def _static_threshold(b: Binarizer) -> tuple[torch.Tensor, float] | None:
    """(parameter, sign) such that threshold = sign * parameter + (input-dependent part)."""
    if isinstance(b, RSign):
        return b.bias, -1.0
    if isinstance(b, DySign):
        return (b.alpha0, 1.0) if b.alpha0 is not None else None
    if isinstance(b, (InstaTh, InstaThPlus)):
        return b.alpha, 1.0
    return None


@torch.no_grad()
def _center(b: Binarizer, x: torch.Tensor) -> None:
    found = _static_threshold(b)
    if found is None:
        return
    param, sign = found
    t = b.threshold(x)
    d = x - (t if t is not None else 0.0)
    c = param.shape[0]
    flat = d.transpose(0, 1).reshape(c, -1) if d.dim() == 4 else d.reshape(-1, c).t()
    param.add_(sign * flat.median(dim=1).values)


@torch.no_grad()
def center_thresholds(model: nn.Module, x: torch.Tensor) -> None:
    """One pass over ``x``: move each static threshold to the median of its site's input."""
    from .cct import HeadwiseSign

    handles = []
    wrapped = {id(m.binarizer) for m in model.modules() if isinstance(m, HeadwiseSign)}
    for m in model.modules():
        if isinstance(m, HeadwiseSign):
            handles.append(m.register_forward_pre_hook(
                lambda mod, inp: _center(mod.binarizer, inp[0])))
        elif isinstance(m, Binarizer) and id(m) not in wrapped:
            handles.append(m.register_forward_pre_hook(lambda mod, inp: _center(mod, inp[0])))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, input_shape: tuple[int, int, int],
                        generator: torch.Generator, batches: int = 2, batch_size: int = 8,
                        thresholds: bool = True) -> None:
    """Set BN running statistics from ``batches`` train-mode passes over smooth random images.

    With ``thresholds=True`` a first pass centres the static thresholds (:func:`center_thresholds`).
    """
    # binarize the latent weights once for all passes (they do not change during calibration)
    to_thaw = [m for m in model.modules() if isinstance(m, _BinaryBase) and not m.frozen]
    for m in to_thaw:
        m.freeze()
    try:
        _calibrate(model, input_shape, generator, batches, batch_size, thresholds)
    finally:
        for m in to_thaw:
            m.frozen = False
            for buf in ("weight_pm1", "scale_frozen"):
                if buf in m._buffers:
                    del m._buffers[buf]


def _calibrate(model, input_shape, generator, batches, batch_size, thresholds):
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if thresholds and batches >= 1:
        model.train()
        try:
            center_thresholds(model, smooth_images(batch_size, *input_shape, generator=generator))
        finally:
            model.eval()
    if not bns or batches < 1:
        return
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all calibration batches
    model.train()
    try:
        for _ in range(batches):
            model(smooth_images(batch_size, *input_shape, generator=generator))
    finally:
        for bn, mom in zip(bns, momenta):
            bn.momentum = mom
        model.eval()


def sign_sites(model: nn.Module) -> list[tuple[str, Binarizer]]:
    """Every binarizer (= DynamicSign site) of ``model``, in module order, with its name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Binarizer)]


@torch.no_grad()
def sign_balance(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Fraction of +1 outputs at every sign site for input ``x`` (name -> fraction).

    Sites are hooked where their ±1 output is produced: a binarizer's own forward, or the
    :class:`~bnncompile.zoo.cct.HeadwiseSign` wrapping it (binary Q/K).
    """
    from .cct import HeadwiseSign

    fractions: dict[str, float] = {}
    handles = []
    wrapped = {id(m.binarizer) for m in model.modules() if isinstance(m, HeadwiseSign)}
    for name, m in model.named_modules():
        if isinstance(m, HeadwiseSign) or (isinstance(m, Binarizer) and id(m) not in wrapped):
            def hook(_mod, _inp, out, name=name):
                fractions[name] = (out > 0).float().mean().item()
            handles.append(m.register_forward_hook(hook))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return fractions
