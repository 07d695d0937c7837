"""Token batches of a causal language model: one padding rule and one answer-scoring rule for the
trainer, the unlearning loop, the metrics and the attacks.

A question-answer pair is fed as ``<bos> question answer`` and scored on the answer's tokens only
(``labels`` = the answer's ids, -100 elsewhere); a plain text as ``<bos> text <eos>`` and scored on
every token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from erasekit.core.request import QAPair


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows as one ``[N, longest]`` tensor padded with ``pad_id`` (on the right, or on the
    ``left`` so that every row ends where generation starts) and its attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span], mask[i, span] = torch.tensor(r, dtype=torch.long), 1
    return ids, mask


def pair_ids(tokenizer, pairs: Sequence[QAPair]) -> tuple[list[list[int]], list[list[int]]]:
    """The question's and the answer's token ids of every pair, tokenised apart (no special tokens)."""
    questions = tokenizer([p.question for p in pairs], add_special_tokens=False).input_ids
    answers = tokenizer([p.answer for p in pairs], add_special_tokens=False).input_ids
    return questions, answers


def encode_ids(tokenizer, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
               device: torch.device | str) -> dict[str, torch.Tensor]:  # fmt: skip
    """``<bos> prompt answer`` from token ids (right-padded), the attention mask, and ``labels`` that
    are the answer's ids and -100 everywhere else (prompt, padding)."""
    ids, mask = pad_rows([[tokenizer.bos_token_id, *q, *a] for q, a in zip(prompts, answers)], tokenizer.pad_token_id)
    labels = torch.full_like(ids, -100)
    for i, (q, a) in enumerate(zip(prompts, answers)):
        labels[i, 1 + len(q) : 1 + len(q) + len(a)] = torch.tensor(a, dtype=torch.long)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def encode_pairs(tokenizer, pairs: Sequence[QAPair], device: torch.device | str) -> dict[str, torch.Tensor]:
    """``<bos> question answer`` of each pair, scored on the answer (:func:`encode_ids`)."""
    return encode_ids(tokenizer, *pair_ids(tokenizer, pairs), device)


def encode_texts(tokenizer, texts: Sequence[str], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """``<bos> text <eos>`` ids, right-padded, with the attention mask and language-modelling labels
    (every token; -100 on padding)."""
    rows = [
        [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
        for ids in tokenizer(list(texts), add_special_tokens=False).input_ids
    ]
    ids, mask = pad_rows(rows, tokenizer.pad_token_id)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": ids.masked_fill(mask == 0, -100).to(device)}


def target_positions(batch: dict[str, torch.Tensor], positions: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(targets, valid)`` ``[N, T-1]``: the next token at every position and where a loss reads it —
    ``"answer"``: the answer tokens (the batch's labels), ``"text"``: every real token after ``<bos>``
    (question and answer; padding never)."""
    if positions == "answer":
        targets = batch["labels"][:, 1:]
        return targets.clamp(min=0), targets != -100
    if positions == "text":
        return batch["input_ids"][:, 1:], batch["attention_mask"][:, 1:].bool()
    raise ValueError(f"positions={positions!r}: use answer or text")


def answer_token_logprobs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log π(token | prefix), valid)`` for every target position of ``batch`` (float32, ``[N, T-1]``);
    ``valid`` marks the scored (answer) positions, and the log-probabilities are 0 elsewhere."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    targets, valid = target_positions(batch, "answer")
    lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets[..., None])[..., 0]
    return lp * valid, valid
