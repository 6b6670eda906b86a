"""Factories for the two kinds of *sites* every zoo block has: a binarizer and an activation.

A block never names a concrete binarizer or activation class; it receives a :class:`SiteConfig`
and calls ``sites.binarizer(C)`` / ``sites.activation(C)``. The static model and its dynamic
variants (DyBNN, INSTA-BNN, INSTA-BNN+) are therefore the same block class with a different
config (spec §3.4, §5.6):

============== ================= ==============
family         binarizer kind    activation kind
============== ================= ==============
``bireal``     ``sign``          ``identity``
``reactnet``   ``rsign``         ``rprelu``
``dybnn``      ``dysign``        ``dprelu``
``insta``      ``insta_th``      ``insta_prelu``
``insta_plus`` ``insta_th_plus`` ``insta_prelu``
============== ================= ==============

Every open choice of spec §7 is a field here and therefore a ``build(..., **overrides)`` keyword.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from torch import nn

from ..errors import UsageError
from ..nn.activations import DPReLU, InstaPReLU, RPReLU
from ..nn.binarizers import Binarizer, DySign, InstaTh, InstaThPlus, RSign, Sign

BINARIZER_KINDS = ("sign", "rsign", "dysign", "insta_th", "insta_th_plus")
ACTIVATION_KINDS = ("identity", "rprelu", "dprelu", "insta_prelu")
DYNAMIC_INIT_CHOICES = ("random", "zero")


@dataclass(frozen=True)
class SiteConfig:
    """How to build the binarizer and activation at every site of a model.

    Attributes:
        binarizer: one of :data:`BINARIZER_KINDS`.
        activation: one of :data:`ACTIVATION_KINDS`.
        reduction: hidden width ``C // reduction`` of every hyper-function MLP (DySign,
            InstaThPlus; spec §7.1/§7.10 default 16).
        act_reduction: reduction of the activation MLPs (DPReLU, InstaPReLU); None = ``reduction``.
        squash: DySign's squashing of the dynamic part (None or ``"tanh"``).
        keep_static: DySign keeps the static per-channel threshold alpha0 (spec §7.1).
        cube_root: InstaTh uses ``cbrt(E[x^3])`` instead of the linear form (spec §7.10).
        include_mean: InstaThPlus also feeds ``E[x]`` to its SE block (spec §5.3).
        dynamic_slope: InstaPReLU also makes the PReLU slope per-instance (spec §5.4).
        ste: straight-through estimator of every binarizer (``"approx"`` or ``"clipped"``).
        init_slope: initial PReLU slope of every activation (PyTorch default 0.25).
    """

    binarizer: str = "rsign"
    activation: str = "rprelu"
    reduction: int = 16
    act_reduction: int | None = None
    squash: str | None = None
    keep_static: bool = True
    cube_root: bool = False
    include_mean: bool = False
    dynamic_slope: bool = False
    ste: str = "approx"
    init_slope: float = 0.25

    def __post_init__(self):
        if self.binarizer not in BINARIZER_KINDS:
            raise UsageError(
                f"unknown binarizer {self.binarizer!r}; known: {', '.join(BINARIZER_KINDS)}")
        if self.activation not in ACTIVATION_KINDS:
            raise UsageError(
                f"unknown activation {self.activation!r}; known: {', '.join(ACTIVATION_KINDS)}"
            )
        for name in ("reduction", "act_reduction"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise UsageError(f"{name} must be a positive integer, got {v!r}")
        if self.squash not in (None, "tanh"):
            raise UsageError(f"squash must be None or 'tanh', got {self.squash!r}")
        if self.ste not in ("approx", "clipped"):
            raise UsageError(f"ste must be 'approx' or 'clipped', got {self.ste!r}")

    # -- factories -------------------------------------------------------------------------------

    def binarizer_factory(self, kind: str | None = None):
        """A callable ``C -> Binarizer`` (``kind`` overrides :attr:`binarizer`)."""
        kind = kind or self.binarizer
        if kind not in BINARIZER_KINDS:
            raise UsageError(f"unknown binarizer {kind!r}; known: {', '.join(BINARIZER_KINDS)}")

        def make(channels: int) -> Binarizer:
            if kind == "sign":
                return Sign(ste=self.ste)
            if kind == "rsign":
                return RSign(channels, ste=self.ste)
            if kind == "dysign":
                return DySign(channels, reduction=self.reduction, squash=self.squash,
                              keep_static=self.keep_static, ste=self.ste)
            if kind == "insta_th":
                return InstaTh(channels, cube_root=self.cube_root, ste=self.ste)
            return InstaThPlus(channels, reduction=self.reduction, include_mean=self.include_mean,
                               ste=self.ste)

        return make

    def make_binarizer(self, channels: int) -> Binarizer:
        return self.binarizer_factory()(channels)

    def make_activation(self, channels: int) -> nn.Module:
        r = self.act_reduction or self.reduction
        if self.activation == "identity":
            return nn.Identity()
        if self.activation == "rprelu":
            return RPReLU(channels, init_slope=self.init_slope)
        if self.activation == "dprelu":
            return DPReLU(channels, reduction=r, init_slope=self.init_slope)
        return InstaPReLU(channels, reduction=r, dynamic_slope=self.dynamic_slope,
                          init_slope=self.init_slope)


SITE_FIELDS = tuple(f.name for f in fields(SiteConfig))

#: Family presets: which binarizer / activation a family name means.
FAMILY_SITES = {
    "bireal": dict(binarizer="sign", activation="identity"),
    "reactnet": dict(binarizer="rsign", activation="rprelu"),
    "dybnn": dict(binarizer="dysign", activation="dprelu"),
    "insta": dict(binarizer="insta_th", activation="insta_prelu"),
    "insta_plus": dict(binarizer="insta_th_plus", activation="insta_prelu"),
    "binary_cct": dict(binarizer="rsign", activation="identity"),
    "dybinary_cct": dict(binarizer="dysign", activation="identity"),
}


def split_site_options(options: dict) -> tuple[SiteConfig, dict]:
    """Pop the :class:`SiteConfig` fields out of ``options``; return (config, remaining)."""
    site = {k: options.pop(k) for k in list(options) if k in SITE_FIELDS}
    return SiteConfig(**site), options
