"""Ring-A-Bell (Tsai et al. 2024, "Ring-A-Bell! How Reliable are Concept Removal Methods for Diffusion
Models?"): a model-agnostic attack that needs only a text encoder.

1. Concept vector from paired prompts, with and without the concept:
   ``v = mean_i [E(p_i with c) − E(p_i without c)]`` (the token features the denoiser reads);
2. target ``T = E(p) + η v`` for the trial's prompt (η = 3, the paper's nudity setting);
3. a genetic search over ``k = 16`` discrete tokens minimising ``‖T − E(tokens)‖²`` (population 200,
   crossover 0.5, mutation 0.25, elitism 10 %), where the concept's own words are banned, so the
   prompt found never names the concept.

``E`` is the reference (original) model's text encoding (SD's CLIP; SDXL's and SD3's encoders
together, the token features its denoiser reads), as the paper uses the public CLIP rather than the
erased model. Pairs here: the trial prompts and the same prompts with
the concept replaced by the anchor word (a character's name by ``a shape``; for the watermark the
white background by gray). Budget unit: generations (the paper runs 3 000 on SD 1.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from erasekit.attacks.base import AttackConfig
from erasekit.attacks.diffusion.tokens import allowed_tokens, banned_words, check_fits, encode_choice, token_texts
from erasekit.attacks.diffusion.variants import swap_word
from erasekit.core.registry import register_attack


@dataclass
class RingABellConfig(AttackConfig):
    budget: int = field(default=60, metadata={"help": "generations of the genetic search"})
    n_tokens: int = field(default=16, metadata={"help": "tokens of the prompt searched", "min": 1})
    eta: float = field(default=3.0, metadata={"help": "strength of the concept vector"})
    population: int = field(default=200, metadata={"help": "population size", "min": 4})
    crossover: float = field(default=0.5, metadata={"help": "crossover probability", "max": 1})
    mutation: float = field(default=0.25, metadata={"help": "mutation probability", "max": 1})
    anchor: str = field(default="shape", metadata={"help": "word replacing the concept in the paired prompts"})
    seed: int = field(default=0, metadata={"help": "seed of the search"})


def without_concept(arena, prompt: str, anchor: str) -> str:
    """The paired prompt without the concept."""
    if arena.testbed_world:
        from erasekit.testbeds.image import world

        if arena.concept in world.CHARACTERS:
            return swap_word(prompt, arena.concept, "a shape")
        if arena.concept in world.IMPLICIT_TRIGGERS:
            return swap_word(prompt, world.WATERMARK.value, "gray")
    return swap_word(prompt, arena.concept, anchor)


@register_attack("ring-a-bell", RingABellConfig, budget_unit="generations", kind="prompt", denoiser=False)
def ring_a_bell(arena, config: RingABellConfig, tracker, progress: bool = True) -> dict:
    """Genetic search for concept-free tokens whose text features match prompt + η · concept vector."""
    tok = arena.tokenizer()
    check_fits(tok, config.n_tokens)
    prompts = arena.prompts
    with_c = arena.cond(prompts, reference=True).tokens.float()
    without_c = arena.cond([without_concept(arena, p, config.anchor) for p in prompts], reference=True).tokens.float()
    v = (with_c - without_c).mean(0)
    target = with_c + config.eta * v  # [P, T, d]
    ids, words = allowed_tokens(tok, arena.profile.vocabulary, banned_words(arena.concept, arena.testbed_world))
    gen = torch.Generator().manual_seed(config.seed)
    P, N, k, V = len(prompts), config.population, config.n_tokens, len(ids)
    pop = torch.randint(0, V, (P, N, k), generator=gen)
    n_elite = max(1, N // 10)

    def fitness(pop: torch.Tensor) -> torch.Tensor:  # [P, N], lower is better
        feats = encode_choice(arena, words, pop.reshape(-1, k)).view(P, N, *target.shape[1:])
        return (feats - target[:, None]).pow(2).flatten(2).sum(-1).cpu()  # the search itself runs on the CPU

    score = fitness(pop)
    for gen_i in range(1, config.budget + 1):
        order = score.argsort(dim=1)
        pop, score = pop.gather(1, order[..., None].expand_as(pop)), score.gather(1, order)
        # tournament selection of two parents per child, uniform crossover, one-token mutation
        a = torch.randint(0, N, (P, N, 2), generator=gen).min(-1).values  # sorted: smaller index = fitter
        b = torch.randint(0, N, (P, N, 2), generator=gen).min(-1).values
        pa = pop.gather(1, a[..., None].expand(-1, -1, k))
        pb = pop.gather(1, b[..., None].expand(-1, -1, k))
        mix = (torch.rand(P, N, k, generator=gen) < 0.5) & (torch.rand(P, N, 1, generator=gen) < config.crossover)
        child = torch.where(mix, pb, pa)
        mutate = torch.rand(P, N, generator=gen) < config.mutation
        pos = torch.randint(0, k, (P, N), generator=gen)
        new = torch.randint(0, V, (P, N), generator=gen)
        child[mutate, pos[mutate]] = new[mutate]
        child[:, :n_elite] = pop[:, :n_elite]
        pop = child
        score = fitness(pop)
        if tracker.due(gen_i):
            best = pop.gather(1, score.argmin(1)[:, None, None].expand(-1, 1, k))[:, 0]
            texts = token_texts(words, best)
            arena.report_texts(tracker, gen_i, [texts[t.prompt_index] for t in arena.trials])
            if not tracker.pending():
                break
    return {"best_distance": [round(float(x), 4) for x in score.min(1).values]}
