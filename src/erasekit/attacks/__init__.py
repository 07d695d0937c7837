"""Attacks on erased models: does the concept come back?

One module per attack, each registered by name (``erasekit attacks`` lists them); the shared parts:
:mod:`.base` (trials, the one ASR definition, budgets, results), :mod:`.arena` (attacked model,
reference model, judge, sampling), :mod:`.tokens` (discrete and continuous prompt variables),
:mod:`.variants` (rewordings). The soft-prompt module is also the inner attack of AdvUnlearn and
Receler.
"""

from . import (  # noqa: F401  (each module registers its attack)
    arithmetic,
    embeddings,
    latent_inversion,
    p4d,
    quantization,
    relearning,
    ring_a_bell,
    synonyms,
    token_search,
    unlearndiffatk,
)
from .base import AttackConfig, AttackResult, Trial, TrialRecord
from .soft_prompt import SoftPrompt, SoftPromptConfig, optimise_soft_prompt

__all__ = ["AttackConfig", "AttackResult", "SoftPrompt", "SoftPromptConfig", "Trial", "TrialRecord", "optimise_soft_prompt"]
