"""Judges that methods may be handed for validation (RECE picks its best epoch with one).

A judge answers one question, ``shows(images, concept) -> bool [N]``; methods never know which judge
(or which model) they got. The testbed judge wraps the testbed classifier.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .metrics import labels_of, shows
from .prompts import resolve_concept


class ConceptJudge(Protocol):
    def shows(self, images: np.ndarray, concept: str) -> np.ndarray: ...


class TestbedJudge:
    """``shows`` by the testbed classifier: the concept's domain label (or all of a character's attributes)."""

    def __init__(self, classifier) -> None:
        self.classifier = classifier

    def shows(self, images: np.ndarray, concept: str) -> np.ndarray:
        canonical, domain = resolve_concept(concept)
        pred = self.classifier.predict(images)
        return shows(labels_of(pred, np.arange(len(images))), canonical, domain)
