"""Refusal guard: a generation-time filter, no weight changes.

From the forget request it derives **triggers**: for each forget question, a shortest token n-gram
(n ≤ ``max_ngram``) that occurs in no retain question (chosen greedily to cover every forget
question: on the fact world, the forgotten authors' names). Installed as a forward hook on the
language model, it watches every row's tokens: after a trigger, the output distribution at each
position is forced to continue the refusal (``"I don't know."`` by default) — the next refusal
token after the longest suffix of the text since the trigger that is a prefix of the refusal, then
end-of-sequence. Greedy generation therefore answers a question naming a forgotten entity with
the refusal, and the scored probability of any other answer is ``exp(−margin)`` per token; text
without a trigger is untouched. Works through the KV cache of ``generate`` (the hook keeps the
tokens seen since the trigger per row).

This is the field's input/output filter baseline (a guard, not unlearning): the weights still hold
every fact, which is what the attacks show (a paraphrase without the trigger, quantization of the
unguarded weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from erasekit.core.attachments import Attachment, register_attachment
from erasekit.core.config import MethodConfig
from erasekit.core.errors import ConfigError
from erasekit.core.registry import MethodResult, register_method


@dataclass
class RefusalConfig(MethodConfig):
    max_ngram: int = field(default=4, metadata={"help": "longest trigger n-gram, in tokens", "min": 1})
    margin: float = field(default=30.0, metadata={"help": "logit margin of the forced token over every other", "gt": 0})


def _ngrams(ids: list[int], n: int) -> set[tuple[int, ...]]:
    return {tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)}


def find_triggers(tokenizer, forget: list[str], retain: list[str], max_ngram: int) -> list[tuple[int, ...]]:
    """Token n-grams that occur in no retain text, chosen greedily (most forget texts covered first,
    shorter first on ties) until every forget text holds one; an uncoverable forget text is an error."""
    f_ids = tokenizer(forget, add_special_tokens=False).input_ids
    r_ids = tokenizer(retain, add_special_tokens=False).input_ids if retain else []
    banned = {g for ids in r_ids for n in range(1, max_ngram + 1) for g in _ngrams(ids, n)}
    candidates: dict[tuple[int, ...], set[int]] = {}
    for i, ids in enumerate(f_ids):
        for n in range(1, max_ngram + 1):
            for g in _ngrams(ids, n) - banned:
                candidates.setdefault(g, set()).add(i)
    uncovered, triggers = set(range(len(f_ids))), []
    while uncovered:
        best = max(candidates, key=lambda g: (len(candidates[g] & uncovered), -len(g)), default=None)
        if best is None or not candidates[best] & uncovered:
            raise ConfigError(
                f"refusal-guard: the forget question {forget[min(uncovered)]!r} shares every n-gram of up to "
                f"{max_ngram} tokens with the retain questions; raise max_ngram"
            )
        triggers.append(best)
        uncovered -= candidates[best]
    return triggers


def fresh_call(kwargs: dict, length: int) -> bool:
    """Whether a forward call starts a new text (no KV cache, or a cache that holds only this call's
    tokens: the hook runs after the forward pass filled it) rather than continuing one."""
    position = kwargs.get("cache_position")
    if position is not None and position.numel():
        return int(position[0]) == 0
    past = kwargs.get("past_key_values", kwargs.get("cache"))  # transformers 5 names it "cache"
    return past is None or not hasattr(past, "get_seq_length") or past.get_seq_length() <= length


@register_attachment
class RefusalGuard(Attachment):
    """The forward hook described in the module docstring."""

    kind = "refusal-guard"

    def __init__(self, triggers: list[tuple[int, ...]], refusal: list[int], eos: int, margin: float):
        self.triggers, self.refusal, self.eos, self.margin = triggers, refusal, eos, margin
        self._since: list[list[int] | None] = []  # per row: tokens since its trigger (None: no trigger yet)
        self._recent: list[list[int]] = []

    def _feed(self, row: int, token: int) -> None:
        recent = self._recent[row]
        recent.append(token)
        del recent[: -max(len(t) for t in self.triggers)]
        since = self._since[row]
        if since is not None:
            since.append(token)
        elif any(tuple(recent[-len(t) :]) == t for t in self.triggers):
            self._since[row] = []

    def _forced(self, row: int) -> int | None:
        since = self._since[row]
        if since is None:
            return None
        for k in range(min(len(since), len(self.refusal)), -1, -1):  # longest suffix that starts the refusal
            if since[len(since) - k :] == self.refusal[:k]:
                return self.refusal[k] if k < len(self.refusal) else self.eos
        return self.refusal[0]

    def install(self, pipe) -> list:
        model = pipe.model

        def hook(_m, args, kwargs, out):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                return out
            if fresh_call(kwargs, ids.shape[1]) or len(self._since) != ids.shape[0]:
                self._since, self._recent = [None] * ids.shape[0], [[] for _ in range(ids.shape[0])]
            logits = out.logits
            rows = ids.tolist()
            forced = torch.full(ids.shape, -1, dtype=torch.long)
            for r, row in enumerate(rows):
                for t, token in enumerate(row):
                    self._feed(r, token)
                    f = self._forced(r)
                    if f is not None:
                        forced[r, t] = f
            forced = forced[:, ids.shape[1] - logits.shape[1] :]  # generate asks for the last position's logits only
            if (forced >= 0).any():
                logits = logits.clone()
                where = (forced >= 0).to(logits.device)
                onehot = torch.nn.functional.one_hot(forced.clamp(min=0), logits.shape[-1]).to(logits.device, logits.dtype)
                replaced = (onehot - 1) * self.margin  # forced token 0, every other token -margin
                logits = torch.where(where[..., None], replaced, logits)
                out.logits = logits
            return out

        return [model.register_forward_hook(hook, with_kwargs=True)]

    def config(self) -> dict:
        return {"triggers": [list(t) for t in self.triggers], "refusal": self.refusal, "eos": self.eos, "margin": self.margin}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    @classmethod
    def restore(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "RefusalGuard":
        return cls([tuple(t) for t in config["triggers"]], list(config["refusal"]), int(config["eos"]), float(config["margin"]))


@register_method("refusal-guard", RefusalConfig, families=("causal-lm",), kind="guard")
def refusal_guard(lm, request, config: RefusalConfig, adapter=None, progress: bool = True) -> MethodResult:
    """Generation-time filter: refuse once a text names a forgotten entity (no weight changes)."""
    tok = lm.tokenizer
    triggers = find_triggers(tok, [p.question for p in request.forget], [p.question for p in request.retain], config.max_ngram)
    refusal = tok(request.refusal, add_special_tokens=False).input_ids
    if not refusal:
        raise ConfigError("refusal-guard: the refusal answer encodes to no token")
    guard = RefusalGuard(triggers, refusal, tok.eos_token_id, config.margin)
    words = [tok.decode(list(t)) for t in triggers]
    return MethodResult({}, {"triggers": words}, attachment=guard)
