"""SimNPO (Fan et al. 2024; open-unlearning ``SimNPO``): NPO without a reference model, on
length-normalised log-likelihoods with a margin δ,

    L = γ · (−(2/β) · mean_forget log σ(β · (NLL̄_θ(y|x) − δ)))  +  α · NLL_θ(retain),

``NLL̄`` the mean token NLL of the answer (a positive number, so the forget term rewards raising
it); the margin sits inside β as in the authors' code (OPTML-Group/Unlearn-Simple
``TOFU/dataloader.py``) and open-unlearning's ``simnpo.py``, ``β · (NLL̄ − δ)``; defaults β = 4.5,
δ = 0, γ = 0.125, α = 1 (open-unlearning's ``SimNPO.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F

from erasekit.core.registry import MethodResult, register_method
from erasekit.training.lm import RetainConfig, Step, answer_logprob, fit, with_retain


@dataclass
class SimNPOConfig(RetainConfig):
    beta: float = field(default=4.5, metadata={"help": "inverse temperature β", "gt": 0})
    delta: float = field(default=0.0, metadata={"help": "margin δ"})
    gamma: float = field(default=0.125, metadata={"help": "weight γ of the forget term"})


@register_method("simnpo", SimNPOConfig, families=("causal-lm",), kind="fine-tuning", accepts=("checkpoints",))
def simnpo(
    lm,
    request,
    config: SimNPOConfig,
    adapter=None,
    progress: bool = True,
    checkpoint_dir: str | None = None,
    resume: bool = False,
) -> MethodResult:
    """Reference-free, length-normalised NPO with a margin, plus a retain term."""

    def loss(s: Step):
        mean_nll = -answer_logprob(s.model, s.forget, mean=True)
        forget = -(2.0 / config.beta) * F.logsigmoid(config.beta * (mean_nll - config.delta)).mean()
        return with_retain(forget, "simnpo", config, s)

    return fit(
        lm, request, config, loss, progress, needs_retain=config.alpha > 0, checkpoint_dir=checkpoint_dir, resume=resume
    ).result()
