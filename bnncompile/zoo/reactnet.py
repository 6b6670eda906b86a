"""ReActNet-A (MobileNetV1-based) and ReActNet-18 / Bi-Real-18 (ResNet-18-based), spec §1.2–1.3.

One block class per backbone; the binarizer and activation at every site come from a
:class:`~bnncompile.zoo.sites.SiteConfig`, so ReActNet, Bi-Real, DyBNN, INSTA-BNN and INSTA-BNN+
share the code (spec §3.4 / §5.6 placement).

Module names mirror the official ReActNet code (``feature.N.binary_3x3``, ``bn2_1``,
``layer2.0.downsample.1`` …) so official checkpoints map with a short, explicit table
(:mod:`bnncompile.zoo.checkpoint`). Differences: the RSign bias lives in the binary conv's
``binarizer`` (``binary_3x3.binarizer.bias``) or, where one sign feeds two convs, in ``sign2``;
``moveXY``/``preluX`` become one activation module ``act1``/``act2``/``act``.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ..errors import UsageError
from ..nn.layers import BinaryConv2d
from .sites import SiteConfig

#: ReActNet-A stage widths (official ``stage_out_channel``).
REACTNET_A_CHANNELS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)


def _check_size(input_size, multiple: int, model: str) -> tuple[int, int]:
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    for v in (h, w):
        if not isinstance(v, int) or isinstance(v, bool) or v < multiple or v % multiple:
            raise UsageError(
                f"{model} needs an input size that is a positive multiple of {multiple} "
                f"(its total stride; AvgPool shortcuts need even sizes at every stage), "
                f"got {input_size!r}"
            )
    return h, w


class Stem(nn.Module):
    """FP ``Conv3x3(s2, p1, no bias) + BN`` (official ``firstconv3x3``; no nonlinearity)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return self.bn1(self.conv1(x))


class ReActNetABlock(nn.Module):
    """ReActNet-A block (spec §1.2)::

        out1 = act1( BN1(BinConv3x3_s(sign1(x))) + [AvgPool2d(2,2)](x) )
        xb   = sign2(out1)                                   # one sign site, shared by both 1x1s
        out  = act2( BN2(BinConv1x1(xb)) + out1 )                                   if Cout == Cin
        out  = act2( cat[BN2_1(BinConv1x1_a(xb)) + out1,
                         BN2_2(BinConv1x1_b(xb)) + out1] )                         if Cout == 2Cin

    Sites: sign1 (C=Cin, input resolution), sign2 (C=Cin, output resolution), act1 (Cin),
    act2 (Cout).
    """

    def __init__(self, cin: int, cout: int, stride: int, sites: SiteConfig, pad_value="zero",
                 scale="mean_abs"):
        super().__init__()
        if cout not in (cin, 2 * cin):
            raise ValueError(f"ReActNet-A blocks need Cout in (Cin, 2*Cin), got {cin}->{cout}")
        self.inplanes, self.planes, self.stride = cin, cout, stride
        conv = dict(pad_value=pad_value, scale=scale)
        self.binary_3x3 = BinaryConv2d(cin, cin, 3, stride, 1, binarizer=sites.make_binarizer(cin),
                                       **conv)
        self.bn1 = nn.BatchNorm2d(cin)
        self.pooling = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()
        self.act1 = sites.make_activation(cin)
        self.sign2 = sites.make_binarizer(cin)
        if cout == cin:
            self.binary_pw = BinaryConv2d(cin, cin, 1, binarizer=None, **conv)
            self.bn2 = nn.BatchNorm2d(cin)
        else:
            self.binary_pw_down1 = BinaryConv2d(cin, cin, 1, binarizer=None, **conv)
            self.binary_pw_down2 = BinaryConv2d(cin, cin, 1, binarizer=None, **conv)
            self.bn2_1 = nn.BatchNorm2d(cin)
            self.bn2_2 = nn.BatchNorm2d(cin)
        self.act2 = sites.make_activation(cout)

    def forward(self, x):
        out1 = self.bn1(self.binary_3x3(x)) + self.pooling(x)
        out1 = self.act1(out1)
        xb = self.sign2(out1)
        if self.planes == self.inplanes:
            out2 = self.bn2(self.binary_pw(xb)) + out1
        else:
            out2 = torch.cat([self.bn2_1(self.binary_pw_down1(xb)) + out1,
                              self.bn2_2(self.binary_pw_down2(xb)) + out1], dim=1)
        return self.act2(out2)


class ReActNetA(nn.Module):
    """MobileNetV1-based ReActNet-A: stem, 13 blocks, AdaptiveAvgPool, FP Linear (spec §1.2)."""

    def __init__(self, sites: SiteConfig, num_classes: int = 1000, in_channels: int = 3,
                 channels=REACTNET_A_CHANNELS, pad_value="zero", scale="mean_abs"):
        super().__init__()
        self.feature = nn.ModuleList([Stem(in_channels, channels[0], 2)])
        for cin, cout in itertools.pairwise(channels):
            stride = 2 if cin != cout and cout != 64 else 1  # official rule: 32->64 keeps stride 1
            self.feature.append(ReActNetABlock(cin, cout, stride, sites, pad_value, scale))
        self.pool1 = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x):
        for block in self.feature:
            x = block(x)
        return self.fc(torch.flatten(self.pool1(x), 1))


class ReActNet18Block(nn.Module):
    """ReActNet-18 / Bi-Real basic block (spec §1.3)::

        out = act( BN(BinConv3x3_s(sign(x))) + shortcut(x) )
        shortcut = identity | AvgPool2d(2, s) -> FP Conv1x1 -> BN

    Sites: sign (C=Cin), act (C=Cout).
    """

    def __init__(self, cin: int, cout: int, stride: int, sites: SiteConfig, pad_value="zero",
                 scale="mean_abs"):
        super().__init__()
        self.binary_conv = BinaryConv2d(cin, cout, 3, stride, 1,
                                        binarizer=sites.make_binarizer(cin),
                                        pad_value=pad_value, scale=scale)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act = sites.make_activation(cout)
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(kernel_size=2, stride=stride),
                nn.Conv2d(cin, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
        else:
            self.downsample = None

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        return self.act(self.bn1(self.binary_conv(x)) + residual)


class ReActNet18(nn.Module):
    """Bi-Real-18-based ReActNet-18: stem conv7x7 s2 + BN + MaxPool, 4x4 blocks, AvgPool, FC."""

    def __init__(self, sites: SiteConfig, num_classes: int = 1000, in_channels: int = 3,
                 layers=(4, 4, 4, 4), widths=(64, 128, 256, 512), pad_value="zero",
                 scale="mean_abs"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = widths[0]
        for i, (n, w) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(ReActNet18Block(cin, w, stride, sites, pad_value, scale))
                cin = w
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_reactnet_a(*, sites: SiteConfig, num_classes: int, input_size, in_channels: int,
                     pad_value: str = "zero", scale: str = "mean_abs") -> nn.Module:
    _check_size(input_size, 32, "ReActNet-A")
    return ReActNetA(sites, num_classes, in_channels, pad_value=pad_value, scale=scale)


def build_reactnet_18(*, sites: SiteConfig, num_classes: int, input_size, in_channels: int,
                      pad_value: str = "zero", scale: str = "mean_abs") -> nn.Module:
    _check_size(input_size, 32, "ReActNet-18")
    return ReActNet18(sites, num_classes, in_channels, pad_value=pad_value, scale=scale)
