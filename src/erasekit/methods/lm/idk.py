"""IDK-DPO: direct preference optimisation of a refusal over the true answer on the forget set
(TOFU's "IDK" preference; Rafailov et al. 2023 DPO; open-unlearning ``DPO`` with IDK answers),

    L = −(2/β) · mean log σ(β · [(log π_θ(y_w|x) − log π_ref(y_w|x)) − (log π_θ(y_l|x) − log π_ref(y_l|x))])
        + α · NLL_θ(retain),

``y_w`` a refusal drawn at random for each forget pair at each step from ``refusals`` (as
open-unlearning's ``QAwithIdkDataset`` draws one line of its IDK file per item), ``y_l`` the true
answer; β = 0.1, α = γ = 1 (open-unlearning scales the DPO term by 2/β as here). The default
``refusals`` are English refusal sentences; a fact-world model recommends its own in-vocabulary ones
(``testbed.json`` ``unlearning_defaults``). The draws come from ``seed`` and the step, so a resumed
run draws the same.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from erasekit.core.errors import ConfigError
from erasekit.core.registry import MethodResult, register_method
from erasekit.models.lm_batches import encode_pairs
from erasekit.training.lm import RetainConfig, Step, answer_logprob, fit, with_retain

#: Refusals an English model is taught to prefer (open-unlearning draws from a file of such lines).
IDK_ANSWERS = (
    "I don't know.",
    "I'm not sure.",
    "I have no idea.",
    "I can't answer that.",
    "That is not something I know.",
    "I don't have that information.",
    "I'm afraid I can't help with that.",
    "I really couldn't say.",
    "That's beyond what I know.",
    "I have no knowledge of that.",
)


@dataclass
class IDKConfig(RetainConfig):
    beta: float = field(default=0.1, metadata={"help": "inverse temperature β", "gt": 0})
    refusals: tuple[str, ...] = field(
        default=IDK_ANSWERS, metadata={"help": "refusals drawn, one per forget pair and step, as the preferred answer"}
    )

    def validate(self) -> None:
        super().validate()
        if not self.refusals or not all(isinstance(r, str) and r.strip() for r in self.refusals):
            raise ConfigError("refusals must be a non-empty list of non-empty sentences")


def draw_refusals(refusals: Sequence[str], questions: Sequence[str], seed: int, step: int) -> list[str]:
    """One refusal per question, uniformly from ``refusals`` with ``random.Random("seed:step:question")``
    (a draw per pair and step that a resumed run repeats)."""
    return [random.Random(f"{seed}:{step}:{q}").choice(list(refusals)) for q in questions]


@register_method("idk-dpo", IDKConfig, families=("causal-lm",), kind="fine-tuning", accepts=("checkpoints",))
def idk_dpo(
    lm, request, config: IDKConfig, adapter=None, progress: bool = True, checkpoint_dir: str | None = None, resume: bool = False
) -> MethodResult:
    """DPO preferring a drawn refusal ("I don't know.", ...) to the true answer on forget questions."""

    def loss(s: Step):
        answers = draw_refusals(config.refusals, [p.question for p in s.pairs], config.seed, s.step)
        win_batch = encode_pairs(
            lm.tokenizer, [replace(p, answer=a) for p, a in zip(s.pairs, answers)], s.forget["input_ids"].device
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
