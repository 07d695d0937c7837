"""Prompt variables shared by the token attacks: placeholder slots, the allowed vocabulary, and the
projections from continuous variables back to real tokens.

A *slot* is a placeholder word in a prompt whose token embedding an attack replaces. Slots are laid
out per prompt (``prefix``: k words before the prompt, as UnlearnDiffAtk; ``every3``: one right
after BOS and one after every three of the prompt's tokens, ``⌊L/3⌋ + 1`` for ``L`` tokens, as P4D-K;
``free``: k words and nothing else, as P4D-N / Ring-A-Bell / MMA; ``replace``: the concept's words,
one slot for a name of several words, as concept inversion). Positions are counted in tokens, BOS at
0, each placeholder one token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from erasekit.core.errors import ConfigError

PLACEHOLDER = "a"  # one token in CLIP's and the testbed's vocabularies; its embedding is overwritten

#: The families whose first text encoder's token embeddings an attack can edit (a forward hook on its
#: embedding layer): the UNet families' CLIP encoders. SD3 and Flux encode prompts through their
#: pipelines' own ``encode_prompt``, which erasekit does not hook, so embedding attacks refuse them.
HOOKED_FAMILIES: tuple[str, ...] = ("sd", "sdxl")


@dataclass
class Slots:
    """Texts with placeholder words and the token positions ``[N, k]`` an attack writes into."""

    texts: list[str]
    positions: torch.Tensor
    words: list[list[str | None]]  # each text split into words, placeholders marked by None

    @property
    def k(self) -> int:
        return int(self.positions.shape[1])

    def hook(self, values: torch.Tensor):
        """A token hook writing ``values [N, k, d]`` (or ``[k, d]`` for every row) into the slots."""

        def write(emb: torch.Tensor) -> torch.Tensor:
            v = values.to(emb.device, emb.dtype)
            if v.dim() == 2:
                v = v[None].expand(emb.shape[0], -1, -1)
            rows = torch.arange(emb.shape[0], device=emb.device)[:, None].expand_as(self.positions)
            return torch.index_put(emb, (rows.reshape(-1), self.positions.to(emb.device).reshape(-1)), v.reshape(-1, v.shape[-1]))

        return write

    def rows(self, idx: list[int]) -> Slots:
        """The slots of the prompts ``idx`` (in that order, repeats allowed)."""
        return Slots([self.texts[i] for i in idx], self.positions[idx], [self.words[i] for i in idx])

    def fill(self, tokens: list[list[str]]) -> list[str]:
        """The texts with row ``i``'s placeholders replaced by the words ``tokens[i]``."""
        out = []
        for words, row in zip(self.words, tokens):
            it = iter(row)
            out.append(" ".join(w if w is not None else next(it) for w in words))
        return out


def make_slots(tokenizer, prompts: list[str], k: int, layout: str, concept: str | None = None) -> Slots:
    """Slots for ``prompts`` (see the module docstring for ``layout``)."""
    if layout == "replace" and concept is None:
        raise ValueError("layout 'replace' needs the concept")
    if layout == "every3":  # the same number of insertions in every prompt (short ones get theirs at the end)
        k = max(1 + len(tokenizer(p, add_special_tokens=False).input_ids) // 3 for p in prompts)
    all_words = [layout_words(tokenizer, prompt.split(), k, layout, concept) for prompt in prompts]
    positions = [slot_positions(tokenizer, words, prompt) for words, prompt in zip(all_words, prompts)]
    if len({len(p) for p in positions}) != 1:
        raise ConfigError("attack slots differ in number across prompts (replace a concept word that appears once per prompt)")
    texts = [" ".join(PLACEHOLDER if w is None else w for w in words) for words in all_words]
    return Slots(texts, torch.tensor(positions), all_words)


def layout_words(tokenizer, words: list[str], k: int, layout: str, concept: str | None) -> list[str | None]:
    """A prompt's words with its slots (``None``) laid out as ``layout`` says."""
    if layout == "prefix":
        return [*([None] * k), *words]
    if layout == "free":
        return [None for _ in range(k)]
    if layout == "every3":
        return every3_layout(tokenizer, list(words), k)
    if layout == "replace":
        return replace_layout(words, (concept or "").split())
    raise ValueError(f"unknown slot layout {layout!r}")


_TRAILING = ".,;:!?"


def replace_layout(words: list[str], concept: list[str]) -> list[str | None]:
    """Concept inversion's layout: every occurrence of the concept's words (a name of several words,
    such as "Brad Pitt", counts once; case and trailing punctuation ignored, the punctuation kept as a
    word after the slot) becomes one slot; a prompt that does not say the concept gets its slot at the
    end."""
    n, key = len(concept), [c.lower() for c in concept]
    if n == 0:
        return [*words, None]
    out: list[str | None] = []
    i = 0
    while i < len(words):
        span = words[i : i + n]
        bare = [w.lower() for w in span[:-1]] + [span[-1].lower().rstrip(_TRAILING)]
        if bare == key:
            tail = span[-1][len(span[-1].rstrip(_TRAILING)) :]
            out += [None, tail] if tail else [None]
            i += n
        else:
            out.append(words[i])
            i += 1
    return out if None in out else [*words, None]


def slot_positions(tokenizer, words: list[str | None], prompt: str) -> list[int]:
    """Token positions of the slots (BOS at 0, a slot one token); an error when the text does not fit."""
    pos, cursor = [], 1
    for w in words:
        if w is None:
            pos.append(cursor)
            cursor += 1
        else:
            cursor += len(tokenizer(w, add_special_tokens=False).input_ids)
    if cursor + 1 > tokenizer.model_max_length:
        raise ConfigError(
            f"{len(pos)} attack tokens do not fit in the {tokenizer.model_max_length}-token context with {prompt!r}"
        )
    return pos


def every3_layout(tokenizer, words: list[str], k: int) -> list[str | None]:
    """P4D-K's layout (``optimize_k.py``: slots at every 4th position from the one after BOS): a slot
    first, then one after every 3 tokens of the prompt, and the rest of the ``k`` slots at the end. A
    word of several tokens is never split: its slot follows the word that reaches 3 tokens."""
    out: list[str | None] = [None]
    run = 0
    for w in words:
        out.append(w)
        run += len(tokenizer(w, add_special_tokens=False).input_ids)
        if run >= 3:
            out.append(None)
            run = 0
    return out + [None for _ in range(k - sum(w is None for w in out))]


def allowed_tokens(tokenizer, vocabulary: frozenset[str] | None, banned: set[str]) -> tuple[torch.Tensor, list[str]]:
    """Token ids an attack may choose and their words: a closed vocabulary's words (the testbed), else
    every whole-word token of the tokenizer; minus the ``banned`` words (lower-case) and specials."""
    if vocabulary is not None:
        words = sorted(w for w in vocabulary if w not in banned)
        ids = [tokenizer(w, add_special_tokens=False).input_ids for w in words]
        keep = [(i[0], w) for i, w in zip(ids, words) if len(i) == 1]
    else:
        specials = set(tokenizer.all_special_ids)
        keep = []
        for token, idx in tokenizer.get_vocab().items():
            if idx in specials or not token.endswith("</w>"):
                continue
            word = token[: -len("</w>")]
            if re.fullmatch(r"[a-z]+", word) and word not in banned and not any(b in word for b in banned if len(b) > 3):
                keep.append((idx, word))
        keep.sort()
    if not keep:
        raise ConfigError("no token is left for the attack to choose (every word is banned)")
    return torch.tensor([i for i, _ in keep]), [w for _, w in keep]


def banned_words(concept: str, testbed: bool, extra: tuple[str, ...] = ()) -> set[str]:
    """The concept's own words (its name, synonyms, a character's name) that word-filter-evading
    attacks must not use."""
    words = {concept.lower(), *(e.lower() for e in extra)}
    if testbed:
        from erasekit.testbeds.image import world

        words |= set(world.word_forms(concept))
    return words


def project_to_tokens(z: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Index of the nearest row of ``table [V, d]`` (cosine similarity) for every vector of ``z [..., d]``
    (PEZ's projection, Wen et al. 2023)."""
    zn = torch.nn.functional.normalize(z.float(), dim=-1)
    tn = torch.nn.functional.normalize(table.float(), dim=-1)
    return (zn @ tn.T).argmax(-1)


def project_simplex(x: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of every row of ``x [..., V]`` onto the probability simplex
    (sort-based algorithm of Held et al. / Duchi et al. 2008)."""
    v = x.float()
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - 1
    ks = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    cond = u - css / ks > 0
    rho = cond.float().cumsum(-1).argmax(-1, keepdim=True)  # last index where cond holds
    theta = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp(min=0).to(x.dtype)


def check_fits(tokenizer, k: int) -> None:
    """Refuse ``k`` searched tokens that, with BOS and EOS, do not fit in the tokenizer's context (the
    encoders would truncate them)."""
    if k + 2 > tokenizer.model_max_length:
        raise ConfigError(f"{k} tokens do not fit in the {tokenizer.model_max_length}-token context")


def token_texts(words: list[str], choice: torch.Tensor) -> list[str]:
    """The prompts made of the words ``words[j]`` of each row of ``choice [N, k]`` (indices into ``words``)."""
    return [" ".join(words[j] for j in row.tolist()) for row in choice]


def encode_choice(arena, words: list[str], choice: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """The reference model's conditioning token features ``[N, T, d]`` of the prompts made of the words
    of ``choice [N, k]`` (float32, no grad): through every text encoder of the family (SDXL's two, SD3's
    three), so they live where the attack's targets, ``arena.cond(...).tokens``, live. Each word is one
    token of the first tokenizer (:func:`allowed_tokens`), so its prompt encodes exactly those tokens."""
    texts = token_texts(words, choice)
    return torch.cat([arena.cond(texts[i : i + batch], reference=True).tokens.float() for i in range(0, len(texts), batch)])
