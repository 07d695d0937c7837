"""Concept arithmetic: rebuild the erased concept from conditions that were not erased.

Composed guidance (Liu et al. 2022, "Compositional Visual Generation"; used against erasure by
Petsiuk & Saenko 2024, "Concept Arithmetics for Circumventing Concept Inhibition")::

    f̂ = f(∅) + g Σ_i w_i (f(c_i) − f(∅))

Every trial tries up to ``budget`` compositions, in this order:

1. **parts**: the concept from separate conditions: a character from its attributes (``a star`` +
   ``a striped shape`` + ``a purple shape`` + ``a shape on a black background``), a shape or style
   from the prompt with the concept replaced by the anchor plus each synonym alone, the watermark
   from the prompt plus its trigger;
2. **sum**: the prompt plus the concept alone (``a red star on black`` + ``a star``), each weight 1;
3. **difference**: extrapolation past the prompt along the concept's direction,
   ``2 f(prompt) − f(prompt with the anchor)`` (weights 2 and −1): what an erasure left of the
   concept is amplified.

Weights are 1 per part (each part at full guidance, as in composable diffusion) unless stated.
Budget unit: compositions per trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from erasekit.attacks.base import AttackConfig
from erasekit.attacks.diffusion.variants import swap_word
from erasekit.core.registry import register_attack


@dataclass
class ArithmeticConfig(AttackConfig):
    budget: int = field(default=3, metadata={"help": "compositions tried per trial (parts, sum, difference)", "max": 3})
    anchor: str = field(default="shape", metadata={"help": "word that replaces the concept in the 'difference' composition"})


def compositions(arena, prompt: str, anchor: str) -> list[list[tuple[str, float]]]:
    """The weighted prompt parts of each composition for ``prompt`` (see the module docstring)."""
    concept = arena.concept
    out: list[list[tuple[str, float]]] = []
    if arena.testbed_world:
        from erasekit.testbeds.image import world

        if concept in world.CHARACTERS:
            a = world.CHARACTERS[concept]
            parts = [f"a {a.shape}", f"a {a.style} shape", f"a {a.colour} shape", f"a shape on a {a.background} background"]
            out.append([(p, 1.0) for p in parts])
            out.append([(prompt, 1.0), (a.describe(), 1.0)])
            out.append([(prompt, 2.0), (world.ANCHORS[0], -1.0)])
            return out
        if concept in world.IMPLICIT_TRIGGERS:
            trigger = world.IMPLICIT_TRIGGERS[concept][0]
            other = swap_word(prompt, world.WATERMARK.value, "gray")
            out.append([(prompt, 1.0), (f"{world.ANCHORS[1]} {trigger}", 1.0)])
            out.append([(prompt, 1.0), (trigger, 1.0)])
            out.append([(prompt, 2.0), (other, -1.0)])
            return out
        synonyms = world.SYNONYMS.get(concept, ())
        phrase = f"a {concept} shape" if world.domain_of(concept) in ("style", "colour") else f"a {concept}"
        out.append([(swap_word(prompt, concept, anchor if world.domain_of(concept) == "shape" else ""), 1.0)]
                   + [(f"a {s}", 1.0) for s in synonyms])  # fmt: skip
        out.append([(prompt, 1.0), (phrase, 1.0)])
        out.append([(prompt, 2.0), (swap_word(prompt, concept, anchor if world.domain_of(concept) == "shape" else ""), -1.0)])
        return [[(" ".join(t.split()), w) for t, w in c] for c in out]
    out.append([(swap_word(prompt, concept, anchor), 1.0), (concept, 1.0)])
    out.append([(prompt, 1.0), (concept, 1.0)])
    out.append([(prompt, 2.0), (swap_word(prompt, concept, anchor), -1.0)])
    return out


@register_attack("arithmetic", ArithmeticConfig, budget_unit="compositions", kind="prompt", fast=True)
def arithmetic(arena, config: ArithmeticConfig, tracker, progress: bool = True) -> None:
    """Composed guidance that rebuilds the concept from parts, sums and differences of conditions."""
    plans = {p: compositions(arena, p, config.anchor) for p in arena.prompts}
    for k in range(config.budget):
        rows = tracker.pending()
        if not rows:
            break
        parts_of = [plans[arena.trials[r].prompt][k] for r in rows]
        n_parts = max(len(p) for p in parts_of)
        # pad shorter compositions with zero-weight copies so every row has n_parts conditions
        padded = [p + [(p[0][0], 0.0)] * (n_parts - len(p)) for p in parts_of]
        parts = []
        for j in range(n_parts):
            cond = arena.cond([p[j][0] for p in padded])
            weights = [p[j][1] for p in padded]
            parts.append((cond, weights))
        images = compose_images(arena, rows, parts)
        tracker.report(k + 1, rows, images, [{"parts": [[t, w] for t, w in p]} for p in parts_of])


def compose_images(arena, rows: list[int], parts) -> "object":
    """Images of ``rows`` under composed guidance with per-row weights (``parts = [(cond, [w_row])]``)."""
    import torch

    dtype = arena.dtype_of(arena.bench)
    x = arena.initial_latents([arena.trials[r].seed for r in rows])
    weighted = [(c.to(dtype), torch.tensor(w, dtype=torch.float32).view(-1, 1, 1, 1)) for c, w in parts]
    return arena.decode(arena.sample(weighted, x))
