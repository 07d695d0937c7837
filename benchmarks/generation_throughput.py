"""Generation throughput of a pipeline (default: the shipped testbed), in images per second.

Usage: python benchmarks/generation_throughput.py [--model testbed] [--out benchmarks/results/generation.json]

Times ``erasekit.generate`` (classifier-free guidance on, the model's recommended steps) for several
batch sizes after one warm-up batch, and writes the numbers with the machine's description as JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from erasekit import SamplingConfig, __version__, generate, load_pipeline
from erasekit.core.io import write_json
from erasekit.generation import recommended_sampling


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="testbed")
    ap.add_argument("--batch-sizes", default="1,16,64,256")
    ap.add_argument("--images", type=int, default=256, help="images per measurement (at least one batch)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default="benchmarks/results/generation.json")
    args = ap.parse_args()

    pipe = load_pipeline(args.model, device=args.device)
    rec = recommended_sampling(pipe)
    prompt = "a red striped star on a black background"
    generate(pipe, [prompt] * 4, list(range(4)), SamplingConfig(batch_size=4), progress=False)  # warm-up
    rows = []
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        n = max(bs, min(args.images, 4 * bs))
        t0 = time.perf_counter()
        generate(pipe, [prompt] * n, list(range(n)), SamplingConfig(batch_size=bs), progress=False)
        dt = time.perf_counter() - t0
        rows.append({"batch_size": bs, "images": n, "seconds": round(dt, 3), "images_per_second": round(n / dt, 2)})
        print(f"batch {bs:>4}: {n} images in {dt:6.2f}s -> {n / dt:7.2f} images/s")
    write_json(
        args.out,
        {
            "benchmark": "generation_throughput",
            "model": args.model,
            "sampling": {"steps": rec.get("steps"), "guidance_scale": rec.get("guidance_scale"), "cfg": True},
            "device": str(pipe.device),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "erasekit": __version__,
            "results": rows,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
