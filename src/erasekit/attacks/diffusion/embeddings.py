"""Continuous-embedding attacks: vectors written into token slots instead of real tokens.

- ``soft-prompt`` (AdvUnlearn's inner attack, Zhang et al. 2024; Receler's): ``k`` prefix vectors
  trained so the erased model's prediction with them matches the reference model's for the plain
  prompt, ``min_v ‖f_θ′(x_t, E(v ⊕ c), t) − f_θ(x_t, c, t)‖²``, at ``x_t`` noised from the reference
  model's image of the trial;
- ``concept-inversion`` (Pham et al. 2024, "Circumventing Concept Erasure Methods for Text-to-Image
  Generative Models"): textual inversion against the erased model, one new word embedding ``v*``
  that replaces the concept's word in every prompt (or is appended when no word names it), learned
  with the erased model's denoising loss on the reference model's images of the concept (one ``v*``
  for all trials: the weights stay unchanged, only the word is new).

Both judge the images made with the vectors (what they found cannot be typed as text); the JSON
records the vectors and their slot positions so ``--replay`` can insert them into another model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from erasekit.attacks.base import AttackConfig
from erasekit.attacks.diffusion.tokens import PLACEHOLDER, make_slots
from erasekit.core.registry import register_attack


@dataclass
class SoftPromptAttackConfig(AttackConfig):
    budget: int = field(default=30, metadata={"help": "Adam steps"})
    n_tokens: int = field(default=5, metadata={"help": "prefix vectors", "min": 1})
    lr: float = field(default=1e-2, metadata={"help": "Adam learning rate", "gt": 0})
    seed: int = field(default=0, metadata={"help": "seed of the noise draws"})


@dataclass
class ConceptInversionConfig(AttackConfig):
    budget: int = field(default=100, metadata={"help": "textual-inversion steps"})
    lr: float = field(default=5e-3, metadata={"help": "Adam learning rate (textual inversion's 5e-3)", "gt": 0})
    batch_size: int = field(default=8, metadata={"help": "reference images per step", "min": 1})
    seed: int = field(default=0, metadata={"help": "seed of the batches and noise draws"})


def placeholder_vector(arena) -> torch.Tensor:
    """The placeholder word's token embedding (float32): where the vectors start."""
    emb = arena.text_encoder().get_input_embeddings().weight.detach()
    return emb[arena.tokenizer()(PLACEHOLDER, add_special_tokens=False).input_ids[0]].float()


def judge_vectors(arena, tracker, spent: int, layout: str, k: int, vectors: torch.Tensor) -> None:
    """Judge the pending trials' images with ``vectors`` (``[N, k, d]`` per trial or ``[k, d]``) in
    their slots; record the vectors as what was found."""
    rows = tracker.pending()
    if not rows:
        return
    slots = make_slots(arena.tokenizer(), [arena.trials[r].prompt for r in rows], k, layout, concept=arena.concept)
    v = vectors.detach()
    v_rows = v[rows] if v.dim() == 3 else v
    with torch.no_grad():
        cond = arena.cond(slots.texts, token_hook=slots.hook(v_rows))
    images = arena.generate(cond, [arena.trials[r].seed for r in rows])
    found = []
    for i, r in enumerate(rows):
        vec = v_rows[i] if v_rows.dim() == 3 else v_rows
        found.append({"prompt": slots.texts[i], "positions": slots.positions[i].tolist(),
                      "vectors": [[round(float(x), 6) for x in row] for row in vec.float().cpu()]})  # fmt: skip
    tracker.report(spent, rows, images, found)


@register_attack("soft-prompt", SoftPromptAttackConfig, budget_unit="iterations", kind="embedding", fast=True)
def soft_prompt(arena, config: SoftPromptAttackConfig, tracker, progress: bool = True) -> dict:
    """Prefix embeddings matching the erased model's prediction to the original's (AdvUnlearn's attack)."""
    rows = list(range(len(arena.trials)))
    prompts = [arena.trials[r].prompt for r in rows]
    slots = make_slots(arena.tokenizer(), prompts, config.n_tokens, "prefix")
    start = placeholder_vector(arena)
    v = start.expand(len(rows), config.n_tokens, -1).clone().requires_grad_(True)
    opt = torch.optim.Adam([v], lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    ref_cond = arena.cond(prompts, reference=True)
    bench = arena.bench
    loss = torch.zeros(())
    with bench:
        for it in range(1, config.budget + 1):
            b, target = arena.reference_point(gen, ref_cond)
            cond = arena.cond(slots.texts, token_hook=slots.hook(v), grad=True)
            loss = (bench.predict(b.xt, b.t, cond).float() - target).pow(2).mean()
            v.grad = torch.autograd.grad(loss, [v])[0]
            opt.step()
            if tracker.due(it):
                judge_vectors(arena, tracker, it, "prefix", config.n_tokens, v)
            if not tracker.pending():
                break
    return {"final_loss": float(loss.detach())}


@register_attack("concept-inversion", ConceptInversionConfig, budget_unit="steps", kind="embedding")
def concept_inversion(arena, config: ConceptInversionConfig, tracker, progress: bool = True) -> dict:
    """One new word embedding learned against the erased model on the original model's images (CCE)."""
    rows = list(range(len(arena.trials)))
    slots = make_slots(arena.tokenizer(), [arena.trials[r].prompt for r in rows], 1, "replace", concept=arena.concept)
    start = placeholder_vector(arena)
    v = start[None].clone().requires_grad_(True)  # [1, d]: one word for every prompt
    opt = torch.optim.Adam([v], lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    x0 = arena.reference_latents()
    bench = arena.bench
    loss = torch.zeros(())
    with bench:
        for it in range(1, config.budget + 1):
            idx = torch.randint(0, len(rows), (min(config.batch_size, len(rows)),), generator=gen)
            b = bench.noised(x0[idx.to(x0.device)], bench.sample_t(len(idx), gen), gen)
            texts = [slots.texts[i] for i in idx.tolist()]
            sub = make_slots(
                arena.tokenizer(), [arena.trials[i].prompt for i in idx.tolist()], 1, "replace", concept=arena.concept
            )
            cond = arena.cond(texts, token_hook=sub.hook(v), grad=True)
            loss = (bench.predict(b.xt, b.t, cond).float() - bench.target(b).float()).pow(2).mean()
            v.grad = torch.autograd.grad(loss, [v])[0]
            opt.step()
            if tracker.due(it):
                judge_vectors(arena, tracker, it, "replace", 1, v)
            if not tracker.pending():
                break
    return {"final_loss": float(loss.detach()), "embedding_norm": float(v.detach().norm())}
