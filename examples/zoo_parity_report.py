"""Every zoo model at its default size: parameters, BOPs/FLOPs/OPs, PyTorch vs ONNX Runtime parity.

    python examples/zoo_parity_report.py [--models reactnet_a,reactnet_18] [--images 2]

For each model: build (seed 0, random dynamic init, BN calibrated), export to ONNX in a temporary
directory, count costs from the graph (``bnncompile.summary``), run PyTorch and ONNX Runtime on
real photos (``bnncompile.data.real_images``) and report the max |logit difference|, top-1
agreement and the total number of DynamicSign sign flips.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bnncompile import zoo
from bnncompile.data import real_images
from bnncompile.exporter import export
from bnncompile.parity import compare_signs
from bnncompile.summary import summarize


def report(name: str, images: int, workdir: Path) -> dict:
    spec = zoo.get_spec(name)
    model = zoo.build(name, seed=0)
    x = real_images(max(images, 2), spec.input_size, channels=spec.in_channels, seed=0)
    t0 = time.perf_counter()
    result = export(model, torch.from_numpy(x[:2]), workdir / f"{name}.onnx", write_golden=False)
    export_s = time.perf_counter() - t0
    s = summarize(result.model_path, batch=1)
    import onnx

    flips, ort_out = compare_signs(model, onnx.load(str(result.model_path)), x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = ort_out["logits"]
    return {
        "model": name, "size": spec.input_size, "params": sum(p.numel() for p in model.parameters()),
        "bops": s.bops, "flops": s.flops, "ops": s.ops, "dyn_ops": s.dynamic.total_ops,
        "max_abs": float(np.abs(ref - got).max()),
        "top1": f"{int((ref.argmax(1) == got.argmax(1)).sum())}/{len(x)}",
        "flips": sum(flips.values()), "signs": len(flips),
        "export_s": export_s,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(zoo.list_models()))
    ap.add_argument("--images", type=int, default=2)
    args = ap.parse_args(argv)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    cols = ("model", "size", "params", "bops", "flops", "ops", "dyn_ops", "max_abs", "top1",
            "flips", "signs", "export_s")
    print(" | ".join(cols), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            r = report(name, args.images, Path(tmp))
            fmt = {k: (f"{v:.4g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else v)
                   for k, v in r.items()}
            print(" | ".join(str(fmt[c]) for c in cols), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
