"""ESD-x on the testbed: UA and IRA after every ``--every`` steps, against wall-clock training time.

Usage: python benchmarks/esd_time_to_ua.py [--concept star] [--steps 200] [--every 25] [--set lr=1e-4 ...]
       [--out benchmarks/results/esd_time_to_ua.json] [--plot docs/esd-time-to-ua.png] [--replot]

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
    ap.add_argument("--plot", default="docs/esd-time-to-ua.png")
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from the JSON at --out")
    args = ap.parse_args()
    if args.replot:
        from erasekit.core.io import read_json

        recorded = read_json(args.out)
        write_plot(recorded["curve"], args.plot, recorded["concept"])
        print(f"wrote {args.plot}")
        return

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
    """UA and IRA against training seconds (matplotlib, a stamped PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from erasekit.core.outputs import write_image

    seconds = [c["train_seconds"] for c in curve]
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    ax.plot(seconds, [100 * c["ua"] for c in curve], marker=".", color="#c0392b", label="UA (erased)")
    ax.plot(seconds, [100 * c["ira"] for c in curve], marker=".", color="#2471a3", label="IRA (kept)")
    ax.set_ylim(-3, 103)
    ax.set_xlabel(f"training seconds (2-core CPU; evaluation excluded), max {max(seconds):.0f} s")
    ax.set_ylabel("%")
    ax.set_title(f'ESD-x on the testbed: erasing "{concept}"')
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.canvas.draw()
    image = Image.frombuffer("RGBA", fig.canvas.get_width_height(), fig.canvas.buffer_rgba()).convert("RGB")
    plt.close(fig)
    write_image(image, path, "plot")


if __name__ == "__main__":
    main()
