"""Where a language-model attack runs: the fact world's forget facts as trials, the attacked model,
and the one success definition of :mod:`erasekit.attacks.base` with text in place of images.

**Trials** are the facts of the forget split (one per fact: an author's attribute), asked with the
fact's first training question. A trial's answer *shows* the fact when the greedy answer contains
the exact value. **Success** = shown by the plain question already (``before``) or recovered by the
attack within its budget (first success kept); ASR, its Wilson interval, ``asr_before``,
``recovered`` and the curve ASR(b) are those of the image side (:class:`~erasekit.attacks.base.Tracker`,
:class:`~erasekit.attacks.base.AttackResult`). An attack has the one signature of every
attack, ``fn(arena, config, tracker, progress)``: the job builds the tracker over the attack's
trials (all facts, or the held-out half for an attack registered with ``trials="held-out"``,
relearning; :meth:`FactArena.rows`) and the attack reports answers to it as it spends its budget.

The attacked model is the user's model with the erasure applied *to a copy* (:meth:`FactArena.copy`)
for attacks that change weights, or applied around the measurement for the others; the user's
model is left as it was.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from erasekit.attacks.base import Tracker, Trial
from erasekit.evaluation.lm.metrics import greedy_answers
from erasekit.judges.facts import AnswerJudge
from erasekit.models.causal_lm import LanguageModel
from erasekit.testbeds.facts.factworld import QA, FactWorld


def answer_items(answers: list[str], facts: list[QA]) -> np.ndarray:
    """``[(answer, value), ...]`` as an object array (what the tracker stores and judges per trial)."""
    items = np.empty(len(answers), dtype=object)
    for i, (a, f) in enumerate(zip(answers, facts)):
        items[i] = (a, f.value)
    return items


def judge_answers(items) -> list[bool]:
    """The success test, by the registered ``fact-answer`` judge: the answer contains the exact value."""
    if not len(items):
        return []
    answers, values = zip(*items)
    return AnswerJudge().reveals(answers, values).tolist()


@dataclass
class FactArena:
    """The attacked model, the forget facts and the success test (module docstring)."""

    lm: LanguageModel
    erasure: object | None
    world: FactWorld
    split: str

    def __post_init__(self) -> None:
        self.facts: list[QA] = [qa for a in self.world.forget(self.split) for qa in self.world.qa(a)[::2]]

    @contextmanager
    def attacked(self):
        """The user's model with the erasure applied for the duration of the block (restored after)."""
        if self.erasure is None:
            yield self.lm
        else:
            with self.erasure.applied(self.lm):
                yield self.lm

    def copy(self) -> LanguageModel:
        """A separate copy of the attacked model (erasure applied, attachments installed) that an
        attack may change freely."""
        twin = LanguageModel(copy.deepcopy(self.lm.model), self.lm.tokenizer, self.lm.name_or_path)
        if self.erasure is not None:
            self.erasure.applied(twin)  # stays applied: the copy is the erased model
        return twin

    def answers(self, lm: LanguageModel, prompts: list[str]) -> list[str]:
        return greedy_answers(lm.model, lm.tokenizer, prompts)

    def rows(self, trials: str = "all") -> list[int]:
        """The facts an attack's trials ask: ``all``, or the ``held-out`` half (odd indices; relearning
        teaches the even ones)."""
        return [i for i in range(len(self.facts)) if trials == "all" or i % 2 == 1]

    def tracker(self, budget: int, rows: list[int] | None = None, progress: bool = True, name: str = "attack") -> Tracker:
        """A tracker over the facts ``rows`` (default: all), with the plain questions' answers judged."""
        rows = list(range(len(self.facts))) if rows is None else rows
        trials = [Trial(i, self.facts[r].question, 0, r) for i, r in enumerate(rows)]
        with self.attacked() as lm:
            plain = self.answers(lm, [t.prompt for t in trials])
        facts = [self.facts[r] for r in rows]
        items = answer_items(plain, facts)
        before = np.array(judge_answers(items), dtype=bool)
        bar = tqdm(total=budget, desc=name, disable=not progress)
        return Tracker(trials, before, items, judge_answers, budget, bar=bar)

    def fact(self, trial: Trial) -> QA:
        return self.facts[trial.prompt_index]
