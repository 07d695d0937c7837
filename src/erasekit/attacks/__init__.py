"""Attacks on erased models. Building blocks first: the soft-prompt attack (soft_prompt.py) that
AdvUnlearn and Receler run in their inner loops; the red-team suite builds on the same modules."""

from .soft_prompt import SoftPrompt, SoftPromptConfig, optimise_soft_prompt

__all__ = ["SoftPrompt", "SoftPromptConfig", "optimise_soft_prompt"]
