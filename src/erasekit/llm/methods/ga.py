"""Gradient ascent (GA): maximise the negative log-likelihood of the forget answers,

    L = − NLL_θ(answer | question)   over forget pairs,

the simplest unlearning baseline (Jang et al. 2023; TOFU's "grad ascent"). It has no retain term,
so it drifts without bound: the run length (``epochs``) is its only brake.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...core.registry import MethodResult, register_method
from ..unlearn import Step, UnlearnConfig, fit, nll


@dataclass
class GAConfig(UnlearnConfig):
    pass


@register_method("ga", GAConfig, families=("causal-lm",), kind="fine-tuning")
def gradient_ascent(lm, request, config: GAConfig, adapter=None, progress: bool = True) -> MethodResult:
    """Gradient ascent on the forget answers' NLL (no retain term)."""

    def loss(s: Step):
        forget = nll(s.model, s.forget)
        return -forget, {"forget_nll": forget.item()}

    weights, log = fit(lm, request, config, loss, progress)
    return MethodResult(weights, {"log": log})
