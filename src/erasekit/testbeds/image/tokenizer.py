"""A genuine CLIP BPE tokenizer whose vocabulary is the testbed world's words.

The vocabulary follows CLIP's layout: the 256 byte-level symbols, the same symbols with the
end-of-word marker ``</w>``, the tokens produced by the merges, then ``<|startoftext|>`` and
``<|endoftext|>``. The merges build every world word left to right, so each world word is exactly
one token (checked when the tokenizer is built), while any other text still tokenizes into byte
symbols, as in real CLIP: an attack or a user can type words the world never used.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from erasekit.testbeds.image.world import vocabulary

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MODEL_MAX_LENGTH = 32


def _chain(word: str) -> list[tuple[str, str]]:
    """Merges that assemble ``word</w>`` from its characters, left to right."""
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    merges, cur = [], symbols[0]
    for s in symbols[1:]:
        merges.append((cur, s))
        cur += s
    return merges


def build_vocab_and_merges(words: tuple[str, ...] | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-layout vocabulary and merges in which every world word is one token."""
    words = words or vocabulary()
    byte_symbols = list(bytes_to_unicode().values())
    tokens: dict[str, None] = {s: None for s in byte_symbols}
    tokens.update({s + "</w>": None for s in byte_symbols})
    merges: dict[tuple[str, str], None] = {}
    for w in words:
        for a, b in _chain(w):
            merges.setdefault((a, b), None)
            tokens.setdefault(a + b, None)
    tokens.update({BOS: None, EOS: None})
    return {t: i for i, t in enumerate(tokens)}, list(merges)


def _make(vocab: dict[str, int], merges: list[tuple[str, str]]) -> CLIPTokenizer:
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MODEL_MAX_LENGTH)
    return tok


def build_tokenizer() -> CLIPTokenizer:
    """Build the tokenizer; raises if any world word does not come out as a single token.

    Merges of different words can interfere (BPE applies the globally lowest-ranked pair first), so
    the build appends repair merges for a word that comes out split until every word is whole.
    """
    vocab, merges = build_vocab_and_merges()
    for _ in range(10):
        tok = _make(vocab, merges)
        broken = []
        for w in vocabulary():
            pieces = tok.tokenize(w)
            if pieces != [w + "</w>"]:
                broken.append(pieces)
        if not broken:
            return tok
        for pieces in broken:
            cur = pieces[0]
            for p in pieces[1:]:
                if (cur, p) not in merges:
                    merges.append((cur, p))
                cur += p
                if cur not in vocab:
                    vocab[cur] = len(vocab)
    raise RuntimeError(f"could not build a tokenizer with whole-word tokens for {broken}")


def save_tokenizer(tok: CLIPTokenizer, directory: str | Path) -> None:
    """Write ``vocab.json``, ``merges.txt`` and the fast tokenizer files into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(directory)
    # save_pretrained writes tokenizer.json; keep the classic CLIP files too, for other tools.
    vocab = tok.get_vocab()
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    lines = ["#version: 0.2"] + [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n")
