"""Cross-attention of chosen tokens, read from every ``attn2`` of a UNet by forward hooks.

Two uses: normalised maps of where the concept's tokens attend (Receler's localisation, MACE's masks
on models without exact masks), and MACE's masked attention loss ``Σ_l Σ_j ‖A_l[:, j] ⊙ M_l‖²``
(with gradient). The hook recomputes ``softmax(q kᵀ / √d)`` from the module's own ``to_q`` / ``to_k``
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
    ``masks`` unset: ``maps`` collects, per layer, ``[B, HW]`` attention of those tokens normalised to
    a maximum of 1 (no grad); ``masks`` set (``[B, H, W]``): ``loss`` accumulates the masked attention
    energy with gradient. ``positions = None`` turns the probe off."""

    def __init__(self, unet: nn.Module):
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
            probs = attn.get_attention_scores(q, k).view(h.shape[0], attn.heads, h.shape[1], -1).mean(1)  # [B, HW, T]
            sel = torch.zeros(probs.shape[0], probs.shape[-1], device=probs.device, dtype=probs.dtype)
            for b, pos in enumerate(self.positions):
                sel[b, pos] = 1.0
            a = probs * sel[:, None, :]
            if self.masks is None:
                m = a.sum(-1).detach()
                self.maps.append(m / m.amax(dim=1, keepdim=True).clamp_min(1e-8))
                return
            mask = layer_mask(self.masks.to(a), h.shape[1])  # [B, HW]
            term = (a * mask[..., None]).pow(2).sum(dim=(1, 2)).mean()
            self.loss = term if self.loss is None else self.loss + term


def layer_mask(masks: torch.Tensor, tokens: int) -> torch.Tensor:
    """Masks ``[B, H, W]`` area-averaged onto a square layer of ``tokens`` positions: ``[B, tokens]``."""
    side = int(round(tokens**0.5))
    return F.adaptive_avg_pool2d(masks[:, None], side).flatten(1)


def mean_map(maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Average of per-layer ``[B, HW]`` maps, each resized to ``size``: ``[B, *size]``."""
    out = []
    for m in maps:
        side = int(round(m.shape[1] ** 0.5))
        out.append(F.interpolate(m.view(-1, 1, side, side), size=size, mode="bilinear").squeeze(1))
    return torch.stack(out).mean(0)
