"""What erasekit knows about a model beyond its weights, resolved once from the pipeline.

A testbed model (a pipeline directory with ``testbed.json`` beside it) comes with a world: implicit
concepts and their trigger prompts (the watermark), a closed vocabulary, recommended sampling, a
judge (``classifier.safetensors``) and exact pixel masks of any concept. Any other model has none of
these. Methods that can use them declare ``accepts=("profile",)`` and read them from the
:class:`ModelProfile` they are handed, instead of testing for the testbed themselves.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass(frozen=True)
class ModelProfile:
    """A model's world: ``name`` is ``"testbed"`` or ``"generic"`` (nothing known beyond the weights)."""

    name: str = "generic"
    root: Path | None = None
    implicit_triggers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    vocabulary: frozenset[str] | None = None
    sampling: Mapping[str, float] = field(default_factory=dict)
    #: An oracle's concepts left out of its training data, and the model that still draws them.
    excluded: tuple[str, ...] = ()
    reference: str | None = None

    @property
    def has_exact_masks(self) -> bool:
        """Whether :meth:`concept_renders` can draw a concept with its exact pixel mask."""
        return self.name == "testbed"

    def with_implicit(self, request):
        """``request`` with the model's implicit concepts (named, given no prompts) given their triggers."""
        return request.with_implicit(self.implicit_triggers) if self.implicit_triggers else request

    def check_vocabulary(self, request) -> None:
        """On a closed-vocabulary model every word of the request must be one the model knows."""
        from .core.errors import ConfigError

        if self.vocabulary is None:
            return
        phrases = [p for t in request.targets for p in (*t.phrases(), t.anchor or "")] + list(request.preserve)
        unknown = sorted({w for p in phrases for w in p.lower().split() if w not in self.vocabulary})
        if unknown:
            raise ConfigError(
                f"not in the {self.name}'s vocabulary: {', '.join(unknown)} (see docs/testbed.md for its {len(self.vocabulary)} "
                "words; a concept no word names is erased through the prompts that show it: --trigger PROMPT)"
            )

    def classifier(self):
        """The model's own judge (its ``classifier.safetensors``), or ``None``."""
        if self.root is None or not (self.root / "classifier.safetensors").is_file():
            return None
        from .testbed.classifier import load_classifier

        return load_classifier(self.root / "classifier.safetensors")

    def concept_renders(self, concept: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` images showing ``concept`` and their exact masks (testbed worlds only)."""
        if not self.has_exact_masks:
            raise ValueError(f"a {self.name} model has no exact concept masks")
        from .testbed.exact import concept_renders

        return concept_renders(concept, n, seed)


def profile_of(pipe) -> ModelProfile:
    """The profile of a loaded pipeline, from the files beside it (``testbed.json`` marks a testbed)."""
    root = getattr(pipe, "name_or_path", None)
    return profile_at(Path(root) if root and Path(root).is_dir() else None)


def profile_at(root: Path | None) -> ModelProfile:
    """The profile of the pipeline directory ``root`` (read from its ``testbed.json``, if any)."""
    if root is None or not (root / "testbed.json").is_file():
        return ModelProfile(root=root)
    from .testbed.world import IMPLICIT_TRIGGERS, vocabulary

    try:
        meta = json.loads((root / "testbed.json").read_text())
    except (OSError, ValueError):
        meta = {}
    return ModelProfile("testbed", root, dict(IMPLICIT_TRIGGERS), frozenset(vocabulary()), meta.get("sampling", {}),
                        tuple(meta.get("excluded", ())), meta.get("reference"))  # fmt: skip
