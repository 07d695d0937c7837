"""Attacks on erased models: does the concept come back?

One module per attack, each registered by name (``erasekit attacks`` lists them), in the folder of
the kind of model it attacks: :mod:`.diffusion` and :mod:`.lm`. Every attack has one signature,
``fn(arena, config, tracker, progress)``, and one success definition, both in :mod:`.base` (trials,
the ASR, budgets, results, and the :class:`~erasekit.attacks.base.ArenaLike` protocol both kinds'
arenas keep).
"""

from erasekit.attacks import diffusion, lm  # noqa: F401  (each module registers its attack)
from erasekit.attacks.base import AttackConfig, AttackResult, Trial, TrialRecord
from erasekit.attacks.diffusion.soft_prompt import SoftPrompt, SoftPromptConfig, optimise_soft_prompt

__all__ = ["AttackConfig", "AttackResult", "SoftPrompt", "SoftPromptConfig", "Trial", "TrialRecord", "optimise_soft_prompt"]
