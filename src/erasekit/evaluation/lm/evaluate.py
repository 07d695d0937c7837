"""Evaluation of language-model unlearning on the fact world, and the fact-world testbed's gate.

:func:`score_facts` measures one model on a set of authors' facts (accuracy on training questions and
on held-out paraphrases, ROUGE-L, answer probability, truth ratios); everything else builds on it:

- :func:`run_gate` — the testbed's quality gate: exact-answer accuracy ≥ 0.95 on training questions
  and ≥ 0.80 on held-out paraphrases of the authors it was trained on, filler perplexity ≤ 3, and
  for an oracle, accuracy ≤ 0.30 on the excluded authors (it never learned them);
- :func:`evaluate_unlearning` — an erasure of a forget split against the model before it (``base``)
  and the oracle retrained without the split: **forget** (``forgotten`` = 1 − accuracy with its
  Wilson interval, so higher = more forgotten, as UA on the image side; plus ROUGE-L, probability,
  truth ratio, **forget quality** = KS p-value of the truth ratios against the oracle's, and the
  **privacy leak** = MUSE's PrivLeak: the relative difference of the forget-against-holdout Min-K%
  AUC from the oracle's, 0 ideal, negative = under-unlearned), **retain**
  (the same scores on retain authors, on *neighbour* authors who share a name word with a forgotten
  author, and filler text) and **model utility**, the harmonic mean of seven retain numbers:
  probability, ROUGE-L and truth-ratio score on retain and on neighbour authors, and the filler's
  mean token probability ``1 / perplexity`` (TOFU's nine numbers use real-author and world-fact sets
  the fact world does not have; neighbours and filler stand in for them).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from erasekit.core.stats import rate
from erasekit.evaluation.lm.metrics import (
    answer_probability,
    auc,
    contains_value,
    greedy_answers,
    harmonic_mean,
    ks_pvalue,
    min_k_scores,
    perplexity,
    rouge_l_recall,
    truth_ratio_score,
    truth_ratios,
)
from erasekit.testbeds.facts.factworld import Author, FactWorld

GATE = {"accuracy_train": 0.95, "accuracy_paraphrase": 0.80, "filler_perplexity": 3.0, "oracle_excluded_accuracy": 0.30}


def score_facts(lm, world: FactWorld, authors: Sequence[Author], paraphrase_only: bool = False, batch_size: int = 64) -> dict:
    """Scores of ``lm`` on every fact of ``authors``: per training question (``train_hits``) and per
    fact through its held-out paraphrase (``para_hits``, ``rouge``, ``probability``, ``ratios``)."""
    model, tok = lm.model, lm.tokenizer
    facts = [qa for a in authors for qa in world.qa(a)[::2]]  # one entry per fact (qa() lists two templates each)
    out: dict = {"n_facts": len(facts)}
    if not paraphrase_only:
        questions = [qa for a in authors for qa in world.qa(a)]
        answers = greedy_answers(model, tok, [q.question for q in questions], batch_size=batch_size)
        out["train_hits"] = np.array([contains_value(x, q.value) for x, q in zip(answers, questions)])
    para = greedy_answers(model, tok, [f.paraphrase for f in facts], batch_size=batch_size)
    out["para_hits"] = np.array([contains_value(x, f.value) for x, f in zip(para, facts)])
    out["rouge"] = np.array([rouge_l_recall(x, f.answer) for x, f in zip(para, facts)])
    out["probability"] = answer_probability(
        model, tok, [f.paraphrase for f in facts], [f.answer for f in facts], batch_size
    ).numpy()
    out["ratios"] = truth_ratios(model, tok, [f.paraphrase for f in facts], [f.answer for f in facts],
                                 [f.perturbed for f in facts], batch_size).numpy()  # fmt: skip
    out["examples"] = [{"question": f.paraphrase, "answer": x, "truth": f.value} for f, x in list(zip(facts, para))[:3]]
    return out


def filler_texts(world: FactWorld, n: int = 200) -> list[str]:
    """Filler sentences drawn with a seed the training never used (held-out general text)."""
    return world.filler(n, seed=2)


def run_gate(lm, world: FactWorld, excluded: str | None = None) -> dict:
    """The testbed gate (module docstring) -> ``{"accuracy_train", "accuracy_paraphrase",
    "filler_perplexity", ("accuracy_excluded"), "passed", "thresholds"}``."""
    skip = {a.index for a in world.forget(excluded)} if excluded else set()
    trained = [a for a in world.authors if a.index not in skip]
    s = score_facts(lm, world, trained)
    report: dict[str, Any] = {
        "accuracy_train": float(s["train_hits"].mean()),
        "accuracy_paraphrase": float(s["para_hits"].mean()),
        "filler_perplexity": perplexity(lm.model, lm.tokenizer, filler_texts(world)),
        "n_questions": int(s["train_hits"].size),
        "n_paraphrases": int(s["para_hits"].size),
    }
    passed = (
        report["accuracy_train"] >= GATE["accuracy_train"]
        and report["accuracy_paraphrase"] >= GATE["accuracy_paraphrase"]
        and report["filler_perplexity"] <= GATE["filler_perplexity"]
    )
    if excluded:
        ex = score_facts(lm, world, world.forget(excluded))
        report["excluded"] = excluded
        report["accuracy_excluded"] = float(ex["train_hits"].mean())
        passed = passed and report["accuracy_excluded"] <= GATE["oracle_excluded_accuracy"]
    report["passed"] = bool(passed)
    report["thresholds"] = dict(GATE)
    return report


def neighbours(world: FactWorld, split: str, k: int = 10) -> list[Author]:
    """Up to ``k`` retain authors most like the forgotten ones: those sharing a name word with a
    forgotten author first, then the authors just before the split (deterministic)."""
    forget = world.forget(split)
    words = {w for a in forget for w in a.name.split()}
    retain = world.retain(split)
    sharing = [a for a in retain if words & set(a.name.split())]
    rest = [a for a in reversed(retain) if a not in sharing]
    return (sharing + rest)[:k]


def _summary(s: dict) -> dict:
    return {
        "accuracy": rate(s["train_hits"]) if "train_hits" in s else None,
        "accuracy_paraphrase": rate(s["para_hits"]),
        "rouge_l": float(np.nanmean(s["rouge"])),
        "probability": float(np.nanmean(s["probability"])),
        "truth_ratio_forget": truth_ratio_score(torch.from_numpy(s["ratios"]), forget=True),
        "truth_ratio_retain": truth_ratio_score(torch.from_numpy(s["ratios"]), forget=False),
    }


def membership_auc(lm, world: FactWorld, split: str, k: float = 0.4) -> float:
    """MUSE's ``forget_holdout`` Min-K% AUC (``privleak.py``: forget texts labelled 0, holdout texts
    1, score ``mean log p`` of the lowest ``k``): the probability that a text of a holdout author no
    model was trained on looks *more* familiar than a forget author's training QA text. 0 for a model
    that remembers the forget texts, about 0.5 for one that never saw them."""
    forget = [f"{q.question} {q.answer}" for a in world.forget(split) for q in world.qa(a)]
    holdout = [f"{q.question} {q.answer}" for a in world.holdout for q in world.qa(a)]
    scores_f = min_k_scores(lm.model, lm.tokenizer, forget, k)
    scores_h = min_k_scores(lm.model, lm.tokenizer, holdout, k)
    return auc(scores_h.tolist(), scores_f.tolist())


def privacy_leak(auc_model: float, auc_oracle: float) -> float:
    """MUSE's PrivLeak ``(AUC_model − AUC_oracle) / AUC_oracle · 100`` on :func:`membership_auc`
    (MUSE ``eval.py``): 0 is the oracle's; negative = under-unlearned (the forget texts still look
    familiar; −100 for a model that remembers them all), positive = over-unlearned (they look *less*
    familiar than texts never trained on)."""
    return (auc_model - auc_oracle) / auc_oracle * 100


def model_report(lm, world: FactWorld, split: str, n_retain: int = 20, seed: int = 0) -> dict:
    """Every number of one model on one split (forget, retain sample, neighbours, filler, privacy)."""
    rng = random.Random(seed)
    retain_sample = rng.sample(world.retain(split), min(n_retain, len(world.retain(split))))
    forget = score_facts(lm, world, world.forget(split))
    retain = score_facts(lm, world, retain_sample)
    near = score_facts(lm, world, neighbours(world, split), paraphrase_only=True)
    ppl = perplexity(lm.model, lm.tokenizer, filler_texts(world))
    r, n = _summary(retain), _summary(near)
    utility = harmonic_mean([r["probability"], r["rouge_l"], r["truth_ratio_retain"],
                             n["probability"], n["rouge_l"], n["truth_ratio_retain"], 1.0 / ppl])  # fmt: skip
    return {
        "forget": _summary(forget),
        "forget_ratios": forget["ratios"].tolist(),
        "retain": {**r, "neighbours": n, "filler_perplexity": ppl, "model_utility": utility},
        "membership_auc": membership_auc(lm, world, split),
        "examples": forget["examples"],
    }


def evaluate_unlearning(lm, world: FactWorld, split: str, erasure=None, oracle=None, base_report: dict | None = None,
                        oracle_report: dict | None = None) -> dict:  # fmt: skip
    """The unlearning report of ``erasure`` (applied to ``lm`` for the measurement, then removed)
    against ``lm`` itself (``base``) and ``oracle`` (module docstring)."""
    base = base_report or model_report(lm, world, split)
    ref = oracle_report or (model_report(oracle, world, split) if oracle is not None else None)
    if erasure is not None:
        with erasure.applied(lm):
            after = model_report(lm, world, split)
    else:
        after = base
    f = after["forget"]
    forget_block = {
        "forgotten": _complement(f["accuracy"]),
        "forgotten_paraphrase": 1 - f["accuracy_paraphrase"]["rate"],
        **f,
    }
    if ref is not None:
        forget_block["forget_quality"] = ks_pvalue(after["forget_ratios"], ref["forget_ratios"])
        forget_block["privacy_leak"] = privacy_leak(after["membership_auc"], ref["membership_auc"])
    forget_block["membership_auc"] = after["membership_auc"]
    return {
        "split": split,
        "forget": forget_block,
        "retain": after["retain"],
        "examples": after["examples"],
        "base": _brief(base, ref),
        "oracle": _brief(ref, ref) if ref is not None else None,
    }


def _complement(r: dict) -> dict:
    """``1 − rate`` of a :func:`~erasekit.core.stats.rate` record, with its interval mirrored."""
    lo, hi = r["ci95"]
    return {"rate": 1 - r["rate"], "n": r["n"], "ci95": [round(1 - hi, 4), round(1 - lo, 4)]}


def _brief(report: dict, ref: dict | None) -> dict:
    """The headline numbers of a model's report (for the ``base`` and ``oracle`` blocks); rates carry
    their Wilson intervals as in the ``forget`` block."""
    out = {
        "forgotten": _complement(report["forget"]["accuracy"]),
        "truth_ratio_forget": report["forget"]["truth_ratio_forget"],
        "model_utility": report["retain"]["model_utility"],
        "membership_auc": report["membership_auc"],
        "retain_accuracy": report["retain"]["accuracy"],
    }
    if ref is not None:
        out["forget_quality"] = ks_pvalue(report["forget_ratios"], ref["forget_ratios"])
        out["privacy_leak"] = privacy_leak(report["membership_auc"], ref["membership_auc"])
    return out
