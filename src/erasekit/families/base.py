"""What every model family tells erasure methods: where text enters the denoiser, how prompts encode.

A family adapter names the linear maps that read text-encoder outputs (``text_projections``) and
encodes prompts into exactly the vectors those maps read (``encode``). Methods only talk to the
adapter; they never test for a pipeline class.

Conventions: the conditioning sequence is a concatenation of *segments*, one per text encoder that
feeds the token stream (SD: one CLIP; SDXL: two CLIPs side by side in width, so one segment; SD3:
CLIP-L+G then T5; Flux: T5). Within a segment, a prompt of ``n`` real tokens (specials included)
has its last word at ``n - 2`` (CLIP: ``BOS w1 .. wk EOS``; T5: ``w1 .. wk </s>``) and its "end"
tokens from there to the segment's end (EOS and padding).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Projection:
    """One linear map that reads text features: its dotted path in the pipeline and what it reads."""

    path: str  # e.g. "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    module: nn.Linear
    reads: str  # "tokens" (per-token features [d]) or "pooled" (one vector per prompt)

    @property
    def weight_key(self) -> str:
        return f"{self.path}.weight"


@dataclass
class Segment:
    """A span of the token sequence produced by one text encoder."""

    start: int
    length: int  # tokens reserved for this encoder (its max length)


@dataclass
class Encoded:
    """Prompts encoded into what the text projections read.

    ``tokens: [N, T, d]``, ``pooled: [N, d_p]`` or None; ``n_real: [N, S]`` real tokens per
    prompt and segment (specials included, padding excluded).
    """

    tokens: torch.Tensor
    pooled: torch.Tensor | None
    segments: list[Segment]
    n_real: torch.Tensor

    def last_word(self) -> torch.Tensor:
        """Positions ``[N, S]`` of each prompt's last word token in every segment (0 / BOS for "")."""
        starts = torch.tensor([s.start for s in self.segments])
        return starts[None] + (self.n_real - 2).clamp(min=0)

    def last_word_vectors(self) -> torch.Tensor:
        """``[N * S, d]``: the last-word vector of every prompt in every segment (prompt-major)."""
        pos = self.last_word()
        rows = torch.arange(len(pos))[:, None].expand_as(pos)
        return self.tokens[rows.reshape(-1), pos.reshape(-1)]

    def end_positions(self, i: int) -> torch.Tensor:
        """Positions from prompt ``i``'s last word to the end of every segment (UCE 2023 "end tokens")."""
        out = []
        for s, seg in enumerate(self.segments):
            first = seg.start + max(0, int(self.n_real[i, s]) - 2)
            out.append(torch.arange(first, seg.start + seg.length))
        return torch.cat(out)


class FamilyAdapter(ABC):
    """One per model family; see the module docstring."""

    name: str = ""
    denoiser: str = "unet"  # the pipeline attribute holding the denoiser

    @classmethod
    @abstractmethod
    def matches(cls, pipe) -> bool: ...

    @abstractmethod
    def text_projections(self, pipe) -> list[Projection]:
        """Every linear map that reads text features, in a fixed order (never empty)."""

    @abstractmethod
    def encode(self, pipe, prompts: list[str], batch_size: int = 256, upto: int | str | None = None) -> Encoded:
        """Encode ``prompts`` exactly as the pipeline does at inference (no guidance, one image each).

        ``upto`` ("real" or a position count) lets causal encoders stop early; others ignore it."""

    def text_encoders(self, pipe) -> list[nn.Module]:
        return [getattr(pipe, n) for n in ("text_encoder", "text_encoder_2", "text_encoder_3") if getattr(pipe, n, None) is not None]


def find_linear(root: nn.Module, prefix: str, suffixes: tuple[str, ...]) -> list[Projection]:
    """All ``nn.Linear`` modules under ``root`` whose name ends with one of ``suffixes``."""
    found = []
    for name, module in root.named_modules():
        if isinstance(module, nn.Linear) and name.endswith(suffixes):
            found.append(Projection(f"{prefix}.{name}", module, "tokens"))
    return found
