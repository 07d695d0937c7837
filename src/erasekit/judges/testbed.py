"""The image world's judge: the testbed classifier, and the protocol every image judge keeps.

An image judge answers one question, ``shows(images, concept) -> bool [N]`` (and ``knows(concept)``);
methods (RECE picks its best epoch with one), evaluation and attacks never know which judge (or
which model) they got. Registered as ``testbed`` (:func:`erasekit.core.registry.get_judge`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from erasekit.core.errors import ConfigError, MissingFileError
from erasekit.core.registry import DIFFUSION_FAMILIES, register_judge
from erasekit.evaluation.metrics import labels_of, shows
from erasekit.evaluation.prompts import resolve_concept


class ConceptJudge(Protocol):
    def knows(self, concept: str) -> bool: ...

    def shows(self, images: np.ndarray, concept: str) -> np.ndarray: ...


class TestbedJudge:
    """``shows`` by the testbed classifier: the concept's domain label (or all of a character's attributes)."""

    def __init__(self, classifier) -> None:
        self.classifier = classifier

    def knows(self, concept: str) -> bool:
        """Can this judge tell whether an image shows ``concept`` (a world concept or the watermark)?"""
        try:
            resolve_concept(concept)
        except ConfigError:
            return False
        return True

    def describe(self) -> dict:
        """How results name this judge."""
        return {"name": "testbed", "classifier": "the testbed classifier (colour, shape, style, background, watermark)"}

    def shows(self, images: np.ndarray, concept: str) -> np.ndarray:
        canonical, domain = resolve_concept(concept)
        pred = self.classifier.predict(images)
        return shows(labels_of(pred, np.arange(len(images))), canonical, domain)


def load_classifier_of(model: str | os.PathLike = "testbed", classifier: str | os.PathLike | None = None):
    """The testbed classifier that judges images of ``model``'s world, or ``None`` outside the testbed.

    An explicit ``classifier`` path wins; otherwise the shipped judge for ``testbed``, or a
    ``classifier.safetensors`` beside a pipeline exported from a testbed.
    """
    from erasekit.models import ORACLE, is_testbed, resolve_model, testbed_classifier_path
    from erasekit.models.profile import ModelProfile
    from erasekit.testbeds.image.classifier import load_classifier

    if classifier is not None:
        if not Path(classifier).is_file():
            raise MissingFileError(f"classifier weights {classifier} do not exist")
        return load_classifier(classifier)
    if is_testbed(model):
        return load_classifier(testbed_classifier_path())
    if str(model) == ORACLE:
        model = resolve_model(model)
    return ModelProfile(root=Path(str(model))).classifier()


@register_judge("testbed", kinds=DIFFUSION_FAMILIES, judges="images", options=("classifier",))
def testbed_judge(model: str | os.PathLike = "testbed", classifier: str | os.PathLike | None = None) -> TestbedJudge:
    """The testbed classifier (colour, shape, style, background, watermark), trained apart from the model."""
    found = load_classifier_of(model, classifier)
    if found is None:
        raise ConfigError(f"{model!s} has no testbed classifier; pass classifier=PATH (a classifier.safetensors)")
    return TestbedJudge(found)
