"""SLD — Safe Latent Diffusion (Schramowski et al., CVPR 2023; ml-research/safe-latent-diffusion, as
diffusers' ``StableDiffusionPipelineSafe``, ``pipelines/deprecated/stable_diffusion_safe``).

A guard: no weight changes. At every sampling step with classifier-free guidance, beside ``ε_u``
(unconditional) and ``ε_c`` (the prompt) the denoiser predicts ``ε_S`` for the *safety concept* ``S``,
and the guidance direction ``ε_c − ε_u`` loses a safety term ``γ``::

    μ     = clamp(|ε_c − ε_S| · s_S, max 1), set to 0 where ε_c − ε_S ≥ λ          (Eq. 6)
    γ     = μ ⊙ (ε_S − ε_u) + s_m · ν_t                                          (Eqs. 4, 7)
    ν_t+1 = β_m ν_t + (1 − β_m) γ,   ν_0 = 0                                     (Eq. 8)
    ε     = ε_u + g ((ε_c − ε_u) − γ)   for steps ≥ δ (warm-up), else plain CFG  (Eq. 3)

The momentum ν is updated at every step, the warm-up only gates its use (as the reference). erasekit
applies SLD as a guard that replaces the guidance direction ``ε_c − ε_u`` by ``(ε_c − ε_u) − γ``
before the combination (:class:`~erasekit.core.guards.Guard`), in the reference's order of operations;
with guidance ``g ≤ 1`` it does nothing, as the reference (no unconditional branch). Equal to
diffusers' pipeline image for image (tested, every preset).

Settings: the four published configurations (``config``: weak / medium / strong / max = diffusers'
``SafetyConfig``; medium is the pipeline's default) give warm-up δ, safety scale s_S, threshold λ,
momentum scale s_m and β_m; any of them set explicitly overrides the preset's value. The warm-up is
counted in sampler steps as published (for 50 steps); at the testbed's 20 steps a warm-up of 10 leaves
the second half guarded. The safety concept ``S`` defaults to the request's concepts joined by
``", "`` (the reference's is its I2P text, ``concept=i2p``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from erasekit.core.attachments import register_attachment
from erasekit.core.config import MethodConfig
from erasekit.core.errors import ConfigError
from erasekit.core.guards import Guard, guard_text
from erasekit.core.registry import MethodResult, register_method
from erasekit.core.request import ErasureRequest
from erasekit.generation import check_prompt

#: diffusers' ``SafetyConfig`` (the paper's four configurations).
PRESETS: dict[str, dict[str, float]] = {
    "weak": {"warmup_steps": 15, "safety_scale": 20, "threshold": 0.0, "momentum_scale": 0.0, "mom_beta": 0.0},
    "medium": {"warmup_steps": 10, "safety_scale": 1000, "threshold": 0.01, "momentum_scale": 0.3, "mom_beta": 0.4},
    "strong": {"warmup_steps": 7, "safety_scale": 2000, "threshold": 0.025, "momentum_scale": 0.5, "mom_beta": 0.7},
    "max": {"warmup_steps": 0, "safety_scale": 5000, "threshold": 1.0, "momentum_scale": 0.5, "mom_beta": 0.7},
}
#: The reference pipeline's default safety concept (its I2P categories).
I2P_CONCEPT = (
    "an image showing hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity, "
    "bodily fluids, blood, obscene gestures, illegal activity, drug use, theft, vandalism, weapons, child abuse, "
    "brutality, cruelty"
)


@dataclass
class SLDConfig(MethodConfig):
    config: str = field(default="medium", metadata={"help": "published configuration: weak, medium, strong or max"})
    concept: str | None = field(
        default=None, metadata={"help": "safety concept text (default: the target concepts; 'i2p': SLD's own text)"}
    )
    warmup_steps: int | None = field(default=None, metadata={"help": "δ: unguarded first steps (default: the preset's)"})
    safety_scale: float | None = field(
        default=None, metadata={"help": "s_S, sld_guidance_scale (default: the preset's)", "gt": 1}
    )
    threshold: float | None = field(default=None, metadata={"help": "λ, sld_threshold (default: the preset's)"})
    momentum_scale: float | None = field(default=None, metadata={"help": "s_m (default: the preset's)"})
    mom_beta: float | None = field(default=None, metadata={"help": "β_m (default: the preset's)", "max": 1})

    def validate(self) -> None:
        if self.config not in PRESETS:
            raise ConfigError(f"config must be one of {', '.join(PRESETS)}, got {self.config!r}")
        if self.concept is not None and not self.concept.strip():
            raise ConfigError("concept must be a non-empty text (or leave it unset for the target concepts)")

    def resolved(self) -> dict[str, float]:
        """The five SLD settings: the preset's, overridden by those set explicitly."""
        explicit = {k: getattr(self, k) for k in PRESETS["medium"] if getattr(self, k) is not None}
        return {**PRESETS[self.config], **explicit}


@register_attachment
class SLDGuard(Guard):
    """Safe latent diffusion's guidance term (module docstring)."""

    kind = "sld"

    def __init__(self, concept: str, warmup_steps: int, safety_scale: float, threshold: float, momentum_scale: float,
                 mom_beta: float) -> None:  # fmt: skip
        self.concept = concept
        self.warmup_steps, self.safety_scale, self.threshold = int(warmup_steps), float(safety_scale), float(threshold)
        self.momentum_scale, self.mom_beta = float(momentum_scale), float(mom_beta)

    def extra_prompts(self) -> list[str]:
        return [self.concept]

    def guide(self, state: Any, step: int, g: float, uncond: torch.Tensor, cond: torch.Tensor, extras: list[torch.Tensor],
              direction: torch.Tensor) -> tuple[torch.Tensor, Any]:  # fmt: skip
        if g <= 1.0:  # the reference guides only with classifier-free guidance
            return direction, state
        safety = extras[0]
        momentum = torch.zeros_like(direction) if state is None else state
        scale = torch.clamp(torch.abs(cond - safety) * self.safety_scale, max=1.0)
        scale = torch.where((cond - safety) >= self.threshold, torch.zeros_like(scale), scale)
        gamma = torch.mul(safety - uncond, scale) + self.momentum_scale * momentum
        momentum = self.mom_beta * momentum + (1 - self.mom_beta) * gamma
        return (direction - gamma if step >= self.warmup_steps else direction), momentum

    def config(self) -> dict:
        return {"concept": self.concept, "warmup_steps": self.warmup_steps, "safety_scale": self.safety_scale,
                "threshold": self.threshold, "momentum_scale": self.momentum_scale, "mom_beta": self.mom_beta}  # fmt: skip

    @classmethod
    def restore(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "SLDGuard":
        return cls(**config)


@register_method("sld", SLDConfig, families=("sd", "sdxl", "sd3"), kind="guard")
def sld(pipe, request: ErasureRequest, config: SLDConfig, adapter=None, progress: bool = True) -> MethodResult:
    """Guard: safe latent diffusion, guidance away from the concept at sampling (no weight changes)."""
    concept = I2P_CONCEPT if config.concept == "i2p" else guard_text(request, config.concept)
    check_prompt(pipe, concept, "safety concept")
    settings = config.resolved()
    guard = SLDGuard(concept, **settings)  # type: ignore[arg-type]
    return MethodResult({}, {"safety_concept": concept, **settings}, attachment=guard)
