"""Float activations of the ReActNet family: RPReLU and its dynamic variants.

All of them work on ``(N, C, H, W)`` (channels on axis 1) and on tokens ``(B, L, D)`` (channels
last). PReLU is written as ``where(y >= 0, y, beta * y)`` rather than ``nn.PReLU`` because
PyTorch's PReLU always takes axis 1 as the channel axis, which is wrong for tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from .binarizers import _channel_view, _HyperMLP, pool_channels, stats_input


def prelu(y: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    return torch.where(y >= 0, y, slope * y)


class RPReLU(nn.Module):
    r"""ReActNet's RPReLU: :math:`f(y) = \mathrm{PReLU}_\beta(y + b_1) + b_2` (``b1 = -\gamma``).

    Slope :math:`\beta` inits to 0.25 (PyTorch's PReLU default), shifts to 0.
    """

    def __init__(self, channels: int, init_slope: float = 0.25):
        super().__init__()
        self.channels = channels
        self.shift_in = nn.Parameter(torch.zeros(channels))
        self.slope = nn.Parameter(torch.full((channels,), init_slope))
        self.shift_out = nn.Parameter(torch.zeros(channels))

    def forward(self, y):
        def v(p):
            return _channel_view(p, y)
        return prelu(y + v(self.shift_in), v(self.slope)) + v(self.shift_out)


class DPReLU(nn.Module):
    r"""DyBNN's dynamic PReLU: per-sample shifts from a hyper function of GAP(y).

    :math:`[\gamma;\zeta] = W_2\,\mathrm{ReLU}(W_1\,\mathrm{GAP}(y))`,
    :math:`f(y) = \mathrm{PReLU}_\beta(y - \gamma - \gamma_0) + \zeta + \zeta_0`; static slope.
    The last FC is zero-initialised, so a new layer equals RPReLU.
    """

    def __init__(self, channels: int, reduction: int = 16, init_slope: float = 0.25,
                 detach_stats: bool = False):
        super().__init__()
        self.detach_stats = detach_stats
        self.channels = channels
        self.mlp = _HyperMLP(channels, 2 * channels, reduction)
        self.gamma0 = nn.Parameter(torch.zeros(channels))
        self.zeta0 = nn.Parameter(torch.zeros(channels))
        self.slope = nn.Parameter(torch.full((channels,), init_slope))

    def forward(self, y):
        gz = self.mlp(pool_channels(stats_input(y, self.detach_stats)))
        gamma, zeta = gz[:, : self.channels], gz[:, self.channels :]
        def v(p):
            return _channel_view(p, y)
        return prelu(y - v(gamma + self.gamma0), v(self.slope)) + v(zeta + self.zeta0)


class InstaPReLU(nn.Module):
    r"""INSTA-PReLU: RPReLU whose shifts (and optionally slope) get per-instance deltas.

    :math:`f(y) = \mathrm{PReLU}_{\beta+\Delta\beta}(y - \gamma - \Delta\gamma) + \zeta + \Delta\zeta`,
    the deltas from an SE-like block over GAP(y) with a zero-initialised last layer.
    """

    def __init__(self, channels: int, reduction: int = 16, dynamic_slope: bool = False,
                 init_slope: float = 0.25, detach_stats: bool = False):
        super().__init__()
        self.detach_stats = detach_stats
        self.channels, self.dynamic_slope = channels, dynamic_slope
        self.mlp = _HyperMLP(channels, (3 if dynamic_slope else 2) * channels, reduction)
        self.gamma = nn.Parameter(torch.zeros(channels))
        self.zeta = nn.Parameter(torch.zeros(channels))
        self.slope = nn.Parameter(torch.full((channels,), init_slope))

    def forward(self, y):
        d = self.mlp(pool_channels(stats_input(y, self.detach_stats)))
        c = self.channels
        def v(p):
            return _channel_view(p, y)
        slope = self.slope + d[:, 2 * c :] if self.dynamic_slope else self.slope
        return prelu(y - v(self.gamma + d[:, :c]), v(slope)) + v(self.zeta + d[:, c : 2 * c])
