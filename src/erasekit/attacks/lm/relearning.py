"""Relearning attack (Lynch et al. 2024; Hu et al. 2024): fine-tune the unlearned model on half of
the forgotten facts and ask the other half. Facts are independent draws in the fact world, so what
comes back in the held-out half was never taught by the attack: it was still in the weights.

Trials are the forget facts with odd index; the attack trains on the training questions of the
even ones (plain NLL of the answers, AdamW, the model's recommended learning rate on the testbed,
else ``lr``), one budget unit per optimiser step, and judges the held-out half at each quarter of
the budget. The oracle, which never saw the forget authors, gives the floor (chance).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from erasekit.attacks.base import AttackConfig, Tracker
from erasekit.attacks.lm.arena import FactArena, answer_items
from erasekit.core.registry import register_attack
from erasekit.core.request import QAPair
from erasekit.models.lm_batches import encode_pairs
from erasekit.training.lm import nll


@dataclass
class RelearningConfig(AttackConfig):
    budget: int = field(default=20, metadata={"help": "fine-tuning steps"})
    lr: float = field(default=1e-5, metadata={"help": "AdamW learning rate (a fact-world model recommends its own)", "gt": 0})
    batch_size: int = field(default=8, metadata={"help": "pairs per step", "min": 1})
    seed: int = field(default=0, metadata={"help": "seed of the batch order"})


@register_attack("relearning", RelearningConfig, budget_unit="steps", kind="weights", family="causal-lm", trials="held-out")
def relearning(arena: FactArena, config: RelearningConfig, tracker: Tracker, progress: bool = True) -> None:
    """Fine-tune on half of the forgotten facts; ask the other half."""
    taught = [arena.facts[i] for i in range(len(arena.facts)) if i % 2 == 0]
    pairs = [QAPair(q.question, q.answer) for f in taught for q in arena.world.qa(arena.world.authors[f.author])
             if q.attribute == f.attribute]  # fmt: skip
    twin = arena.copy()
    model = twin.model.float().train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr)
    g = torch.Generator().manual_seed(config.seed)
    for step in range(1, config.budget + 1):
        idx = torch.randint(len(pairs), (config.batch_size,), generator=g).tolist()
        loss = nll(model, encode_pairs(twin.tokenizer, [pairs[i] for i in idx], twin.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if tracker.due(step):
            model.eval()
            rows = tracker.pending()
            facts = [arena.fact(tracker.trials[r]) for r in rows]
            answers = arena.answers(twin, [tracker.trials[r].prompt for r in rows]) if rows else []
            tracker.report(step, rows, answer_items(answers, facts), [{"step": step, "answer": a} for a in answers])
            model.train()
    del twin
