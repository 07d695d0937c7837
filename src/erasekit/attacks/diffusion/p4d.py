"""P4D (Chin et al. 2024, "Prompting4Debugging: Red-Teaming Text-to-Image Diffusion Models by Finding
Problematic Prompts").

Prompt tokens are learned so that the erased model's prediction for them matches the reference
(original) model's prediction for the plain prompt, at points ``x_t`` noised from the reference
model's image::

    min_P*  E_{t, ε} ‖ f_θ′(x_t, P*, t) − f_θ(x_t, P, t) ‖²

Variables are continuous embeddings projected to the nearest vocabulary token (cosine) on every
forward pass, with the gradient applied to the continuous copy (PEZ, Wen et al. 2023); AdamW,
lr 0.1, weight decay 0.1. **P4D-N**: 16 free tokens replace the prompt; **P4D-K**: one token
inserted after every 3 words of the prompt. The paper runs 3 000 iterations on SD 1.4; the default
budget here is 60 (pass ``--budget 3000`` for the paper's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from erasekit.attacks.base import AttackConfig
from erasekit.attacks.diffusion.tokens import HOOKED_FAMILIES, make_slots, project_to_tokens
from erasekit.core.registry import register_attack


@dataclass
class P4DConfig(AttackConfig):
    budget: int = field(default=60, metadata={"help": "optimisation iterations"})
    n_tokens: int = field(default=16, metadata={"help": "free tokens (P4D-N; P4D-K inserts one after every 3 words)", "min": 1})
    lr: float = field(default=0.1, metadata={"help": "AdamW learning rate", "gt": 0})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay"})
    seed: int = field(default=0, metadata={"help": "seed of the initial tokens and the noise draws"})


def run_p4d(arena, config: P4DConfig, tracker, layout: str) -> dict:
    rows = list(range(len(arena.trials)))
    prompts = [arena.trials[r].prompt for r in rows]
    slots = make_slots(arena.tokenizer(), prompts, config.n_tokens, layout)
    ids, words, table = arena.vocabulary()
    gen = torch.Generator().manual_seed(config.seed)
    start = torch.randint(0, len(ids), (len(rows), slots.k), generator=gen).to(arena.device)
    z = table[start].clone().requires_grad_(True)
    opt = torch.optim.AdamW([z], lr=config.lr, weight_decay=config.weight_decay)
    ref_cond = arena.cond(prompts, reference=True)
    bench = arena.bench
    loss = torch.zeros(())
    with bench:
        for it in range(1, config.budget + 1):
            hard = table[project_to_tokens(z.detach(), table)]
            st = hard + z - z.detach()
            cond = arena.cond(slots.texts, token_hook=slots.hook(st), grad=True)
            b, target = arena.reference_point(gen, ref_cond)
            per = (bench.predict(b.xt, b.t, cond).float() - target).pow(2).flatten(1).mean(1)
            loss = tracker.pending_loss(per)
            z.grad = torch.autograd.grad(loss, [z])[0]
            opt.step()
            if tracker.due(it):
                choice = project_to_tokens(z.detach(), table).tolist()
                arena.report_texts(tracker, it, slots.fill([[words[j] for j in row] for row in choice]))
            if not tracker.pending():
                break
    return {"final_loss": float(loss.detach())}


@register_attack("p4d-n", P4DConfig, budget_unit="iterations", kind="prompt", families=HOOKED_FAMILIES)
def p4d_n(arena, config: P4DConfig, tracker, progress: bool = True) -> dict:
    """P4D-N: 16 free tokens matching the erased model's prediction to the original's for the prompt."""
    return run_p4d(arena, config, tracker, "free")


@register_attack("p4d-k", P4DConfig, budget_unit="iterations", kind="prompt", families=HOOKED_FAMILIES)
def p4d_k(arena, config: P4DConfig, tracker, progress: bool = True) -> dict:
    """P4D-K: a token inserted after every 3 words of the prompt, same objective as P4D-N."""
    return run_p4d(arena, config, tracker, "every3")
