"""Quickstart: a small dynamic-threshold BNN → ONNX → compiled library → same outputs as PyTorch."""

import logging

import numpy as np
import torch
from torch import nn

import bnncompile
from bnncompile import nn as bnn

logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

model = nn.Sequential(
    nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),            # float stem
    bnn.BinaryConv2d(32, 64, 3, stride=2, padding=1, binarizer=bnn.DySign(32)),  # binary layer
    nn.BatchNorm2d(64), bnn.RPReLU(64),
    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),                  # float head
).eval()

x = torch.randn(1, 3, 32, 32)
bnncompile.export(model, x, "quickstart.onnx")                            # + quickstart.golden.npz
result = bnncompile.compile_model("quickstart.onnx", output="quickstart.so", target="host")
runner = bnncompile.load("quickstart.so")                                 # checks quickstart.json

y = runner(x.numpy())
with torch.no_grad():
    ref = model(x).numpy()
print(f"{result.num_binary_layers} binary layer(s), compiled in {result.seconds:.1f} s")
print(f"max |compiled - PyTorch| = {np.abs(y - ref).max():.2e}, same top-1: {y.argmax() == ref.argmax()}")
