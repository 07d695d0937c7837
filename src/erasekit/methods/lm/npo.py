"""NPO — Negative Preference Optimization (Zhang et al. 2024; open-unlearning ``NPO``):

    L = −(2/β) · mean_forget log σ(−β · (log π_θ(y|x) − log π_ref(y|x)))  +  α · NLL_θ(retain),

with sequence-summed answer log-probabilities and the frozen original model as ``π_ref``; β = 0.1,
α = 1 (γ = 1 on the forget term). Unlike gradient ascent its forget gradient vanishes once
``π_θ(y|x) ≪ π_ref(y|x)``, so it stops by itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from erasekit.core.registry import MethodResult, register_method
from erasekit.training.lm import RetainConfig, Step, answer_logprob, fit, with_retain


@dataclass
class NPOConfig(RetainConfig):
    beta: float = field(default=0.1, metadata={"help": "inverse temperature β", "gt": 0})


def npo_loss(model, reference, batch, beta: float) -> torch.Tensor:
    """``−(2/β) mean log σ(−β (log π_θ − log π_ref))`` over the rows of ``batch``."""
    logp = answer_logprob(model, batch)
    with torch.no_grad():
        ref = answer_logprob(reference, batch)
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref)).mean()


@register_method("npo", NPOConfig, families=("causal-lm",), kind="fine-tuning", accepts=("checkpoints",))
def npo(
    lm, request, config: NPOConfig, adapter=None, progress: bool = True, checkpoint_dir: str | None = None, resume: bool = False
) -> MethodResult:
    """Negative preference optimisation against the frozen model, plus a retain term."""

    def loss(s: Step):
        forget = npo_loss(s.model, s.reference, s.forget, config.beta)
        return with_retain(forget, "npo", config, s)

    return fit(
        lm, request, config, loss, progress, needs_retain=config.alpha > 0, checkpoint_dir=checkpoint_dir, resume=resume
    ).result()
