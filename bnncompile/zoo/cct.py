"""Binary Compact Convolutional Transformers: BinaryCCT and DyBinaryCCT (spec §4.2–4.3).

Layout follows the official CCT code (SHI-Labs/Compact-Transformers ``src/cct.py``,
``utils/tokenizer.py``, ``utils/transformers.py``), with every encoder Linear (qkv, proj, fc1, fc2)
replaced by a :class:`~bnncompile.nn.layers.BinaryLinear` whose binarizer sits on its token input
(RSign for BinaryCCT, DySign for DyBinaryCCT, statistics pooled over tokens, one threshold per
embedding channel).

Encoder layer, with CCT's unusual norm placement reproduced exactly::

    x = x + proj(attn(pre_norm(x)))
    x = norm1(x)                                   # LN applied to the residual stream itself
    x = x + fc2(GELU(fc1(x)))

Attention with ``binary_qk=True`` (default): Q and K are binarized per head-channel (one
binarizer of width D for Q and one for K, statistics over tokens) and ``Q·Kᵀ`` is a
``torch.matmul`` of two DynamicSign outputs — Q in ``(B,h,L,dh)`` and Kᵀ produced directly in
``(B,h,dh,L)`` layout, so no Transpose sits between the signs and the MatMul in the export.
``softmax(·)·V`` stays float. Dropout / stochastic depth of the official code are omitted (they
are identities at inference).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from ..custom_ops.dynamic_sign import binarize
from ..errors import UsageError
from ..nn.layers import BinaryLinear
from .sites import SiteConfig

#: name -> (kernel, n_conv_layers, embed_dim, num_layers, num_heads, mlp_ratio)
CCT_VARIANTS = {
    "7_3x1": (3, 1, 256, 7, 4, 2),
    "14_7x2": (7, 2, 384, 14, 6, 3),
}


class Tokenizer(nn.Module):
    """CCT conv embedding: n x [Conv(k, s, p, no bias) -> ReLU -> MaxPool(3,2,1)] -> (B, L, D)."""

    def __init__(self, kernel: int, n_layers: int, in_channels: int, embed_dim: int,
                 in_planes: int = 64):
        super().__init__()
        self.kernel, self.n_layers = kernel, n_layers
        self.stride, self.padding = max(1, kernel // 2 - 1), max(1, kernel // 2)
        chans = [in_channels] + [in_planes] * (n_layers - 1) + [embed_dim]
        layers = []
        for cin, cout in itertools.pairwise(chans):
            layers += [nn.Conv2d(cin, cout, kernel, self.stride, self.padding, bias=False),
                       nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        self.conv_layers = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        for _ in range(self.n_layers):
            h = (h + 2 * self.padding - self.kernel) // self.stride + 1
            w = (w + 2 * self.padding - self.kernel) // self.stride + 1
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        return h, w

    def forward(self, x):
        return self.conv_layers(x).flatten(2).transpose(1, 2)


class HeadwiseSign(nn.Module):
    """Binarize Q (or K) per head-channel and emit it in the layout the attention MatMul needs.

    ``binarizer`` has D = heads·dh channels; its threshold is computed on the token tensor
    ``(B, L, D)`` (statistics over tokens) and reshaped per head. Output: ``(B, h, L, dh)`` for
    ``layout="q"``, ``(B, h, dh, L)`` for ``layout="kt"``, values ±1 straight from DynamicSign.
    """

    def __init__(self, binarizer: nn.Module, heads: int, layout: str):
        super().__init__()
        if layout not in ("q", "kt"):
            raise ValueError(f"layout must be 'q' or 'kt', got {layout!r}")
        self.binarizer, self.heads, self.layout = binarizer, heads, layout

    def forward(self, tokens):
        b, n, d = tokens.shape
        h = self.heads
        t = self.binarizer.threshold(tokens)
        x = tokens.reshape(b, n, h, d // h)
        if t is None:
            t = torch.zeros((), dtype=tokens.dtype, device=tokens.device)
        else:
            t = t.reshape(t.shape[0], h, d // h)
        if self.layout == "q":
            x = x.permute(0, 2, 1, 3)
            t = t.unsqueeze(2) if t.dim() else t
        else:
            x = x.permute(0, 2, 3, 1)
            t = t.unsqueeze(3) if t.dim() else t
        return binarize(x, t, ste=self.binarizer.ste)


class BinaryAttention(nn.Module):
    def __init__(self, dim: int, heads: int, sites: SiteConfig, binary_qk: bool, scale_mode):
        super().__init__()
        self.heads, self.binary_qk = heads, binary_qk
        self.scale = (dim // heads) ** -0.5
        self.qkv = BinaryLinear(dim, 3 * dim, bias=False, binarizer=sites.make_binarizer(dim),
                                scale=scale_mode)
        self.proj = BinaryLinear(dim, dim, bias=True, binarizer=sites.make_binarizer(dim),
                                 scale=scale_mode)
        if binary_qk:
            self.q_sign = HeadwiseSign(sites.make_binarizer(dim), heads, "q")
            self.k_sign = HeadwiseSign(sites.make_binarizer(dim), heads, "kt")

    def forward(self, x):
        b, n, d = x.shape
        h = self.heads
        qkv = self.qkv(x)
        q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
        if self.binary_qk:
            attn = torch.matmul(self.q_sign(q), self.k_sign(k))
        else:
            qh = q.reshape(b, n, h, d // h).permute(0, 2, 1, 3)
            kt = k.reshape(b, n, h, d // h).permute(0, 2, 3, 1)
            attn = torch.matmul(qh, kt)
        attn = torch.softmax(attn * self.scale, dim=-1)
        vh = v.reshape(b, n, h, d // h).permute(0, 2, 1, 3)
        out = torch.matmul(attn, vh).permute(0, 2, 1, 3).reshape(b, n, d)
        return self.proj(out)


class BinaryEncoderLayer(nn.Module):
    """CCT ``TransformerEncoderLayer`` with binary linears (norm placement exactly as CCT)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, sites: SiteConfig,
                 binary_qk: bool, scale_mode):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.pre_norm = nn.LayerNorm(dim)
        self.self_attn = BinaryAttention(dim, heads, sites, binary_qk, scale_mode)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = BinaryLinear(dim, hidden, binarizer=sites.make_binarizer(dim),
                                    scale=scale_mode)
        self.linear2 = BinaryLinear(hidden, dim, binarizer=sites.make_binarizer(hidden),
                                    scale=scale_mode)

    def forward(self, x):
        x = x + self.self_attn(self.pre_norm(x))
        x = self.norm1(x)
        return x + self.linear2(F.gelu(self.linear1(x)))


class BinaryCCT(nn.Module):
    """Tokenizer -> (+ learnable pos. embedding) -> binary encoder -> LN -> SeqPool -> FP Linear."""

    def __init__(self, sites: SiteConfig, *, input_hw, num_classes: int, in_channels: int,
                 kernel: int, n_conv_layers: int, embed_dim: int, num_layers: int, num_heads: int,
                 mlp_ratio: float, binary_qk: bool = True, positional_embedding: str = "learnable",
                 scale="mean_abs"):
        super().__init__()
        self.tokenizer = Tokenizer(kernel, n_conv_layers, in_channels, embed_dim)
        h, w = self.tokenizer.output_hw(*input_hw)
        self.sequence_length = h * w
        if positional_embedding == "learnable":
            self.positional_emb = nn.Parameter(torch.zeros(1, h * w, embed_dim))
            nn.init.trunc_normal_(self.positional_emb, std=0.2)
        elif positional_embedding == "none":
            self.positional_emb = None
        else:
            raise UsageError(
                f"positional_embedding must be 'learnable' or 'none', got {positional_embedding!r}"
            )
        self.blocks = nn.ModuleList(
            BinaryEncoderLayer(embed_dim, num_heads, mlp_ratio, sites, binary_qk, scale)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.attention_pool = nn.Linear(embed_dim, 1)
        self.fc = nn.Linear(embed_dim, num_classes)
        for m in (self.attention_pool, self.fc):  # CCT init: trunc-normal(.02), zero bias
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.tokenizer(x)
        if self.positional_emb is not None:
            if x.shape[1] != self.positional_emb.shape[1]:
                raise ValueError(
                    f"model was built for {self.positional_emb.shape[1]} tokens, input gives "
                    f"{x.shape[1]}; rebuild with the matching input_size"
                )
            x = x + self.positional_emb
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        w = torch.softmax(self.attention_pool(x), dim=1)  # (B, L, 1)
        x = torch.matmul(w.transpose(-1, -2), x).squeeze(-2)
        return self.fc(x)


def make_cct_builder(variant: str):
    kernel, n_conv, dim, layers, heads, mlp = CCT_VARIANTS[variant]

    def build(*, sites: SiteConfig, num_classes: int, input_size, in_channels: int,
              binary_qk: bool = True, positional_embedding: str = "learnable",
              scale: str = "mean_abs", embed_dim: int = dim, num_layers: int = layers,
              num_heads: int = heads, mlp_ratio: float = mlp) -> nn.Module:
        hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        bad = any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in hw)
        if len(hw) != 2 or bad:
            raise UsageError(f"input_size must be a positive int or (H, W), got {input_size!r}")
        # every conv/pool must see at least one pixel; require sizes giving >= 2x2 tokens
        geom = _Geom(kernel, n_conv)
        min_size = 2 * (2 * geom.stride) ** n_conv  # total stride of the tokenizer, times 2
        if min(hw) < min_size or min(Tokenizer.output_hw(geom, *hw)) < 2:
            raise UsageError(
                f"CCT-{variant} needs input_size >= {min_size} (>= 2x2 tokens), got {input_size!r}"
            )
        if embed_dim % num_heads:
            raise UsageError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        return BinaryCCT(sites, input_hw=hw, num_classes=num_classes, in_channels=in_channels,
                         kernel=kernel, n_conv_layers=n_conv, embed_dim=embed_dim,
                         num_layers=num_layers, num_heads=num_heads, mlp_ratio=mlp_ratio,
                         binary_qk=binary_qk, positional_embedding=positional_embedding,
                         scale=scale)

    return build


class _Geom:
    """Just enough of a Tokenizer to run :meth:`Tokenizer.output_hw` before building one."""

    def __init__(self, kernel, n_layers):
        self.kernel, self.n_layers = kernel, n_layers
        self.stride, self.padding = max(1, kernel // 2 - 1), max(1, kernel // 2)

