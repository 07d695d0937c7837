#!/usr/bin/env bash
# The language-model results of docs/results.md and docs/robustness.md ("Language models" sections):
# every method at its defaults on forget01 and forget05 of testbed-llm, attacked with every attack,
# then extra rows (docs/unlearning.md): RMU in open-unlearning's TOFU configuration (rmu@tofu), adaptive
# RMU (rmu@adaptive) and ELM at eta 10 on every block (elm@eta10). About 12 minutes on 2 CPU cores.
# Runs: benchmarks/results/llm/.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/erasekit bench --model testbed-llm --attacks all
.venv/bin/erasekit bench --model testbed-llm --methods rmu@tofu --attacks all --set rmu@tofu.params=all \
    --set rmu@tofu.steering_coeff=2 --set rmu@tofu.alpha=1 --set rmu@tofu.lr=1e-3
.venv/bin/erasekit bench --model testbed-llm --methods rmu@adaptive --attacks all --set rmu@adaptive.adaptive_scale=5 \
    --set rmu@adaptive.alpha=1200
.venv/bin/erasekit bench --model testbed-llm --methods elm@eta10 --attacks all --set elm@eta10.eta=10 --set elm@eta10.layers=0,4
