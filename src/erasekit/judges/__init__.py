"""Judges: what decides whether a concept came back, one module each, registered by name on the
registry's ``kinds`` axis (``erasekit judges`` lists them): :mod:`.testbed` (images of the testbed
world, by its classifier) and :mod:`.facts` (answers of the fact world). A new judge is one module
here plus its import below; ``get_judge(name, kind).factory(model, **options)`` builds it.
"""

from erasekit.judges import facts, testbed  # noqa: F401  (each module registers its judge)
from erasekit.judges.facts import AnswerJudge
from erasekit.judges.testbed import ConceptJudge, TestbedJudge, load_classifier_of

__all__ = ["AnswerJudge", "ConceptJudge", "TestbedJudge", "load_classifier_of"]
