"""UNDIAL — self-distillation with adjusted logits (Dong et al., NAACL 2025; open-unlearning ``UNDIAL``).

The model is distilled towards its frozen original, whose logits at every position of the forget
text are first lowered on the position's next token:

    q_t = softmax(z_ref,t − β · onehot(y_t)),   L = γ · mean_t CE(q_t, softmax(z_θ,t)) + α · L_retain

with ``t`` over ``positions``: ``text`` (default), every real token of ``<bos> question answer`` as
the authors' code averages over every token of its texts (dong-river/LLM_unlearning
``utils/ft_utils.py`` ``DITrainer``; open-unlearning's ``compute_undial_loss`` also averages over every
position, padding included, where its label −100 lowers an arbitrary vocabulary entry — padding is
left out here), or ``answer`` (the answer tokens only). Unlike gradient ascent the target is a fixed,
bounded distribution, so the loss cannot diverge. Defaults: β = 10 (open-unlearning's
``UNDIAL.yaml``), α = 0 — the paper uses no retain set (open-unlearning's community notes say the
same); ``--set alpha=1`` adds the NLL retain term.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from erasekit.core.errors import ConfigError
from erasekit.core.registry import MethodResult, register_method
from erasekit.models.lm_batches import target_positions
from erasekit.training.lm import POSITIONS, RetainConfig, Step, fit, with_retain


@dataclass
class UNDIALConfig(RetainConfig):
    beta: float = field(default=10.0, metadata={"help": "how far the true token's logit is lowered in the target", "gt": 0})
    alpha: float = field(default=0.0, metadata={"help": "weight α of the retain term (the paper: 0)"})
    positions: str = field(
        default="text", metadata={"help": "positions distilled: text (every real token, the authors') or answer"}
    )

    def validate(self) -> None:
        super().validate()
        if self.positions not in POSITIONS:
            raise ConfigError(f"positions={self.positions!r}: use {' or '.join(POSITIONS)}")


def undial_targets(ref_logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """``softmax(z − β·onehot(y))`` per position (rows of ``ref_logits`` [N, V], labels [N])."""
    adjusted = ref_logits.float().scatter_add(-1, labels[:, None], torch.full_like(labels[:, None], -beta, dtype=torch.float32))
    return torch.softmax(adjusted, dim=-1)


def undial_loss(model, reference, batch: dict[str, torch.Tensor], beta: float, positions: str = "text") -> torch.Tensor:
    """Mean cross-entropy of the model against the adjusted targets over ``positions`` (module docstring)."""
    labels, valid = target_positions(batch, positions)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][valid]
    with torch.no_grad():
        ref = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][valid]
    target = undial_targets(ref, labels[valid], beta)
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


@register_method("undial", UNDIALConfig, families=("causal-lm",), kind="fine-tuning", accepts=("checkpoints",))
def undial(
    lm,
    request,
    config: UNDIALConfig,
    adapter=None,
    progress: bool = True,
    checkpoint_dir: str | None = None,
    resume: bool = False,
) -> MethodResult:
    """Self-distillation towards the original model with the true answer tokens' logits lowered."""

    def loss(s: Step):
        return with_retain(undial_loss(s.model, s.reference, s.forget, config.beta, config.positions), "undial", config, s)

    return fit(
        lm, request, config, loss, progress, needs_retain=config.alpha > 0, checkpoint_dir=checkpoint_dir, resume=resume
    ).result()
