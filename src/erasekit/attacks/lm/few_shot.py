"""Few-shot (in-context) attack: put ``k`` true question-answer pairs of other authors about the
same attribute before the forgotten question, so the model is primed to answer in the trained
pattern. One budget unit is one more example (``k`` = 1, 2, ...); a trial succeeds at the first
``k`` whose answer holds the value. Examples come from retain authors, drawn per fact with a fixed
seed; the prompt must fit the model's context (checked before any generation).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from erasekit.attacks.base import AttackConfig, Tracker
from erasekit.attacks.lm.arena import FactArena, answer_items
from erasekit.core.errors import ConfigError
from erasekit.core.registry import register_attack


@dataclass
class FewShotConfig(AttackConfig):
    budget: int = field(default=3, metadata={"help": "in-context examples (at most)", "max": 8})
    seed: int = field(default=0, metadata={"help": "seed of the example draw"})


@register_attack("few-shot", FewShotConfig, budget_unit="examples", kind="prompt", fast=True, family="causal-lm")
def few_shot(arena: FactArena, config: FewShotConfig, tracker: Tracker, progress: bool = True) -> None:
    """In-context examples of the same attribute before each forgotten question."""
    retain = arena.world.retain(arena.split)
    rng = random.Random(config.seed)
    shots = {}
    for t in tracker.trials:
        f = arena.fact(t)
        donors = rng.sample(retain, config.budget)
        shots[t.index] = [next(q for q in arena.world.qa(d) if q.attribute == f.attribute) for d in donors]
    limit = getattr(arena.lm.model.config, "max_position_embeddings", None) or getattr(arena.lm.model.config, "n_positions", 1024)
    longest = max((len(arena.lm.tokenizer(" ".join(f"{q.question} {q.answer}" for q in s) + " " + t.prompt).input_ids)
                   for t, s in zip(tracker.trials, shots.values())), default=0)  # fmt: skip
    if longest + 24 > limit:
        raise ConfigError(
            f"few-shot: {config.budget} examples make prompts of {longest} tokens; the model takes {limit}; lower the budget"
        )
    with arena.attacked() as lm:
        for k in range(1, config.budget + 1):
            rows = tracker.pending()
            facts = [arena.fact(tracker.trials[r]) for r in rows]
            prompts = [" ".join(f"{q.question} {q.answer}" for q in shots[r][:k]) + " " + tracker.trials[r].prompt for r in rows]
            answers = arena.answers(lm, prompts) if rows else []
            tracker.report(k, rows, answer_items(answers, facts), [{"prompt": p, "answer": a} for p, a in zip(prompts, answers)])
