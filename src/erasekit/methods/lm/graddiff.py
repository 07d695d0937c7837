"""Gradient difference: ascend on the forget answers, descend on the retain set,

    L = γ · (− NLL_θ(forget)) + α · L_retain,   L_retain = NLL_θ(retain) or KL(π_ref ‖ π_θ) on retain,

(Liu et al. 2022; TOFU; open-unlearning ``GradDiff``: γ = α = 1, NLL retain term).
"""

from __future__ import annotations

from dataclasses import dataclass

from erasekit.core.registry import MethodResult, register_method
from erasekit.training.lm import RetainConfig, Step, fit, nll, with_retain


@dataclass
class GradDiffConfig(RetainConfig):
    pass


@register_method("graddiff", GradDiffConfig, families=("causal-lm",), kind="fine-tuning", accepts=("checkpoints",))
def gradient_difference(
    lm,
    request,
    config: GradDiffConfig,
    adapter=None,
    progress: bool = True,
    checkpoint_dir: str | None = None,
    resume: bool = False,
) -> MethodResult:
    """Gradient difference: ascent on forget answers, NLL or KL descent on the retain set."""

    def loss(s: Step):
        return with_retain(-nll(s.model, s.forget), "neg_forget_nll", config, s)

    return fit(
        lm, request, config, loss, progress, needs_retain=config.alpha > 0, checkpoint_dir=checkpoint_dir, resume=resume
    ).result()
