"""Negative prompt — the guard every erasure paper compares with: sample with the concept as the
unconditional prompt, so classifier-free guidance ``ε = ε(neg) + g (ε(c) − ε(neg))`` steers away from it.

No weight changes: the erasure is a :class:`~erasekit.core.guards.Guard` that erasekit's samplers
apply (``negative()`` replaces ``""``). The text defaults to the request's concepts joined by ``", "``
(diffusers' ``negative_prompt`` takes one text per image; erasekit uses one for every image).
Families with an unconditional branch only (SD 1.x/2.x, SDXL, SD3); Flux's guidance-distilled
sampler has none and is refused by the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from erasekit.core.attachments import register_attachment
from erasekit.core.config import MethodConfig
from erasekit.core.errors import ConfigError
from erasekit.core.guards import Guard, guard_text
from erasekit.core.registry import MethodResult, register_method
from erasekit.core.request import ErasureRequest
from erasekit.generation import check_prompt


@dataclass
class NegativePromptConfig(MethodConfig):
    text: str | None = field(default=None, metadata={"help": "the negative prompt (default: the target concepts joined by ', ')"})

    def validate(self) -> None:
        if self.text is not None and not self.text.strip():
            raise ConfigError("text must be a non-empty negative prompt (or leave it unset for the target concepts)")


@register_attachment
class NegativePromptGuard(Guard):
    """Replaces the unconditional prompt by :attr:`text`."""

    kind = "negative-prompt"

    def __init__(self, text: str) -> None:
        self.text = text

    def negative(self) -> str | None:
        return self.text

    def config(self) -> dict:
        return {"text": self.text}

    @classmethod
    def restore(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "NegativePromptGuard":
        return cls(str(config["text"]))


@register_method("negative-prompt", NegativePromptConfig, families=("sd", "sdxl", "sd3"), kind="guard")
def negative_prompt(
    pipe, request: ErasureRequest, config: NegativePromptConfig, adapter=None, progress: bool = True
) -> MethodResult:
    """Guard: the concept as the negative prompt (no weight changes)."""
    text = guard_text(request, config.text)
    check_prompt(pipe, text, "negative prompt")
    return MethodResult({}, {"negative_prompt": text}, attachment=NegativePromptGuard(text))
