"""Attack the shipped oracle (testbed-oracle) and the base testbed for the robustness table's reference
rows, then rewrite docs/robustness.md from every run in benchmarks/results/robustness.

`benchmarks/robustness.sh` does this as part of the bench; this script refreshes only the reference rows
(after the oracle is retrained), without erasing and attacking every method again.

    python benchmarks/robustness_oracle.py [--concepts star,zorbo,watermark] [--attacks all] [--oracle-only]
"""

from __future__ import annotations

import argparse

import erasekit
from erasekit.api.attacking import attack_names
from erasekit.api.bench import attack_references, write_robustness
from erasekit.core.outputs import claim_collection

OUT = "benchmarks/results/robustness"

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concepts", default="star,zorbo,watermark")
    ap.add_argument("--attacks", default="all")
    ap.add_argument("--device", default=None)
    ap.add_argument("--oracle-only", action="store_true", help="leave the base model's rows as they are")
    args = ap.parse_args()
    out = claim_collection(OUT, "bench", what="bench results directory")
    pipe = erasekit.load_pipeline("testbed", device=args.device)
    names = attack_names(args.attacks)
    for concept in args.concepts.split(","):
        attack_references(pipe, concept.strip(), names, out, "testbed-oracle", args.device, None, progress=True,
                           base=not args.oracle_only)  # fmt: skip
    print("wrote", write_robustness(out, "docs/robustness.md"))
