"""Binarizers: objects that turn a float tensor into ±1 with a (possibly input-dependent) threshold.

A binarizer is passed into a binary layer the way Larq passes quantizers into layers::

    BinaryConv2d(256, 256, 3, padding=1, binarizer=DySign(256, reduction=16))

Every binarizer computes ``threshold(x)`` with ordinary differentiable torch ops and then calls the
one custom op, ``DynamicSign``: ``+1 where x >= threshold else -1``. Only the comparison is custom,
so the exported ONNX graph shows the threshold generator as standard ops the compiler can fuse.

Layouts: a 4-D input ``(N, C, H, W)`` has channels on axis 1 and statistics are pooled over
``H, W``; a 3-D token input ``(B, L, D)`` has channels on the last axis and statistics are pooled
over the tokens ``L``. Thresholds come out as ``(1|N, C, 1, 1)`` or ``(1|B, 1, D)``.

Open choices of the papers (spec §7) are constructor arguments with the spec's defaults.
"""

from __future__ import annotations

import torch
from torch import nn

from ..custom_ops.dynamic_sign import STE_CHOICES, binarize


def _channel_view(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-channel ``(C,)`` or per-sample ``(N, C)`` tensor to broadcast against ``x``."""
    lead = v.shape[0] if v.dim() == 2 else 1
    c = v.shape[-1]
    if x.dim() == 4:
        return v.reshape(lead, c, 1, 1)
    if x.dim() == 3:
        return v.reshape(lead, 1, c)
    if x.dim() == 2:
        return v.reshape(lead, c)
    raise ValueError(f"expected a (N,C,H,W), (B,L,D) or (N,C) tensor, got shape {tuple(x.shape)}")


def pool_channels(x: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-channel mean: over H,W for ``(N,C,H,W)``, over tokens for ``(B,L,D)``."""
    if x.dim() == 4:
        return x.mean(dim=(2, 3))
    if x.dim() == 3:
        return x.mean(dim=1)
    if x.dim() == 2:
        return x
    raise ValueError(f"expected a (N,C,H,W), (B,L,D) or (N,C) tensor, got shape {tuple(x.shape)}")


def stats_input(x: torch.Tensor, detach: bool) -> torch.Tensor:
    """The tensor statistics are pooled from; ``detach`` stops their gradient (spec §7.8 ablation)."""
    return x.detach() if detach else x


def _check_channels(layer: nn.Module, x: torch.Tensor, channels: int) -> None:
    c = x.shape[1] if x.dim() == 4 else x.shape[-1]
    if c != channels:
        raise ValueError(f"{type(layer).__name__} was built for {channels} channels, got input {tuple(x.shape)}")


class Binarizer(nn.Module):
    """Base class: ``forward(x) = DynamicSign(x, threshold(x))``.

    Subclasses implement :meth:`threshold`, returning None (threshold 0) or a tensor that
    broadcasts to ``x``.
    """

    def __init__(self, ste: str = "approx"):
        super().__init__()
        if ste not in STE_CHOICES:
            raise ValueError(f"Expected ste to be one of {STE_CHOICES}, got {ste!r}")
        self.ste = ste

    def threshold(self, x: torch.Tensor) -> torch.Tensor | None:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return binarize(x, self.threshold(x), ste=self.ste)

    @property
    def is_dynamic(self) -> bool:
        """True when the threshold depends on the input (per-sample)."""
        return False


class Sign(Binarizer):
    r"""Plain sign with threshold 0: :math:`x \ge 0 \to +1`, else :math:`-1`."""

    def threshold(self, x):
        return None


class RSign(Binarizer):
    r"""ReActNet's RSign: a learned static per-channel threshold.

    ReActNet writes ``sign(x + b)``; here the threshold is :math:`\alpha_c = -b_c`, ``bias`` init 0.
    """

    def __init__(self, channels: int, ste: str = "approx"):
        super().__init__(ste)
        self.channels = channels
        self.bias = nn.Parameter(torch.zeros(channels))

    def threshold(self, x):
        _check_channels(self, x, self.channels)
        return _channel_view(-self.bias, x)


class _HyperMLP(nn.Module):
    """``FC(C_in -> hidden) -> ReLU -> FC(hidden -> C_out)``, last layer zero-initialised.

    Zero init means a freshly built dynamic model starts as its static twin (spec §7.1).
    """

    def __init__(self, c_in: int, c_out: int, reduction: int):
        super().__init__()
        if reduction < 1:
            raise ValueError(f"Expected reduction >= 1, got {reduction}")
        hidden = max(1, c_in // reduction)
        self.fc1 = nn.Linear(c_in, hidden)
        self.fc2 = nn.Linear(hidden, c_out)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, z):
        return self.fc2(torch.relu(self.fc1(z)))


class DySign(Binarizer):
    r"""DyBNN / DySign: a per-sample, per-channel threshold from pooled activations.

    .. math::
        z = \mathrm{GAP}(x),\quad \alpha = \alpha_0 + W_2\,\mathrm{ReLU}(W_1 z + c_1) + c_2,\quad
        y = \mathrm{sign}_{\ge}(x - \alpha)

    Args:
        channels: C (axis 1 of NCHW, last axis of tokens).
        reduction: hidden width is ``C // reduction`` (spec default 16).
        squash: None (spec default) or ``"tanh"`` to bound the dynamic part.
        keep_static: keep the static per-channel :math:`\alpha_0` (ReActNet's RSign), default True.
        ste: ``"approx"`` (ApproxSign) or ``"clipped"``.
        detach_stats: stop the gradient through the pooled statistics (spec §7.8; default False).
    """

    def __init__(self, channels: int, reduction: int = 16, squash: str | None = None,
                 keep_static: bool = True, ste: str = "approx", detach_stats: bool = False):
        super().__init__(ste)
        self.detach_stats = detach_stats
        if squash not in (None, "tanh"):
            raise ValueError(f"Expected squash to be None or 'tanh', got {squash!r}")
        self.channels, self.reduction, self.squash = channels, reduction, squash
        self.mlp = _HyperMLP(channels, channels, reduction)
        self.alpha0 = nn.Parameter(torch.zeros(channels)) if keep_static else None

    @property
    def is_dynamic(self):
        return True

    def threshold(self, x):
        _check_channels(self, x, self.channels)
        t = self.mlp(pool_channels(stats_input(x, self.detach_stats)))
        if self.squash == "tanh":
            t = torch.tanh(t)
        if self.alpha0 is not None:
            t = t + self.alpha0
        return _channel_view(t, x)


def _third_moment(x: torch.Tensor) -> torch.Tensor:
    """E[x^3] per sample and channel: mean, variance and skewness in one reduction."""
    return pool_channels(x * x * x)


class InstaTh(Binarizer):
    r"""INSTA-BNN's instance-aware threshold from the third moment.

    :math:`TH = \alpha_c + \lambda_c\,E_{hw}[x^3]`, with :math:`\lambda` init 0 (starts as RSign).
    ``cube_root=True`` uses :math:`\mathrm{sign}(m)|m|^{1/3}` instead of the linear form (spec §7.10).
    ``centering=True`` subtracts the batch mean of :math:`E[x^3]` in training and its running mean
    at eval (INSTA-BNN v1's "difference between batch and instance statistics", spec §7.9).
    """

    def __init__(self, channels: int, cube_root: bool = False, ste: str = "approx",
                 detach_stats: bool = False, centering: bool = False, momentum: float = 0.1):
        super().__init__(ste)
        self.detach_stats = detach_stats
        # INSTA-BNN v1 (spec §5.2/§7.9): use m3 - E_batch[m3]; the batch statistic becomes a
        # running mean (like BN) and is a constant at eval, so the export stays per-instance.
        self.centering, self.momentum = centering, momentum
        if centering:
            self.register_buffer("running_m3", torch.zeros(channels))
        self.channels, self.cube_root = channels, cube_root
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.lam = nn.Parameter(torch.zeros(channels))

    @property
    def is_dynamic(self):
        return True

    def threshold(self, x):
        _check_channels(self, x, self.channels)
        m3 = _third_moment(stats_input(x, self.detach_stats))
        if self.centering:
            if self.training:
                batch_m3 = m3.mean(dim=0)
                with torch.no_grad():
                    self.running_m3.lerp_(batch_m3.detach(), self.momentum)
                m3 = m3 - batch_m3
            else:
                m3 = m3 - self.running_m3
        if self.cube_root:
            m3 = torch.sign(m3) * m3.abs().clamp_min(1e-12).pow(1.0 / 3.0)
        return _channel_view(self.alpha + self.lam * m3, x)


class InstaThPlus(Binarizer):
    r"""INSTA-Th+: an SE-like block over :math:`E[x^3]` (optionally concatenated with :math:`E[x]`).

    :math:`TH = \alpha + W_2\,\mathrm{ReLU}(W_1 s)`, :math:`W_2` zero-initialised.
    """

    def __init__(self, channels: int, reduction: int = 16, include_mean: bool = False,
                 ste: str = "approx", detach_stats: bool = False):
        super().__init__(ste)
        self.detach_stats = detach_stats
        self.channels, self.include_mean = channels, include_mean
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.mlp = _HyperMLP(channels * (2 if include_mean else 1), channels, reduction)

    @property
    def is_dynamic(self):
        return True

    def threshold(self, x):
        _check_channels(self, x, self.channels)
        xs = stats_input(x, self.detach_stats)
        s = _third_moment(xs)
        if self.include_mean:
            s = torch.cat([s, pool_channels(xs)], dim=-1)
        return _channel_view(self.alpha + self.mlp(s), x)


_ALIASES = {
    "sign": Sign,
    "rsign": RSign,
    "dysign": DySign,
    "insta_th": InstaTh,
    "insta_th_plus": InstaThPlus,
}


def get(identifier, channels: int | None = None) -> Binarizer:
    """Resolve a binarizer from an instance, a string alias or a class (Larq's ``quantizers.get``)."""
    if isinstance(identifier, Binarizer):
        return identifier
    if isinstance(identifier, str):
        if identifier not in _ALIASES:
            raise ValueError(
                f"Could not interpret binarizer {identifier!r}; known: {', '.join(sorted(_ALIASES))}"
            )
        identifier = _ALIASES[identifier]
    if isinstance(identifier, type) and issubclass(identifier, Binarizer):
        return identifier() if identifier is Sign else identifier(channels)
    raise ValueError(f"Could not interpret binarizer identifier: {identifier!r}")
