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

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import nn

PARAMETER_SETS = ("xattn", "xattn-kv", "attn", "noxattn", "full", "text-encoder")


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


@dataclass
class Conditioning:
    """Everything the denoiser reads besides the latents, for a batch of prompts.

    ``tokens: [N, T, d]`` (the ``encoder_hidden_states``) and ``extra``: further per-prompt keyword
    arguments of the denoiser's forward, each a tensor with a leading batch dimension or a dict of
    them (SDXL's ``added_cond_kwargs``, SD3/Flux's ``pooled_projections``).
    """

    tokens: torch.Tensor
    extra: dict = field(default_factory=dict)

    def select(self, index: torch.Tensor | slice | list[int]) -> "Conditioning":
        return Conditioning(self.tokens[index], {k: _index(v, index) for k, v in self.extra.items()})

    def to(self, dtype: torch.dtype) -> "Conditioning":
        def cast(v):
            return {k: cast(x) for k, x in v.items()} if isinstance(v, dict) else (v.to(dtype) if v.is_floating_point() else v)

        return Conditioning(self.tokens.to(dtype), cast(self.extra))

    @staticmethod
    def cat(parts: list["Conditioning"]) -> "Conditioning":
        extra = {k: _cat([p.extra[k] for p in parts]) for k in parts[0].extra}
        return Conditioning(torch.cat([p.tokens for p in parts]), extra)


def _index(v, index):
    if isinstance(v, dict):
        return {k: _index(x, index) for k, x in v.items()}
    return v[index]


def _cat(vs: list):
    if isinstance(vs[0], dict):
        return {k: _cat([v[k] for v in vs]) for k in vs[0]}
    return torch.cat(vs)


class FamilyAdapter(ABC):
    """One per model family; see the module docstring."""

    name: str = ""
    denoiser: str = "unet"  # the pipeline attribute holding the denoiser
    objective: str = "ddpm"  # "ddpm" (noise / v targets on a discrete schedule) or "flow" (rectified flow velocity)
    # Parameter sets by name: (include regex, exclude regex or None) over keys "component.dotted.name".
    parameter_patterns: dict[str, tuple[str, str | None]] = {}

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
        return [
            getattr(pipe, n) for n in ("text_encoder", "text_encoder_2", "text_encoder_3") if getattr(pipe, n, None) is not None
        ]

    # -- training support ----------------------------------------------------------------------------
    def parameter_set(self, pipe, spec: str | list[str] | tuple[str, ...]) -> dict[str, nn.Parameter]:
        """Parameters named by ``spec``: a set name (see ``PARAMETER_SETS``) or a list of regexes over keys.

        Keys are ``component.dotted.name`` (``unet.down_blocks.1....attn2.to_k.weight``), the same keys
        an :class:`~erasekit.core.erasure.Erasure` stores. The result is never empty.
        """
        from erasekit.core.errors import ConfigError

        if isinstance(spec, str):
            if spec not in self.parameter_patterns:
                known = ", ".join(self.parameter_patterns)
                raise ConfigError(
                    f"parameter set {spec!r} is not defined for the {self.name} family (choose from: {known}, or give regex patterns)"
                )
            include, exclude = self.parameter_patterns[spec]
            patterns, excl = [include], exclude
        else:
            patterns, excl = list(spec), None
        compiled = [re.compile(p) for p in patterns]
        out: dict[str, nn.Parameter] = {}
        for component in self.trainable_components(pipe):
            for name, p in getattr(pipe, component).named_parameters():
                key = f"{component}.{name}"
                if any(c.search(key) for c in compiled) and not (excl and re.search(excl, key)):
                    out[key] = p
        if not out:
            raise ConfigError(f"parameter set {spec!r} selects no parameter of this {self.name} model")
        return out

    def trainable_components(self, pipe) -> list[str]:
        names = [self.denoiser, "text_encoder", "text_encoder_2", "text_encoder_3"]
        return [n for n in names if isinstance(getattr(pipe, n, None), nn.Module)]

    @abstractmethod
    def conditioning(
        self, pipe, prompts: list[str], modules: dict[str, nn.Module] | None = None, token_hook=None
    ) -> Conditioning:
        """Encode ``prompts`` for the denoiser, with gradients (call under ``torch.no_grad()`` if unwanted).

        ``modules`` replaces pipeline components by name (a trained copy of a text encoder);
        ``token_hook(embeddings) -> embeddings`` edits the token embeddings of the first text encoder
        before its transformer layers (soft-prompt attacks insert vectors there).
        """

    @torch.no_grad()
    def unconditional(self, pipe) -> Conditioning:
        """The conditioning (one row) of the pipeline's unconditional branch when no negative prompt is
        given: the encoding of ``""`` (a family whose pipeline does otherwise overrides this)."""
        return self.conditioning(pipe, [""])

    @abstractmethod
    def predict(self, denoiser: nn.Module, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The denoiser's raw output for ``latents`` at timesteps ``t`` (``[N]``, scheduler units)."""

    def image_size(self, pipe) -> int:
        """Side in pixels of the images the denoiser is configured for (``sample_size`` x the VAE factor)."""
        size = getattr(getattr(pipe, self.denoiser).config, "sample_size", None)
        if size is None:
            from erasekit.core.errors import UnsupportedModelError

            raise UnsupportedModelError(
                f"the {self.name} denoiser does not state its sample size, so images cannot be sized for it"
            )
        return int(size) * pipe.vae_scale_factor

    def latent_shape(self, pipe, n: int) -> tuple[int, ...]:
        """Shape of ``n`` initial latents at the pipeline's default resolution."""
        den = getattr(pipe, self.denoiser)
        size = den.config.sample_size
        channels = den.config.in_channels
        return (n, channels, size, size)


def find_linear(root: nn.Module, prefix: str, suffixes: tuple[str, ...]) -> list[Projection]:
    """All ``nn.Linear`` modules under ``root`` whose name ends with one of ``suffixes``."""
    found = []
    for name, module in root.named_modules():
        if isinstance(module, nn.Linear) and name.endswith(suffixes):
            found.append(Projection(f"{prefix}.{name}", module, "tokens"))
    return found
