"""Composable PyTorch layers for binary neural networks with dynamic thresholds.

``binarizers`` (Sign, RSign, DySign, InstaTh, InstaThPlus) turn floats into ±1 through the
``DynamicSign`` op; ``layers`` (BinaryConv2d, BinaryLinear) take a binarizer object; ``activations``
(RPReLU, DPReLU, InstaPReLU) are the float glue of the ReActNet family.
"""

from .activations import DPReLU, InstaPReLU, RPReLU
from .binarizers import Binarizer, DySign, InstaTh, InstaThPlus, RSign, Sign
from .layers import BinaryConv2d, BinaryLinear, freeze

__all__ = [
    "Binarizer", "BinaryConv2d", "BinaryLinear", "DPReLU", "DySign", "InstaPReLU", "InstaTh",
    "InstaThPlus", "RPReLU", "RSign", "Sign", "freeze",
]
