"""Guards: erasures that change how a model *samples*, not its weights.

A :class:`Guard` is an :class:`~erasekit.core.attachments.Attachment` (saved, loaded, checksummed and
applied like any erasure) whose ``install`` registers it on the pipeline instead of hooking a module.
Every sampler of erasekit — :func:`erasekit.generation.generate` and the attack arena's — asks
:func:`guards_of` for the pipeline's guards and lets them act on each classifier-free-guidance step:

- :meth:`Guard.negative` replaces the unconditional prompt ``""`` (the negative-prompt guard), and
  :meth:`Guard.unconditional` its whole conditioning (Concept Steerers);
- :meth:`Guard.extra_prompts` are encoded once and predicted beside the prompt at every step
  (SLD: its safety concept), their outputs handed to :meth:`Guard.guide`;
- :meth:`Guard.condition` replaces a prompt's conditioning at a step (SAFREE's projected prompt);
- :meth:`Guard.filter` replaces images after sampling (the safety filter);
- :meth:`Guard.guide` ``(state, step, g, ε_u, ε_c, extras, d) -> d'`` replaces the guidance direction
  ``d = ε_c − ε_u`` before the combination ``ε = ε_u + g d'`` (computed in this order, as diffusers'
  pipelines do, so that a guard equals its reference bit for bit where the reference does); ``state``
  (from :meth:`Guard.start`) lives for one sampling run of a batch (SLD's momentum).

These act where a sampler combines unconditional and conditional outputs: white-box attacks that call
the denoiser directly (no guidance) optimise past them, and their finds are judged on images sampled
with the guard. A guard may also add module hooks (LEACE, SAFREE, Concept Steerers on the text
encoder, SAeUron on a UNet block), which act wherever the module runs, attacks' own calls included.

:class:`Stack` puts several attachments on one model (``--erasure E --guard G``: E's attachment, if
any, then G's), so that a stacked erasure is again one :class:`~erasekit.core.erasure.Erasure`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from erasekit.core.attachments import Attachment, register_attachment, restore_attachment

#: The pipeline attribute that holds the installed guards (a tuple, replaced on every change, so a
#: shallow copy of a pipeline keeps the guards it had and never shares later changes).
GUARDS_ATTR = "_erasekit_guards"


def guard_text(request, text: str | None) -> str:
    """``text``, or the request's target concepts joined by ``", "`` (the default text of the guards
    that prompt with the concept: the negative prompt, SLD's safety concept)."""
    return text if text is not None else ", ".join(t.concept for t in request.targets)


def guards_of(pipe) -> tuple["Guard", ...]:
    """The guards installed on ``pipe``, in the order they were applied."""
    return tuple(getattr(pipe, GUARDS_ATTR, ()) or ())


class _GuardHandle:
    """Takes one guard off a pipeline again (what ``Guard.install`` returns, like a hook handle)."""

    def __init__(self, pipe, guard: "Guard") -> None:
        self.pipe, self.guard = pipe, guard

    def remove(self) -> None:
        kept = tuple(g for g in guards_of(self.pipe) if g is not self.guard)
        setattr(self.pipe, GUARDS_ATTR, kept)


class Guard(Attachment):
    """A sampling-time erasure; see the module docstring. Subclasses register a ``kind``."""

    def install(self, pipe) -> list:
        setattr(pipe, GUARDS_ATTR, (*guards_of(pipe), self))
        return [_GuardHandle(pipe, self)]

    def negative(self) -> str | None:
        """The text that replaces the unconditional prompt ``""``, or ``None`` to keep it."""
        return None

    def unconditional(self, pipe, adapter) -> Any:
        """The unconditional branch's conditioning (one row), or ``None`` to keep the pipeline's (Concept
        Steerers: ``""`` steered the other way)."""
        return None

    def extra_prompts(self) -> list[str]:
        """Prompts whose outputs :meth:`guide` needs at every step (one conditioning each)."""
        return []

    def start(self) -> Any:
        """Fresh per-run state (``None``: stateless)."""
        return None

    def condition(self, state: Any, step: int, cond: Any) -> tuple[Any, Any]:
        """``(conditioning, state')``: what the denoiser reads for a prompt's rows at sampling step
        ``step`` (0-based), from the rows' own ``cond`` (SAFREE: its projected prompt for the first
        steps); ``state`` starts as ``None`` for each sampling run. Default: ``cond`` unchanged."""
        return cond, state

    def guide(self, state: Any, step: int, g: float, uncond: torch.Tensor, cond: torch.Tensor, extras: list[torch.Tensor],
              direction: torch.Tensor) -> tuple[torch.Tensor, Any]:  # fmt: skip
        """``(d', state')``: the guidance direction to combine at sampling step ``step`` (0-based);
        ``direction`` is the one so far (``ε_c − ε_u``, or an earlier guard's)."""
        return direction, state

    def filter(self, images: np.ndarray) -> np.ndarray:
        """The images (``uint8 [N, H, W, 3]``) handed back after sampling; default: unchanged (the
        safety filter blacks out those its judge flags)."""
        return images

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}


def filter_images(pipe, images: np.ndarray) -> np.ndarray:
    """``images`` sampled from ``pipe`` after every guard's :meth:`Guard.filter`, in order."""
    for guard in guards_of(pipe):
        images = guard.filter(images)
    return images


@register_attachment
class Stack(Attachment):
    """Several attachments on one model, installed in order and removed together."""

    kind = "stack"

    def __init__(self, parts: list[Attachment]) -> None:
        flat: list[Attachment] = []
        for p in parts:
            flat.extend(p.parts if isinstance(p, Stack) else [p])
        self.parts: list[Attachment] = flat

    def install(self, pipe) -> list:
        handles: list = []
        for p in self.parts:
            handles.extend(p.install(pipe))
        return handles

    def config(self) -> dict:
        return {"parts": [{"kind": p.kind, "config": p.config()} for p in self.parts]}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{i}/{k}": v for i, p in enumerate(self.parts) for k, v in p.tensors().items()}

    @classmethod
    def restore(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "Stack":
        parts = []
        for i, part in enumerate(config["parts"]):
            own = {k[len(f"{i}/") :]: v for k, v in tensors.items() if k.startswith(f"{i}/")}
            parts.append(restore_attachment(part["kind"], part["config"], own))
        return cls(parts)
