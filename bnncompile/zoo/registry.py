"""Model registry: name -> :class:`ModelSpec`, and :func:`build`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import nn

from ..errors import UsageError
from .cct import make_cct_builder
from .init import calibrate_batchnorm, randomize_dynamic
from .reactnet import build_reactnet_18, build_reactnet_a
from .sites import DYNAMIC_INIT_CHOICES, FAMILY_SITES, SITE_FIELDS, SiteConfig


@dataclass(frozen=True)
class ModelSpec:
    """One registered model.

    Attributes:
        name: registry key.
        builder: ``builder(*, sites, num_classes, input_size, in_channels, **model_options)``.
        input_size: default square input size (pixels).
        num_classes: default number of classes.
        in_channels: default number of input channels.
        family: site family (``reactnet``, ``bireal``, ``dybnn``, ``insta``, ``insta_plus``,
            ``binary_cct``, ``dybinary_cct``) — selects binarizer/activation kinds.
        description: one line.
        static_twin: name of the static-threshold model with the same backbone, None if static.
        backbone: ``reactnet_a``, ``reactnet_18`` or ``cct``.
    """

    name: str
    builder: Callable[..., nn.Module]
    input_size: int
    num_classes: int
    in_channels: int
    family: str
    description: str
    static_twin: str | None = None
    backbone: str = ""

    @property
    def is_dynamic(self) -> bool:
        return self.static_twin is not None

    def options(self) -> tuple[str, ...]:
        """Every keyword :func:`build` accepts as ``**overrides`` for this model."""
        model_opts = [p for p in inspect.signature(self.builder).parameters
                      if p not in ("sites", "num_classes", "input_size", "in_channels")]
        return tuple(sorted(set(model_opts) | set(SITE_FIELDS) | set(_BUILD_OPTIONS)))


#: build-time options handled by :func:`build` itself (not by the model builder).
_BUILD_OPTIONS = ("in_channels", "calibrate", "calibrate_thresholds", "calib_batches",
                  "calib_batch_size", "dynamic_init",
                  "dynamic_strength")

_REGISTRY: dict[str, ModelSpec] = {}
MODELS: Mapping[str, ModelSpec] = MappingProxyType(_REGISTRY)


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    if spec.family not in FAMILY_SITES:
        raise ValueError(f"unknown family {spec.family!r}")
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(list_models())
        raise UsageError(f"unknown model {name!r}; known models: {known}") from None


def _as_hw(input_size) -> tuple[int, int]:
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        return input_size, input_size
    if isinstance(input_size, (tuple, list)) and len(input_size) == 2:
        return tuple(input_size)
    raise UsageError(f"input_size must be an int or (H, W), got {input_size!r}")


def build(name: str, *, num_classes: int | None = None, input_size=None, seed: int = 0,
          **overrides) -> nn.Module:
    """Build a registered model with a seeded random init, in eval mode.

    Args:
        name: a name from :func:`list_models`.
        num_classes: classifier width (default: the spec's).
        input_size: int or (H, W) (default: the spec's); validated per backbone.
        seed: seeds parameter init (``torch.manual_seed`` inside a forked RNG, so the caller's
            global RNG is untouched) and the dynamic-init / BN-calibration generator.
        **overrides: any of ``get_spec(name).options()``:

            * site options (:class:`~bnncompile.zoo.sites.SiteConfig`): ``binarizer``,
              ``activation``, ``reduction``, ``act_reduction``, ``squash``, ``keep_static``,
              ``cube_root``, ``include_mean``, ``dynamic_slope``, ``ste``, ``init_slope``;
            * model options: ``pad_value``, ``scale`` (all), ``binary_qk``,
              ``positional_embedding``, ``embed_dim``, ``num_layers``, ``num_heads``,
              ``mlp_ratio`` (CCT);
            * build options: ``in_channels``; ``dynamic_init`` (``"random"`` default, or
              ``"zero"`` = training init, equal to the static twin); ``dynamic_strength``
              (1.0); ``calibrate`` (True: set BN running stats from seeded smooth noise);
              ``calibrate_thresholds`` (True: centre static thresholds on their site's median,
              see :mod:`bnncompile.zoo.init`); ``calib_batches`` (2), ``calib_batch_size`` (8).

    The returned model carries ``model.zoo_config`` (name, input_shape (C,H,W), num_classes,
    seed, options) for exporters.
    """
    spec = get_spec(name)
    allowed = spec.options()
    unknown = sorted(k for k in overrides if k not in allowed)
    if unknown:
        raise UsageError(
            f"unknown option(s) {', '.join(unknown)} for model {name!r}; "
            f"accepted: {', '.join(allowed)}"
        )
    num_classes = spec.num_classes if num_classes is None else num_classes
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise UsageError(f"num_classes must be a positive integer, got {num_classes!r}")
    input_size = spec.input_size if input_size is None else input_size
    h, w = _as_hw(input_size)
    opts = dict(overrides)
    in_channels = opts.pop("in_channels", spec.in_channels)
    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
        raise UsageError(f"in_channels must be a positive integer, got {in_channels!r}")
    calibrate = opts.pop("calibrate", True)
    calibrate_thresholds = opts.pop("calibrate_thresholds", True)
    calib_batches = opts.pop("calib_batches", 2)
    calib_batch_size = opts.pop("calib_batch_size", 8)
    dynamic_init = opts.pop("dynamic_init", "random")
    dynamic_strength = float(opts.pop("dynamic_strength", 1.0))
    if dynamic_init not in DYNAMIC_INIT_CHOICES:
        raise UsageError(
            f"dynamic_init must be one of {DYNAMIC_INIT_CHOICES}, got {dynamic_init!r}")
    site_opts = dict(FAMILY_SITES[spec.family])
    site_opts.update({k: opts.pop(k) for k in list(opts) if k in SITE_FIELDS})
    sites = SiteConfig(**site_opts)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = spec.builder(sites=sites, num_classes=num_classes, input_size=input_size,
                                 in_channels=in_channels, **opts)
        except ValueError as e:  # invalid option values caught by nn layers
            raise UsageError(f"cannot build {name!r}: {e}") from e
    gen = torch.Generator().manual_seed(seed + 0x5EED)
    if dynamic_init == "random":
        randomize_dynamic(model, gen, dynamic_strength)
    if calibrate:
        calibrate_batchnorm(model, (in_channels, h, w), gen, calib_batches, calib_batch_size,
                            thresholds=calibrate_thresholds)
    model.eval()
    model.zoo_config = {
        "name": name, "input_shape": (in_channels, h, w), "num_classes": num_classes,
        "seed": seed, "family": spec.family, "options": dict(overrides),
    }
    return model


def example_input(model_or_name, batch_size: int = 1, seed: int = 0) -> torch.Tensor:
    """A seeded image-like input of the right shape for a built model (or a spec's defaults)."""
    from .init import smooth_images

    if isinstance(model_or_name, str):
        spec = get_spec(model_or_name)
        shape = (spec.in_channels, spec.input_size, spec.input_size)
    else:
        shape = model_or_name.zoo_config["input_shape"]
    return smooth_images(batch_size, *shape, generator=torch.Generator().manual_seed(seed))


# -- registrations --------------------------------------------------------------------------------

_A = "ReActNet-A (MobileNetV1, 13 blocks, 26 sign sites)"
_R = "ResNet-18 backbone (16 basic blocks, 16 sign sites)"
for _name, _fam, _twin, _desc in (
    ("reactnet_a", "reactnet", None, f"{_A}: RSign + RPReLU"),
    ("dybnn_reactnet_a", "dybnn", "reactnet_a", f"DyBNN on {_A}: DySign + DPReLU"),
    ("insta_bnn_a", "insta", "reactnet_a", f"INSTA-BNN on {_A}: INSTA-Th + INSTA-PReLU"),
    ("insta_bnn_a_plus", "insta_plus", "reactnet_a", 
     f"INSTA-BNN+ on {_A}: INSTA-Th+ + INSTA-PReLU"),
):
    register(ModelSpec(_name, build_reactnet_a, 224, 1000, 3, _fam, _desc, _twin, "reactnet_a"))

for _name, _fam, _twin, _desc in (
    ("reactnet_18", "reactnet", None, f"ReActNet-18, {_R}: RSign + RPReLU"),
    ("bireal_18", "bireal", None, f"Bi-Real-18, {_R}: Sign, no RPReLU"),
    ("dybnn_reactnet_18", "dybnn", "reactnet_18", f"DyBNN ReActNet-18, {_R}: DySign + DPReLU"),
    ("insta_bnn_18", "insta", "reactnet_18", f"INSTA-BNN-18, {_R}: INSTA-Th + INSTA-PReLU"),
    ("insta_bnn_18_plus", "insta_plus", "reactnet_18", 
     f"INSTA-BNN+-18, {_R}: INSTA-Th+ + INSTA-PReLU"),
):
    register(ModelSpec(_name, build_reactnet_18, 224, 1000, 3, _fam, _desc, _twin, "reactnet_18"))

for _variant, _size, _classes in (("7_3x1", 32, 10), ("14_7x2", 224, 1000)):
    _b = make_cct_builder(_variant)
    register(ModelSpec(f"binary_cct_{_variant}", _b, _size, _classes, 3, "binary_cct",
                       f"Binary CCT-{_variant}: binary qkv/proj/fc1/fc2 + binary Q·K, RSign",
                       None, "cct"))
    register(ModelSpec(f"dybinary_cct_{_variant}", _b, _size, _classes, 3, "dybinary_cct",
                       f"DyBinaryCCT-{_variant}: binary qkv/proj/fc1/fc2 + binary Q·K, DySign",
                       f"binary_cct_{_variant}", "cct"))
