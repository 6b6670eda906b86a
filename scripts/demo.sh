#!/usr/bin/env bash
# The main job: export a seed BNN with dynamic thresholds, inspect it, compile it for this CPU,
# validate parity against PyTorch and ONNX Runtime, run it, and benchmark it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
MODEL=${MODEL:-dybnn_reactnet_18}
SIZE=${SIZE:-224}
OUT=${OUT:-artifacts/demo}
mkdir -p "$OUT"
set -x
bnncompile zoo
bnncompile export "$MODEL" --input-size "$SIZE" --golden-images 4 -o "$OUT/$MODEL.onnx"
bnncompile inspect "$OUT/$MODEL.onnx"
bnncompile compile "$OUT/$MODEL.onnx" --target host -o "$OUT/$MODEL.so"
bnncompile validate "$OUT/$MODEL.onnx" --lib "$OUT/$MODEL.so"
python - "$OUT" "$SIZE" <<'PY'
import sys, numpy as np
from bnncompile.data import real_images
np.save(f"{sys.argv[1]}/photo.npy", real_images(1, int(sys.argv[2])))
PY
bnncompile run "$OUT/$MODEL.so" --input "$OUT/photo.npy" -o "$OUT/logits.npy"
if bnncompile bench --help >/dev/null 2>&1; then
  bnncompile bench "$OUT/$MODEL.onnx" --lib "$OUT/$MODEL.so" --threads 1,2
fi
