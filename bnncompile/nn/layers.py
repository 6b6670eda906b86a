"""Binary layers: ±1 activations (from a binarizer) times ±1 weights, scaled per output channel.

Forward (ReActNet's HardBinaryConv, spec §1.1/§2.2)::

    xb = binarizer(x)                              # DynamicSign, ±1
    wb = sign(W)   (0 -> +1)                       # STE: gradient of clamp(W, -1, 1)
    a  = mean(|W[o]|) over (C_in, kh, kw)          # detached, one scale per output channel
    y  = a[o] * conv(xb, wb) (+ bias)

With ``binarizer=None`` and ``scale=None`` the layer is exactly the float layer on ±1 weights, so
every quantity can be checked against plain ``F.conv2d``.

Export: :func:`freeze` stores ``wb`` (exactly ±1) and ``a`` as buffers, so the ONNX graph gets a
``Conv``/``Gemm``/``MatMul`` whose weight initializer holds only ±1, fed by a DynamicSign, followed
by a per-channel ``Mul`` — the pattern the compiler proves binary from the graph alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import binarizers

SCALE_CHOICES = ("mean_abs", None)
PAD_CHOICES = ("zero", "one")


class _WeightSign(torch.autograd.Function):
    """``W >= 0 -> +1 else -1`` forward; gradient of ``clamp(W, -1, 1)`` backward."""

    @staticmethod
    def forward(ctx, w):
        ctx.save_for_backward(w)
        one = torch.ones((), dtype=w.dtype, device=w.device)
        return torch.where(w >= 0, one, -one)

    @staticmethod
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        return g * (w.abs() <= 1).to(g.dtype)


def binarize_weight(w: torch.Tensor) -> torch.Tensor:
    return _WeightSign.apply(w)


class _BinaryBase(nn.Module):
    """Shared weight handling of BinaryConv2d and BinaryLinear."""

    weight: nn.Parameter

    def _init_binary(self, binarizer, channels_in: int, scale):
        if scale not in SCALE_CHOICES:
            raise ValueError(f"Expected scale to be one of {SCALE_CHOICES}, got {scale!r}")
        self.binarizer = None if binarizer is None else binarizers.get(binarizer, channels_in)
        self.scale_mode = scale
        self.frozen = False

    def binary_weight_and_scale(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(±1 weights, per-output-channel scale or None), frozen buffers when frozen."""
        if self.frozen:
            return self.weight_pm1, getattr(self, "scale_frozen", None)
        wb = binarize_weight(self.weight)
        if self.scale_mode is None:
            return wb, None
        dims = tuple(range(1, self.weight.dim()))
        return wb, self.weight.detach().abs().mean(dim=dims)

    def freeze(self) -> None:
        """Precompute ±1 weights and the scale as buffers (inference/export only)."""
        with torch.no_grad():
            wb, a = self.binary_weight_and_scale()
            self.register_buffer("weight_pm1", wb.detach().clone())
            if a is not None:
                self.register_buffer("scale_frozen", a.detach().clone())
        self.frozen = True

    def _binarize_input(self, x):
        return x if self.binarizer is None else self.binarizer(x)


class BinaryConv2d(_BinaryBase):
    """2-D convolution of binarized activations with binarized weights.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation: as ``nn.Conv2d``
            (groups=1).
        bias: add a float bias after the scale (ReActNet uses none).
        binarizer: a :class:`~bnncompile.nn.binarizers.Binarizer`, a string alias
            (``"sign"``, ``"rsign"``, ``"dysign"``, ``"insta_th"``, ``"insta_th_plus"``) or None
            (input is already ±1).
        scale: ``"mean_abs"`` (ReActNet's per-output-channel mean|W|) or None.
        pad_value: ``"zero"`` (PyTorch semantics, what ReActNet trains with) or ``"one"``
            (padded pixels are +1, Larq's ``pad_values=1``; exported as ``Pad(value=1)``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=0,
                 dilation=1, bias: bool = False, binarizer="sign", scale="mean_abs",
                 pad_value: str = "zero"):
        super().__init__()
        if pad_value not in PAD_CHOICES:
            raise ValueError(f"Expected pad_value to be one of {PAD_CHOICES}, got {pad_value!r}")
        def pair(v):
            return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = pair(kernel_size), pair(stride)
        self.padding, self.dilation = pair(padding), pair(dilation)
        self.pad_value = pad_value
        # ReActNet initialises latent weights small and positive-ish; kaiming-uniform keeps both signs.
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.weight.data.mul_(0.01)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self._init_binary(binarizer, in_channels, scale)

    def forward(self, x):
        xb = self._binarize_input(x)
        wb, a = self.binary_weight_and_scale()
        padding = self.padding
        if self.pad_value == "one" and any(self.padding):
            ph, pw = self.padding
            xb = F.pad(xb, (pw, pw, ph, ph), value=1.0)
            padding = (0, 0)
        y = F.conv2d(xb, wb, None, self.stride, padding, self.dilation)
        if a is not None:
            y = y * a.reshape(1, -1, 1, 1)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1, 1)
        return y

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, pad_value={self.pad_value!r}, "
                f"scale={self.scale_mode!r}")


class BinaryLinear(_BinaryBase):
    """Linear layer on binarized inputs and weights; works on ``(N, D)`` and tokens ``(B, L, D)``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, binarizer="sign",
                 scale="mean_abs"):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._init_binary(binarizer, in_features, scale)

    def forward(self, x):
        xb = self._binarize_input(x)
        wb, a = self.binary_weight_and_scale()
        y = torch.matmul(xb, wb.t())
        if a is not None:
            y = y * a
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, scale={self.scale_mode!r}"


def freeze(module: nn.Module) -> nn.Module:
    """Freeze every binary layer of ``module`` in place (see :meth:`_BinaryBase.freeze`)."""
    for m in module.modules():
        if isinstance(m, _BinaryBase) and not m.frozen:
            m.freeze()
    return module
