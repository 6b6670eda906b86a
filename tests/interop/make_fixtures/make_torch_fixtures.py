"""Plain-PyTorch BNN fixtures (user-written straight-through signs), exported with
BOTH torch.onnx exporters.

Environment used (no install needed; the project's own venv is used READ-ONLY):
    /work/main/.venv/bin/python  -> torch 2.13.0+cpu, onnx 1.23.2, onnxscript 0.7.2,
                                    onnxruntime 1.32.0, numpy 2.4.6
An equivalent fresh venv:
    python3 -m venv /tmp/ptenv
    /tmp/ptenv/bin/pip install torch==2.13.0          # FIRST (CPU wheel)
    /tmp/ptenv/bin/pip install onnx==1.23.2 onnxscript==0.7.2 onnxruntime==1.32.0

Rerun (from the repository root):
    .venv/bin/python tests/interop/make_fixtures/make_torch_fixtures.py [--out tests/interop/fixtures]

Models (all seeded; eval mode; BN running stats randomised so BN is non-trivial):
  torch_sign_conv    (a) autograd.Function STE whose forward is torch.sign(x) on activations,
                         conv weights binarised with torch.sign(W) inside forward.
  torch_where_conv   (b) activations torch.where(x >= 0, 1., -1.) (0 -> +1), weights torch.sign(W).
  torch_sign_linear  (c) MLP: sign STE -> F.linear(x, sign(W)) -> BatchNorm1d, twice, float head.
  torch_reactnet_ste (d) official Bi-Real/ReActNet code style: activation
                         `sign(x).detach() - poly(x).detach() + poly(x)` and weight
                         `mean|W|(per out-channel).detach() * sign(W)` (scaled binary weights).
Each model is exported twice: `<name>_dynamo.onnx` (torch.onnx.export(dynamo=True,
external_data=False)) and `<name>_ts.onnx` (dynamo=False, TorchScript exporter).
`<name>_<exporter>.npz` holds `inputs` (float32, with exact zeros) and `outputs`
(ONNX Runtime output of that file) plus `torch_outputs` (eager PyTorch).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "fixtures"))


class SignSTE(torch.autograd.Function):
    """The usual user-written STE: forward torch.sign (sign(0) = 0!), clipped identity grad."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x.abs() <= 1).to(g.dtype)


def where_sign(x):
    return torch.where(x >= 0, 1.0, -1.0)


def reactnet_sign(x):
    # verbatim structure of ReActNet/Bi-Real "BinaryActivation"
    out_forward = torch.sign(x)
    mask1 = x < -1
    mask2 = x < 0
    mask3 = x < 1
    out1 = (-1) * mask1.type(torch.float32) + (x * x + 2 * x) * (1 - mask1.type(torch.float32))
    out2 = out1 * mask2.type(torch.float32) + (-x * x + 2 * x) * (1 - mask2.type(torch.float32))
    out3 = out2 * mask3.type(torch.float32) + 1 * (1 - mask3.type(torch.float32))
    return out_forward.detach() - out3.detach() + out3


class BinConv(nn.Module):
    def __init__(self, cin, cout, k=3, stride=1, padding=1, scaled=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k) * 0.1)
        self.stride, self.padding, self.scaled = stride, padding, scaled

    def forward(self, x):
        w = self.weight
        if self.scaled:  # ReActNet HardBinaryConv
            scaling = torch.mean(torch.mean(torch.mean(abs(w), dim=3, keepdim=True), dim=2, keepdim=True), dim=1, keepdim=True)
            bw = scaling.detach() * torch.sign(w)
        else:
            bw = torch.sign(w)
        return F.conv2d(x, bw, stride=self.stride, padding=self.padding)


class ConvNet(nn.Module):
    """sign(input) -> BinConv(3->16) -> BN -> sign -> BinConv(16->32) -> BN -> MaxPool2
    -> sign -> BinConv(32->32, stride 2, pad 0) -> BN -> GAP -> Linear(32->10)."""

    def __init__(self, act, scaled=False):
        super().__init__()
        self.act = act
        self.c0, self.b0 = BinConv(3, 16, scaled=scaled), nn.BatchNorm2d(16)
        self.c1, self.b1 = BinConv(16, 32, scaled=scaled), nn.BatchNorm2d(32)
        self.c2, self.b2 = BinConv(32, 32, stride=2, padding=0, scaled=scaled), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.b0(self.c0(self.act(x)))
        x = F.max_pool2d(self.b1(self.c1(self.act(x))), 2)
        x = self.b2(self.c2(self.act(x)))
        return self.fc(x.mean(dim=(2, 3)))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(64, 48) * 0.1)
        self.bn1 = nn.BatchNorm1d(64)
        self.w2 = nn.Parameter(torch.randn(32, 64) * 0.1)
        self.bn2 = nn.BatchNorm1d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.bn1(F.linear(SignSTE.apply(x), torch.sign(self.w1)))
        x = self.bn2(F.linear(SignSTE.apply(x), torch.sign(self.w2)))
        return self.fc(x)


def randomise_bn(m: nn.Module, g: torch.Generator):
    for mod in m.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = mod.num_features
            mod.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            mod.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.5)
            mod.weight.data.copy_(torch.randn(c, generator=g) * 0.5 + 1.0)
            mod.bias.data.copy_(torch.randn(c, generator=g) * 0.3)


def make_inputs(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    x[rng.random(shape) < 0.15] = 0.0  # exact zeros -> exercises sign(0)
    x.reshape(-1)[:3] = 0.0
    return x


def export(model, x, path, dynamo):
    kw = dict(input_names=["input"], output_names=["logits"])
    if dynamo:
        torch.onnx.export(model, (x,), path, dynamo=True, external_data=False, **kw)
    else:
        torch.onnx.export(model, (x,), path, dynamo=False, **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    models = {
        "torch_sign_conv": (ConvNet(SignSTE.apply), (4, 3, 16, 16)),
        "torch_where_conv": (ConvNet(where_sign), (4, 3, 16, 16)),
        "torch_sign_linear": (MLP(), (4, 48)),
        "torch_reactnet_ste": (ConvNet(reactnet_sign, scaled=True), (4, 3, 16, 16)),
    }
    for i, (name, (model, shape)) in enumerate(models.items()):
        randomise_bn(model, g)
        model.eval()
        xin = make_inputs(shape, 100 + i)
        with torch.no_grad():
            ref = model(torch.from_numpy(xin)).numpy()
        for exp_name, dynamo in (("dynamo", True), ("ts", False)):
            path = os.path.join(args.out, f"{name}_{exp_name}.onnx")
            export(model, torch.from_numpy(xin), path, dynamo)
            onnx.checker.check_model(onnx.load(path), full_check=True)
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            out = sess.run(None, {sess.get_inputs()[0].name: xin})[0]
            np.savez(os.path.join(args.out, f"{name}_{exp_name}.npz"), inputs=xin, outputs=out, torch_outputs=ref)
            print(f"{name}_{exp_name}: {os.path.getsize(path)} B  max|ORT-torch|={np.abs(out - ref).max():.3g}")

    # What does the dynamo exporter do by default (external_data=True)?  Scratch only.
    tmp = tempfile.mkdtemp(prefix="torch_default_export_")
    model, shape = models["torch_sign_conv"]
    p = os.path.join(tmp, "default.onnx")
    torch.onnx.export(model, (torch.from_numpy(make_inputs(shape, 0)),), p, dynamo=True)
    print("dynamo default export wrote:", {f: os.path.getsize(os.path.join(tmp, f)) for f in sorted(os.listdir(tmp))})
    m = onnx.load(p, load_external_data=False)
    ext = [t.name for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    print(f"  initializers external: {len(ext)}/{len(m.graph.initializer)}")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
