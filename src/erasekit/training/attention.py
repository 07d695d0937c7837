"""Cross-attention of chosen tokens, read from every ``attn2`` of a UNet by forward hooks.

Two uses: normalised maps of where the concept's tokens attend (Receler's localisation, MACE's masks
on models without exact masks), and MACE's masked attention loss (with gradient), as released
(Shilin-LU/MACE@057e7a6 ``src/cfr_utils.py`` ``AttnController``): per layer the probabilities of every
head at the mask's pixels (the mask resized to the layer by nearest neighbour, ``> 0.5``) and the
chosen tokens, and the loss is the sum over layers of their **unsquared** Frobenius norm,
``Σ_l ‖A_l[heads, M_l, tokens]‖_F`` (``loss_form="norm"``); ``loss_form="squared"`` is erasekit's
earlier form, ``Σ_l mean_b Σ ‖mean_heads A_l[:, tokens] ⊙ pool(M)_l‖²`` with area-pooled soft masks. The hook recomputes ``softmax(q kᵀ / √d)`` from the module's own ``to_q`` / ``to_k``
on its inputs, so it sees exactly what the layer attends to (LoRA-wrapped projections included).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def concept_positions(tokenizer, prompt: str, phrase: str, offset: int = 0) -> list[int]:
    """Token positions of ``phrase`` inside ``prompt`` (ids with BOS), shifted by ``offset`` (inserted
    soft tokens); the last word's position when the phrase does not occur verbatim."""
    ids = tokenizer(prompt).input_ids
    sub = tokenizer(phrase, add_special_tokens=False).input_ids
    for i in range(len(ids) - len(sub) + 1):
        if sub and ids[i : i + len(sub)] == sub:
            return [offset + i + j for j in range(len(sub))]
    return [offset + len(ids) - 2]


class CrossAttentionProbe:
    """Hooks on every ``attn2``. Set ``positions`` (one list per batch row) before a forward pass; then
    ``masks`` unset: ``maps`` collects, per layer, ``[B, HW]`` attention of those tokens (mean over the
    tokens and the heads; no grad); ``masks`` set (``[B, H, W]``): ``loss`` accumulates MACE's masked
    attention loss with gradient (``loss_form``). ``positions = None`` turns the probe off."""

    def __init__(self, unet: nn.Module, loss_form: str = "norm"):
        if loss_form not in ("norm", "squared"):
            raise ValueError(f"unknown attention loss form {loss_form!r}")
        self.loss_form = loss_form
        self.modules = [m for n, m in unet.named_modules() if n.endswith("attn2")]
        self.positions: list[list[int]] | None = None
        self.masks: torch.Tensor | None = None
        self.maps: list[torch.Tensor] = []
        self.loss: torch.Tensor | None = None

    def install(self) -> list:
        return [m.register_forward_hook(self._hook, with_kwargs=True) for m in self.modules]

    def reset(self, positions: list[list[int]] | None, masks: torch.Tensor | None = None) -> None:
        self.positions, self.masks, self.maps, self.loss = positions, masks, [], None

    def _hook(self, attn, args, kwargs, _out):
        if self.positions is None:
            return
        h = args[0] if args else kwargs["hidden_states"]
        enc = kwargs["encoder_hidden_states"]
        with torch.set_grad_enabled(self.masks is not None and torch.is_grad_enabled()):
            q = attn.head_to_batch_dim(attn.to_q(h))
            k = attn.head_to_batch_dim(attn.to_k(enc))
            heads = attn.get_attention_scores(q, k).view(h.shape[0], attn.heads, h.shape[1], -1)  # [B, heads, HW, T]
            sel = torch.zeros(heads.shape[0], heads.shape[-1], device=heads.device, dtype=heads.dtype)
            for b, pos in enumerate(self.positions):
                sel[b, pos] = 1.0
            if self.masks is None:  # the chosen tokens' attention, mean over them and the heads
                m = (heads.mean(1) * sel[:, None, :]).sum(-1) / sel.sum(-1, keepdim=True).clamp_min(1)
                self.maps.append(m.detach())
                return
            if self.loss_form == "norm":  # MACE as released: every head, the mask's pixels, unsquared norm
                inside = nearest_mask(self.masks, h.shape[1]).to(heads)  # [B, HW] of 0 / 1
                a = heads * sel[:, None, None, :] * inside[:, None, :, None]
                term = torch.linalg.vector_norm(a.flatten(1), dim=1).mean()
            else:
                a = heads.mean(1) * sel[:, None, :]
                mask = layer_mask(self.masks.to(a), h.shape[1])  # [B, HW]
                term = (a * mask[..., None]).pow(2).sum(dim=(1, 2)).mean()
            self.loss = term if self.loss is None else self.loss + term


def layer_mask(masks: torch.Tensor, tokens: int) -> torch.Tensor:
    """Masks ``[B, H, W]`` area-averaged onto a square layer of ``tokens`` positions: ``[B, tokens]``."""
    side = int(round(tokens**0.5))
    return F.adaptive_avg_pool2d(masks[:, None], side).flatten(1)


def nearest_mask(masks: torch.Tensor, tokens: int) -> torch.Tensor:
    """Masks ``[B, H, W]`` resized by nearest neighbour onto a square layer of ``tokens`` positions and
    thresholded at 0.5 (MACE's ``F.interpolate(mask, mode='nearest') > 0.5``): ``[B, tokens]`` bool."""
    side = int(round(tokens**0.5))
    return (F.interpolate(masks[:, None].float(), size=(side, side), mode="nearest") > 0.5).flatten(1)


def mean_map(maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Average of per-layer ``[B, HW]`` maps, each normalised to a maximum of 1 per image and resized
    to ``size``: ``[B, *size]``."""
    out = []
    for m in maps:
        m = m / m.amax(dim=1, keepdim=True).clamp_min(1e-8)
        side = int(round(m.shape[1] ** 0.5))
        out.append(F.interpolate(m.view(-1, 1, side, side), size=size, mode="bilinear").squeeze(1))
    return torch.stack(out).mean(0)
