"""Continuous-embedding attacks: vectors written into token slots instead of real tokens.

- ``soft-prompt``: AdvUnlearn's inner attack as released (Zhang et al. 2024,
  OPTML-Group/AdvUnlearn@9d23124 ``train-scripts/utils/attack_util.py``, the command-line defaults of
  ``AdvUnlearn.py``): **one** prefix vector in word-embedding space (``[BOS, v, prompt, EOS...]``),
  started from the embedding of a random vocabulary token, Adam lr 1e-3, 30 steps; every step draws a
  fresh point ``x_t`` of the *reference* model's own trajectory for the prompt (the model's sampler at
  its own step count — SD's 50, as AdvUnlearn's 50 DDIM steps; the testbed's 20 — guidance 3, stopped
  at a uniformly drawn step) and minimises

      ‖ f_θ′(x_t, E(v ⊕ c), t) − f_θ(x_t, c, t) ‖²       (f_θ: the reference model; f_θ′: the erased one)

  Deviations, deliberate: the loss is taken at the timestep the trajectory reached (the CompVis code
  queries 40–60 DDPM steps away from where its latent sits; see ``methods/diffusion/esd.py``), and
  Adam's gradient is zeroed every step (the released loop never zeroes it, so its Adam steps on a
  running sum of gradients). ``--set soft-prompt.n_tokens=5 --set soft-prompt.lr=1e-2 --set
  soft-prompt.point=image`` is erasekit's earlier, stronger form (5 vectors, 10x the lr, ``x_t``
  noised from the reference model's image of the trial);
- ``concept-inversion`` (Pham et al. 2024, "Circumventing Concept Erasure Methods for Text-to-Image
  Generative Models"; NYU-DICE-Lab/circumventing-concept-erasure@bb7034b): textual inversion against
  the erased model, one new word embedding ``v*`` that replaces the concept's word in every prompt (or
  is appended when no word names it), learned with the erased model's denoising loss
  ``‖ε − f_θ′(x_t, E(prompt[v*]), t)‖²`` on the reference model's images of the concept (one ``v*``
  for all trials: the weights stay unchanged, only the word is new). As CCE's ``esd/train.sh``: AdamW
  (weight decay 1e-2), lr 5e-3 scaled by the images per update (``--scale_lr``: 5e-3 x 16 = 0.08),
  16 images per update. Deviations: the vector starts from the embedding of ``initializer`` ("a";
  CCE's style run uses "art"), the prompts are the trials' own with the concept word replaced (CCE
  pairs its images with textual-inversion templates), and the default budget is 100 steps (CCE runs
  5 000: ``--budget 5000``).

Both judge the images made with the vectors (what they found cannot be typed as text); the JSON
records the vectors and their slot positions so ``--replay`` can insert them into another model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from erasekit.attacks.base import AttackConfig
from erasekit.attacks.diffusion.tokens import HOOKED_FAMILIES, PLACEHOLDER, make_slots
from erasekit.core.errors import ConfigError
from erasekit.core.registry import register_attack


@dataclass
class SoftPromptAttackConfig(AttackConfig):
    budget: int = field(default=30, metadata={"help": "Adam steps (AdvUnlearn: 30)"})
    n_tokens: int = field(default=1, metadata={"help": "prefix vectors (AdvUnlearn: 1)", "min": 1})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (AdvUnlearn: 1e-3)", "gt": 0})
    point: str = field(
        default="trajectory",
        metadata={"help": "x_t: trajectory (the reference model's DDIM trajectory, AdvUnlearn) or image (noised from its image)"},
    )
    init: str = field(default="random", metadata={"help": "start: random (a random vocabulary token, AdvUnlearn) or placeholder"})
    ddim_steps: int | None = field(
        default=None,
        metadata={"help": "sampler steps of the trajectory (point=trajectory; default: the model's, SD's 50)", "min": 1},
    )
    start_guidance: float = field(default=3.0, metadata={"help": "guidance of the trajectory (point=trajectory)"})
    seed: int = field(default=0, metadata={"help": "seed of the initial tokens and the noise draws"})

    def validate(self) -> None:
        if self.point not in ("trajectory", "image"):
            raise ConfigError(f"soft-prompt's point must be trajectory or image, got {self.point!r}")
        if self.init not in ("random", "placeholder"):
            raise ConfigError(f"soft-prompt's init must be random or placeholder, got {self.init!r}")
        if self.point == "image" and (self.ddim_steps is not None or self.start_guidance != 3.0):
            raise ConfigError("soft-prompt's ddim_steps and start_guidance apply to point=trajectory only (drop them)")


@dataclass
class ConceptInversionConfig(AttackConfig):
    budget: int = field(default=100, metadata={"help": "textual-inversion steps (CCE: 5000)"})
    lr: float = field(
        default=5e-3, metadata={"help": "base learning rate, scaled by the images per step (CCE's --scale_lr)", "gt": 0}
    )
    scale_lr: bool = field(default=True, metadata={"help": "multiply lr by batch_size (CCE: 5e-3 x 16 = 0.08)"})
    weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay (CCE: 1e-2)", "min": 0})
    batch_size: int = field(default=16, metadata={"help": "reference images per step (CCE: 4 x 4 accumulated)", "min": 1})
    initializer: str = field(default="a", metadata={"help": "word whose embedding v* starts from (one token)"})
    seed: int = field(default=0, metadata={"help": "seed of the batches and noise draws"})


def word_vector(arena, word: str = PLACEHOLDER) -> torch.Tensor:
    """The token embedding (float32) of ``word``, which must be one token of the attacked model's tokenizer."""
    ids = arena.tokenizer()(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ConfigError(f"{word!r} is {len(ids)} tokens for this tokenizer; an attack's start word must be one token")
    return arena.text_encoder().get_input_embeddings().weight.detach()[ids[0]].float()


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


@register_attack(
    "soft-prompt", SoftPromptAttackConfig, budget_unit="iterations", kind="embedding", fast=True, families=HOOKED_FAMILIES
)
def soft_prompt(arena, config: SoftPromptAttackConfig, tracker, progress: bool = True) -> dict:
    """Prefix embeddings matching the erased model's prediction to the original's (AdvUnlearn's attack)."""
    rows = list(range(len(arena.trials)))
    prompts = [arena.trials[r].prompt for r in rows]
    slots = make_slots(arena.tokenizer(), prompts, config.n_tokens, "prefix")
    gen = torch.Generator().manual_seed(config.seed)
    v = _soft_prompt_start(arena, config, len(rows), gen).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=config.lr)
    ref_cond = arena.cond(prompts, reference=True)
    bench = arena.bench
    loss = torch.zeros(())
    with bench:
        for it in range(1, config.budget + 1):
            xt, t, target = _soft_prompt_point(arena, config, gen, ref_cond)
            cond = arena.cond(slots.texts, token_hook=slots.hook(v), grad=True)
            loss = (bench.predict(xt, t, cond).float() - target).pow(2).mean()
            v.grad = torch.autograd.grad(loss, [v])[0]
            opt.step()
            if tracker.due(it):
                judge_vectors(arena, tracker, it, "prefix", config.n_tokens, v)
            if not tracker.pending():
                break
    return {"final_loss": float(loss.detach())}


def _soft_prompt_start(arena, config: SoftPromptAttackConfig, n: int, gen: torch.Generator) -> torch.Tensor:
    """Initial vectors ``[n, k, d]``: random vocabulary tokens' embeddings (AdvUnlearn) or the placeholder's."""
    if config.init == "placeholder":
        return word_vector(arena).expand(n, config.n_tokens, -1).clone()
    _, _, table = arena.vocabulary()
    return table[torch.randint(0, len(table), (n, config.n_tokens), generator=gen).to(table.device)].clone()


def _soft_prompt_point(arena, config: SoftPromptAttackConfig, gen: torch.Generator, ref_cond):
    """``(x_t, t, target)`` for every trial: on the reference model's own guided trajectory for the
    prompt stopped at a uniform step (``point=trajectory``), or noised from its image (``image``); the
    target is the reference model's prediction there for the plain prompt."""
    if config.point == "image":
        b, target = arena.reference_point(gen, ref_cond)
        return b.xt, b.t, target
    ref = arena.ref
    steps = config.ddim_steps or arena.steps
    stop = int(torch.randint(0, steps, (1,), generator=gen))
    uncond = arena.uncond(ref_cond.tokens.shape[0], reference=True)
    xt, t = ref.partial_denoise(ref_cond, uncond, steps, stop, config.start_guidance, gen)
    return xt, t, ref.teacher_predict(xt, t, ref_cond).float()


@register_attack("concept-inversion", ConceptInversionConfig, budget_unit="steps", kind="embedding", families=HOOKED_FAMILIES)
def concept_inversion(arena, config: ConceptInversionConfig, tracker, progress: bool = True) -> dict:
    """One new word embedding learned against the erased model on the original model's images (CCE)."""
    rows = list(range(len(arena.trials)))
    slots = make_slots(arena.tokenizer(), [arena.trials[r].prompt for r in rows], 1, "replace", concept=arena.concept)
    v = word_vector(arena, config.initializer)[None].clone().requires_grad_(True)  # [1, d]: one word for every prompt
    lr = config.lr * (config.batch_size if config.scale_lr else 1)
    opt = torch.optim.AdamW([v], lr=lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    x0 = arena.reference_latents()
    bench = arena.bench
    loss = torch.zeros(())
    with bench:
        for it in range(1, config.budget + 1):
            idx = torch.randint(0, len(rows), (config.batch_size,), generator=gen)  # with replacement, as CCE's repeats
            b = bench.noised(x0[idx.to(x0.device)], bench.sample_t(len(idx), gen), gen)
            sub = slots.rows(idx.tolist())
            cond = arena.cond(sub.texts, token_hook=sub.hook(v), grad=True)
            loss = (bench.predict(b.xt, b.t, cond).float() - bench.target(b).float()).pow(2).mean()
            v.grad = torch.autograd.grad(loss, [v])[0]
            opt.step()
            if tracker.due(it):
                judge_vectors(arena, tracker, it, "replace", 1, v)
            if not tracker.pending():
                break
    return {"final_loss": float(loss.detach()), "embedding_norm": float(v.detach().norm()), "lr": lr}
