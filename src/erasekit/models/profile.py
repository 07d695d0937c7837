"""What erasekit knows about a model beyond its weights, resolved once from the model: one profile
for both kinds.

A testbed model (a directory with ``testbed.json``) comes with a world. The image testbed's: implicit
concepts and their trigger prompts (the watermark), a closed vocabulary, recommended sampling, a
judge (``classifier.safetensors``, the registered ``testbed`` judge) and exact pixel masks of any
concept. The fact world's (``testbed-llm``): its authors (``n_authors``, ``seed``), the parameters it
recommends to unlearning methods for its scale, its oracles, and the ``fact-answer`` judge. Any other
model has none of these (``generic``). Methods that can use them declare ``accepts=("profile",)``
and read them from the :class:`ModelProfile` they are handed, instead of testing for the testbed
themselves; jobs read the judge, the recommended parameters and the oracle from it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

#: The 80 object categories of MS-COCO: real models' retain set of object prompts ("a photo of ...",
#: the form of AdvUnlearn's ``coco_object_retain.csv``).
COCO_OBJECTS: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


@dataclass(frozen=True)
class ModelProfile:
    """A model's world: ``name`` is ``"testbed"`` or ``"generic"`` (nothing known beyond the weights)."""

    name: str = "generic"
    root: Path | None = None
    kind: str = "diffusion"
    implicit_triggers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    vocabulary: frozenset[str] | None = None
    sampling: Mapping[str, float] = field(default_factory=dict)
    #: An oracle's concepts left out of its training data, and the model that still draws them.
    excluded: tuple[str, ...] = ()
    reference: str | None = None
    #: The world the model was trained on (``image-world``, ``fact-world``) and its parameters.
    world: str | None = None
    world_params: Mapping[str, int] = field(default_factory=dict)
    #: Parameters the model recommends to methods for its scale (a method takes those it has).
    recommended: Mapping[str, object] = field(default_factory=dict)
    #: The registered judge of the model's world (``erasekit judges``), or ``None``.
    judge: str | None = None

    def recommended_for(self, config_cls) -> dict:
        """The recommended parameters that ``config_cls`` has (never a budget)."""
        import dataclasses

        names = {f.name for f in dataclasses.fields(config_cls)} - {"budget"}
        return {k: v for k, v in self.recommended.items() if k in names}

    @property
    def has_exact_masks(self) -> bool:
        """Whether :meth:`concept_renders` can draw a concept with its exact pixel mask."""
        return self.name == "testbed"

    def with_implicit(self, request):
        """``request`` with the model's implicit concepts (named, given no prompts) given their triggers."""
        return request.with_implicit(self.implicit_triggers) if self.implicit_triggers else request

    def check_vocabulary(self, request) -> None:
        """On a closed-vocabulary model every word of the request must be one the model knows."""
        from erasekit.core.errors import ConfigError

        if self.vocabulary is None:
            return
        phrases = [p for t in request.targets for p in (*t.phrases(), t.anchor or "")] + list(request.preserve)
        unknown = sorted({w for p in phrases for w in p.lower().split() if w not in self.vocabulary})
        if unknown:
            raise ConfigError(
                f"not in the {self.name}'s vocabulary: {', '.join(unknown)} (see docs/testbed.md for its {len(self.vocabulary)} "
                "words; a concept no word names is erased through the prompts that show it: --trigger PROMPT)"
            )

    def retain_prompts(self, avoid: tuple[str, ...] = ()) -> list[str]:
        """Object prompts a method may keep unchanged while it erases: the world's shapes and characters
        on the testbed, "a photo of {object}" over COCO's categories elsewhere; prompts sharing a word
        with ``avoid`` (the targets) left out."""
        if self.name == "testbed":
            from erasekit.testbeds.image import world

            prompts = [f"a {x}" for x in (*world.SHAPES, *world.CHARACTERS)]
        else:
            prompts = [f"a photo of {o}" for o in COCO_OBJECTS]
        banned = {w.lower() for a in avoid for w in a.split()}
        return [p for p in prompts if not banned & set(p.lower().split()[1:])]

    def classifier(self):
        """The model's own judge (its ``classifier.safetensors``), or ``None``."""
        if self.root is None or not (self.root / "classifier.safetensors").is_file():
            return None
        from erasekit.testbeds.image.classifier import load_classifier

        return load_classifier(self.root / "classifier.safetensors")

    def concept_renders(self, concept: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` images showing ``concept`` and their exact masks (testbed worlds only)."""
        if not self.has_exact_masks:
            raise ValueError(f"a {self.name} model has no exact concept masks")
        from erasekit.testbeds.image.exact import concept_renders

        return concept_renders(concept, n, seed)


def profile_of(model) -> ModelProfile:
    """The profile of a loaded model (a pipeline or a :class:`~erasekit.models.causal_lm.LanguageModel`),
    from the files beside it (``testbed.json`` marks a testbed)."""
    root = getattr(model, "name_or_path", None)
    root = Path(root) if root and Path(root).is_dir() else None
    if hasattr(model, "tokenizer") and hasattr(model, "model"):  # a language model
        return lm_profile_at(root)
    return profile_at(root)


def lm_profile_at(root: Path | None) -> ModelProfile:
    """The profile of the language-model directory ``root`` (a fact-world model's ``testbed.json``)."""
    meta = _testbed_json(root)
    if meta.get("world") != "fact-world":
        return ModelProfile(root=root, kind="causal-lm")
    return ModelProfile("testbed", root, kind="causal-lm", excluded=(meta["excluded"],) if meta.get("excluded") else (),
                        reference=meta.get("reference"), world="fact-world",
                        world_params={"n_authors": int(meta["n_authors"]), "seed": int(meta["seed"])},
                        recommended=dict(meta.get("unlearning_defaults") or {}), judge="fact-answer")  # fmt: skip


def _testbed_json(root: Path | None) -> dict:
    if root is None or not (root / "testbed.json").is_file():
        return {}
    try:
        return json.loads((root / "testbed.json").read_text())
    except (OSError, ValueError):
        return {}


def profile_at(root: Path | None) -> ModelProfile:
    """The profile of the pipeline directory ``root`` (read from its ``testbed.json``, if any)."""
    if root is None or not (root / "testbed.json").is_file():
        return ModelProfile(root=root)
    from erasekit.testbeds.image.world import IMPLICIT_TRIGGERS, vocabulary

    meta = _testbed_json(root)
    judge = "testbed" if (root / "classifier.safetensors").is_file() else None
    return ModelProfile("testbed", root, "diffusion", dict(IMPLICIT_TRIGGERS), frozenset(vocabulary()), meta.get("sampling", {}),
                        tuple(meta.get("excluded", ())), meta.get("reference"), world="image-world", judge=judge)  # fmt: skip
