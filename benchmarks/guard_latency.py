"""Latency of sampling with each guard against the plain pipeline, as a ratio measured in the same run.

Usage: python benchmarks/guard_latency.py [--model testbed] [--images 64] [--batch-size 16] [--repeats 3]
                                          [--out benchmarks/results/guard_latency.json]

Each configuration (plain, then every guard, made for ``--concept``) draws the same ``--images`` images
with ``erasekit.generate`` (the model's recommended steps and guidance); the configurations take turns
``--repeats`` times and each keeps its fastest time (the least disturbed by other work on the machine).
The ratio is a guard's time over the plain pipeline's: what a guard costs per image, independent of the
machine's speed. Guards sample through erasekit's own loop (docs/guards.md), so the plain pipeline is
also timed through that loop (``plain (erasekit loop)``, an idle guard) to separate the loop's cost from the guard's.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

import erasekit
from erasekit import SamplingConfig, __version__, generate, load_pipeline
from erasekit.core.guards import Guard
from erasekit.core.io import write_json
from erasekit.generation import recommended_sampling

#: Every guard, with the testbed settings of docs/results.md (sld's warm-up and safree's up_t scaled to
#: 20 steps; the SAEs trained briefly: their sampling cost does not depend on how well they are trained).
GUARDS = {"negative-prompt": {}, "sld": {"warmup_steps": 4}, "sld (max)": {"config": "max"}, "leace-prompt": {},
          "safree": {"up_t": 4}, "saeuron": {"train_steps": 100}, "concept-steerers": {"train_steps": 100},
          "safety-filter": {}}  # fmt: skip


class _Idle(Guard):
    """A guard that changes nothing: times erasekit's sampling loop itself."""

    kind = "idle-benchmark"

    def config(self) -> dict:
        return {}

    @classmethod
    def restore(cls, config, tensors):
        return cls()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="testbed")
    ap.add_argument("--concept", default="star")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/guard_latency.json")
    args = ap.parse_args()

    pipe = load_pipeline(args.model)
    prompt = "a red striped star on a black background"
    prompts, seeds = [prompt] * args.images, list(range(args.images))
    sampling = SamplingConfig(batch_size=args.batch_size)
    made = {name: erasekit.erase(pipe, name.split(" ")[0], args.concept, progress=False, **p) for name, p in GUARDS.items()}
    generate(pipe, prompts[:4], seeds[:4], sampling, progress=False)  # warm-up

    def timed(name: str) -> float:
        handles = []
        if name == "plain (erasekit loop)":
            handles = _Idle().install(pipe)
        elif name != "plain":
            made[name].apply(pipe)
        t0 = time.perf_counter()
        generate(pipe, prompts, seeds, sampling, progress=False)
        dt = time.perf_counter() - t0
        for h in handles:
            h.remove()
        if name in made:
            made[name].remove(pipe)
        return dt

    names = ["plain", "plain (erasekit loop)", *GUARDS]
    best = dict.fromkeys(names, float("inf"))
    for _ in range(args.repeats):
        for n in names:  # the configurations take turns, so a slow moment hits every one alike
            best[n] = min(best[n], timed(n))
    rows = [{"configuration": n, "seconds": round(best[n], 3), "seconds_per_image": round(best[n] / args.images, 4),
             "ratio_to_plain": round(best[n] / best["plain"], 3)} for n in names]  # fmt: skip
    for r in rows:
        print(f"{r['configuration']:<24} {r['seconds']:7.2f}s  x{r['ratio_to_plain']:.2f}")
    rec = recommended_sampling(pipe)
    write_json(args.out, {
        "benchmark": "guard_latency", "model": args.model, "concept": args.concept, "images": args.images,
        "batch_size": args.batch_size, "repeats": args.repeats,
        "sampling": {"steps": rec.get("steps"), "guidance_scale": rec.get("guidance_scale")},
        "device": str(pipe.device), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "torch": torch.__version__, "erasekit": __version__, "results": rows,
    })  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
