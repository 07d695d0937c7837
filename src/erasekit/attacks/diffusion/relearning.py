"""Relearning: fine-tune the erased model on a handful of images of the concept and watch it return.

The erased model's denoiser (every parameter, as a user fine-tuning it would) is trained with the
ordinary denoising loss on ``n_images`` images the reference (original) model draws for the trial
prompts with *other* seeds than the trials' (so no test image is trained on), AdamW, batch 4.
``ASR(steps)`` is the curve; a model that never learned the concept (the oracle) gives the floor
of how fast a concept is learned from those images at all. Budget unit: optimizer steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from erasekit.attacks.base import AttackConfig
from erasekit.core.registry import register_attack


@dataclass
class RelearningConfig(AttackConfig):
    budget: int = field(default=40, metadata={"help": "fine-tuning steps"})
    n_images: int = field(default=8, metadata={"help": "concept images to fine-tune on", "min": 1})
    batch_size: int = field(default=4, metadata={"help": "images per step", "min": 1})
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate", "gt": 0})
    seed: int = field(default=0, metadata={"help": "seed of the images' noise (offset from the trials') and batches"})


@register_attack("relearning", RelearningConfig, budget_unit="steps", kind="weights")
def relearning(arena, config: RelearningConfig, tracker, progress: bool = True) -> dict:
    """Fine-tune the erased denoiser on a few of the original model's images of the concept."""
    prompts = [arena.prompts[i % len(arena.prompts)] for i in range(config.n_images)]
    seeds = [10_000 + config.seed * 1000 + i for i in range(config.n_images)]  # never a trial's seed
    x0 = arena.sample([(arena.cond(prompts, reference=True), 1.0)], arena.initial_latents(seeds, reference=True), reference=True)
    denoiser = arena.adapter.denoiser
    clone = arena.weights_copy([denoiser])
    other = arena.variant(clone)
    module = getattr(clone, denoiser)
    params = list(module.parameters())  # the clone's own: the user's model keeps its flags
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=config.lr)
    cond = arena.cond(prompts)
    gen = torch.Generator().manual_seed(config.seed)
    losses = []
    for step in range(1, config.budget + 1):
        idx = torch.randint(0, len(prompts), (min(config.batch_size, len(prompts)),), generator=gen)
        b = other.bench.noised(x0[idx.to(x0.device)], other.bench.sample_t(len(idx), gen), gen)
        pred = other.bench.predict(b.xt, b.t, cond.select(idx.to(cond.tokens.device)))
        loss = (pred.float() - other.bench.target(b).float()).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if tracker.due(step):
            rows = tracker.pending()
            if rows:
                module.eval()
                info = {"steps": step, "lr": config.lr, "n_images": config.n_images, "seed": config.seed}
                tracker.report(
                    step, rows, other.generate_trials(rows), [{"prompt": arena.trials[r].prompt, "relearned": info} for r in rows]
                )
            if not tracker.pending():
                break
    return {"final_loss": losses[-1] if losses else None}
