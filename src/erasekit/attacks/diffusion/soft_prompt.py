"""Soft-prompt attack: learnable token embeddings inserted into a prompt.

``k`` continuous vectors replace the token embeddings of ``k`` placeholder words put before the
prompt's words (right after BOS), so the text encoder processes ``BOS v₁..v_k w₁..w_n EOS``. The
vectors are optimised so the (erased) model's prediction with the adversarial prompt matches what
the original model predicts for the concept (AdvUnlearn's inner attack, Zhang et al. 2024):

    min_v  ‖ f(x_t, E(c ⊕ v), t) − f*(x_t, c, t) ‖²      (Adam, lr 1e-3, 30 steps)

The insertion is an out-of-place write into the embedding output, so it really reaches the denoiser
and carries gradient to ``v`` (Receler's reference assigns through ``.data`` with advanced indexing,
which writes into a temporary copy and leaves the embedding unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from erasekit.core.errors import ConfigError
from erasekit.models.diffusion.base import Conditioning


@dataclass
class SoftPromptConfig:
    n_tokens: int = 1
    steps: int = 30
    lr: float = 1e-3
    filler: str = "a"  # placeholder word whose embedding slots are overwritten (must be one token)

    def validate(self) -> None:
        if self.n_tokens < 1 or self.steps < 0 or self.lr <= 0:
            raise ConfigError("soft prompt needs n_tokens >= 1, steps >= 0 and lr > 0")


class SoftPrompt:
    """``n_tokens`` vectors inserted after BOS into every prompt it conditions (see the module docstring)."""

    def __init__(self, pipe, config: SoftPromptConfig, init: torch.Tensor | None = None):
        config.validate()
        self.config = config
        tok = pipe.tokenizer
        ids = tok(config.filler, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ConfigError(f"the soft prompt's filler {config.filler!r} must be a single token of the tokenizer")
        emb = pipe.text_encoder.get_input_embeddings()
        start = emb.weight[ids[0]].detach().float()
        self.vectors = (init.clone() if init is not None else start.expand(config.n_tokens, -1).clone()).to(emb.weight.device)
        self.vectors.requires_grad_(True)

    def text(self, prompt: str) -> str:
        return " ".join([self.config.filler] * self.config.n_tokens + [prompt])

    def hook(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[N, T, d]`` with positions ``1..k`` replaced by the vectors (differentiable)."""
        k = self.config.n_tokens
        v = self.vectors.to(embeddings.dtype)[None].expand(embeddings.shape[0], -1, -1)
        return torch.cat([embeddings[:, :1], v, embeddings[:, 1 + k :]], dim=1)

    def cond(self, bench, prompts: list[str], student: bool = False) -> Conditioning:
        """Conditioning of ``prompts`` with the vectors inserted, through the student's text encoder if asked."""
        return bench.cond([self.text(p) for p in prompts], student=student, token_hook=self.hook)


def optimise_soft_prompt(
    bench,
    soft: SoftPrompt,
    xt: torch.Tensor,
    t: torch.Tensor,
    prompts: list[str],
    target: torch.Tensor,
    student: bool = True,
    draw=None,
) -> float:
    """Run ``soft.config.steps`` Adam steps on ``soft.vectors`` toward ``target`` (the original model's
    prediction for the concept); only the vectors change. ``draw() -> (xt, t, target)``, when given,
    supplies a fresh point for every step after the first (AdvUnlearn's attack draws one per step).
    Returns the final attack loss."""
    opt = torch.optim.Adam([soft.vectors], lr=soft.config.lr)
    loss = torch.zeros((), device=soft.vectors.device)
    for step in range(soft.config.steps):
        if draw is not None and step > 0:
            xt, t, target = draw()
        pred = bench.predict(xt, t, soft.cond(bench, prompts, student=student))
        loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        opt.zero_grad(set_to_none=True)
        grad = torch.autograd.grad(loss, [soft.vectors])[0]
        soft.vectors.grad = grad
        opt.step()
    return float(loss.detach())
