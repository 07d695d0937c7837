"""RMU — Representation Misdirection for Unlearning (Li et al. 2024, WMDP; centerforaisafety/wmdp).

At layer ``ℓ`` the forget text's hidden states are pushed to a fixed random direction of norm ``c``
while the retain text's stay those of the frozen model:

    L = mean_forget ‖h_θ^ℓ(x) − c·u‖²  +  α · mean_retain ‖h_θ^ℓ(x) − h_ref^ℓ(x)‖²

(mean squared error over every non-padding token and hidden unit; ``u`` drawn once as WMDP does,
uniform in [0, 1)^d then normalised; ``h^ℓ`` the output of block ``ℓ``, i.e. ``hidden_states[ℓ+1]``).
WMDP's ``F.mse_loss`` averages over every element of the batch, its left padding included; the
padding is left out here, because its share depends on the batch's longest text (the deliberate
difference). open-unlearning's RMU instead masks to the answer tokens and averages per sample.

Parameters that train: **WMDP's original choice**, the MLP output projections of blocks ℓ−2..ℓ
(``mlp.c_proj`` on GPT-2, ``mlp.down_proj`` on Llama) — not open-unlearning's TOFU variant that
trains every parameter with c = 2 (``--set params=all steering_coeff=2 alpha=1`` gives that).
Defaults are WMDP's: c = 20, α = 100, lr 5e-5 held constant without warm-up (WMDP's plain AdamW;
``lr_schedule`` / ``warmup_epochs`` change it), layer 7 (or the middle block of smaller models).
The forget "text" is each forget pair's question and answer.

**Adaptive RMU** (Dang et al. 2025, "On effects of steering latent representation for LLM
unlearning"): with ``adaptive_scale`` = β > 0 the coefficient is ``c = β · mean ‖h_ref^ℓ(x_F)‖``, the
frozen model's mean per-token norm at block ℓ on the forget text, so the target lies at a fixed
multiple of the stream's own scale on any model (the authors: β = 5 with α = 1200). The authors
measure the norm on the first forget batch (padding included); here it is the mean over every real
token of the whole forget set, measured once before training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from erasekit.core.errors import ConfigError
from erasekit.core.registry import MethodResult, register_method
from erasekit.models.causal_lm import n_layers  # noqa: F401  (also importable from here)
from erasekit.models.lm_batches import encode_pairs
from erasekit.training.lm import PARAMETER_SETS, Step, UnlearnConfig, fit


@dataclass
class RMUConfig(UnlearnConfig):
    lr: float = field(default=5e-5, metadata={"help": "AdamW learning rate (WMDP: 5e-5)", "gt": 0})
    lr_schedule: str = field(default="constant", metadata={"help": "lr after the warm-up (WMDP: constant)"})
    warmup_epochs: float = field(default=0.0, metadata={"help": "warm-up length in epochs (WMDP: none)"})
    layer: int = field(default=-1, metadata={"help": "block ℓ whose output is steered (-1: min(7, n_layers // 2))", "min": -1})
    steering_coeff: float = field(default=20.0, metadata={"help": "norm c of the random target direction", "gt": 0})
    alpha: float = field(default=100.0, metadata={"help": "weight α of the retain activation term"})
    params: str = field(
        default="rmu", metadata={"help": "rmu (MLP output projections of blocks ℓ-2..ℓ), all, mlp, attn, re:<regex>"}
    )
    adaptive_scale: float = field(
        default=0.0, metadata={"help": "adaptive RMU: c = adaptive_scale x the forget text's mean norm at block ℓ (0: fixed c)"}
    )

    def validate(self) -> None:
        if not (self.params == "rmu" or self.params in PARAMETER_SETS or self.params.startswith("re:")):
            raise ConfigError(f"params={self.params!r}: use rmu, all, mlp, attn, or re:<regex>")


def rmu_layer(model, layer: int) -> int:
    """The steered block: ``layer``, or ``min(7, n_layers // 2)`` when it is -1; out of range is an error."""
    n = n_layers(model)
    chosen = min(7, n // 2) if layer == -1 else layer
    if not 0 <= chosen < n:
        raise ConfigError(f"layer={layer}: this model has blocks 0..{n - 1}")
    return chosen


def hidden_at(model, batch: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
    """Output of block ``layer`` for every position (float32)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    return out.hidden_states[layer + 1].float()


@torch.no_grad()
def adaptive_coefficient(lm, pairs, layer: int, scale: float, batch_size: int = 32) -> float:
    """``scale · mean ‖h_ref^ℓ‖`` over every real token of ``pairs`` (adaptive RMU's coefficient)."""
    total, count = 0.0, 0
    for start in range(0, len(pairs), batch_size):
        batch = encode_pairs(lm.tokenizer, pairs[start : start + batch_size], lm.device)
        norms = hidden_at(lm.model, batch, layer).norm(dim=-1)[batch["attention_mask"].bool()]
        total, count = total + float(norms.sum()), count + norms.numel()
    return scale * total / max(count, 1)


def masked_mse(x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``(x − target)²`` over the positions where ``mask`` is 1 and every hidden unit."""
    err = ((x - target) ** 2).mean(-1)
    return (err * mask).sum() / mask.sum().clamp(min=1)


@register_method("rmu", RMUConfig, families=("causal-lm",), kind="fine-tuning", accepts=("checkpoints",))
def rmu(
    lm, request, config: RMUConfig, adapter=None, progress: bool = True, checkpoint_dir: str | None = None, resume: bool = False
) -> MethodResult:
    """Steer forget activations at one layer to a random direction; keep retain activations."""
    layer = rmu_layer(lm.model, config.layer)
    if config.params == "rmu":
        blocks = "|".join(str(i) for i in range(max(0, layer - 2), layer + 1))
        config = dataclasses.replace(config, params=rf"re:\.(h|layers)\.({blocks})\.mlp\.(c_proj|down_proj)\.weight$")
    hidden = lm.model.config.hidden_size
    gen = torch.Generator().manual_seed(config.seed)
    u = torch.rand(hidden, generator=gen)
    coeff = (
        adaptive_coefficient(lm, request.forget, layer, config.adaptive_scale) if config.adaptive_scale else config.steering_coeff
    )
    control = (u / u.norm() * coeff).to(lm.device)

    def loss(s: Step):
        forget_h = hidden_at(s.model, s.forget, layer)
        forget = masked_mse(forget_h, control.expand_as(forget_h), s.forget["attention_mask"])
        retain_h = hidden_at(s.model, s.retain, layer)
        with torch.no_grad():
            frozen = hidden_at(s.reference, s.retain, layer)
        retain = masked_mse(retain_h, frozen, s.retain["attention_mask"])
        return forget + config.alpha * retain, {"forget_mse": forget.item(), "retain_mse": retain.item()}

    fitted = fit(lm, request, config, loss, progress, needs_retain=True, checkpoint_dir=checkpoint_dir, resume=resume)
    return fitted.result(layer=layer, params=config.params, steering_coeff=float(coeff))
