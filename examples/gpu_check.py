"""On a machine with an NVIDIA GPU: compile a CNN and a transformer for this GPU, validate them
against ONNX Runtime, and print a bench line each — the whole CUDA path in one run (~10 min).

    bash scripts/gpu_check.sh            # sets up the venv (+ cuda-bindings), then runs this
    python examples/gpu_check.py --out gpu_check/ [--models reactnet_18,binary_cct_7_3x1]

The CUDA libraries embed CUDA source that TVM compiles when it loads them: with NVRTC through
``cuda-bindings`` (``pip install bnncompile[cuda]``), or with ``TVM_CUDA_COMPILE_MODE=nvcc``
and ``nvcc`` on PATH.  Without a GPU the script says so and exits 3 after the checks that do not
need one (the target for a given compute capability, the exports).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULT_MODELS = ("reactnet_18", "binary_cct_7_3x1")


def cuda_target(compute_version: str) -> str:
    """The ``--target`` for a GPU of compute capability ``"9.0"``: a registered name when there
    is one (cuda-sm80 / cuda-sm90), else raw TVM target JSON for that arch."""
    major, _, minor = str(compute_version).partition(".")
    if not major.isdigit() or not (minor or "0").isdigit():
        raise ValueError(f"not a compute capability: {compute_version!r}")
    arch = f"sm_{int(major)}{int(minor or 0)}"
    return {"sm_80": "cuda-sm80", "sm_90": "cuda-sm90"}.get(arch) or json.dumps({"kind": "cuda", "arch": arch})


def gpu() -> tuple[str | None, str]:
    """(compute capability, name) of GPU 0, or (None, why not)."""
    import tvm

    dev = tvm.cuda(0)
    if not dev.exist:
        return None, "no CUDA GPU visible to TVM (driver, CUDA_VISIBLE_DEVICES?)"
    return str(dev.compute_version), str(dev.device_name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_check", help="working folder (models, libraries, reports)")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated zoo models")
    ap.add_argument("--rounds", type=int, default=3, help="bench rounds")
    args = ap.parse_args(argv)
    from bnncompile.bench import benchmark
    from bnncompile.compiler import compile_model
    from bnncompile.exporter import export_zoo_model
    from bnncompile.validate import validate_parity

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cc, name = gpu()
    models = [m for m in args.models.split(",") if m]
    t0 = time.perf_counter()
    for model in models:  # exports need no GPU: done first, so a GPU-less run checks them too
        if not (out / f"{model}.onnx").is_file():
            export_zoo_model(model, out / f"{model}.onnx", batch=1)
    if cc is None:
        print(f"gpu_check: {name}; exports done in {time.perf_counter() - t0:.0f} s, nothing run on a GPU")
        return 3
    target = cuda_target(cc)
    print(f"gpu_check: {name} (compute capability {cc}) -> --target {target}")
    summary = {}
    for model in models:
        onnx_path, lib = out / f"{model}.onnx", out / f"{model}_cuda.so"
        res = compile_model(onnx_path, output=lib, target=target)
        report = validate_parity(onnx_path, lib=lib, real_images=2)
        bench = benchmark(onnx_path, lib=lib, threads=(1,), rounds=args.rounds, number=10)
        summary[model] = {"compile_s": round(res.seconds, 1), "verify": res.verify,
                          "validate_ok": report.ok, "bench": bench.to_dict()}
        print(f"{model}: {res.summary()}; validate {'PASS' if report.ok else 'FAIL'}")
        print(bench.format())
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"gpu_check: done in {time.perf_counter() - t0:.0f} s; {out / 'gpu_check.json'}")
    return 0 if all(v["validate_ok"] for v in summary.values()) else 6


if __name__ == "__main__":
    sys.exit(main())
