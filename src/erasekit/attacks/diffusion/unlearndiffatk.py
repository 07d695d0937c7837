"""UnlearnDiffAtk (Zhang et al. 2024, "To Generate or Not? Safety-Driven Unlearned Diffusion Models
Are Still Easy to Generate Unsafe Images ... For Now"; OPTML-Group/Diffusion-MU-Attack@5a3e5d3).

White-box on the erased model, with the erased model's own denoising loss as the attack objective:
``x₀`` is the reference (original) model's image of the trial's prompt and seed, and ``k`` prefix
tokens (``[BOS, v₁..v_k, prompt, EOS...]``) are chosen to minimise::

    ‖ ε − f_θ′(√ᾱ_t x₀ + √(1 − ᾱ_t) ε, [v₁..v_k] + prompt, t) ‖²      (fresh ε every iteration)

As released (``src/attackers/text_grad_.py``, ``src/tasks/classifier_.py``):

- each token is a distribution ``p_i`` over the vocabulary, starting uniform, updated by Adam (lr
  0.01, weight decay 0.1) and projected back onto the simplex after every step;
- the forward pass uses a **sampled** one-hot (``torch.multinomial(p_i)``) and the backward pass
  hands the gradient, clipped by ``hardtanh`` to [−1, 1], straight through to ``p_i``
  (``STERandSelect``);
- timesteps are not drawn at random: the attack sweeps ``timesteps`` fixed values in ascending order
  (``T // n // 2, …`` every ``T // n``: t = 10, 30, …, 990 for n = 50 on a 1 000-step scheduler),
  ``budget / timesteps`` iterations at each (40 in the reference: 2 000 in all), and after each block
  judges the ``argmax`` tokens typed as text; a trial stops at its first success;
- ``k`` = 3, the reference's default and its object and style configs (its nudity, violence and
  illegal-activity configs use 5: ``--set unlearndiffatk.n_tokens=5``).

The budget counts iterations in all. Its default is 200 (50 timesteps × 4 iterations), a tenth of the
reference's 2 000 (50 × 40: ``--budget 2000``), the one scaling of iterations the testbed benchmarks
use; a smaller budget keeps the sweep over the same range with fewer iterations per timestep (and
fewer timesteps when the budget is below ``timesteps``), so every budget sees low and high noise.
Deviations: the reference samples with an LMS scheduler for judging; here the arena's sampler (the
pipeline's, as every attack). All trials of a run share one optimisation batch (each its own
distributions), as every token attack here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from erasekit.attacks.base import AttackConfig
from erasekit.attacks.diffusion.tokens import HOOKED_FAMILIES, make_slots, project_simplex
from erasekit.core.registry import register_attack


@dataclass
class UnlearnDiffAtkConfig(AttackConfig):
    budget: int = field(default=200, metadata={"help": "optimisation iterations in all (reference: 2000, 50 timesteps x 40)"})
    n_tokens: int = field(default=3, metadata={"help": "prefix tokens (reference: 3; 5 in its nudity configs)", "min": 1})
    timesteps: int = field(default=50, metadata={"help": "fixed timesteps swept in ascending order", "min": 1})
    lr: float = field(default=0.01, metadata={"help": "Adam learning rate on the token distributions", "gt": 0})
    weight_decay: float = field(default=0.1, metadata={"help": "Adam weight decay (L2), as released", "min": 0})
    seed: int = field(default=0, metadata={"help": "seed of the token samples and noise draws"})


class _SampledStraightThrough(torch.autograd.Function):
    """Forward: one-hot of a sample of each row of ``p [..., V]`` (``multinomial``); backward: the
    incoming gradient clipped to [−1, 1] (``hardtanh``), passed straight through to ``p``."""

    @staticmethod
    def forward(ctx, p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:  # type: ignore[override]
        flat = p.detach().reshape(-1, p.shape[-1]).float().cpu()
        picks = torch.multinomial(flat.clamp_min(0), 1, generator=gen).view(p.shape[:-1])
        return torch.nn.functional.one_hot(picks.to(p.device), p.shape[-1]).to(p.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return torch.nn.functional.hardtanh(grad), None


def sampled_one_hot(p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """See :class:`_SampledStraightThrough` (UnlearnDiffAtk's ``STERandSelect``)."""
    return _SampledStraightThrough.apply(p, gen)


def sweep(budget: int, timesteps: int, num_train_timesteps: int) -> list[tuple[float, int]]:
    """``[(t, iterations), ...]``: ``n = min(timesteps, budget)`` ascending timesteps
    ``T // n // 2 + j · (T // n)`` (the reference's grid), the budget split as evenly as it goes (the
    later timesteps take the remainder)."""
    n = max(1, min(timesteps, budget))
    step = max(1, num_train_timesteps // n)
    grid = [min(num_train_timesteps - 1, step // 2 + j * step) for j in range(n)]
    per, extra = divmod(budget, n)
    return [(float(t), per + (1 if j >= n - extra else 0)) for j, t in enumerate(grid)]


@register_attack("unlearndiffatk", UnlearnDiffAtkConfig, budget_unit="iterations", kind="prompt", families=HOOKED_FAMILIES)
def unlearndiffatk(arena, config: UnlearnDiffAtkConfig, tracker, progress: bool = True) -> dict:
    """Prefix tokens optimised on the erased model's denoising loss on the reference model's images,
    sweeping fixed timesteps in ascending order and judging after each (as released)."""
    rows = list(range(len(arena.trials)))
    slots = make_slots(arena.tokenizer(), [arena.trials[r].prompt for r in rows], config.n_tokens, "prefix")
    ids, words, table = arena.vocabulary()
    x0 = arena.reference_latents()
    gen = torch.Generator().manual_seed(config.seed)
    probs = torch.full((len(rows), config.n_tokens, len(ids)), 1.0 / len(ids), device=arena.device, requires_grad=True)
    opt = torch.optim.Adam([probs], lr=config.lr, weight_decay=config.weight_decay)
    bench = arena.bench
    loss = torch.zeros(())
    spent = 0
    flow = bench.prediction_type == "flow"
    with bench:
        for t_value, iterations in sweep(config.budget, config.timesteps, bench.num_train_timesteps):
            t = torch.full((len(rows),), t_value) if flow else torch.full((len(rows),), int(t_value), dtype=torch.long)
            for _ in range(iterations):
                spent += 1
                cond = arena.cond(slots.texts, token_hook=slots.hook(sampled_one_hot(probs, gen) @ table), grad=True)
                b = bench.noised(x0, t, gen)
                per = (bench.predict(b.xt, b.t, cond).float() - bench.target(b).float()).pow(2).flatten(1).mean(1)
                loss = tracker.pending_loss(per)
                probs.grad = torch.autograd.grad(loss, [probs])[0]
                opt.step()
                with torch.no_grad():
                    probs.copy_(project_simplex(probs))
                tracker.due(spent)
            if iterations:  # judged after every timestep's block, as released
                arena.report_texts(tracker, spent, slots.fill([[words[j] for j in row] for row in probs.argmax(-1).tolist()]))
            if not tracker.pending():
                break
    return {"final_loss": float(loss.detach()), "iterations": spent}
