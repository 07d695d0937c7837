"""Scores of a causal language model on question-answer pairs (TOFU / MUSE definitions).

All functions take a ``transformers`` causal LM and its tokenizer, work in batches on the model's
device and dtype, and never train. A prompt is fed as ``<bos> prompt`` and an answer is scored as
the tokens that follow it (``<bos> prompt answer``); the model sees exactly the text it was trained
on. Definitions (``../shared/reference/llm-unlearning.md``):

- **probability** of an answer: ``exp(-mean token NLL)`` (length-normalised, in (0, 1]);
- **accuracy**: the greedy continuation of the question contains the exact answer value;
- **ROUGE-L recall**: ``rouge_score``'s ROUGE-L recall with Porter stemming (TOFU,
  open-unlearning): longest common subsequence of the greedy answer's and the true answer's tokens
  (lower-cased, punctuation dropped, stemmed) over the true answer's length;
- **truth ratio** ``R = GM_k P(perturbed_k | q) / P(true | q)`` with length-normalised probabilities
  and the *geometric* mean over the perturbed answers (TOFU ``evaluate_util.py``, open-unlearning
  ``memorization.py``: the mean of the per-answer average losses, exponentiated), asked with the
  held-out paraphrased question; a model that knows the fact has ``R << 1``, one that never saw it
  ``R`` near 1;
- **forget quality**: the two-sample Kolmogorov-Smirnov p-value between the truth ratios of the
  model and of the oracle on the forget questions, ``scipy.stats.ks_2samp`` as TOFU and
  open-unlearning call it (exact for these sample sizes);
- **Min-K% score** (Shi et al. 2024): mean of the lowest ``max(1, int(k·n))`` token
  log-probabilities of a text, ``k = 40 %`` as MUSE's PrivLeak key and open-unlearning's configs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from rouge_score import rouge_scorer, tokenizers
from scipy.stats import ks_2samp

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


_ROUGE_TOKENIZER = tokenizers.DefaultTokenizer(use_stemmer=True)
_ROUGE = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_ROUGE_TOKENIZER)


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall of ``prediction`` against ``reference``: ``LCS / len(reference tokens)`` with
    ``rouge_score``'s tokeniser and Porter stemmer (TOFU ``evaluate_util.py``: ``RougeScorer(["rougeL"],
    use_stemmer=True).score(gt, gen)["rougeL"].recall``). NaN for a reference without a word."""
    if not _ROUGE_TOKENIZER.tokenize(reference):
        return float("nan")
    return float(_ROUGE.score(reference, prediction)["rougeL"].recall)


def truth_ratios(model, tokenizer, questions: Sequence[str], answers: Sequence[str], perturbed: Sequence[Sequence[str]],
                 batch_size: int = 64) -> torch.Tensor:  # fmt: skip
    """``R_i = exp(mean_k log P(perturbed_ik | q_i)) / P(answer_i | q_i)``: the geometric mean of the
    perturbed answers' length-normalised probabilities over the true answer's (TOFU: ``exp(mean_k
    loss_k)`` of the per-answer average losses, against ``exp(loss_true)``)."""
    k = len(perturbed[0]) if perturbed else 0
    if any(len(p) != k for p in perturbed):
        raise ValueError("every question needs the same number of perturbed answers")
    true_p = answer_probability(model, tokenizer, questions, answers, batch_size)
    flat_q = [q for q in questions for _ in range(k)]
    flat_a = [a for p in perturbed for a in p]
    pert_p = answer_probability(model, tokenizer, flat_q, flat_a, batch_size).view(len(questions), k)
    return pert_p.log().mean(dim=1).exp() / true_p


def truth_ratio_score(ratios: torch.Tensor, forget: bool) -> float:
    """TOFU aggregate: forget ``mean(min(R, 1/R))`` (1 = cannot tell true from false), retain
    ``mean(max(0, 1 - R))`` (1 = always prefers the truth). NaN ratios are dropped with their rows."""
    r = ratios[torch.isfinite(ratios)]
    if r.numel() == 0:
        return float("nan")
    return float(torch.minimum(r, 1 / r).mean() if forget else (1 - r).clamp(min=0).mean())


def ks_pvalue(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided two-sample Kolmogorov-Smirnov p-value, ``scipy.stats.ks_2samp(x, y).pvalue`` (its
    ``method="auto"``: exact for samples up to 10 000, as TOFU and open-unlearning compute forget
    quality). Non-finite values are dropped first (a question whose ratio could not be computed)."""
    xs, ys = [float(v) for v in x if math.isfinite(v)], [float(v) for v in y if math.isfinite(v)]
    if not xs or not ys:
        return float("nan")
    return float(ks_2samp(xs, ys).pvalue)


@torch.no_grad()
def min_k_scores(model, tokenizer, texts: Sequence[str], k: float = 0.4, batch_size: int = 64) -> torch.Tensor:
    """Min-K% membership score per text: mean of its lowest ``max(1, int(k * n))`` token
    log-probabilities (higher = more likely a training member; MUSE ``privleak.py`` takes
    ``int(k·n)``, open-unlearning ``min_k.py`` at least one token)."""
    lps = token_logprobs(model, tokenizer, [""] * len(texts), texts, batch_size)
    return torch.stack([min_k_mean(lp, k) for lp in lps])


def min_k_mean(logprobs: torch.Tensor, k: float) -> torch.Tensor:
    """The mean of the lowest ``max(1, int(k·n))`` of ``n`` token log-probabilities."""
    return logprobs.sort().values[: max(1, int(k * logprobs.numel()))].mean()


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """Area under the ROC curve of a score separating ``positives`` (label 1) from ``negatives``
    (label 0): the probability that a random positive scores above a random negative (ties count
    one half; ``sklearn.metrics.roc_auc_score`` on the same labels)."""
    m, n = [float(v) for v in positives], [float(v) for v in negatives]
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
