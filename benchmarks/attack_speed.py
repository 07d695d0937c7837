"""Wall time of the red team against one erasure on the testbed: the fast attacks, then every attack.

Usage: python benchmarks/attack_speed.py [--method uce] [--concept star] [--out benchmarks/results/attack_speed.json]

Targets (issue 12): the fast attacks (synonyms, arithmetic, quantization, soft prompt at their default
budgets) together within 2 minutes on the 2-core CPU, the whole suite within 15 minutes. Times cover
what `erasekit attack` does after loading: the plain prompts' images once, then each attack at its
default budget (about 24 trials).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

import erasekit
from erasekit.api.attacking import attack_names
from erasekit.core.io import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="uce")
    ap.add_argument("--concept", default="star")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="benchmarks/results/attack_speed.json")
    args = ap.parse_args()
    pipe = erasekit.load_pipeline("testbed", device=args.device)
    erasure = erasekit.erase(pipe, args.method, {"targets": [args.concept]}, progress=False)
    runs = {}
    for suite in ("fast", "all"):
        t0 = time.time()
        results = erasekit.attack(pipe, erasure, attack_names(suite), args.concept, progress=False)
        runs[suite] = {
            "seconds": round(time.time() - t0, 1),
            "attacks": {
                r.attack: {
                    "seconds": round(r.seconds, 1),
                    "budget": r.budget,
                    "budget_unit": r.budget_unit,
                    "trials": r.trials,
                    "asr": round(r.asr, 4),
                }
                for r in results
            },  # fmt: skip
        }
        print(suite, runs[suite]["seconds"], "s", flush=True)
    write_json(args.out, {
        "method": args.method, "concept": args.concept, "device": args.device, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "targets_seconds": {"fast": 120, "all": 900}, "suites": runs,
    })  # fmt: skip


if __name__ == "__main__":
    main()
