"""Re-run some attacks of recorded robustness runs (after an attack changed), keeping the others.

Each run is erased again with the exact method settings its JSON records (``cost.params``; erasures
are deterministic given their seed), the named attacks are run against it, their entries in the
run's ``attacks`` are replaced (``attacks_rerun`` lists them with the date), and docs/robustness.md is
rewritten from every run. The reference rows (``attacks-base-CONCEPT``, ``attacks-oracle-CONCEPT``)
are attacked as they are, the base testbed and the shipped oracle.

    python benchmarks/robustness_update.py --runs spm-star,spm-zorbo,spm-watermark --attacks quantization
    python benchmarks/robustness_update.py --runs attacks-base-star,attacks-oracle-star --attacks soft-prompt
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import erasekit
from erasekit.api.attacking import attack_names
from erasekit.api.bench import attacks_of, write_robustness
from erasekit.core.io import read_json
from erasekit.core.outputs import STAMP_KEY, write_report
from erasekit.core.request import ErasureRequest, Target

OUT = Path("benchmarks/results/robustness")

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="comma-separated METHOD-CONCEPT names of runs in " + str(OUT))
    ap.add_argument("--attacks", required=True)
    ap.add_argument("--why", default="", help="recorded with the rerun")
    args = ap.parse_args()
    pipe = erasekit.load_pipeline("testbed")
    oracle = None
    names = attack_names(args.attacks)
    for run_name in args.runs.split(","):
        path = OUT / f"{run_name.strip()}.json"
        recorded = read_json(path)
        run = {k: v for k, v in recorded.items() if k != STAMP_KEY}
        if run_name.startswith("attacks-oracle-"):
            oracle = oracle or erasekit.load_pipeline("testbed-oracle")
            target, erasure = oracle, None
        elif run_name.startswith("attacks-base-"):
            target, erasure = pipe, None
        else:
            target = pipe
            erasure = erasekit.erase(pipe, run["method"], ErasureRequest([Target(run["concept"])]), **run["cost"]["params"])
        run["attacks"].update(attacks_of(target, erasure, run["concept"], names, progress=True))
        run.setdefault("attacks_rerun", []).append({"attacks": names, "date": str(datetime.date.today()), "why": args.why})
        write_report(path, run, recorded.get(STAMP_KEY, "bench-run"))  # a run, or a reference row (bench-attacks)
        print("updated", path, {n: run["attacks"][n]["asr"] for n in names})
    print("wrote", write_robustness(OUT, "docs/robustness.md"))
