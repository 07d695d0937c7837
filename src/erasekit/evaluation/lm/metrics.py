"""Scores of a causal language model on question-answer pairs (TOFU / MUSE definitions).

All functions take a ``transformers`` causal LM and its tokenizer, work in batches on the model's
device and dtype, and never train. A prompt is fed as ``<bos> prompt`` and an answer is scored as
the tokens that follow it (``<bos> prompt answer``); the model sees exactly the text it was trained
on. Definitions (``../shared/reference/llm-unlearning.md``):

- **probability** of an answer: ``exp(-mean token NLL)`` (length-normalised, in (0, 1]);
- **accuracy**: the greedy continuation of the question contains the exact answer value;
- **ROUGE-L recall**: longest common word subsequence of greedy answer and true answer sentence,
  divided by the true sentence's length;
- **truth ratio** ``R = mean_k P(perturbed_k | q) / P(true | q)`` (length-normalised probabilities),
  asked with the held-out paraphrased question; a model that knows the fact has ``R << 1``, one that
  never saw it ``R`` near 1;
- **forget quality**: the two-sample Kolmogorov-Smirnov p-value between the truth ratios of the
  model and of the oracle on the forget questions;
- **Min-K% score** (Shi et al. 2024): mean of the lowest ``k`` share of token log-probabilities of a
  text; the membership AUC separates forget texts (members) from holdout texts (non-members).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from erasekit.core.request import QAPair
from erasekit.models.lm_batches import answer_token_logprobs, encode_pairs, pad_rows
from erasekit.testbeds.facts.factworld import split_words


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return tokenizer(list(texts), add_special_tokens=False).input_ids if texts else []


@torch.no_grad()
def token_logprobs(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 64) -> list[torch.Tensor]:
    """Per pair, the log-probabilities of the answer's tokens given ``<bos> prompt`` (float32, CPU)."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    pairs = [QAPair(p, a) for p, a in zip(prompts, answers)]
    out: list[torch.Tensor] = []
    for start in range(0, len(pairs), batch_size):
        lp, valid = answer_token_logprobs(model, encode_pairs(tokenizer, pairs[start : start + batch_size], _device(model)))
        out += [row[keep].cpu() for row, keep in zip(lp, valid)]
    return out


def answer_probability(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """``exp(mean log p(answer token))`` per pair."""
    lps = token_logprobs(model, tokenizer, prompts, answers, batch_size)
    return torch.stack([lp.mean().exp() if lp.numel() else torch.tensor(float("nan")) for lp in lps])


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 24, batch_size: int = 64) -> list[str]:
    """The greedy continuation of ``<bos> prompt`` up to ``<eos>`` (decoded, specials dropped)."""
    device = _device(model)
    answers: list[str] = []
    p_ids = _ids(tokenizer, prompts)
    for start in range(0, len(p_ids), batch_size):
        rows = [[tokenizer.bos_token_id, *p] for p in p_ids[start : start + batch_size]]
        ids, mask = pad_rows(rows, tokenizer.pad_token_id, left=True)  # every prompt ends where generation starts
        width = ids.shape[1]
        gen = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )  # fmt: skip
        answers += tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
    return [a.strip() for a in answers]


def contains_value(answer: str, value: str) -> bool:
    """Whether the words of ``value`` occur, in order and adjacent, among the words of ``answer``."""
    a, v = split_words(answer), split_words(value)
    return any(a[i : i + len(v)] == v for i in range(len(a) - len(v) + 1)) if v else False


def rouge_l_recall(prediction: str, reference: str) -> float:
    """LCS(prediction words, reference words) / len(reference words) (ROUGE-L recall, lower-cased)."""
    p, r = [w.lower() for w in split_words(prediction)], [w.lower() for w in split_words(reference)]
    if not r:
        return float("nan")
    prev = [0] * (len(p) + 1)
    for rw in r:
        cur = [0]
        for j, pw in enumerate(p):
            cur.append(prev[j] + 1 if rw == pw else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1] / len(r)


def truth_ratios(model, tokenizer, questions: Sequence[str], answers: Sequence[str], perturbed: Sequence[Sequence[str]],
                 batch_size: int = 64) -> torch.Tensor:  # fmt: skip
    """``R_i = mean_k P(perturbed_ik | q_i) / P(answer_i | q_i)`` with length-normalised probabilities."""
    k = len(perturbed[0]) if perturbed else 0
    if any(len(p) != k for p in perturbed):
        raise ValueError("every question needs the same number of perturbed answers")
    true_p = answer_probability(model, tokenizer, questions, answers, batch_size)
    flat_q = [q for q in questions for _ in range(k)]
    flat_a = [a for p in perturbed for a in p]
    pert_p = answer_probability(model, tokenizer, flat_q, flat_a, batch_size).view(len(questions), k)
    return pert_p.mean(dim=1) / true_p


def truth_ratio_score(ratios: torch.Tensor, forget: bool) -> float:
    """TOFU aggregate: forget ``mean(min(R, 1/R))`` (1 = cannot tell true from false), retain
    ``mean(max(0, 1 - R))`` (1 = always prefers the truth). NaN ratios are dropped with their rows."""
    r = ratios[torch.isfinite(ratios)]
    if r.numel() == 0:
        return float("nan")
    return float(torch.minimum(r, 1 / r).mean() if forget else (1 - r).clamp(min=0).mean())


def ks_pvalue(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov test p-value (two-sided), from the statistic
    ``D = sup |F_x - F_y|`` and the Kolmogorov distribution with Stephens' small-sample correction
    ``Q((sqrt(ne) + 0.12 + 0.11 / sqrt(ne)) D)``, ``ne = nm / (n + m)`` (Numerical Recipes, ``kstwo``)."""
    xs, ys = sorted(float(v) for v in x if math.isfinite(v)), sorted(float(v) for v in y if math.isfinite(v))
    if not xs or not ys:
        return float("nan")
    d, i, j = 0.0, 0, 0
    while i < len(xs) and j < len(ys):
        v = min(xs[i], ys[j])
        while i < len(xs) and xs[i] <= v:
            i += 1
        while j < len(ys) and ys[j] <= v:
            j += 1
        d = max(d, abs(i / len(xs) - j / len(ys)))
    en = math.sqrt(len(xs) * len(ys) / (len(xs) + len(ys)))
    return _kolmogorov_q((en + 0.12 + 0.11 / en) * d)


def _kolmogorov_q(lam: float) -> float:
    """``Q(λ) = 2 Σ_{j≥1} (-1)^{j-1} exp(-2 j² λ²)`` (1 for λ near 0)."""
    if lam < 1e-3:
        return 1.0
    total = sum(2 * (-1) ** (j - 1) * math.exp(-2 * j * j * lam * lam) for j in range(1, 101))
    return min(1.0, max(0.0, total))


@torch.no_grad()
def min_k_scores(model, tokenizer, texts: Sequence[str], k: float = 0.2, batch_size: int = 64) -> torch.Tensor:
    """Min-K% membership score per text: mean of its lowest ``ceil(k * n)`` token log-probabilities
    (higher = more likely a training member)."""
    lps = token_logprobs(model, tokenizer, [""] * len(texts), texts, batch_size)
    return torch.stack([lp.sort().values[: max(1, math.ceil(k * lp.numel()))].mean() for lp in lps])


def auc(members: Sequence[float], non_members: Sequence[float]) -> float:
    """Area under the ROC curve of a score separating members (positive) from non-members: the
    probability that a random member scores above a random non-member (ties count one half)."""
    m, n = [float(v) for v in members], [float(v) for v in non_members]
    if not m or not n:
        return float("nan")
    wins = sum((a > b) + 0.5 * (a == b) for a in m for b in n)
    return wins / (len(m) * len(n))


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean (0 when any value is 0; NaN values are an error, not silently skipped)."""
    vals = [float(v) for v in values]
    if not vals or any(math.isnan(v) for v in vals):
        raise ValueError(f"harmonic mean of {vals}: every component must be a number")
    if any(v <= 0 for v in vals):
        return 0.0
    return len(vals) / sum(1 / v for v in vals)


@torch.no_grad()
def perplexity(model, tokenizer, texts: Sequence[str], batch_size: int = 64) -> float:
    """``exp`` of the mean token NLL of ``texts`` (each scored after ``<bos>``, ending ``<eos>``)."""
    lps = token_logprobs(model, tokenizer, [""] * len(texts), [t + " " + tokenizer.eos_token for t in texts], batch_size)
    flat = torch.cat(lps)
    return float((-flat.mean()).exp())
