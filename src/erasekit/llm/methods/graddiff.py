"""Gradient difference: ascend on the forget answers, descend on the retain set,

    L = γ · (− NLL_θ(forget)) + α · L_retain,   L_retain = NLL_θ(retain) or KL(π_ref ‖ π_θ) on retain,

(Liu et al. 2022; TOFU; open-unlearning ``GradDiff``: γ = α = 1, NLL retain term).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...core.registry import MethodResult, register_method
from ..unlearn import Step, UnlearnConfig, fit, nll, retain_loss


@dataclass
class GradDiffConfig(UnlearnConfig):
    gamma: float = field(default=1.0, metadata={"help": "weight γ of the forget (ascent) term"})
    alpha: float = field(default=1.0, metadata={"help": "weight α of the retain term"})
    retain_loss: str = field(default="NLL", metadata={"help": "NLL (of retain answers) or KL (to the frozen model)"})

    def validate(self) -> None:
        super().validate()
        if self.retain_loss not in ("NLL", "KL"):
            from ...core.errors import ConfigError

            raise ConfigError(f"retain_loss={self.retain_loss!r}: use NLL or KL")


@register_method("graddiff", GradDiffConfig, families=("causal-lm",), kind="fine-tuning")
def gradient_difference(lm, request, config: GradDiffConfig, adapter=None, progress: bool = True) -> MethodResult:
    """Gradient difference: ascent on forget answers, NLL or KL descent on the retain set."""

    def loss(s: Step):
        forget = nll(s.model, s.forget)
        retain = retain_loss(config.retain_loss, s.model, s.reference, s.retain)
        return -config.gamma * forget + config.alpha * retain, {"forget_nll": forget.item(), "retain": retain.item()}

    weights, log = fit(lm, request, config, loss, progress, needs_retain=True)
    return MethodResult(weights, {"log": log})
