"""Safety filter — the last line of deployed systems (diffusers' ``StableDiffusionSafetyChecker``,
Rando et al. 2022 "Red-teaming the Stable Diffusion safety filter"): generate, judge each image, and
replace every image judged to show the concept by a black one, as diffusers' checker does.

A guard (no weight changes) whose judge is a registered one (``erasekit judges``; ``--set
filter_judge=nudenet:threshold=0.5``), by default the model's own (the testbed classifier on the testbed).
It acts on every image erasekit's samplers return (``generate``, the attack arena); the judge is
built once, when the guard is applied.

A filter is only as good as its judge. Measured with the evaluation's own judge (the default on the
testbed), it removes exactly what that judge sees, so its UA is 100 % by construction and no attack
can beat it unless it fools that same judge; its cost shows in IRA / CRA (images of other concepts the
judge flags turn black). Give it a different judge than the evaluation's to measure it as a real
deployment would be measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from erasekit.core.attachments import register_attachment
from erasekit.core.config import MethodConfig
from erasekit.core.errors import ConfigError
from erasekit.core.guards import Guard
from erasekit.core.registry import DIFFUSION_FAMILIES, MethodResult, register_method
from erasekit.core.request import ErasureRequest
from erasekit.models import DIFFUSION


@dataclass
class SafetyFilterConfig(MethodConfig):
    filter_judge: str | None = field(
        default=None, metadata={"help": "registered judge NAME[:k=v,...] that flags images (default: the model's own)"}
    )


@register_attachment
class SafetyFilter(Guard):
    """Blacks out every image ``judge`` says shows one of ``concepts``."""

    kind = "safety-filter"

    def __init__(self, judge: str, concepts: list[str]) -> None:
        self.judge_spec, self.concepts = judge, list(concepts)
        self._judge = None

    def install(self, pipe) -> list:
        from erasekit.judges import make_judge
        from erasekit.models.profile import profile_of

        root = profile_of(pipe).root
        self._judge = make_judge(self.judge_spec, kind=DIFFUSION, model=str(root) if root is not None else None)
        return super().install(pipe)

    def filter(self, images: np.ndarray) -> np.ndarray:
        if self._judge is None or not len(images):
            return images
        flagged = np.zeros(len(images), dtype=bool)
        for c in self.concepts:
            flagged |= np.asarray(self._judge.shows(images, c), dtype=bool)
        if not flagged.any():
            return images
        out = images.copy()
        out[flagged] = 0
        return out

    def config(self) -> dict:
        return {"judge": self.judge_spec, "concepts": self.concepts}

    @classmethod
    def restore(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "SafetyFilter":
        return cls(str(config["judge"]), list(config["concepts"]))


@register_method("safety-filter", SafetyFilterConfig, families=DIFFUSION_FAMILIES, kind="guard", accepts=("profile",))
def safety_filter(pipe, request: ErasureRequest, config: SafetyFilterConfig, adapter=None, progress: bool = True,
                  profile=None) -> MethodResult:  # fmt: skip
    """Guard: judge every generated image and black out those that show the concept (no weight changes)."""
    from erasekit.judges import make_judge

    spec = config.filter_judge or (profile.judge if profile is not None else None)
    if spec is None:
        raise ConfigError(
            "safety-filter: this model has no judge of its own; pass --set filter_judge=NAME (see 'erasekit judges')"
        )
    root = profile.root if profile is not None else None
    judge = make_judge(spec, kind=DIFFUSION, model=str(root) if root is not None else None)  # refused here, not when applied
    unknown = [c for c in request.concepts if not judge.knows(c)]
    if unknown:
        raise ConfigError(f"safety-filter: the {spec.split(':')[0]} judge cannot tell {unknown[0]!r}")
    return MethodResult({}, {"judge": spec}, attachment=SafetyFilter(spec, request.concepts))
