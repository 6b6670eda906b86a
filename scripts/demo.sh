#!/usr/bin/env bash
# The main job: export a seed BNN with dynamic thresholds, inspect it, compile it for this CPU
# (the compile checks itself against ONNX Runtime), validate parity against PyTorch and ONNX
# Runtime, run it, and benchmark it against ONNX Runtime, OpenVINO and PyTorch.
#   MODEL=binary_cct_7_3x1 bash scripts/demo.sh      # another zoo model, at its own input size
#   SIZE=64 bash scripts/demo.sh                      # another input size
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
MODEL=${MODEL:-dybnn_reactnet_18}
OUT=${OUT:-artifacts/demo}
SIZE_ARGS=()
if [ -n "${SIZE:-}" ]; then SIZE_ARGS=(--input-size "$SIZE"); fi
mkdir -p "$OUT"
set -x
bnncompile targets
bnncompile export "$MODEL" "${SIZE_ARGS[@]}" --golden-images 4 -o "$OUT/$MODEL.onnx"
bnncompile inspect "$OUT/$MODEL.onnx"
bnncompile compile "$OUT/$MODEL.onnx" --target host -o "$OUT/$MODEL.so"
bnncompile validate "$OUT/$MODEL.onnx" --lib "$OUT/$MODEL.so"
bnncompile run "$OUT/$MODEL.so" --input "$OUT/$MODEL.golden.npz" -o "$OUT/logits.npy"
bnncompile bench "$OUT/$MODEL.onnx" --lib "$OUT/$MODEL.so" --threads 1,2 --against openvino \
  --plot "$OUT/bench.png"
