#!/usr/bin/env bash
# The one prepared script to run when a session is lent a CUDA machine (15 minutes of device time per
# session, all tries together). That machine has PyTorch but no network: erasekit runs from the source
# tree (PYTHONPATH=src) and the packages its image lacks travel as wheels in .whl/ (carried):
#
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 optimum-quanto==0.2.7 importlib_metadata
#
# It leaves under $OUT (at most 8 files come back):
#   device_matrix.json   every method x family x precision on CUDA (float32, float16, bfloat16), merged with
#                        the committed CPU cells: copy to benchmarks/results/device_matrix.json, then
#                        python benchmarks/render_performance.py
#   device_matrix.log    the matrix's lines as they ran
#   demo-cuda.log        the demo on CUDA in float16 (gate, erasures, red team)
#   demo-llm-cuda.log    the language-model demo on CUDA in bfloat16
#   env.txt              torch, CUDA device, package versions
#
# Usage on the device machine: OUT=$OUT bash benchmarks/gpu_session.sh   (STEPS="matrix demo llm" by default)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >"$OUT/env.txt" 2>&1 || { tail -20 "$OUT/env.txt"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD/src
else
    export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
python3 - <<'EOF' | tee -a "$OUT/env.txt"
import importlib, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for name in ("diffusers", "transformers", "accelerate", "peft", "safetensors", "optimum.quanto", "erasekit"):
    m = importlib.import_module(name)
    print(name, getattr(m, "__version__", "?"), getattr(m, "__file__", ""))
EOF
STEPS=${STEPS:-"matrix demo llm"}
step() { [[ " $STEPS " == *" $1 "* ]]; }
if step matrix; then
    cp benchmarks/results/device_matrix.json "$OUT/device_matrix.json"
    timeout "${MATRIX_S:-330}" python3 benchmarks/device_matrix.py --devices cuda --merge --kind "${MATRIX_KIND:-all}" --out "$OUT/device_matrix.json" \
        >"$OUT/device_matrix.log" 2>&1
    echo "matrix exit $?"; grep -c " ok " "$OUT/device_matrix.log"; grep FAIL "$OUT/device_matrix.log" | head -20
fi
if step demo; then
    timeout "${DEMO_S:-170}" python3 -m erasekit demo --device cuda --dtype float16 --out /tmp/demo >"$OUT/demo-cuda.log" 2>&1
    echo "demo exit $?"; tail -25 "$OUT/demo-cuda.log"
fi
if step llm; then
    timeout "${LLM_S:-80}" python3 -m erasekit demo --llm --device cuda --dtype bfloat16 --out /tmp/demo-llm >"$OUT/demo-llm-cuda.log" 2>&1
    echo "llm demo exit $?"; tail -15 "$OUT/demo-llm-cuda.log"
fi
true
