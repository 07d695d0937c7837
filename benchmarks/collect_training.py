"""Collect the stage records (``*.done``) of a testbed training work directory into one JSON.

Usage: python benchmarks/collect_training.py runs/testbed docs/testbed-training.json [--note TEXT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from erasekit.core.io import write_json
from erasekit.testbeds.image.train import STAGES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir")
    ap.add_argument("out")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    work = Path(args.workdir)
    stages = {s: json.loads((work / f"{s}.done").read_text()) for s in STAGES if (work / f"{s}.done").is_file()}
    write_json(
        args.out,
        {"workdir": str(work), "config": json.loads((work / "config.json").read_text()), "stages": stages, "note": args.note},
    )
    print(f"wrote {args.out} ({sum(v.get('seconds', 0) for v in stages.values()) / 60:.1f} min over {len(stages)} stages)")


if __name__ == "__main__":
    main()
