"""IDK-DPO: direct preference optimisation of a refusal over the true answer on the forget set
(TOFU's "IDK" preference; Rafailov et al. 2023 DPO; open-unlearning ``DPO`` with IDK answers),

    L = −(2/β) · mean log σ(β · [(log π_θ(y_w|x) − log π_ref(y_w|x)) − (log π_θ(y_l|x) − log π_ref(y_l|x))])
        + α · NLL_θ(retain),

``y_w`` the refusal (the request's ``refusal``, default "I don't know."), ``y_l`` the true answer;
β = 0.1, α = γ = 1 (open-unlearning scales the DPO term by 2/β as here).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from erasekit.core.registry import MethodResult, register_method
from erasekit.models.lm_batches import encode_pairs
from erasekit.training.lm import RetainConfig, Step, answer_logprob, fit, with_retain


@dataclass
class IDKConfig(RetainConfig):
    beta: float = field(default=0.1, metadata={"help": "inverse temperature β", "gt": 0})


@register_method("idk-dpo", IDKConfig, families=("causal-lm",), kind="fine-tuning", accepts=("checkpoints",))
def idk_dpo(
    lm, request, config: IDKConfig, adapter=None, progress: bool = True, checkpoint_dir: str | None = None, resume: bool = False
) -> MethodResult:
    """DPO preferring a refusal ("I don't know.") to the true answer on forget questions."""

    def loss(s: Step):
        win_batch = encode_pairs(
            lm.tokenizer, [replace(p, answer=request.refusal) for p in s.pairs], s.forget["input_ids"].device
        )
        win, lose = answer_logprob(s.model, win_batch), answer_logprob(s.model, s.forget)
        with torch.no_grad():
            win_ref, lose_ref = answer_logprob(s.reference, win_batch), answer_logprob(s.reference, s.forget)
        margin = (win - win_ref) - (lose - lose_ref)
        forget = -(2.0 / config.beta) * F.logsigmoid(config.beta * margin).mean()
        return with_retain(forget, "dpo", config, s)

    return fit(
        lm, request, config, loss, progress, needs_retain=config.alpha > 0, checkpoint_dir=checkpoint_dir, resume=resume
    ).result()
