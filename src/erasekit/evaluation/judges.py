"""Judges that methods may be handed for validation (RECE picks its best epoch with one).

A judge answers one question, ``shows(images, concept) -> bool [N]``; methods never know which judge
(or which model) they got. The testbed judge wraps the testbed classifier.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..core.errors import ConfigError
from .metrics import labels_of, shows
from .prompts import resolve_concept


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

    def shows(self, images: np.ndarray, concept: str) -> np.ndarray:
        canonical, domain = resolve_concept(concept)
        pred = self.classifier.predict(images)
        return shows(labels_of(pred, np.arange(len(images))), canonical, domain)
