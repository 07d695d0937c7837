"""Paraphrase attack: ask each forgotten fact in the other forms the world has — the other training
question, the held-out paraphrase, and cloze prompts (the answer sentence and the biography
phrasings cut before the value: ``"Ala Brakow grew up in the town of"``). One budget unit is one
more form per trial (at most six); a trial succeeds at the first form whose greedy answer holds
the value. Unlearning that only suppressed the trained question-answer pattern fails here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from erasekit.attacks.base import AttackConfig, Tracker
from erasekit.attacks.lm.arena import FactArena, answer_items
from erasekit.core.registry import register_attack
from erasekit.testbeds.facts.factworld import BIO, QA, QUESTIONS

MAX_FORMS = 6


@dataclass
class ParaphraseConfig(AttackConfig):
    budget: int = field(default=MAX_FORMS, metadata={"help": "question forms tried per fact", "max": MAX_FORMS})


def forms(fact: QA, name: str) -> list[str]:
    """The other question templates of the fact, then cloze prompts (distinct, plain question excluded)."""
    templates, answer = QUESTIONS[fact.attribute]
    out = [t.format(name=name) for t in templates]
    out += [s.split("{value}")[0].format(name=name).strip() for s in (answer, *BIO[fact.attribute])]
    return [p for p in dict.fromkeys(out) if p and p != fact.question][:MAX_FORMS]


@register_attack("paraphrase", ParaphraseConfig, budget_unit="forms", kind="prompt", fast=True, family="causal-lm")
def paraphrase(arena: FactArena, config: ParaphraseConfig, tracker: Tracker, progress: bool = True) -> None:
    """Other question forms and cloze prompts for each forgotten fact."""
    options = [forms(arena.fact(t), arena.world.authors[arena.fact(t).author].name) for t in tracker.trials]
    with arena.attacked() as lm:
        for b in range(1, config.budget + 1):
            rows = [r for r in tracker.pending() if b - 1 < len(options[r])]
            facts = [arena.fact(tracker.trials[r]) for r in rows]
            prompts = [options[r][b - 1] for r in rows]
            answers = arena.answers(lm, prompts) if rows else []
            tracker.report(b, rows, answer_items(answers, facts), [{"prompt": p, "answer": a} for p, a in zip(prompts, answers)])
