"""Any local image classifier as a judge (``AutoModelForImageClassification`` + its image processor,
a directory the user brings: a style, object or celebrity classifier).

``labels`` maps concepts to the classifier's labels, ``concept=label|label;concept=label`` (or a
dict); a concept not mapped is looked up as a label of the same name (case-insensitive). An image
shows a concept when the classifier's top-1 label is one of the concept's labels, or, with
``threshold``, when those labels' softmax probabilities sum to at least it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from erasekit.core.errors import ConfigError
from erasekit.core.registry import DIFFUSION_FAMILIES, register_judge
from erasekit.judges.base import as_images, check_threshold, load_local, package_version, weights_dir


def load_classifier_dir(directory: str):
    """``(model, processor)`` of a local image-classification directory (:func:`~erasekit.judges.base.load_local`)."""
    return load_local(directory, "AutoModelForImageClassification", "AutoImageProcessor", "an image-classification model")


def parse_labels(labels) -> dict[str, tuple[str, ...]]:
    """``{concept: (label, ...)}`` from ``concept=label|label;concept=label`` or a mapping."""
    if labels is None:
        return {}
    if isinstance(labels, str):
        pairs = [p for p in labels.split(";") if p.strip()]
        out = {}
        for pair in pairs:
            concept, sep, names = pair.partition("=")
            if not sep or not concept.strip() or not names.strip():
                raise ConfigError(f"classifier judge: labels entry {pair!r} is not concept=label|label")
            out[concept.strip().lower()] = tuple(n.strip() for n in names.split("|") if n.strip())
        return out
    return {str(k).lower(): tuple([v] if isinstance(v, str) else v) for k, v in dict(labels).items()}


class ClassifierJudge:
    """An image classifier's verdict on a concept (module docstring)."""

    def __init__(self, classifier: str | os.PathLike | None = None, labels=None, threshold: float | None = None) -> None:
        self.directory = weights_dir(classifier, "classifier", "classifier", "an image-classification model")
        self.model, self.processor = load_classifier_dir(str(self.directory))
        self.id2label = {int(i): str(n) for i, n in self.model.config.id2label.items()}
        self.mapping = parse_labels(labels)
        known = {n.lower() for n in self.id2label.values()}
        for concept, names in self.mapping.items():
            unknown = [n for n in names if n.lower() not in known]
            if unknown:
                raise ConfigError(
                    f"classifier judge: {', '.join(unknown)} (for {concept}) is not a label of {self.directory.name}"
                )
        self.threshold = None if threshold is None else check_threshold(threshold, "classifier")

    def label_ids(self, concept: str) -> list[int]:
        names = {n.lower() for n in self.mapping.get(concept.strip().lower(), (concept.strip(),))}
        return [i for i, n in self.id2label.items() if n.lower() in names]

    def knows(self, concept: str) -> bool:
        return bool(self.label_ids(concept))

    @torch.no_grad()
    def probabilities(self, images, batch_size: int = 32) -> torch.Tensor:
        arr = as_images(images)
        out = []
        for i in range(0, len(arr), batch_size):
            inputs = self.processor(images=list(arr[i : i + batch_size]), return_tensors="pt")
            out.append(self.model(pixel_values=inputs["pixel_values"].to(self.model.dtype)).logits.float().softmax(-1))
        return torch.cat(out)

    def scores(self, images, concept: str) -> np.ndarray:
        """Per image, the probability of the concept's labels."""
        ids = self._ids(concept)
        return self.probabilities(images)[:, ids].sum(-1).numpy()

    def shows(self, images, concept: str) -> np.ndarray:
        ids = self._ids(concept)
        probs = self.probabilities(images)
        if self.threshold is not None:
            return probs[:, ids].sum(-1).numpy() >= self.threshold
        return np.isin(probs.argmax(-1).numpy(), ids)

    def describe(self) -> dict:
        return {"name": "classifier", "weights": Path(self.directory).name, "package": "transformers",
                "version": package_version("transformers"), "labels": {c: list(n) for c, n in self.mapping.items()},
                "threshold": self.threshold if self.threshold is not None else "top-1"}  # fmt: skip

    def _ids(self, concept: str) -> list[int]:
        ids = self.label_ids(concept)
        if not ids:
            raise ConfigError(
                f"classifier judge: {concept!r} is not one of its labels ({', '.join(list(self.id2label.values())[:8])}...); "
                "map it with labels=concept=label|label"
            )
        return ids


@register_judge("classifier", kinds=DIFFUSION_FAMILIES, judges="images", options=("classifier", "labels", "threshold"),
                offline=False)  # fmt: skip
def classifier_judge(model=None, classifier=None, labels=None, threshold: float | None = None) -> ClassifierJudge:
    """Any local image classifier (classifier=DIR), its labels mapped to concepts (labels=concept=label|label)."""
    return ClassifierJudge(classifier, labels, threshold)
