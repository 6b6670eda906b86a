#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU: set up the venv (+ cuda-bindings for NVRTC),
# compile a CNN and a CCT for this GPU, validate both against ONNX Runtime, print bench lines.
# Finishes in under 10 minutes; exit 3 when no GPU is visible (the exports still run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
if ! python -c "import cuda.bindings" 2>/dev/null; then
  if ! python -m pip install -q "cuda-bindings>=12"; then
    echo "gpu_check: cuda-bindings not installable; using nvcc to compile the CUDA source" >&2
    export TVM_CUDA_COMPILE_MODE=nvcc
  fi
fi
nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader 2>/dev/null || true
exec python examples/gpu_check.py --out "${OUT:-artifacts/gpu_check}" "$@"
