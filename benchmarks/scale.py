"""Scale: the speed-up of a sharded evaluation, and what each judge costs per image.

Usage: python benchmarks/scale.py [--seeds 4] [--contexts 12] [--batch-size 16] [--out benchmarks/results/scale.json]

1. ``erasekit evaluate --concept star`` (the base model; ``--seeds`` x ``--contexts``, batches of
   ``--batch-size``) once on one process and once under ``torchrun --nproc_per_node 2`` (gloo), each
   process with one torch thread, so that two processes use the two cores one process leaves idle.
   Wall time of the whole command (start-up included) and the ratio; the two reports must be equal
   once the readings of time are set aside (erasekit.core.parallel.comparable), or the run fails.
2. Judges: images per second of the testbed classifier (32 px) and NudeNet 3.4.2's ONNX detector
   (onnxruntime, 512 px, the size SD-1.x draws), on this machine's CPU; CLIP needs weights a user
   brings, so it is not timed here.

The cost model in docs/performance.md is computed from these numbers and from the assumptions it states.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - t0


def shard_speedup(seeds: int, contexts: int, batch_size: int) -> dict:
    from erasekit.core.parallel import comparable

    args = ["evaluate", "--concept", "star", "--seeds", str(seeds), "--contexts", str(contexts), "--batch-size", str(batch_size)]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        one = _run([sys.executable, "-m", "erasekit", *args, "--out", "one.json"], d)
        two = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "erasekit", *args,
                    "--out", "two.json"], d)  # fmt: skip
        a, b = (comparable(json.loads((d / f).read_text())) for f in ("one.json", "two.json"))
        if a != b:
            raise SystemExit("the sharded report differs from the one-process report")
        images = json.loads((d / "one.json").read_text())["samples"]["images_per_model"]
    return {"command": "erasekit " + " ".join(args), "images": images, "seconds_1_process": round(one, 2),
            "seconds_2_processes": round(two, 2), "speedup": round(one / two, 3), "reports_equal": True}  # fmt: skip


def _throughput(fn, images: np.ndarray, repeats: int = 3) -> float:
    fn(images[:2])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(images)
        best = min(best, time.perf_counter() - t0)
    return len(images) / best


def judge_throughput() -> list[dict]:
    import torch

    from erasekit.api import load_judge
    from erasekit.judges.nudenet import NudeNetJudge

    rng = np.random.default_rng(0)
    rows = []
    testbed = load_judge("testbed")
    small = rng.integers(0, 256, (512, 32, 32, 3), dtype=np.uint8)
    rows.append({"judge": "testbed classifier", "size": 32, "device": "cpu",
                 "images_per_second": round(_throughput(testbed.predict, small), 1)})  # fmt: skip
    try:
        nude = NudeNetJudge()
        big = rng.integers(0, 256, (16, 512, 512, 3), dtype=np.uint8)
        rows.append({"judge": "nudenet 3.4.2 (onnxruntime)", "size": 512, "device": "cpu",
                     "images_per_second": round(_throughput(nude.scores, big), 2)})  # fmt: skip
    except Exception as e:  # the [judges] extra missing: say so in the JSON
        rows.append({"judge": "nudenet 3.4.2 (onnxruntime)", "size": 512, "device": "cpu", "error": str(e).splitlines()[0]})
    rows.append({"torch_threads": torch.get_num_threads()})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--contexts", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default="benchmarks/results/scale.json")
    args = ap.parse_args()
    import torch

    from erasekit import __version__
    from erasekit.core.io import write_json

    speed = shard_speedup(args.seeds, args.contexts, args.batch_size)
    print(f"sharded evaluate: {speed['seconds_1_process']:.1f} s on 1 process, {speed['seconds_2_processes']:.1f} s on 2 "
          f"(x{speed['speedup']:.2f}), reports equal")  # fmt: skip
    judges = judge_throughput()
    for j in judges[:-1]:
        print(f"{j['judge']:<30} {j.get('images_per_second', j.get('error'))}")
    write_json(args.out, {"benchmark": "scale", "shards": speed, "judges": judges[:-1], "judge_threads": judges[-1]["torch_threads"],
                          "cpu_count": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__,
                          "erasekit": __version__})  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
