"""Brevitas -> QONNX fixtures (FINN bnn_pynq CNV-w1a1 (shrunk) and TFC-w1a1).

Environment used (a venv of its own; never the project's .venv):
    python3 -m venv /tmp/brevenv
    /tmp/brevenv/bin/pip install --upgrade pip
    /tmp/brevenv/bin/pip install torch==2.13.0             # FIRST: the CPU wheel
    /tmp/brevenv/bin/pip install brevitas qonnx onnxruntime onnx onnxscript
    /tmp/brevenv/bin/pip install onnxoptimizer   # export_qonnx raises "onnx and onnxoptimizer
                                                 # is required" without it (not a declared dep)
  resolved to: torch 2.13.0+cpu (kept), brevitas 0.13.4, qonnx 1.0.0, onnx 1.23.2,
  onnxscript 0.7.2, onnxruntime 1.32.0, onnxoptimizer 0.4.2, numpy 2.4.6
  (~3 min, venv 1.1 GB).

Rerun (from the repository root):
    /tmp/brevenv/bin/python tests/interop/make_fixtures/make_brevitas_fixtures.py [--out DIR]

Models come from `brevitas_examples.bnn_pynq.models` builders with the stock
`cnv_1w1a.ini` / `tfc_1w1a.ini` configs (weight_bit_width=1, act_bit_width=1), random
(seeded) weights, pretrained=False (no downloads). CNV is shrunk by patching the module
constants of brevitas_examples.bnn_pynq.models.CNV (channels 64/128/256 -> 16/32/64,
FC 512 -> 128) so the file stays < 1 MB; topology (6 valid 3x3 convs, 2 maxpools,
3 FCs, TensorNorm, 32x32x3 input, 8-bit input quant) is unchanged.
BatchNorm / TensorNorm running stats are randomised so they are not identities.

Plus brevitas_scaled_w1a1 (ScaledBinaryNet below): brevitas.quant.binary quantizers whose
scales are NOT 1 (weights x0.1, activations x0.5, per-output-channel mean|W| weight scales).

Per model <m> in {brevitas_cnv_w1a1, brevitas_tfc_w1a1, brevitas_scaled_w1a1} it writes:
  <m>_raw.onnx          brevitas.export.export_qonnx(...) with its default exporter
                        (brevitas 0.13.4 + torch >= 2.9 -> dynamo=True)
  <m>_ts_raw.onnx       export_qonnx(..., dynamo=False) (TorchScript exporter)
  <m>_clean.onnx        qonnx.util.cleanup.cleanup_model(raw)   (default preserve_qnt_ops=True:
                        weight BipolarQuant nodes are KEPT)
  <m>_clean_folded.onnx cleanup_model(raw, preserve_qnt_ops=False): weight quantizers
                        folded into +-1 float initializers
and for each a .npz with `inputs` (float32), `outputs` (qonnx.core.onnx_exec.execute_onnx
of that file) and `torch_outputs` (Brevitas eager output).
"""
from __future__ import annotations

import argparse
import os

import brevitas_examples.bnn_pynq.models.CNV as cnv_mod
import numpy as np
import onnx
import torch
from brevitas.core.function_wrapper import TensorClamp
from brevitas.core.scaling import ScalingImplType
from brevitas.core.stats import StatsOp
from brevitas.export import export_qonnx
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear
from brevitas.quant.binary import SignedBinaryActPerTensorConst, SignedBinaryWeightPerTensorConst
from brevitas_examples.bnn_pynq.models import get_model_cfg
from brevitas_examples.bnn_pynq.models.CNV import cnv
from brevitas_examples.bnn_pynq.models.FC import fc
from brevitas_examples.bnn_pynq.models.tensor_norm import TensorNorm
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.util.cleanup import cleanup_model

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "fixtures"))


def randomise_norms(model, g):
    for mod in model.modules():
        if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, TensorNorm)):
            c = mod.running_mean.numel()
            mod.running_mean.copy_(torch.randn(c, generator=g) * 2.0)
            mod.running_var.copy_(torch.rand(c, generator=g) * 20 + 1.0)
            mod.weight.data.copy_(torch.randn(c, generator=g) * 0.5 + 1.0)
            mod.bias.data.copy_(torch.randn(c, generator=g) * 0.3)


def build_cnv():
    cnv_mod.CNV_OUT_CH_POOL = [(16, False), (16, True), (32, False), (32, True), (64, False), (64, False)]
    cnv_mod.INTERMEDIATE_FC_FEATURES = [(64, 128), (128, 128)]
    cnv_mod.LAST_FC_IN_FEATURES = 128
    return cnv(get_model_cfg("cnv_1w1a"))


def build_tfc():
    return fc(get_model_cfg("tfc_1w1a"))


class BinWeightPerChannelMean(SignedBinaryWeightPerTensorConst):
    """XNOR-Net / Bi-Real style: sign(W) * mean|W| per output channel (stats scaling).
    tensor_clamp_impl is made non-inplace: the stock InplaceTensorClampSte would clamp W
    to +-scale on every forward, so the AVE scale would drift between calls."""
    tensor_clamp_impl = TensorClamp
    scaling_impl_type = ScalingImplType.STATS
    scaling_stats_op = StatsOp.AVE
    scaling_per_output_channel = True


class BinActHalf(SignedBinaryActPerTensorConst):
    min_val = -0.5
    max_val = 0.5


class ScaledBinaryNet(torch.nn.Module):
    """Binary quantizers with scales != 1 (brevitas.quant.binary + a per-channel one):
    in: BipolarQuant(x, 1.0) -> QuantConv2d 3->16 pad 1, SignedBinaryWeightPerTensorConst
    (scale 0.1) -> BN -> BipolarQuant(x, 0.5) -> QuantConv2d 16->32 pad 1, per-channel mean|W|
    scale -> BN -> MaxPool 2 -> BipolarQuant(x, 1.0) -> flatten -> QuantLinear 2048->10
    (per-channel mean|W|)."""

    def __init__(self):
        super().__init__()
        self.q0 = QuantIdentity(act_quant=SignedBinaryActPerTensorConst)
        self.c0 = QuantConv2d(3, 16, 3, padding=1, bias=False, weight_quant=SignedBinaryWeightPerTensorConst)
        self.b0 = torch.nn.BatchNorm2d(16)
        self.q1 = QuantIdentity(act_quant=BinActHalf)
        self.c1 = QuantConv2d(16, 32, 3, padding=1, bias=False, weight_quant=BinWeightPerChannelMean)
        self.b1 = torch.nn.BatchNorm2d(32)
        self.q2 = QuantIdentity(act_quant=SignedBinaryActPerTensorConst)
        self.fc = QuantLinear(32 * 8 * 8, 10, bias=False, weight_quant=BinWeightPerChannelMean)

    def forward(self, x):
        x = self.b0(self.c0(self.q0(x)))
        x = torch.nn.functional.max_pool2d(self.b1(self.c1(self.q1(x))), 2)
        return self.fc(torch.flatten(self.q2(x), 1))


def make_inputs_real(shape, seed):
    """Real-valued input with exact zeros (first op is a bipolar quantizer: sign(0))."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    x[rng.random(shape) < 0.15] = 0.0
    x.reshape(-1)[:3] = 0.0
    return x


def make_inputs(shape, seed):
    """Images in [0, 1] as the bnn_pynq models expect (they compute 2x - 1 first).
    x = 0.5 maps to exactly 0 before the first bipolar quantizer (sign(0)); x = 0 -> -1."""
    rng = np.random.default_rng(seed)
    x = rng.random(shape).astype(np.float32)
    r = rng.random(shape)
    x[r < 0.1] = 0.0
    x[(r >= 0.1) & (r < 0.2)] = 0.5
    x.reshape(-1)[:2] = [0.0, 0.5]
    return x


def qonnx_run(model: ModelWrapper, x: np.ndarray) -> np.ndarray:
    # execute_onnx needs every tensor shape (the TorchScript export lacks value_info)
    model = model.transform(InferShapes())
    iname = model.graph.input[0].name
    oname = model.graph.output[0].name
    return execute_onnx(model, {iname: x})[oname]


def try_ort(path, x):
    import onnxruntime as ort
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        sess.run(None, {sess.get_inputs()[0].name: x})
        return "ok"
    except Exception as e:
        return f"FAILS: {type(e).__name__}: {str(e).splitlines()[0][:160]}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    specs = {
        "brevitas_cnv_w1a1": (build_cnv, (4, 3, 32, 32), make_inputs),
        "brevitas_tfc_w1a1": (build_tfc, (4, 1, 28, 28), make_inputs),
        "brevitas_scaled_w1a1": (ScaledBinaryNet, (4, 3, 16, 16), make_inputs_real),
    }
    for i, (name, (builder, shape, inputs)) in enumerate(specs.items()):
        model = builder()
        randomise_norms(model, g)
        model.eval()
        x = inputs(shape, 200 + i)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        files = {}
        raw = os.path.join(args.out, f"{name}_raw.onnx")
        export_qonnx(model, args=torch.from_numpy(x), export_path=raw)
        # The dynamo path leaves a stale `<raw>.onnx.data` (torch's default external-data
        # save) next to a file that brevitas re-saved with every tensor inline.
        if os.path.exists(raw + ".data"):
            ref_ext = [t.name for t in onnx.load(raw, load_external_data=False).graph.initializer
                       if t.data_location == onnx.TensorProto.EXTERNAL]
            assert not ref_ext, f"{raw} really uses external data"
            print(f"removing stale {os.path.basename(raw)}.data ({os.path.getsize(raw + '.data')} B, unreferenced)")
            os.remove(raw + ".data")
        files["raw"] = raw
        ts = os.path.join(args.out, f"{name}_ts_raw.onnx")
        export_qonnx(model, args=torch.from_numpy(x), export_path=ts, dynamo=False)
        files["ts_raw"] = ts
        clean = os.path.join(args.out, f"{name}_clean.onnx")
        cleanup_model(ModelWrapper(raw)).save(clean)
        files["clean"] = clean
        folded = os.path.join(args.out, f"{name}_clean_folded.onnx")
        cleanup_model(ModelWrapper(raw), preserve_qnt_ops=False).save(folded)
        files["clean_folded"] = folded
        for tag, path in files.items():
            m = onnx.load(path, load_external_data=False)
            ext = [t.name for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
            assert not ext, f"{path} has external data"
            out = qonnx_run(ModelWrapper(path), x)
            np.savez(path[:-5] + ".npz", inputs=x, outputs=out, torch_outputs=ref)
            print(f"{os.path.basename(path)}: {os.path.getsize(path)} B  ir={m.ir_version} "
                  f"opsets={[(o.domain, o.version) for o in m.opset_import]}  "
                  f"max|qonnx-torch|={np.abs(out - ref).max():.3g}  ORT: {try_ort(path, x)}")


if __name__ == "__main__":
    main()
