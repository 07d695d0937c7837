"""Synonyms and descriptions: ask for the concept in other words (HUB, EraseBench, Ring-A-Bell's baselines).

Every trial tries up to ``budget`` rewordings of its prompt, strongest first (see
:mod:`erasekit.attacks.diffusion.variants`): the concept's synonyms, a character's plain description, then
paraphrase frames; on a model that is not a testbed, the user's ``synonyms`` (comma-separated words
or descriptions) and the frames. Budget unit: rewordings tried per trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from erasekit.attacks.base import AttackConfig
from erasekit.attacks.diffusion.variants import user_variants, world_variants
from erasekit.core.registry import register_attack


@dataclass
class SynonymsConfig(AttackConfig):
    budget: int = field(default=6, metadata={"help": "rewordings tried per trial"})
    synonyms: str = field(
        default="", metadata={"help": "comma-separated synonyms / descriptions (models other than the testbed)"}
    )


def candidates(arena, prompt: str, config: SynonymsConfig) -> list[str]:
    """The rewordings of ``prompt`` this attack tries, in order."""
    extra = [s.strip() for s in config.synonyms.split(",") if s.strip()]
    if arena.testbed_world:
        return list(dict.fromkeys(world_variants(prompt, arena.concept) + user_variants(prompt, arena.concept, extra)))
    return user_variants(prompt, arena.concept, extra)


@register_attack("synonyms", SynonymsConfig, budget_unit="rewordings", kind="prompt", fast=True)
def synonyms(arena, config: SynonymsConfig, tracker, progress: bool = True) -> None:
    """Rewordings of the prompt: synonyms, descriptions of a character, paraphrase frames."""
    options = {p: candidates(arena, p, config) for p in arena.prompts}
    for k in range(config.budget):
        rows = [r for r in tracker.pending() if k < len(options[arena.trials[r].prompt])]
        if not rows:
            continue
        texts = [options[arena.trials[r].prompt][k] for r in rows]
        images = arena.generate_trials(rows, texts)
        tracker.report(k + 1, rows, images, [{"prompt": t} for t in texts])
