"""Seeded initialisation that makes a freshly built (untrained) zoo model non-degenerate *and robust*.

Steps, all driven by one ``torch.Generator``:

1. :func:`randomize_dynamic` — the hyper-function MLPs of DySign / DPReLU / InstaThPlus /
   InstaPReLU have a zero-initialised last layer (spec §7.1: training starts as the static twin).
   With that init the "dynamic" threshold never depends on the input, which makes a random model
   useless for testing the dynamic path of the compiler. ``dynamic_init="random"`` (the zoo
   default) draws the last layer (and InstaTh's λ) from a small seeded normal so thresholds vary
   per image; ``dynamic_init="zero"`` keeps the training init.
2. :func:`damp_residual_branches` — scale every residual branch's output down at init
   (:data:`BRANCH_GAIN`: 0.01 for ReActNet-A/-18, 0.001 for the CCTs), the "zero-init residual"
   trick. *Why:* a random BNN is chaotic. A value within ~1 ulp of its threshold may flip between
   PyTorch and ONNX Runtime (they sum floats in different orders); with unit-scale branches one
   such flip perturbed every later block enough to flip ~10⁴–10⁶ further signs (ReActNet-A at
   224 px: 11,727 flips; CCT-14: 4.2 M flips and a different top-1). A flipped input of a
   binary conv/linear moves its output by ``2a``, i.e. ``2/√fan_in`` of its std; with ``9·C`` or
   ``3·D`` outputs touched, the expected number of downstream flips per flip is ~``√C``·gain, far
   above 1 at gain 1. Measured with one injected flip (ReActNet-A, 64 px, mean over 5 sites):
   gain 1 → 5,109 downstream flips, 0.1 → 507, 0.01 → 6. CCT-14 (32 px): 1 → 27,682, 0.01 → 616,
   0.003 → 73; at 224 px (196 tokens, one residual perturbation reaches every token through
   attention) 0.003 still grew 1 → 16 stream-site flips per block over 14 blocks, hence 0.001
   (what remains is local to the flipped block: a flip at a qkv/fc1 input changes
   ~1/√D of every output of that linear, which flips ~20–50 Q/K/GELU signs *inside* that branch;
   the damped branch then adds almost nothing to the residual stream). CCT needs a smaller gain
   because its stream is re-normalised by LayerNorm to unit scale every block while its
   (Q·K → softmax) branch is more sensitive. Where: ReActNet — γ and β of the BN closing each
   binary branch (``bn1``, ``bn2``, ``bn2_1``, ``bn2_2``; shortcuts' BN untouched); CCT — the
   latent weights and bias of ``self_attn.proj`` and ``linear2`` (``a = mean|W|`` scales with
   them, the ±1 weights do not change). The binary branches still move the logits:
   removing them all changes the logits by 0.3 % (ReActNet-A), 0.9 % (CCT-7), 6.6 % (ReActNet-18)
   relative, far above the float tolerance of the parity tests (1e-4), so a wrong binary kernel
   is still visible. A checkpoint overwrites all of it (:mod:`.checkpoint`).
3. :func:`calibrate_batchnorm` — running mean/var of every BatchNorm2d are set to the cumulative
   statistics of a few forward passes (train mode) over seeded *smooth* random images (sum of
   upsampled Gaussian noise at three scales, like natural images' 1/f spectrum). Every BN then
   outputs ≈ zero-mean activations of known scale in eval mode, so each sign site sees inputs
   spread around its threshold (≈ half +1, half −1) instead of one constant sign.
4. :func:`center_thresholds` (part of calibration) — an untrained residual stream drifts (PReLU
   and MaxPool shift its mean upwards block after block), so deep sites would still be ~90 % +1.
   One extra train-mode pass moves the *static* part of every threshold (RSign ``bias``, DySign
   ``alpha0``, InstaTh/InstaTh+ ``alpha``) to the per-channel :func:`gap_median` of
   ``x − threshold(x)``, site by site in forward order, before BN statistics are collected.
   ``Sign`` (Bi-Real) has no threshold parameter and is left alone. *Why not the plain median:*
   the median *is* a data value. Many site inputs are discrete — a binary linear's output is
   ``a·S`` with ``S`` an even integer, so Q/K sign inputs and ``GELU(fc1)`` take a few dozen
   values per channel — and a threshold lying exactly on a level makes every element on that
   level a tie that one ulp of GELU/LayerNorm difference flips together (CCT-14 at 64 px: 8
   flips in ``blocks.0.linear2`` before any cascade). :func:`gap_median` takes the midpoint of
   the widest gap between consecutive order statistics within the 45–55 % quantiles, so the
   threshold lies between levels (as far as possible from data) and the balance stays ≈ 50 %.

:data:`DYNAMIC_SCALE` = 0.5 (random dynamic parts, times ``dynamic_strength``): with damped
branches the residual stream varies less within an image, so full-strength per-image thresholds
pushed the last ReActNet-A block (2×2 pixels at 64 px) to 28 % +1; at 0.5 every site of
DyBNN-ReActNet-A stays in 41–50 % and the thresholds still differ per image.
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


#: base scale of the random dynamic parts (multiplies ``dynamic_strength``); see the docstring.
DYNAMIC_SCALE = 0.5


@torch.no_grad()
def randomize_dynamic(model: nn.Module, generator: torch.Generator, strength: float = 1.0) -> None:
    """Give every zero-initialised dynamic generator a small seeded random last layer.

    ``strength`` is relative: the drawn scale is ``DYNAMIC_SCALE * strength``.
    """
    strength = DYNAMIC_SCALE * strength
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


#: quantile window around the median in which :func:`gap_median` looks for the widest gap.
GAP_WINDOW = (0.45, 0.55)


def gap_median(flat: torch.Tensor, window: tuple[float, float] | None = None) -> torch.Tensor:
    """Per row of ``(C, n)``: the midpoint of the widest gap between consecutive sorted values
    whose ranks lie in the quantile ``window`` (default :data:`GAP_WINDOW`) — a "median" that is
    never a data value and sits where the calibration data are sparsest."""
    lo_q, hi_q = GAP_WINDOW if window is None else window
    v = flat.sort(dim=1).values
    n = v.shape[1]
    if n < 2:
        return v[:, 0]
    i0 = min(max(0, int(lo_q * (n - 1))), n - 2)
    i1 = max(i0 + 1, min(n - 1, round(hi_q * (n - 1))))
    seg = v[:, i0:i1 + 1]
    gaps = seg[:, 1:] - seg[:, :-1]
    j = gaps.argmax(dim=1, keepdim=True)
    mid = 0.5 * (seg.gather(1, j) + seg.gather(1, j + 1)).squeeze(1)
    # a row whose window holds one repeated value: step just above it
    flat_rows = gaps.gather(1, j).squeeze(1) <= 0
    if flat_rows.any():
        above = torch.where(v > v[:, i0:i0 + 1], v, torch.full_like(v, float("inf"))).min(dim=1).values
        fallback = torch.where(torch.isfinite(above), 0.5 * (v[:, i0] + above),
                               v[:, i0] + v[:, i0].abs().clamp_min(1.0) * 1e-3)
        mid = torch.where(flat_rows, fallback, mid)
    return mid


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
    param.add_(sign * gap_median(flat))


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


#: output scale of every residual branch at init, per backbone (see the module docstring).
BRANCH_GAIN = {"reactnet": 0.01, "cct": 0.001}


@torch.no_grad()
def damp_residual_branches(model: nn.Module, gain: dict[str, float] | None = None) -> None:
    """Scale the output of every residual branch by ``gain`` at init.

    ReActNet-A / ReActNet-18: BN ``weight`` (γ) and ``bias`` of the BN closing each binary branch
    (``bn1``, ``bn2``, ``bn2_1``, ``bn2_2`` of a block; shortcuts untouched). CCT: latent weights
    (hence ``a = mean|W|``, signs unchanged) and bias of ``self_attn.proj`` and ``linear2``.
    """
    from .cct import BinaryEncoderLayer
    from .reactnet import ReActNet18Block, ReActNetABlock

    gain = {**BRANCH_GAIN, **(gain or {})}
    for m in model.modules():
        if isinstance(m, BinaryEncoderLayer):
            g, mods = gain["cct"], (m.self_attn.proj, m.linear2)
        elif isinstance(m, ReActNetABlock):
            g = gain["reactnet"]
            mods = [getattr(m, n) for n in ("bn1", "bn2", "bn2_1", "bn2_2") if hasattr(m, n)]
        elif isinstance(m, ReActNet18Block):
            g, mods = gain["reactnet"], (m.bn1,)
        else:
            continue
        for mod in mods:
            mod.weight.mul_(g)
            if mod.bias is not None:
                mod.bias.mul_(g)


def _calibrate(model, input_shape, generator, batches, batch_size, thresholds):
    damp_residual_branches(model)
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
