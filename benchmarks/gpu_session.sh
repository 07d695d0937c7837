#!/usr/bin/env bash
# The one prepared script to run when a session is lent a CUDA machine (see DEVELOPERS' guide: 15
# minutes of device time per session, all tries together). It installs erasekit, runs the device matrix
# on CPU and CUDA, and the demo on CUDA in float16, and leaves everything under $OUT (or ./gpu-results):
#
#   device_matrix.json   -> copy to benchmarks/results/device_matrix.json, then
#                           python benchmarks/render_performance.py
#   gpu_perf.json        -> benchmarks/results/gpu_perf.json (ESD-x overhead, UCE x100 vs the authors' algorithm)
#   demo-cuda.log        the demo's summary on the GPU (its gate and erasures)
#   demo-llm-cuda.log    the language-model demo on the GPU in bfloat16 (NPO on testbed-llm)
#
# The whole script runs longer than one 600-second call: run it in two calls if needed, e.g.
# STEPS=matrix and then STEPS="perf demo llm" (default: every step).
#
# Usage on the device machine: OUT=$OUT bash benchmarks/gpu_session.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet -e . >"$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
.venv/bin/python -c "import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$OUT/torch.txt"
STEPS=${STEPS:-"matrix perf demo llm"}
step() { [[ " $STEPS " == *" $1 "* ]]; }
step matrix && timeout 420 .venv/bin/python benchmarks/device_matrix.py --devices cpu,cuda --out "$OUT/device_matrix.json" >"$OUT/device_matrix.log" 2>&1 || true
step matrix && tail -5 "$OUT/device_matrix.log"
step perf && timeout 180 .venv/bin/python benchmarks/gpu_perf.py --device cuda --out "$OUT/gpu_perf.json" >"$OUT/gpu_perf.log" 2>&1 || true
step perf && { grep -E "ESD-x|UCE" "$OUT/gpu_perf.log" || tail -5 "$OUT/gpu_perf.log"; }
step demo && timeout 240 .venv/bin/erasekit demo --device cuda --dtype float16 --out "$OUT/demo" >"$OUT/demo-cuda.log" 2>&1 || true
step demo && tail -25 "$OUT/demo-cuda.log"
step llm && timeout 120 .venv/bin/erasekit demo --llm --device cuda --dtype bfloat16 --out "$OUT/demo-llm" >"$OUT/demo-llm-cuda.log" 2>&1 || true
step llm && tail -25 "$OUT/demo-llm-cuda.log"
true
