"""Model zoo: ReActNet-A / ReActNet-18 / Bi-Real-18 / binary CCT and their dynamic-threshold
variants (DyBNN, INSTA-BNN, INSTA-BNN+, DyBinaryCCT), built from shared block classes with
binarizer / activation factories.

>>> from bnncompile import zoo
>>> zoo.list_models()[:3]
['binary_cct_14_7x2', 'binary_cct_7_3x1', 'bireal_18']
>>> model = zoo.build("dybnn_reactnet_a", num_classes=10, input_size=64, reduction=8)
>>> zoo.load_checkpoint(model, "ckpt.pth")          # doctest: +SKIP
"""

from .checkpoint import SITE_RENAMES, load_checkpoint, map_state_dict
from .init import calibrate_batchnorm, randomize_dynamic, sign_balance, sign_sites, smooth_images
from .registry import MODELS, ModelSpec, build, example_input, get_spec, list_models, register
from .sites import ACTIVATION_KINDS, BINARIZER_KINDS, FAMILY_SITES, SiteConfig

__all__ = [
    "ACTIVATION_KINDS",
    "BINARIZER_KINDS",
    "FAMILY_SITES",
    "MODELS",
    "SITE_RENAMES",
    "ModelSpec",
    "SiteConfig",
    "build",
    "calibrate_batchnorm",
    "example_input",
    "get_spec",
    "list_models",
    "load_checkpoint",
    "map_state_dict",
    "randomize_dynamic",
    "register",
    "sign_balance",
    "sign_sites",
    "smooth_images",
]
