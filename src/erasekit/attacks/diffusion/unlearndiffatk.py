"""UnlearnDiffAtk (Zhang et al. 2024, "To Generate or Not? Safety-Driven Unlearned Diffusion Models
Are Still Easy to Generate Unsafe Images ... For Now"; OPTML-Group/Diffusion-MU-Attack).

White-box on the erased model, with the erased model's own denoising loss as the attack objective:
``x₀`` is the reference (original) model's image of the trial's prompt and seed, and ``k = 5``
prefix tokens are chosen to minimise::

    E_{t, ε} ‖ target(x₀, ε, t) − f_θ′(x_t, [v₁..v_k] + prompt, t) ‖²

Tokens are relaxed to distributions ``p_i`` over the vocabulary, updated by Adam (lr 0.01) and
projected back onto the simplex after every step; the forward pass uses the straight-through
one-hot of ``argmax p_i`` (so the loss is always that of real tokens). One fresh ``(t, ε)`` per
iteration; the prompt is judged at every checkpoint and a trial stops at its first success.
Deviation: the reference runs 40 iterations per timestep for up to 1 000 steps on SD 1.4; the
budget here counts iterations in all (default 40) so attacks compare at equal cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from erasekit.attacks.base import AttackConfig
from erasekit.attacks.diffusion.tokens import allowed_tokens, make_slots, project_simplex
from erasekit.core.registry import register_attack


@dataclass
class UnlearnDiffAtkConfig(AttackConfig):
    budget: int = field(default=40, metadata={"help": "optimisation iterations"})
    n_tokens: int = field(default=5, metadata={"help": "prefix tokens", "min": 1})
    lr: float = field(default=0.01, metadata={"help": "Adam learning rate on the token distributions", "gt": 0})
    seed: int = field(default=0, metadata={"help": "seed of the noise draws"})


@register_attack("unlearndiffatk", UnlearnDiffAtkConfig, budget_unit="iterations", kind="prompt")
def unlearndiffatk(arena, config: UnlearnDiffAtkConfig, tracker, progress: bool = True) -> dict:
    """Prefix tokens optimised on the erased model's denoising loss on the reference model's images."""
    rows = list(range(len(arena.trials)))
    slots = make_slots(arena.tokenizer(), [arena.trials[r].prompt for r in rows], config.n_tokens, "prefix")
    ids, words = allowed_tokens(arena.tokenizer(), arena.profile.vocabulary, set())
    table = arena.text_encoder().get_input_embeddings().weight.detach()[ids.to(arena.device)].float()
    x0 = arena.reference_latents()
    gen = torch.Generator().manual_seed(config.seed)
    probs = torch.full((len(rows), config.n_tokens, len(ids)), 1.0 / len(ids), device=arena.device)
    probs = project_simplex(probs + 1e-3 * torch.rand(probs.shape, generator=gen).to(probs))
    probs.requires_grad_(True)
    opt = torch.optim.Adam([probs], lr=config.lr)
    bench = arena.bench
    loss = torch.zeros(())
    with bench:
        for it in range(1, config.budget + 1):
            hard = torch.nn.functional.one_hot(probs.argmax(-1), len(ids)).to(probs)
            st = hard + probs - probs.detach()  # straight-through: real tokens forward, relaxed backward
            cond = arena.cond(slots.texts, token_hook=slots.hook(st @ table), grad=True)
            b = bench.noised(x0, bench.sample_t(len(rows), gen), gen)
            per = (bench.predict(b.xt, b.t, cond).float() - bench.target(b).float()).pow(2).flatten(1).mean(1)
            loss = tracker.pending_loss(per)
            grad = torch.autograd.grad(loss, [probs])[0]
            probs.grad = grad
            opt.step()
            with torch.no_grad():
                probs.copy_(project_simplex(probs))
            if tracker.due(it):
                arena.report_texts(tracker, it, slots.fill([[words[j] for j in row] for row in probs.argmax(-1).tolist()]))
            if not tracker.pending():
                break
    return {"final_loss": float(loss.detach())}
