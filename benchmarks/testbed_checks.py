"""The single-run measurements that docs/erasure.md and benchmarks/testbed_results.sh quote beside
the results table: each is one erasure on the shipped testbed, evaluated like ``erasekit bench``.

Usage: python benchmarks/testbed_checks.py [--only NAME ...] [--out benchmarks/results/testbed_checks.json]

Each check names the method, the concept, the settings that differ from the table's
(benchmarks/testbed_results.sh) and the question it answers. SPM's check also evaluates the same
adapters with the reference-like fixed multiplier 1 instead of the facilitated transport, and records
the transport's scale for a few prompts.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from erasekit import __version__
from erasekit.api import erase, load_judge
from erasekit.core.io import read_json, write_json
from erasekit.evaluation import evaluate_on_testbed
from erasekit.models import load_pipeline

# The table's testbed settings (benchmarks/testbed_results.sh) that the checks start from.
# scale_lr, weight_decay and grad_clip off: the checks were recorded with plain Adam at these learning rates
ABLATING = {
    "sample_steps": 20,
    "iterations": 200,
    "lr": 1e-4,
    "n_images": 8,
    "scale_lr": False,
    "weight_decay": 0.0,
    "grad_clip": 0.0,
}
# η 1 and a 1-token / 10-step attack: the defaults the checks were recorded with (now η 2, 16 tokens, 50 steps)
RECELER = {
    "ddim_steps": 20,
    "iterations": 100,
    "rank": 32,
    "adv_warmup": 20,
    "adv_every": 5,
    "lr": 3e-3,
    "reg_weight": 0.01,
    "negative_guidance": 1.0,
    "adv_tokens": 1,
    "adv_steps": 10,
}
SPM = {"ddim_steps": 20, "iterations": 200, "lr": 1e-2, "anchor_weight": 10, "negative_guidance": 1.0, "anchors": "vocabulary"}

MACE = {"iterations": 50, "lr": 1e-3}  # the table's MACE settings but its refinement ridge (lamb 300)

# name: (method, concept, params, seeds per prompt, question)
CHECKS: dict[str, tuple[str, str, dict, int, str]] = {
    "star-mace-lamb1e3": ("mace", "star", {**MACE, "lamb": 1e3}, 2, "the reference's ridge without caches, on a shape"),
    "zorbo-mace-lamb0.5": ("mace", "zorbo", {**MACE, "lamb": 0.5}, 2, "the earlier ridge: what it costs the other characters"),
    "watermark-ablating-lr3e-4": (
        "ablating",
        "watermark",
        {**ABLATING, "lr": 3e-4},
        8,
        "does a higher lr remove the mark fully, carrier kept?",
    ),
    "watermark-ablating-lr2e-4": (
        "ablating",
        "watermark",
        {**ABLATING, "lr": 2e-4},
        8,
        "the watermark between the table's lr and 3e-4",
    ),
    "star-ablating-lr2e-4": ("ablating", "star", {**ABLATING, "lr": 2e-4}, 2, "what a higher lr costs on a shape"),
    "star-ablating-100steps": (
        "ablating",
        "star",
        {**ABLATING, "iterations": 100},
        2,
        "the earlier 100-step setting, with anchor filtering",
    ),
    "star-ablating-unfiltered": (
        "ablating",
        "star",
        {**ABLATING, "filter_anchors": False},
        2,
        "200 steps without anchor filtering",
    ),
    "star-ant-before1": (
        "ant",
        "star",
        {"ddim_steps": 20, "before_step": 1, "iterations": 100},
        2,
        "ANT with one early step instead of 3",
    ),
    "star-ant-mask-top": (
        "ant",
        "star",
        {"ddim_steps": 20, "before_step": 3, "iterations": 100, "mask_side": "top"},
        2,
        "ANT's mask keeping the most salient half (the paper's words) instead of the released lowest half",
    ),
    "striped-uce-token-end": ("uce", "striped", {"token": "end"}, 2, "UCE editing the end tokens too (2023 variant)"),
    "zorbo-receler-reg0.1": ("receler", "zorbo", {**RECELER, "reg_weight": 0.1}, 2, "Receler's reference λ with exact masks"),
    "star-spm-multiplier": ("spm", "star", SPM, 2, "SPM with its transport vs the fixed multiplier 1"),
}

TRANSPORT_PROMPTS = ("star", "a red filled star on a black background", "", "a blue dotted circle on a gray background")


def summary(ev: dict) -> dict:
    t = ev["targets"][0]
    return {"ua": ev["ua"], "ira": ev["ira"], "ira_neighbours": t["ira_neighbours"]["rate"], "cra": ev["cra"],
            "base_ua": ev["base"]["ua"], "n_target_images": t["ua"]["n"]}  # fmt: skip


def spm_transport(pipe, attachment) -> dict[str, float]:
    """The facilitated-transport scale of SPM's adapters for a few prompts."""
    from erasekit.models.diffusion import get_adapter

    with torch.no_grad():
        tokens = get_adapter(pipe).conditioning(pipe, list(TRANSPORT_PROMPTS)).tokens
        return {p: round(float(s), 3) for p, s in zip(TRANSPORT_PROMPTS, attachment.transport(tokens))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=sorted(CHECKS), help="run these checks (default: all)")
    ap.add_argument("--contexts", type=int, default=6)
    ap.add_argument("--out", default="benchmarks/results/testbed_checks.json")
    args = ap.parse_args()

    pipe, judge = load_pipeline("testbed"), load_judge("testbed")
    results = read_json(args.out)["checks"] if args.only and os.path.exists(args.out) else {}
    cache: dict = {}
    for name in args.only or CHECKS:
        method, concept, params, seeds, question = CHECKS[name]
        t0 = time.perf_counter()
        erasure = erase(pipe, method, {"targets": [concept]}, model="testbed", progress=False, **params)
        ev = evaluate_on_testbed(
            pipe, judge, [concept], erasure=erasure, seeds=seeds, n_contexts=args.contexts, progress=False, base_cache=cache
        )
        entry = {"method": method, "concept": concept, "params": erasure.params, "question": question, "seeds": seeds,
                 "contexts": args.contexts, **summary(ev), "erase_seconds": erasure.timings["seconds"]}  # fmt: skip
        if method == "spm":
            entry["transport_scale"] = spm_transport(pipe, erasure.attachment)
            erasure.attachment.fixed_scale = 1.0
            fixed = evaluate_on_testbed(
                pipe, judge, [concept], erasure=erasure, seeds=seeds, n_contexts=args.contexts, progress=False, base_cache=cache
            )
            erasure.attachment.fixed_scale = None
            entry["fixed_multiplier_1"] = summary(fixed)
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        results[name] = entry
        print(
            f"{name:<28} UA {entry['ua']:.2f}  IRA {entry['ira']:.2f}  nb {entry['ira_neighbours'] or 0:.2f}  CRA {entry['cra']:.2f}",
            flush=True,
        )
        write_json(args.out, {"checks": results, "erasekit_version": __version__,
                              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__}})  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
