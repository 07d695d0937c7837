"""The hyperparameter scans quoted in docs/testbed.md and docs/unlearning.md, on testbed-llm / forget01.

1. learning rate (the model's recommended ``unlearning_defaults``): GA, NPO, GradDiff at 1e-4 … 2e-3
   under the loop's default schedule (open-unlearning's: one epoch of warm-up, linear decay to 0), and
   GA at a constant lr for comparison;
2. RMU: WMDP's form (MLP output projections) at several steering coefficients and learning rates, and
   open-unlearning's TOFU form (every parameter, c = 2, alpha = 1) and adaptive RMU (c = 5 x the
   forget activations' mean norm, alpha = 1200); plus the residual-stream norms at
   RMU's block that explain why c = 20 cannot work on this model;
3. ELM: its defaults, a weaker and a stronger η, every block instead of [n/8, n/4), without its
   retain or consistency term, and as the reference's LoRA (rank 256, alpha 16); plus the signal it reads (how much likelier the forget answers are
   after the world's expert prefix than after its novice prefix, in nats per answer).

Each row: the share of forget01's training questions no longer answered exactly, and the retain
accuracy on 10 retain authors (seed 0). Usage: python benchmarks/llm_scans.py [--out benchmarks/results/llm_scans.json]
[--only lr,rmu,elm]
"""

from __future__ import annotations

import argparse
import random

import torch

import erasekit
from erasekit.api.unlearning import fact_world_of
from erasekit.core.io import write_json
from erasekit.evaluation.lm.evaluate import score_facts
from erasekit.methods.lm.rmu import hidden_at, rmu_layer
from erasekit.models.lm_batches import encode_pairs

LR_SCAN = [(m, {"lr": lr}) for m in ("ga", "npo", "graddiff") for lr in (1e-4, 3e-4, 6e-4, 1e-3, 2e-3)] + [
    ("ga", {"lr": lr, "lr_schedule": "constant"}) for lr in (3e-4, 6e-4)
]
RMU_SCAN = [("rmu", {"steering_coeff": c, "lr": lr}) for c in (100, 300, 600, 1200) for lr in (3e-4, 1e-3)] + [
    ("rmu", {"steering_coeff": 600, "epochs": 50, "lr": 3e-3}),
    ("rmu", {"params": "all", "steering_coeff": 2, "alpha": 1}),
    ("rmu", {"params": "all", "steering_coeff": 2, "alpha": 1, "lr": 1e-3}),
    ("rmu", {"adaptive_scale": 5, "alpha": 1200}),
    ("rmu", {"adaptive_scale": 5, "alpha": 1200, "lr": 1e-3}),
]
ELM_SCAN = [("elm", {}), ("elm", {"eta": 10}), ("elm", {"eta": 100}), ("elm", {"layers": "0,4"}),
            ("elm", {"retain_scale": 0}), ("elm", {"consistency_scale": 0}), ("elm", {"lora_rank": 256})]  # fmt: skip


def elm_signal(lm, world) -> dict:
    """Mean ``log p(answer | expert prefix, question) − log p(answer | novice prefix, question)`` over
    forget01's training pairs (nats per answer), with the world's first expert and novice prefixes."""
    from erasekit.evaluation.lm.metrics import token_logprobs
    from erasekit.testbeds.facts.factworld import EXPERT_PREFIXES, NOVICE_PREFIXES

    pairs = [(a, q) for a in world.forget("forget01") for q in world.qa(a)]
    answers = [q.answer for _, q in pairs]
    out = {}
    for name, prefix in (("plain", ""), ("expert", EXPERT_PREFIXES[0]), ("novice", NOVICE_PREFIXES[0])):
        prompts = [f"{prefix.format(name=a.name)} {q.question}".strip() for a, q in pairs]
        out[name] = float(torch.stack([lp.sum() for lp in token_logprobs(lm.model, lm.tokenizer, prompts, answers)]).mean())
    out["expert_minus_novice"] = out["expert"] - out["novice"]
    return {k: round(v, 3) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/llm_scans.json")
    ap.add_argument("--only", default="lr,rmu,elm", help="which scans (comma-separated: lr, rmu, elm)")
    args = ap.parse_args()
    scans = {"lr": LR_SCAN, "rmu": RMU_SCAN, "elm": ELM_SCAN}
    chosen = args.only.split(",")
    if unknown := set(chosen) - set(scans):
        raise SystemExit(f"--only: unknown scan {', '.join(sorted(unknown))} (choose from lr, rmu, elm)")
    lm = erasekit.load_lm("testbed-llm", device="cpu")
    world = fact_world_of(lm)
    retain = random.Random(0).sample(world.retain("forget01"), 10)
    rows = []
    for method, params in [row for name in chosen for row in scans[name]]:
        erasure = erasekit.unlearn(lm, method, "forget01", progress=False, **params)
        with erasure.applied(lm):
            forgotten = 1 - float(score_facts(lm, world, world.forget("forget01"))["train_hits"].mean())
            kept = float(score_facts(lm, world, retain)["train_hits"].mean())
        row = {"method": method, "params": params, "forgotten": round(forgotten, 4), "retain_accuracy": round(kept, 4),
               "seconds": erasure.timings.get("seconds")}  # fmt: skip
        if "steering_coeff" in erasure.info:  # RMU's c as used (adaptive RMU measures it)
            row["steering_coeff"] = round(erasure.info["steering_coeff"], 1)
        rows.append(row)
        print(f"{method:9} {params}  forgotten {forgotten:.2f}  retain accuracy {kept:.2f}", flush=True)
    request = erasekit.forget_request(lm, "forget01")
    layer = rmu_layer(lm.model, -1)
    batch = encode_pairs(lm.tokenizer, request.forget, lm.device)
    with torch.no_grad():
        norms = hidden_at(lm.model, batch, layer).norm(dim=-1)[batch["attention_mask"].bool()]
    stats = {"block": layer, "min": float(norms.min()), "median": float(norms.median()), "max": float(norms.max())}
    print(f"residual norms after block {layer}: {stats}")
    signal = elm_signal(lm, world)
    print(f"ELM signal (log p of the forget answers, nats): {signal}")
    write_json(args.out, {"benchmark": "llm_scans", "model": "testbed-llm", "split": "forget01", "rows": rows,
                          "rmu_residual_norms": stats, "elm_signal": signal})  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
