"""Linear-probe attack: is the forgotten answer still linearly decodable from the hidden states?

For each attribute, a ridge-regression probe maps a hidden state to the one-hot value of the answer:
the state at the last token of the question followed by its answer sentence cut before the value
(``"Where was X born? X was born in"``), the position where the model produces the value (at the
question mark it has not retrieved it yet: probes there read chance on the base model). It is fitted on retain authors (their facts, asked with the same
question template as the trials) and read on the forget facts; a trial succeeds when the probe's
top value is the true one. The states are those of the attacked model (erasure applied, including
attachments such as LEACE). One budget unit probes one more block, from the last down; a trial
succeeds when any probed block decodes it. Chance is about one over the number of values (1/8 to
1/168); the oracle gives the measured floor.

Ridge: ``W = (XᵀX + λI)⁻¹ XᵀY`` on centred states, ``λ = 1e-2 · tr(XᵀX) / d``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from erasekit.attacks.base import AttackConfig, Tracker
from erasekit.attacks.lm.arena import FactArena, answer_items
from erasekit.core.registry import register_attack
from erasekit.models.causal_lm import n_layers
from erasekit.models.lm_batches import pad_rows


@dataclass
class ProbeConfig(AttackConfig):
    budget: int = field(default=4, metadata={"help": "blocks probed, from the last down"})
    n_authors: int = field(default=120, metadata={"help": "retain authors the probes are fitted on", "min": 10})


def cloze(qa) -> str:
    """The question and its answer sentence up to the value (``"... born? X was born in"``)."""
    return f"{qa.question} {qa.answer[: qa.answer.index(qa.value)].strip()}"


@torch.no_grad()
def question_states(lm, questions: list[str], batch_size: int = 64) -> torch.Tensor:
    """Hidden states after every block at each question's last token: ``[n_blocks + 1, N, d]`` (float32)."""
    tok, out = lm.tokenizer, []
    for i in range(0, len(questions), batch_size):
        rows = [[tok.bos_token_id, *ids] for ids in tok(questions[i : i + batch_size], add_special_tokens=False).input_ids]
        ids, mask = pad_rows(rows, tok.pad_token_id)
        hs = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), output_hidden_states=True).hidden_states
        last = mask.sum(1) - 1
        out.append(torch.stack([h.float().cpu()[torch.arange(len(rows)), last] for h in hs]))
    return torch.cat(out, dim=1)


def ridge_predict(x_train: torch.Tensor, labels: list[str], x_test: torch.Tensor) -> list[str]:
    """Top label of a ridge probe fitted on ``x_train`` (module docstring)."""
    classes = sorted(set(labels))
    y = torch.zeros(len(labels), len(classes), dtype=torch.float64)
    y[torch.arange(len(labels)), torch.tensor([classes.index(v) for v in labels])] = 1
    mu = x_train.double().mean(0)
    x = x_train.double() - mu
    gram = x.T @ x
    lam = 1e-2 * gram.trace() / gram.shape[0]
    w = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=torch.float64), x.T @ (y - y.mean(0)))
    scores = (x_test.double() - mu) @ w
    return [classes[i] for i in scores.argmax(1).tolist()]


@register_attack("probe", ProbeConfig, budget_unit="blocks", kind="probe", family="causal-lm")
def probe(arena: FactArena, config: ProbeConfig, tracker: Tracker, progress: bool = True) -> None:
    """Linear probes on hidden states, fitted on retain authors, read on the forgotten facts."""
    donors = arena.world.retain(arena.split)[: config.n_authors]
    train = [qa for a in donors for qa in arena.world.qa(a)[::2]]
    test = [arena.fact(t) for t in tracker.trials]
    with arena.attacked() as lm:
        x_train = question_states(lm, [cloze(q) for q in train])
        x_test = question_states(lm, [cloze(q) for q in test])
    depth = n_layers(arena.lm.model)
    for b in range(1, min(config.budget, depth) + 1):
        layer = depth + 1 - b  # hidden_states index: depth = after the last block
        predicted = [""] * len(test)
        for attribute in {f.attribute for f in test}:
            tr = [i for i, q in enumerate(train) if q.attribute == attribute]
            te = [i for i, f in enumerate(test) if f.attribute == attribute]
            guesses = ridge_predict(x_train[layer, tr], [train[i].value for i in tr], x_test[layer, te])
            for i, g in zip(te, guesses):
                predicted[i] = g
        rows = tracker.pending()
        facts = [test[r] for r in rows]
        answers = [predicted[r] for r in rows]
        tracker.report(b, rows, answer_items(answers, facts), [{"block": layer - 1, "probe": a} for a in answers])
