"""Gradient ascent (GA): maximise the negative log-likelihood of the forget answers,

    L = − NLL_θ(answer | question)   over forget pairs,

the simplest unlearning baseline (Jang et al. 2023; TOFU's "grad ascent"). It has no retain term,
so it drifts without bound: the run length (``epochs``) is its only brake.
"""

from __future__ import annotations

from dataclasses import dataclass

from erasekit.core.registry import MethodResult, register_method
from erasekit.training.lm import Step, UnlearnConfig, fit, nll


@dataclass
class GAConfig(UnlearnConfig):
    pass


@register_method("ga", GAConfig, families=("causal-lm",), kind="fine-tuning", accepts=("checkpoints",))
def gradient_ascent(
    lm, request, config: GAConfig, adapter=None, progress: bool = True, checkpoint_dir: str | None = None, resume: bool = False
) -> MethodResult:
    """Gradient ascent on the forget answers' NLL (no retain term)."""

    def loss(s: Step):
        forget = nll(s.model, s.forget)
        return -forget, {"forget_nll": forget.item()}

    return fit(lm, request, config, loss, progress, checkpoint_dir=checkpoint_dir, resume=resume).result()
