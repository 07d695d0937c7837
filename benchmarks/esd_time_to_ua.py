"""ESD-x on the testbed: UA and IRA after every ``--every`` steps, against wall-clock training time.

Usage: python benchmarks/esd_time_to_ua.py [--concept star] [--steps 200] [--every 25] [--set lr=1e-4 ...]
       [--out benchmarks/results/esd_time_to_ua.json] [--plot docs/esd-time-to-ua.svg]

Target (issue 5): UA >= 95 % on a testbed shape with IRA >= 85 % within 2 minutes on the 2-core CPU.
The monitor (erasekit.evaluation.monitor.TestbedMonitor, the one behind ``erase --stop-at-ua``)
evaluates a copy of the pipeline carrying the current trained tensors on the evaluation prompt set of
``erasekit evaluate`` (the target's canonical and synonym prompts; the other concepts of its domain)
with ``--seeds`` seeds each; the training clock excludes evaluation time.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import torch

from erasekit import __version__
from erasekit.api import erase, load_judge
from erasekit.core.io import write_json
from erasekit.evaluation.monitor import TestbedMonitor
from erasekit.models import load_pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="testbed")
    ap.add_argument("--concept", default="star")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--contexts", type=int, default=6)
    ap.add_argument("--set", action="append", default=[], help="ESD parameter key=value")
    ap.add_argument("--out", default="benchmarks/results/esd_time_to_ua.json")
    ap.add_argument("--plot", default="docs/esd-time-to-ua.svg")
    args = ap.parse_args()

    params = dict(kv.split("=", 1) for kv in args.set)
    params.update(iterations=str(args.steps), eval_every=str(args.every))
    pipe = load_pipeline(args.model)
    judge = load_judge(args.model)
    monitor = TestbedMonitor(pipe, judge, [args.concept], args.seeds, args.contexts, report=print)
    base, _ = monitor(0, {})
    monitor.eval_seconds = 0.0  # the training clock starts now
    base["eval_seconds_so_far"] = 0.0
    t0 = time.perf_counter()
    erasure = erase(pipe, "esd", {"targets": [args.concept]}, model=args.model, progress=True, monitor=monitor, **params)
    total = time.perf_counter() - t0
    curve = [{"step": 0, "train_seconds": 0.0, **base}]
    for e in erasure.info["training"]["evaluations"]:
        e = dict(e)
        e["train_seconds"] = round(e.pop("seconds") - e["eval_seconds_so_far"], 2)
        curve.append(e)
    reached = next((c for c in curve if c["ua"] >= 0.95 and c["ira"] >= 0.85), None)
    result = {
        "concept": args.concept, "method": "esd", "params": erasure.params, "curve": curve,
        "target": {"ua": 0.95, "ira": 0.85, "seconds": 120},
        "reached": reached, "met": bool(reached and reached["train_seconds"] <= 120),
        "total_seconds_with_evaluation": round(total, 1),
        "peak_memory_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "erasekit_version": __version__,
    }  # fmt: skip
    write_json(args.out, result)
    write_plot(curve, args.plot, args.concept)
    print(f"wrote {args.out} and {args.plot}; target met: {result['met']}")


def write_plot(curve: list[dict], path: str, concept: str) -> None:
    """A dependency-free SVG of UA and IRA against training seconds."""
    w, h, pad = 480, 300, 48
    tmax = max(c["train_seconds"] for c in curve) or 1.0

    def xy(t: float, v: float) -> tuple[float, float]:
        return pad + (w - 2 * pad) * t / tmax, h - pad - (h - 2 * pad) * v

    def line(key: str, colour: str) -> str:
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(c["train_seconds"], c[key]) for c in curve))
        return f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{pts}"/>'

    x0, y0 = xy(0, 0)
    x1, y1 = xy(tmax, 1)
    grid = "".join(f'<line x1="{x0}" x2="{x1}" y1="{xy(0, v)[1]:.1f}" y2="{xy(0, v)[1]:.1f}" stroke="#ddd"/>'
                   f'<text x="{x0 - 6}" y="{xy(0, v)[1] + 4:.1f}" font-size="10" text-anchor="end">{int(v * 100)}%</text>' for v in (0, 0.25, 0.5, 0.75, 1))  # fmt: skip
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif">'
        f'<text x="{w / 2}" y="18" font-size="13" text-anchor="middle">ESD-x on the testbed: erasing "{concept}"</text>{grid}'
        f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#000"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#000"/>'
        f'<text x="{w / 2}" y="{h - 12}" font-size="11" text-anchor="middle">training seconds (2-core CPU; evaluation excluded), max {tmax:.0f}s</text>'
        f"{line('ua', '#c0392b')}{line('ira', '#2471a3')}"
        f'<text x="{x1 - 4}" y="{y1 + 14}" font-size="11" fill="#c0392b" text-anchor="end">UA</text>'
        f'<text x="{x1 - 4}" y="{y1 + 28}" font-size="11" fill="#2471a3" text-anchor="end">IRA</text></svg>'
    )
    from erasekit.core.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(svg)


if __name__ == "__main__":
    main()
