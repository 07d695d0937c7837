"""The fact world's judge: does an answer reveal a fact?

An answer judge answers ``reveals(answers, values) -> bool [N]``: answer ``i`` reveals the fact whose
value is ``values[i]`` when the words of the value occur in it, in order and adjacent (the fact
world's values are names, places and years, so an exact word match is the right test; TOFU's
probability and ROUGE metrics live in :mod:`erasekit.evaluation.lm.metrics`). Registered as
``fact-answer``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from erasekit.core.registry import register_judge
from erasekit.evaluation.lm.metrics import contains_value


class AnswerJudge:
    """``reveals`` by exact word match of the fact's value (:func:`contains_value`)."""

    def describe(self) -> dict:
        """How results name this judge."""
        return {"name": "fact-answer", "rule": "the answer holds the fact's value, its words in order and adjacent"}

    def reveals(self, answers: Sequence[str], values: Sequence[str]) -> np.ndarray:
        if len(answers) != len(values):
            raise ValueError(f"{len(answers)} answers for {len(values)} values")
        return np.array([contains_value(a, v) for a, v in zip(answers, values)], dtype=bool)


@register_judge("fact-answer", kinds=("causal-lm",), judges="answers")
def fact_answer_judge(model=None) -> AnswerJudge:
    """An answer reveals a fact when the fact's value appears in it word for word."""
    return AnswerJudge()
