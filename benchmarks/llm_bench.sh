#!/usr/bin/env bash
# The language-model results of docs/results.md and docs/robustness.md ("Language models" sections):
# every method at its defaults on forget01 and forget05 of testbed-llm, attacked with every attack,
# then RMU in open-unlearning's TOFU configuration and adaptive RMU as the extra rows rmu@tofu and
# rmu@adaptive (docs/unlearning.md). About 10 minutes on 2 CPU cores. Runs: benchmarks/results/llm/.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/erasekit bench --model testbed-llm --attacks all
.venv/bin/erasekit bench --model testbed-llm --methods rmu@tofu --attacks all --set rmu@tofu.params=all \
    --set rmu@tofu.steering_coeff=2 --set rmu@tofu.alpha=1 --set rmu@tofu.lr=1e-3
.venv/bin/erasekit bench --model testbed-llm --methods rmu@adaptive --attacks all --set rmu@adaptive.adaptive_scale=5 \
    --set rmu@adaptive.alpha=1200
