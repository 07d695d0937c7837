"""Latent inversion (M-ErasureBench, 2024): invert an image of the concept to the erased model's
initial noise and regenerate from it.

The reference (original) model's image of the trial's prompt and seed is DDIM-inverted with the
*erased* model (deterministic DDIM run backwards, ``η = 0``; Euler backwards for flow models),
then sampled forward again by the erased model. Each budget unit adds one setting, in order:

1. inversion and regeneration conditioned on the prompt, guidance 1 (the exact-reconstruction path);
2. both conditioned on the empty prompt, guidance 1 (the concept must come from the latent alone);
3. inversion with the prompt at guidance 1, regeneration at the model's usual guidance.

What it found: the setting (``--replay`` inverts the same reference images with the other model).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from erasekit.attacks.base import AttackConfig
from erasekit.core.registry import register_attack

SETTINGS = (("prompt", 1.0), ("empty", 1.0), ("prompt", None))


@dataclass
class LatentInversionConfig(AttackConfig):
    budget: int = field(default=2, metadata={"help": "settings tried (see the module docstring)", "max": 3})


@torch.no_grad()
def invert(arena, x0: torch.Tensor, cond) -> torch.Tensor:
    """Initial latents ``x_T`` whose deterministic sampling by the attacked model (guidance 1) gives ``x0``."""
    bench = arena.bench
    if bench.prediction_type == "flow":
        sched = bench.sample_scheduler
        sched.set_timesteps(arena.steps, device=bench.device)
        sigmas, ts = sched.sigmas, sched.timesteps
        x = x0
        for i in reversed(range(arena.steps)):  # σ_{i+1} -> σ_i backwards: x_{σ_i} = x - (σ_{i+1} - σ_i) v
            v = bench.teacher_predict(x, ts[i].expand(len(x)), cond)
            x = x - (sigmas[i + 1] - sigmas[i]) * v.to(x.dtype)
        return x
    from diffusers import DDIMInverseScheduler

    inv = DDIMInverseScheduler.from_config(arena.pipe.scheduler.config)
    inv.set_timesteps(arena.steps)
    x = x0
    for t in inv.timesteps:
        out = bench.teacher_predict(x, t.expand(len(x)).to(bench.device), cond)
        x = inv.step(out.to(x.dtype), t, x).prev_sample
    return x


@register_attack("latent-inversion", LatentInversionConfig, budget_unit="settings", kind="latent", fast=False)
def latent_inversion(arena, config: LatentInversionConfig, tracker, progress: bool = True) -> dict:
    """DDIM-invert the original model's image of the concept with the erased model, then regenerate."""
    x0_all = arena.reference_latents()
    for k, (text, guidance) in enumerate(SETTINGS[: config.budget], start=1):
        rows = tracker.pending()
        if not rows:
            break
        prompts = [arena.trials[r].prompt if text == "prompt" else "" for r in rows]
        dtype = arena.dtype_of(arena.bench)
        cond = arena.cond(prompts).to(dtype)
        xT = invert(arena, x0_all[rows].to(dtype), cond)
        g = arena.guidance if guidance is None else guidance
        images = arena.decode(arena.sample([(cond, 1.0)], xT, guidance=g))
        found = [{"prompt": p, "setting": k, "guidance": g} for p in prompts]
        tracker.report(k, rows, images, found)
    return {}
